"""Moved to :mod:`skhpo.search.hyperlocal.lp` (the LP hyper local search keeps its machinery
in one subpackage); this module stays as an alias of it."""

from .search.hyperlocal.lp import *  # noqa: F403
from .search.hyperlocal.lp import __all__  # noqa: F401
