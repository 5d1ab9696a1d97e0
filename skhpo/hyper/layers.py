"""Layers whose regularisation strength is a hyper-parameter, and module surgery.

* :class:`ConcreteDropout` — dropout with the concrete (relaxed Bernoulli) mask of HPM
  (Gal et al. 2017), so that the training loss is differentiable in the rate ``p``. The rate
  is a buffer: :func:`torch.func.functional_call` can replace it by a tensor that requires
  gradients.
* :func:`replace_dropout` — swaps the ``nn.Dropout`` layers of a user's module for
  :class:`ConcreteDropout` in place (the module's ``forward`` is untouched).
* :class:`DropoutRates` — a skorch callback that sets per-layer dropout rates of an ordinary
  net at the start of training (to retrain a plain net with tuned rates).
* Self-tuning-network surgery (Delta-STN, used by :class:`~skhpo.CuttingPlaneTuner`):
  :class:`HyperLayer` wraps an ``nn.Linear`` / ``nn.Conv2d`` with a hyper-gated response term,
  :class:`HyperDropout` drops with per-example rates, and :func:`convert_module` converts a
  module in place. The hyper-network input reaches the layers through a shared
  :class:`HyperContext`, so the module's ``forward`` is unchanged.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from skorch.callbacks import Callback
from torch import nn

__all__ = ["ConcreteDropout", "DropoutRates", "HyperContext", "HyperDropout", "HyperLayer",
           "convert_module", "cutout", "dropout_layers", "entropy", "general_state_dict",
           "replace_dropout", "set_dropout_rate"]


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


_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def dropout_layers(module):
    """``{path: layer}`` of the dropout layers of ``module`` (``nn.Dropout`` and its 1-3d
    channel variants, :class:`ConcreteDropout`, :class:`HyperDropout`), in registration
    order (path as in ``named_modules``)."""
    return {name: m for name, m in module.named_modules()
            if isinstance(m, (*_DROPOUTS, ConcreteDropout, HyperDropout))}


def replace_dropout(module, temperature=0.1):
    """Replace every ``nn.Dropout`` of ``module`` (in place) by a :class:`ConcreteDropout`
    with the same rate; return ``{path: layer}`` of the concrete layers. Idempotent."""
    for path, layer in list(dropout_layers(module).items()):
        if type(layer) is nn.Dropout:
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
            set_dropout_rate(layers[path], rate)


def set_dropout_rate(layer, rate):
    """Set the rate of one dropout layer: the buffer of a :class:`ConcreteDropout` (in place,
    so a ``functional_call`` sees it), else ``layer.p``."""
    if isinstance(layer, ConcreteDropout):
        layer.p.fill_(float(rate))
    else:
        layer.p = float(rate)


# --------------------------------------------------------------------------------------------
# self-tuning networks (Delta-STN)
# --------------------------------------------------------------------------------------------

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


def convert_module(module, rate_paths, n_hyper):
    """Convert ``module`` in place for Delta-STN training.

    Every ``nn.Linear`` and ``nn.Conv2d`` becomes a :class:`HyperLayer` with ``n_hyper``
    hyper-inputs; the dropout layer at ``rate_paths[i]`` becomes a :class:`HyperDropout`
    reading rate ``i`` (other dropout layers keep their fixed rate). Returns the shared
    :class:`HyperContext`. Raises a ``ValueError`` if the module has no layer to convert or
    a path is not a dropout layer.
    """
    context = HyperContext(n_hyper)
    dropouts = dropout_layers(module)
    for path in rate_paths:
        if path not in dropouts:
            raise ValueError(f"the module has no dropout layer {path!r}; its dropout layers "
                             f"are {sorted(dropouts)}")
    targets = [(name, m) for name, m in module.named_modules()
               if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not targets:
        raise ValueError(f"{type(module).__name__} has no nn.Linear or nn.Conv2d layer to "
                         "convert into a self-tuning layer")
    for name, layer in targets:
        _replace(module, name, HyperLayer(layer, n_hyper, context))
    for i, path in enumerate(rate_paths):
        channel = isinstance(dropouts[path], (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d))
        _replace(module, path, HyperDropout(i, context, channel))
    return context


def _replace(module, path, new):
    if not path:
        raise ValueError("the module itself is a single layer; wrap it in a container "
                         "(e.g. nn.Sequential) so that it can be converted")
    parent_path, _, attr = path.rpartition(".")
    parent = module.get_submodule(parent_path) if parent_path else module
    setattr(parent, attr, new)


def general_state_dict(converted):
    """The converted module's general weights under the original module's names (the
    ``.base`` of every :class:`HyperLayer`); the response weights are left out."""
    hyper = [f"{name}." if name else "" for name, m in converted.named_modules()
             if isinstance(m, HyperLayer)]
    out = {}
    for key, value in converted.state_dict().items():
        prefix = next((p for p in hyper if key.startswith(p)), None)
        if prefix is None:
            out[key] = value
        elif key.startswith(prefix + "base."):
            out[prefix + key[len(prefix) + 5:]] = value
    return out


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
