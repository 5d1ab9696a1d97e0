"""Concrete dropout: the dropout layer whose rate has a gradient (HPM's students).

With the relaxed Bernoulli mask of Gal et al. (2017) the training loss is differentiable in the
rate ``p``; :func:`skhpo.hyper.layers.replace_dropout` swaps it into a user's module.
"""

import torch
from torch import nn

__all__ = ["ConcreteDropout"]


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
