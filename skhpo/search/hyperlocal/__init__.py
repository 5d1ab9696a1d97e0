"""The LP hyper local search (Sinha & Gunwal 2025), in one place: the estimator
(:mod:`.estimator`), the penalties it refines (:mod:`.penalties`), one step on a net
(:mod:`.step`), its linear programs (:mod:`.lp`), line search (:mod:`.linesearch`), curvature
of the training objective (:mod:`.curvature`), the held-back check (:mod:`.accept`) and the
exact path for scikit-learn's linear models (:mod:`.linear`)."""

from .curvature import SR1Snapshots
from .estimator import HyperLocalRefiner

__all__ = ["HyperLocalRefiner", "SR1Snapshots"]
