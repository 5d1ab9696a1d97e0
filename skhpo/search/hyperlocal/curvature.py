"""Gradients and exact Hessian rows of a trained skorch net's training objective.

The LP hyper local search needs, at the trained weights w:

* the gradient of the (unregularised) validation loss, ∇_w F;
* rows of the Hessian of the (regularised) training objective, H_ww[R, :], computed exactly by
  Hessian-vector products: row i = (H e_i)^T by symmetry, ``torch.func.jvp`` of
  ``torch.func.grad`` (reverse-over-reverse for losses whose forward-mode double derivative
  PyTorch lacks, such as ``mse_loss``), vectorised over chunks of unit vectors with
  ``torch.func.vmap``;
* the product H_ww^{-1} b, by conjugate gradient on exact Hessian-vector products (the
  weights' response to a penalty move, solving the linearised training optimality exactly);
* an SR1 estimate of those rows from per-epoch snapshots of a training run (the paper's
  choice), for small models.

Everything works on the flat vector of the module's *trainable* parameters, in
``named_parameters()`` order, and evaluates the module in eval mode (dropout off, batch norm on
its running statistics) through ``torch.func.functional_call``; the module itself is not
modified.
"""

import torch
from skorch.callbacks import Callback
from torch.func import functional_call, grad, jvp, vmap

from ...nets import module_mode

__all__ = ["trainable", "flat_params", "unflatten", "objective", "flat_gradient",
           "hessian_rows", "hvp_operator", "conjugate_gradient", "SR1Snapshots", "sr1_rows"]


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


def flat_gradient(module, criterion, X, y, penalty=None):
    """∇_w of :func:`objective` at the module's weights (a flat vector)."""
    with module_mode(module):
        return grad(objective(module, criterion, X, y, penalty))(flat_params(module)).detach()


def _hvp(f, w):
    """``(forward-over-reverse, reverse-over-reverse)`` Hessian-vector products of ``f`` at
    ``w``; the second serves losses without forward-mode double derivatives (MSE)."""
    g = grad(f)

    def forward_over_reverse(v):
        return jvp(g, (w,), (v,))[1]

    def reverse_over_reverse(v):
        return grad(lambda u: g(u) @ v)(w)
    return forward_over_reverse, reverse_over_reverse


def hessian_rows(module, criterion, X, y, rows, penalty=None, chunk=64):
    """Rows ``rows`` of the Hessian of :func:`objective` at the module's weights, exactly, by
    Hessian-vector products in chunks of ``chunk`` unit vectors. Returns ``(len(rows), n)``."""
    w = flat_params(module)
    rows = torch.as_tensor(rows, dtype=torch.long, device=w.device)
    hvp, fallback = _hvp(objective(module, criterion, X, y, penalty), w)
    out = []
    with module_mode(module):
        for start in range(0, len(rows), chunk):
            idx = rows[start:start + chunk]
            basis = torch.zeros(len(idx), w.numel(), dtype=w.dtype, device=w.device)
            basis[torch.arange(len(idx), device=w.device), idx] = 1.0
            try:
                out.append(vmap(hvp)(basis).detach())
            except RuntimeError:
                if hvp is fallback:
                    raise
                hvp = fallback
                out.append(vmap(hvp)(basis).detach())
    return torch.cat(out) if out else torch.zeros(0, w.numel(), dtype=w.dtype, device=w.device)


def hvp_operator(module, criterion, X, y, penalty=None):
    """``v -> H v``: the exact Hessian of :func:`objective` at the module's weights applied to
    a flat vector (eval mode)."""
    w = flat_params(module)
    first, fallback = _hvp(objective(module, criterion, X, y, penalty), w)
    state = {"hvp": first}

    def apply(v):
        with module_mode(module):
            try:
                return state["hvp"](v).detach()
            except RuntimeError:
                if state["hvp"] is fallback:
                    raise
                state["hvp"] = fallback
                return fallback(v).detach()
    return apply


def conjugate_gradient(hvp, b, damping=1e-4, max_iter=200, tol=1e-4):
    """``(x, iterations)`` with ``(H + damping I) x ≈ b`` by conjugate gradient on
    Hessian-vector products ``hvp``, stopped when the residual is below ``tol`` ||b||, after
    ``max_iter`` products, or at the first direction of non-positive curvature (the trained
    weights are not an exact minimum, so H may be indefinite: the iterate reached so far,
    never a step along negative curvature; ``b`` itself if the very first direction has
    one, as truncated Newton-CG falls back to steepest descent)."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr, stop = float(r @ r), (tol * float(b.norm())) ** 2
    for it in range(max_iter):
        if rr <= stop:
            return x, it
        Hp = hvp(p) + damping * p
        curvature = float(p @ Hp)
        if curvature <= 0:
            return (x if it else b.clone()), it
        alpha = rr / curvature
        x = x + alpha * p
        r = r - alpha * Hp
        rr_new = float(r @ r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, max_iter


class SR1Snapshots(Callback):
    """Records, for SR1 Hessian estimates, the flat trainable weights at the start of each
    epoch and the mean mini-batch gradient over that epoch (of the loss the net minimises,
    penalties included), keeping the last ``window`` epochs (the paper: 50).

    Add it to the base net's callbacks to use ``HyperLocalRefiner(hessian="sr1")``.
    """

    def __init__(self, window=50):
        self.window = window

    def initialize(self):
        self.weights_, self.gradients_ = [], []
        return self

    def on_epoch_begin(self, net, **kwargs):
        self._start = flat_params(net.module_)
        self._sum, self._count = None, 0

    def on_grad_computed(self, net, named_parameters, training=True, **kwargs):
        if not training:
            return
        g = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach()
                       .reshape(-1) for _, p in trainable(net.module_)])
        self._sum = g.clone() if self._sum is None else self._sum + g
        self._count += 1

    def on_epoch_end(self, net, **kwargs):
        if self._count:
            self.weights_.append(self._start)
            self.gradients_.append(self._sum / self._count)
            self.weights_, self.gradients_ = (self.weights_[-self.window:],
                                              self.gradients_[-self.window:])


def sr1_rows(weights, gradients, rows, max_weights=30000):
    """Rows of the SR1 Hessian estimate from consecutive (weights, mean gradient) pairs:
    B_0 = I, B <- B + r r^T / (r^T s) with s = w_k - w_(k-1), y = g_k - g_(k-1), r = y - B s,
    skipping an update when |r^T s| < 1e-8 ||r|| ||s|| (our safeguard). Memory is O(n^2):
    more than ``max_weights`` weights is an error."""
    if len(weights) < 2:
        raise ValueError("SR1 needs snapshots of at least 2 epochs (SR1Snapshots callback)")
    n = weights[0].numel()
    if n > max_weights:
        raise ValueError(f"SR1 keeps an n x n matrix; {n} weights is more than {max_weights}: "
                         "use hessian='hvp'")
    B = torch.eye(n, dtype=torch.float64)
    for k in range(1, len(weights)):
        s = (weights[k] - weights[k - 1]).double()
        y = (gradients[k] - gradients[k - 1]).double()
        r = y - B @ s
        denom = float(r @ s)
        if abs(denom) >= 1e-8 * float(r.norm() * s.norm()) and denom != 0:
            B += torch.outer(r, r) / denom
    return B[torch.as_tensor(rows, dtype=torch.long)].to(weights[0].dtype)
