"""Differentiable hyper-parameters, shared by the gradient-based methods.

* :mod:`~skhpo.hyper.transforms` — box <-> unconstrained coordinates;
* :mod:`~skhpo.hyper.layers` — concrete dropout, self-tuning (Delta-STN) layers and module
  surgery;
* :mod:`~skhpo.hyper.hypergrad` — one-step look-ahead hypergradients.
"""

from .hypergrad import (HyperParam, apply_hyperparams, current_values, hypergradient,
                        lookahead_loss, resolve_hyperparam)
from .layers import (ConcreteDropout, DropoutRates, HyperContext, HyperDropout, HyperLayer,
                     convert_module, cutout, dropout_layers, entropy, general_state_dict,
                     replace_dropout)
from .transforms import Box, as_box, logit, stretched_sigmoid

__all__ = ["Box", "ConcreteDropout", "DropoutRates", "HyperContext", "HyperDropout",
           "HyperLayer", "HyperParam", "apply_hyperparams", "as_box", "convert_module", "cutout",
           "current_values", "dropout_layers", "entropy", "general_state_dict", "hypergradient",
           "logit", "lookahead_loss", "replace_dropout", "resolve_hyperparam",
           "stretched_sigmoid"]
