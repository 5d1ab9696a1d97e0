"""Self-tuning-network layers (Delta-STN, used by :class:`~skhpo.CuttingPlaneTuner`).

:class:`HyperLayer` wraps an ``nn.Linear`` / ``nn.Conv2d`` with a hyper-gated response term,
:class:`HyperDropout` drops with per-example rates; both read the hyper-network input from a
shared :class:`HyperContext`, so the module's ``forward`` is unchanged.
:func:`skhpo.hyper.layers.convert_module` puts them into a module. :func:`cutout` and
:func:`entropy` are the augmentation and the perturbation's entropy of the tuner.
"""

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HyperContext", "HyperDropout", "HyperLayer", "cutout", "entropy"]


class HyperContext:
    """What the converted layers of one module read at each forward pass.

    ``h_net``: the hyper-network input, a ``(batch, n_hyper)`` tensor (or one row), or None
    for the general weights alone; ``rates``: the dropout rates, ``(batch, n_rates)`` or
    ``(n_rates,)``, used in training mode.
    """

    def __init__(self, n_hyper, rates=None):
        self.n_hyper = n_hyper
        self.h_net = None
        self.rates = rates


class HyperLayer(nn.Module):
    """An ``nn.Linear`` or ``nn.Conv2d`` with a hyper-gated response (Delta-STN):

        out = base(x) + s_w * response_nobias(x) + s_b * response.bias,
        [s_w | s_b] = h_net @ h1.T

    so that each example's weight is W_e + diag(s_w) W_h2 (CPMLHO Eq. 3). ``base`` keeps the
    general weights (W_e, b_e) of the layer it wraps, ``response`` is a fresh layer of the same
    shape (W_h2, b_h2; PyTorch's default init) and ``h1`` (2 out x n_hyper) starts at zero, so
    the converted module computes exactly what the original did.
    """

    def __init__(self, base, n_hyper, context):
        super().__init__()
        if not isinstance(base, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"HyperLayer wraps nn.Linear or nn.Conv2d, got {type(base).__name__}")
        self.base = base
        self.response = copy.deepcopy(base)
        self.response.reset_parameters()
        n_out = base.out_features if isinstance(base, nn.Linear) else base.out_channels
        self.h1 = nn.Parameter(torch.zeros(2 * n_out, n_hyper, dtype=base.weight.dtype,
                                           device=base.weight.device))
        self.context = context

    def forward(self, x):
        out = self.base(x)
        h = self.context.h_net
        if h is None:
            return out
        s_w, s_b = (h.to(out.dtype) @ self.h1.T).chunk(2, dim=-1)
        if isinstance(self.base, nn.Linear):
            resp = F.linear(x, self.response.weight)
            shape = (s_w.shape[0], *([1] * (out.dim() - 2)), s_w.shape[-1])
        else:
            resp = self.response._conv_forward(x, self.response.weight, None)
            shape = (s_w.shape[0], s_w.shape[-1], 1, 1)
        resp = resp * s_w.reshape(shape)
        if self.response.bias is not None:
            resp = resp + (s_b * self.response.bias).reshape(shape)
        return out + resp


class HyperDropout(nn.Module):
    """Dropout whose rate is hyper-parameter ``index`` of the context's ``rates``, one rate
    per example (hard Bernoulli masks with detached rates, as in the Delta-STN code).
    ``channel=True`` drops whole channels (``nn.Dropout2d``). Identity in eval mode."""

    def __init__(self, index, context, channel=False):
        super().__init__()
        self.index, self.context, self.channel = index, context, channel

    def forward(self, x):
        if not self.training or self.context.rates is None:
            return x
        p = self.context.rates.detach()
        p = (p[..., self.index] if p.dim() else p).to(x.dtype).clamp(0.0, 1.0 - 1e-6)
        p = p.reshape(-1, *([1] * (x.dim() - 1)))  # one rate per example (or one for all)
        shape = (x.shape[0], x.shape[1], *([1] * (x.dim() - 2))) if self.channel else x.shape
        keep = (1.0 - p).expand(shape)
        return x * torch.bernoulli(keep) / keep

    def extra_repr(self):
        return f"index={self.index}, channel={self.channel}"


def entropy(sigma):
    """Entropy of the Gaussian perturbation with scales ``sigma``: sum log(sigma sqrt(2 pi e))."""
    return torch.log(sigma * math.sqrt(2 * math.pi * math.e)).sum()


def cutout(x, holes, length, image_shape):
    """Cutout (DeVries & Taylor 2017) with one number of holes and one side length per
    example, as the Delta-STN code applies it: ``floor(holes)`` squares of side
    ``floor(length)``, each centred on a uniformly drawn pixel and clipped to the image, are
    set to zero. ``x``: ``(batch, ...)`` holding ``image_shape`` = (C, H, W) per example;
    ``holes`` and ``length``: tensors of shape ``(batch,)`` or scalars (no gradient)."""
    c, h, w = image_shape
    n = x.shape[0]
    holes = torch.as_tensor(holes, device=x.device).detach().floor().expand(n)
    length = torch.as_tensor(length, device=x.device).detach().floor().expand(n)
    n_max = int(holes.max()) if n else 0
    if n_max <= 0:
        return x
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    half = (length / 2).view(n, 1, 1)
    keep = torch.ones(n, h, w, dtype=torch.bool, device=x.device)
    for j in range(n_max):
        cy = torch.randint(h, (n, 1, 1), device=x.device)
        cx = torch.randint(w, (n, 1, 1), device=x.device)
        y0, y1 = (cy - half).clamp(0, h).long(), (cy + half).clamp(0, h).long()
        x0, x1 = (cx - half).clamp(0, w).long(), (cx + half).clamp(0, w).long()
        active = ((j < holes) & (length > 0)).view(n, 1, 1)
        keep &= ~(active & (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1))
    return (x.reshape(n, c, h, w) * keep.unsqueeze(1).to(x.dtype)).reshape(x.shape)
