"""Differentiable hyper-parameters and the search-space vocabulary, shared by the methods.

* :mod:`~skhpo.hyper.space` — names, domains, ranges and penalties: one reading of a
  scikit-learn-style space for every search;
* :mod:`~skhpo.hyper.transforms` — box <-> unconstrained coordinates;
* :mod:`~skhpo.hyper.layers` — dropout surgery (concrete dropout for HPM, self-tuning
  layers for CPMLHO), and :class:`DropoutRates`, which retrains a plain net with tuned rates;
* :mod:`~skhpo.hyper.concrete`, :mod:`~skhpo.hyper.stn` — the layers themselves;
* :mod:`~skhpo.hyper.hypergrad` — one-step look-ahead hypergradients.

The package exports what a user of the searches calls: reading a space as the searches read
it, a box, and the rates callback. The methods import the rest from the modules.
"""

from .layers import DropoutRates
from .space import Dimension, ParamName, check_space, parse_name, read_dimension
from .transforms import Box

__all__ = ["Box", "Dimension", "DropoutRates", "ParamName", "check_space", "parse_name",
           "read_dimension"]
