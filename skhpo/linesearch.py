"""Moved to :mod:`skhpo.search.hyperlocal.linesearch` (the LP hyper local search keeps its
machinery in one subpackage); this module stays as an alias of it."""

from .search.hyperlocal.linesearch import *  # noqa: F403
from .search.hyperlocal.linesearch import __all__  # noqa: F401
