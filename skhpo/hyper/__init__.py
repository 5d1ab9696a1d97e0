"""Differentiable hyper-parameters and the search-space vocabulary, shared by the methods.

* :mod:`~skhpo.hyper.space` — names, domains, ranges and penalties: one reading of a
  scikit-learn-style space for every search;
* :mod:`~skhpo.hyper.transforms` — box <-> unconstrained coordinates;
* :mod:`~skhpo.hyper.layers` — concrete dropout, self-tuning (Delta-STN) layers and module
  surgery;
* :mod:`~skhpo.hyper.hypergrad` — one-step look-ahead hypergradients.
"""

from .hypergrad import (
                        HyperParam,
                        apply_hyperparams,
                        current_values,
                        hypergradient,
                        lookahead_loss,
                        resolve_hyperparam,
)
from .layers import (
                        ConcreteDropout,
                        DropoutRates,
                        HyperContext,
                        HyperDropout,
                        HyperLayer,
                        convert_module,
                        cutout,
                        dropout_layers,
                        entropy,
                        general_state_dict,
                        replace_dropout,
                        set_dropout_rate,
)
from .space import (
                        Dimension,
                        ParamName,
                        as_box,
                        check_domain,
                        check_space,
                        parse_name,
                        penalty_gradient,
                        penalty_term,
                        read_dimension,
)
from .transforms import Box, logit, stretched_sigmoid

__all__ = ["Box", "ConcreteDropout", "Dimension", "DropoutRates", "HyperContext",
           "HyperDropout", "HyperLayer", "HyperParam", "ParamName", "apply_hyperparams",
           "as_box", "check_domain", "check_space", "convert_module", "current_values",
           "cutout", "dropout_layers", "entropy", "general_state_dict", "hypergradient",
           "logit", "lookahead_loss", "parse_name", "penalty_gradient", "penalty_term",
           "read_dimension", "replace_dropout", "resolve_hyperparam", "set_dropout_rate",
           "stretched_sigmoid"]
