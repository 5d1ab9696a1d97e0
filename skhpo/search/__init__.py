"""The skhpo search estimators, one module per method."""

from .autohyper import AutoHyperSearchCV
from .cutting_plane import CuttingPlaneTuner
from .flatness import FlatnessSearchCV
from .fused_search import FusedGridSearchCV, FusedRandomizedSearchCV
from .hyperlocal import HyperLocalRefiner
from .population import PopulationMutationSearch

__all__ = ["AutoHyperSearchCV", "CuttingPlaneTuner", "FlatnessSearchCV", "FusedGridSearchCV",
           "FusedRandomizedSearchCV", "HyperLocalRefiner", "PopulationMutationSearch"]
