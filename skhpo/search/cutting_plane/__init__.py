"""CPMLHO, the self-tuning network with a cutting-plane penalty and a mixed-level objective
(Yang et al., arXiv 2212.06150, on Delta-STN), in one place: the estimator (:mod:`.estimator`),
its space (:mod:`.space`) and its training loop (:mod:`.trainer`); the self-tuning layers
are :mod:`skhpo.hyper.stn`'s."""

from .estimator import CuttingPlaneTuner
from .trainer import cut_penalty

__all__ = ["CuttingPlaneTuner", "cut_penalty"]
