"""The LP hyper local search (Sinha & Gunwal 2025), in one place: the estimator
(:mod:`.refiner`), its linear programs (:mod:`.lp`), line search (:mod:`.linesearch`),
curvature of the training objective (:mod:`.curvature`) and the exact path for scikit-learn's
linear models (:mod:`.linear`)."""

from .curvature import SR1Snapshots
from .refiner import HyperLocalRefiner

__all__ = ["HyperLocalRefiner", "SR1Snapshots"]
