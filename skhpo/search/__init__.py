"""The skhpo search estimators, one module per method."""

from .flatness import FlatnessSearchCV

__all__ = ["FlatnessSearchCV"]
