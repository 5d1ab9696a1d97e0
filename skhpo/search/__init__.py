"""The skhpo search estimators, one module per method."""

from .autohyper import AutoHyperSearchCV
from .flatness import FlatnessSearchCV

__all__ = ["AutoHyperSearchCV", "FlatnessSearchCV"]
