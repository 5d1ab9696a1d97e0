"""The skhpo search estimators, one module per method."""

from .autohyper import AutoHyperSearchCV
from .flatness import FlatnessSearchCV
from .hyperlocal import HyperLocalRefiner
from .population import PopulationMutationSearch

__all__ = ["AutoHyperSearchCV", "FlatnessSearchCV", "HyperLocalRefiner",
           "PopulationMutationSearch"]
