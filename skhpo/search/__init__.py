"""The skhpo search estimators, one module (or subpackage) per method, on two templates:
:mod:`._cv` (methods that end in cross-validation) and :mod:`._holdout` (methods that train
on one held-out split with their own loop)."""

from .autohyper import AutoHyperSearchCV
from .cutting_plane import CuttingPlaneTuner
from .flatness import FlatnessSearchCV
from .fused_halving import FusedHalvingGridSearchCV, FusedHalvingRandomSearchCV
from .fused_search import FusedGridSearchCV, FusedRandomizedSearchCV
from .hyperlocal import HyperLocalRefiner
from .population import PopulationMutationSearch

__all__ = ["AutoHyperSearchCV", "CuttingPlaneTuner", "FlatnessSearchCV", "FusedGridSearchCV",
           "FusedHalvingGridSearchCV", "FusedHalvingRandomSearchCV", "FusedRandomizedSearchCV",
           "HyperLocalRefiner", "PopulationMutationSearch"]
