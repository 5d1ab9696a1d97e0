"""One step of the LP hyper local search on a net: the paper's steps 1-7, from the module's
current weights (:class:`NetStep`).

1. the gradient g of the *unregularised* validation loss F at w;
2. the mixed derivatives H_wλ of the training objective f = loss + sum_j lambda_j R_j(w), in
   closed form (:func:`mixed_derivatives`);
3. a seeded subset R of the weight coordinates a penalty touches (``rows``);
4. exact rows H_ww[R, :] of the Hessian of f at w (Hessian-vector products on the training
   data), or the paper's SR1 estimate;
5. the LP (:func:`~.lp.lp_direction`), or with ``weight_step="response"`` the implicit
   response of the weights, every row met exactly (conjugate gradient);
6. the unit direction d (no step if there is no descent);
7. a line search on t >= 0 of F(w + t d_w).
"""

import math
import time
from numbers import Integral
from typing import NamedTuple

import numpy as np
import torch

from ...log import report
from ...nets import draw_seed
from .curvature import (
    conjugate_gradient,
    flat_gradient,
    flat_params,
    hessian_rows,
    hvp_operator,
    objective,
    sr1_rows,
    trainable,
)
from .linesearch import line_search
from .lp import lp_direction
from .penalties import clip

__all__ = ["LP_MAX_WEIGHTS", "NetStep", "StepSettings", "mixed_derivatives"]

#: weight_step="auto" takes the LP step up to this many trainable weights and the response
#: step beyond: the LP has rows x weights dense coefficients with rows ~ 1 % of the weights,
#: and HiGHS took about 6 s on 13,134 weights (2-core CPU) and minutes on ~150,000
LP_MAX_WEIGHTS = 15_000
#: conjugate gradient of the response step: damping added to H_ww, Hessian-vector products
#: at most, relative residual
_CG = {"damping": 1e-4, "max_iter": 100, "tol": 1e-3}


class StepSettings(NamedTuple):
    """The refiner's settings a step reads (:class:`~.estimator.HyperLocalRefiner`
    documents each; ``lp`` is the :class:`~.lp.LPStep`, ``line_step`` and ``gss_tol``
    resolved for a net)."""

    weight_step: str
    rows: object
    hessian: str
    lp: object
    line_step: float
    gss_tol: float
    verbose: int


