"""HPM, the hypergradient-guided population with a learned mutation teacher (Tao et al.,
NeurIPS 2020), in one place: the algorithm on any problem (:mod:`.hpm`), a population of
skorch students (:mod:`.students`) and the scikit-learn estimator (:mod:`.estimator`)."""

from .estimator import PopulationMutationSearch
from .hpm import RANDOM_RANGE, HPMSettings, Teacher, run_hpm

__all__ = ["HPMSettings", "PopulationMutationSearch", "RANDOM_RANGE", "Teacher", "run_hpm"]
