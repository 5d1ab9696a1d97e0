"""Layers whose regularisation strength is a hyper-parameter, and module surgery.

* :class:`ConcreteDropout` — dropout with the concrete (relaxed Bernoulli) mask of spec hpm
  §3.2, so that the training loss is differentiable in the rate ``p``. The rate is a buffer:
  :func:`torch.func.functional_call` can replace it by a tensor that requires gradients.
* :func:`replace_dropout` — swaps the ``nn.Dropout`` layers of a user's module for
  :class:`ConcreteDropout` in place (the module's ``forward`` is untouched).
* :class:`DropoutRates` — a skorch callback that sets per-layer dropout rates of an ordinary
  net at the start of training (to retrain a plain net with tuned rates).
"""

from __future__ import annotations

import torch
from skorch.callbacks import Callback
from torch import nn

__all__ = ["ConcreteDropout", "DropoutRates", "dropout_layers", "replace_dropout"]


class ConcreteDropout(nn.Module):
    """Dropout with a relaxed Bernoulli mask (Gal et al. 2017; Maddison et al. 2017).

    In training, with noise ``v ~ U(0, 1)`` per element and temperature ``tau``::

        z = sigmoid((log p - log(1 - p) + log v - log(1 - v)) / tau)   # ~ 1 with prob. p
        out = x * (1 - z) / (1 - p)

    In evaluation it is the identity, like ``nn.Dropout``. ``p = 0`` is the identity too.

    Parameters
    ----------
    p : float, default=0.5
        The drop rate, in [0, 1).
    temperature : float, default=0.1
        The relaxation's temperature (smaller: closer to Bernoulli masks).
    """

    def __init__(self, p=0.5, temperature=0.1):
        super().__init__()
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"dropout rate p must be in [0, 1), got {p}")
        self.register_buffer("p", torch.tensor(float(p)))
        self.temperature = float(temperature)

    def forward(self, x):
        if not self.training:
            return x
        p = self.p.to(x.dtype)
        if not p.requires_grad and float(p) == 0.0:
            return x
        eps = torch.finfo(x.dtype).eps
        p_c = p.clamp(eps, 1 - eps)
        v = torch.rand_like(x).clamp(eps, 1 - eps)
        z = torch.sigmoid((torch.log(p_c) - torch.log1p(-p_c) + torch.log(v) - torch.log1p(-v))
                          / self.temperature)
        return x * (1 - z) / (1 - p_c)

    def extra_repr(self):
        return f"p={float(self.p):.4g}, temperature={self.temperature:g}"


def dropout_layers(module):
    """``{path: layer}`` of the ``nn.Dropout`` / :class:`ConcreteDropout` layers of
    ``module``, in registration order (path as in ``named_modules``)."""
    return {name: m for name, m in module.named_modules()
            if isinstance(m, (nn.Dropout, ConcreteDropout))}


def replace_dropout(module, temperature=0.1):
    """Replace every ``nn.Dropout`` of ``module`` (in place) by a :class:`ConcreteDropout`
    with the same rate; return ``{path: layer}`` of the concrete layers. Idempotent."""
    for path, layer in list(dropout_layers(module).items()):
        if isinstance(layer, nn.Dropout):
            parent_path, _, attr = path.rpartition(".")
            parent = module.get_submodule(parent_path) if parent_path else module
            new = ConcreteDropout(layer.p, temperature)
            new.train(layer.training)
            setattr(parent, attr, new)
    return dropout_layers(module)


class DropoutRates(Callback):
    """Set ``module_.<path>.p`` for each ``{path: rate}`` when training begins.

    Lets an ordinary skorch net be retrained with per-layer rates that its constructor
    cannot express (e.g. the rates a :class:`~skhpo.PopulationMutationSearch` found).
    """

    def __init__(self, rates):
        self.rates = rates

    def on_train_begin(self, net, **kwargs):
        layers = dropout_layers(net.module_)
        for path, rate in self.rates.items():
            if path not in layers:
                raise ValueError(f"DropoutRates: the module has no dropout layer {path!r}; "
                                 f"it has {sorted(layers)}")
            layer = layers[path]
            if isinstance(layer, ConcreteDropout):
                layer.p.fill_(float(rate))
            else:
                layer.p = float(rate)
