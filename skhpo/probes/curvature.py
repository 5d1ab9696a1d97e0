"""Moved to :mod:`skhpo.search.hyperlocal.curvature` (the LP hyper local search keeps its machinery
in one subpackage); this module stays as an alias of it."""

from ..search.hyperlocal.curvature import *  # noqa: F403
from ..search.hyperlocal.curvature import __all__  # noqa: F401