class NetStep:
    """Steps of the LP hyper local search on ``module`` (its ``criterion``, the
    :class:`~.penalties.Penalty` terms ``penalties``, the training tensors ``train`` for the
    Hessian, and ``snapshots`` for ``hessian="sr1"``). ``timings`` and ``log`` collect what
    every step cost and found."""

    def __init__(self, settings, module, criterion, penalties, train, snapshots=None):
        self.s, self.module, self.criterion = settings, module, criterion
        self.penalties, self.train, self.snapshots = penalties, train, snapshots
        self.timings = {"gradients": 0.0, "hessian": 0.0, "lp": 0.0, "line_search": 0.0}
        self.log = []

    def __call__(self, lam, choose, rng, it):
        """One direction + line search on the choosing data ``choose`` (``(X, y)`` tensors)
        from the module's current weights and the penalties ``lam``: ``(new weights, new
        penalties)``, or None if there is no descent."""
        t0 = time.perf_counter()
        w0 = flat_params(self.module)
        g = flat_gradient(self.module, self.criterion, *choose)
        H_wl = mixed_derivatives(self.module, self.penalties)
        if not bool((H_wl.abs().sum(1) > 0).any()):
            raise ValueError("no weight is touched by the penalties: nothing to refine")
        self.timings["gradients"] += time.perf_counter() - t0

        def penalty(params):
            return sum(float(v) * p.term(params) for p, v in zip(self.penalties, lam))

        if self._weight_step(g.numel()) == "response":
            d = self._response_direction(g, H_wl, penalty, it)
        else:
            d = self._lp_direction(g, H_wl, penalty, rng, it)
        if d is None:
            return None
        k = len(self.penalties)
        d_lam, d_w = d[:k].cpu().numpy().astype(float), d[k:]
        t_star, phi0, phi_star = self._line_search(w0, d_w, choose, it)
        if not phi_star < phi0:
            return None
        return w0 + t_star * d_w, clip(self.penalties, lam + t_star * d_lam)

    def _line_search(self, w0, d_w, choose, it):
        """Step 7: ``(t*, F(w), F(w + t* d_w))`` on the choosing data."""
        t0 = time.perf_counter()
        val = objective(self.module, self.criterion, *choose)

        def phi(t):
            with torch.no_grad():
                return float(val(w0 + t * d_w))

        t_star, trials = line_search(phi, self.s.line_step, self.s.gss_tol)
        phi0, phi_star = phi(0.0), phi(t_star)
        self.timings["line_search"] += time.perf_counter() - t0
        self.log += [{"kind": "line_search", "iteration": it, "t": t, "validation_loss": v}
                     for t, v in trials]
        report("hyperlocal", self.s.verbose,
               f"step {it}: t*={t_star:.4g}, validation loss {phi0:.5f} -> {phi_star:.5f}")
        return t_star, phi0, phi_star

    def _weight_step(self, n_weights):
        """``weight_step`` resolved for a net of ``n_weights`` trainable weights."""
        if self.s.weight_step != "auto":
            return self.s.weight_step
        return "lp" if self.s.hessian == "sr1" or n_weights <= LP_MAX_WEIGHTS else "response"

    def _lp_direction(self, g, H_wl, penalty, rng, it):
        """The paper's LP over (dλ, dw) on a subset of Hessian rows: the unit direction, or
        None if the LP finds no descent."""
        candidates = torch.nonzero(H_wl.abs().sum(1) > 0).ravel().cpu().numpy()
        rows = self._row_subset(candidates, g.numel(), rng)
        t0 = time.perf_counter()
        if self.s.hessian == "sr1":
            H_ww = sr1_rows(self.snapshots.weights_, self.snapshots.gradients_, rows)
        else:
            H_ww = hessian_rows(self.module, self.criterion, *self.train, rows, penalty=penalty)
        self.timings["hessian"] += time.perf_counter() - t0
        sol, record = lp_direction(g.cpu().numpy().astype(float),
                                   H_wl[torch.as_tensor(rows, device=H_wl.device)]
                                   .cpu().numpy().astype(float),
                                   H_ww.cpu().numpy().astype(float), self.s.lp,
                                   seed=draw_seed(rng), iteration=it)
        self.timings["lp"] += sol.solve_time
        self.log.append(record)
        norm = float(np.linalg.norm(sol.x))
        report("hyperlocal", self.s.verbose, f"step {it}: LP objective {sol.objective:.3g}")
        if norm == 0 or sol.objective >= 0:
            return None
        return torch.as_tensor(sol.x / norm, dtype=g.dtype, device=g.device)

    def _response_direction(self, g, H_wl, penalty, it):
        """The LP with every optimality row met exactly: the implicit hypergradient
        h = -H_wλ^T H_ww^{-1} g, dλ = -box_hparams sign(h), dw = -H_ww^{-1} H_wλ dλ (both
        solves by conjugate gradient); the unit direction, or None if h = 0."""
        t0 = time.perf_counter()
        hvp = hvp_operator(self.module, self.criterion, *self.train, penalty=penalty)
        q, n1 = conjugate_gradient(hvp, g, **_CG)
        h = -(H_wl.T @ q)
        d_lam = -self.s.lp.box_hparams * torch.sign(h)
        d_w, n2 = (conjugate_gradient(hvp, -(H_wl @ d_lam), **_CG) if bool(d_lam.any())
                   else (torch.zeros_like(g), 0))
        self.timings["hessian"] += time.perf_counter() - t0
        x = torch.cat([d_lam, d_w])
        predicted = float(g @ d_w)
        self.log.append({"kind": "response", "iteration": it, "rows": g.numel(),
                         "variables": x.numel(), "objective": predicted,
                         "hessian_products": n1 + n2, "solve_time": time.perf_counter() - t0})
        report("hyperlocal", self.s.verbose,
               f"step {it}: hypergradient {h.cpu().numpy()}, predicted change "
               f"{predicted:.3g} ({n1 + n2} Hessian-vector products)")
        norm = float(x.norm())
        if norm == 0 or not predicted < 0:
            return None
        return x / norm

    def _row_subset(self, candidates, n, rng):
        rows = self.s.rows
        if rows == "all":
            r = len(candidates)
        elif isinstance(rows, Integral):
            r = rows
        else:
            r = max(10, math.ceil(rows * n))
        r = min(r, len(candidates), 2000)
        return np.sort(rng.choice(candidates, r, replace=False))


def mixed_derivatives(module, penalties):
    """H_wλ: column j is dR_j/dw at the module's weights, flat (zero off the weights the
    penalty touches)."""
    w = flat_params(module)
    weights = {n: p.detach() for n, p in trainable(module)}
    offsets, start = {}, 0
    for name, p in trainable(module):
        offsets[name] = (start, start + p.numel())
        start += p.numel()
    H_wl = torch.zeros(w.numel(), len(penalties), dtype=w.dtype, device=w.device)
    for j, p in enumerate(penalties):
        for name, col in p.column(weights).items():
            a, b = offsets[name]
            H_wl[a:b, j] = col.reshape(-1)
    return H_wl
