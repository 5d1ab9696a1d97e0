"""The skhpo search estimators, one module per method."""

from .autohyper import AutoHyperSearchCV
from .cutting_plane import CuttingPlaneTuner
from .flatness import FlatnessSearchCV
from .hyperlocal import HyperLocalRefiner
from .population import PopulationMutationSearch

__all__ = ["AutoHyperSearchCV", "CuttingPlaneTuner", "FlatnessSearchCV", "HyperLocalRefiner",
           "PopulationMutationSearch"]
