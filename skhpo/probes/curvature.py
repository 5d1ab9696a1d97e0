"""Gradients and exact Hessian rows of a trained skorch net's training objective.

The LP hyper local search needs, at the trained weights w:

* the gradient of the (unregularised) validation loss, ∇_w F;
* rows of the Hessian of the (regularised) training objective, H_ww[R, :], computed exactly by
  Hessian-vector products: row i = (H e_i)^T by symmetry, ``torch.func.jvp`` of
  ``torch.func.grad``, vectorised over chunks of unit vectors with ``torch.func.vmap``.

Everything works on the flat vector of the module's *trainable* parameters, in
``named_parameters()`` order, and evaluates the module in eval mode (dropout off, batch norm on
its running statistics) through ``torch.func.functional_call``; the module itself is not
modified.
"""

from __future__ import annotations

import torch
from torch.func import functional_call, grad, jvp, vmap

__all__ = ["trainable", "flat_params", "unflatten", "objective", "flat_gradient",
           "hessian_rows"]


def trainable(module):
    """``[(name, parameter), ...]`` of the parameters that require gradients."""
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable weights")
    return params


def flat_params(module):
    """The trainable parameters as one detached flat vector."""
    return torch.cat([p.detach().reshape(-1) for _, p in trainable(module)])


def unflatten(module, flat):
    """``{name: tensor}`` views of ``flat`` shaped like the module's trainable parameters."""
    params = trainable(module)
    n = sum(p.numel() for _, p in params)
    if flat.numel() != n:
        raise ValueError(f"a flat vector of {flat.numel()} entries for {n} weights")
    out, start = {}, 0
    for name, p in params:
        out[name] = flat[start:start + p.numel()].view_as(p)
        start += p.numel()
    return out


def objective(module, criterion, X, y, penalty=None):
    """``f(flat_w) -> scalar``: ``criterion(module(X), y)`` plus ``penalty(params)`` if given,
    with the module's weights replaced by ``flat_w`` (eval mode, buffers as trained)."""
    buffers = dict(module.named_buffers())

    def f(flat):
        params = unflatten(module, flat)
        out = functional_call(module, {**params, **buffers}, (X,))
        loss = criterion(out, y)
        return loss + penalty(params) if penalty is not None else loss
    return f


def _eval(module):
    class _Mode:
        def __enter__(self):
            self.was = module.training
            module.eval()

        def __exit__(self, *exc):
            module.train(self.was)
    return _Mode()


def flat_gradient(module, criterion, X, y, penalty=None):
    """∇_w of :func:`objective` at the module's weights (a flat vector)."""
    with _eval(module):
        return grad(objective(module, criterion, X, y, penalty))(flat_params(module)).detach()


def hessian_rows(module, criterion, X, y, rows, penalty=None, chunk=64):
    """Rows ``rows`` of the Hessian of :func:`objective` at the module's weights, exactly, by
    Hessian-vector products in chunks of ``chunk`` unit vectors. Returns ``(len(rows), n)``."""
    f = objective(module, criterion, X, y, penalty)
    w = flat_params(module)
    rows = torch.as_tensor(rows, dtype=torch.long)
    g = grad(f)

    def hvp(v):
        return jvp(g, (w,), (v,))[1]

    out = []
    with _eval(module):
        for start in range(0, len(rows), chunk):
            idx = rows[start:start + chunk]
            basis = torch.zeros(len(idx), w.numel(), dtype=w.dtype, device=w.device)
            basis[torch.arange(len(idx)), idx] = 1.0
            out.append(vmap(hvp)(basis).detach())
    return torch.cat(out) if out else torch.zeros(0, w.numel(), dtype=w.dtype)
