"""Linear programs of the form the LP hyper local search solves, by HiGHS or Gurobi.

One canonical form (see docs/hyperlocal.md)::

    minimise    c @ x
    subject to  -delta <= A @ x <= delta     (row bounds; delta a scalar or one per row)
                lower <= x <= upper

and one preprocessing shared by both back-ends, so that they return the same vertex:

1. all-zero rows of A are dropped;
2. each row and its bound are divided by the row's largest |entry| (the feasible set is
   unchanged);
3. the cost is divided by its largest |entry| (the argmin is unchanged);
4. ties are broken deterministically: c + 1e-7 * xi, xi ~ U[-1, 1] from ``seed`` (the LP is
   often degenerate: many vertices are optimal, and different correct solvers pick
   different ones);
5. tight tolerances (1e-9) and a vertex solution (dual simplex) on both sides.

``solver="highs"`` (default) uses SciPy's HiGHS, which needs no licence; ``"gurobi"`` uses
gurobipy (extra ``gurobi``). The pip wheel of gurobipy carries a size-limited licence: a model
it refuses is an :class:`LPSolverError` that says so; there is no silent fallback.
"""

import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import sparse
from scipy.optimize import linprog

__all__ = ["LinearProgram", "LPSolution", "LPSolverError", "LPStep", "lp_direction", "solve_lp",
           "SOLVERS"]

SOLVERS = ("highs", "gurobi")
_TOL = 1e-9


class LPSolverError(RuntimeError):
    """The LP could not be solved (infeasible, unbounded, refused by a licence, ...)."""


@dataclass
class LinearProgram:
    """``min c @ x  s.t.  -delta <= A @ x <= delta,  lower <= x <= upper``."""

    c: np.ndarray
    A: object  # dense array or scipy.sparse matrix, shape (rows, len(c))
    delta: object  # scalar or array of shape (rows,)
    lower: np.ndarray
    upper: np.ndarray

    def __post_init__(self):
        self.c = np.asarray(self.c, dtype=float)
        n = self.c.size
        self.A = sparse.csr_matrix(self.A, dtype=float)
        if self.A.shape[1] != n:
            raise ValueError(f"A has {self.A.shape[1]} columns but c has {n} entries")
        self.delta = np.broadcast_to(np.asarray(self.delta, float), (self.A.shape[0],)).copy()
        self.lower = np.broadcast_to(np.asarray(self.lower, float), (n,)).copy()
        self.upper = np.broadcast_to(np.asarray(self.upper, float), (n,)).copy()
        if np.any(self.delta < 0) or np.any(self.lower > self.upper):
            raise ValueError("row bounds delta must be >= 0 and lower <= upper")
        for name in ("c", "delta", "lower", "upper"):
            if np.isnan(getattr(self, name)).any():
                raise ValueError(f"{name} has NaN entries")
        if not np.isfinite(self.A.data).all() or not np.isfinite(self.c).all():
            raise ValueError("A and c must be finite")


@dataclass
class LPSolution:
    """``x``, the objective ``c @ x`` of the *unperturbed* cost, and the record of the solve."""

    x: np.ndarray
    objective: float
    solver: str
    n_rows: int
    n_vars: int
    solve_time: float


def _preprocess(lp, seed, tie_break):
    A = lp.A.tocsr()
    row_max = np.asarray(abs(A).max(axis=1).todense()).ravel()
    keep = row_max > 0
    A = sparse.diags(1.0 / row_max[keep]) @ A[keep]
    b = lp.delta[keep] / row_max[keep]
    scale = np.max(np.abs(lp.c))
    c = lp.c / scale if scale > 0 else lp.c.copy()
    c = c + tie_break * np.random.default_rng(seed).uniform(-1, 1, c.size)
    return c, A.tocsr(), b


def _solve_highs(c, A, b, lower, upper):
    res = linprog(c, A_ub=sparse.vstack([A, -A]).tocsr(), b_ub=np.concatenate([b, b]),
                  bounds=np.column_stack([lower, upper]), method="highs-ds",
                  options={"primal_feasibility_tolerance": _TOL,
                           "dual_feasibility_tolerance": _TOL, "presolve": True})
    if res.status != 0:
        raise LPSolverError(f"HiGHS did not solve the LP (status {res.status}): {res.message}")
    return res.x


def _solve_gurobi(c, A, b, lower, upper):
    try:
        import gurobipy as gp
        from gurobipy import GRB
    except ImportError:
        raise LPSolverError('lp_solver="gurobi" needs gurobipy: pip install "skhpo[gurobi]"; '
                            'the default lp_solver="highs" needs nothing') from None
    try:
        env = gp.Env(params={"OutputFlag": 0})
        with env, gp.Model(env=env) as m:
            for name, value in (("FeasibilityTol", _TOL), ("OptimalityTol", _TOL),
                                ("Method", 1), ("Threads", 1), ("Seed", 0)):
                m.setParam(name, value)
            x = m.addMVar(c.size, lb=lower, ub=upper)
            m.setObjective(c @ x, GRB.MINIMIZE)
            m.addConstr(A @ x <= b)
            m.addConstr(A @ x >= -b)
            m.optimize()
            if m.Status != GRB.OPTIMAL:
                raise LPSolverError(f"Gurobi did not solve the LP (status {m.Status})")
            return np.array(x.X)
    except gp.GurobiError as exc:
        if getattr(exc, "errno", None) == 10010 or "size-limited" in str(exc).lower():
            raise LPSolverError(
                f"gurobipy's licence refused an LP of {A.shape[0]} rows x {c.size} variables "
                f"({exc}); the pip licence only takes small models. Use the default "
                'lp_solver="highs" (no size limit) or a full Gurobi licence.') from exc
        raise LPSolverError(f"Gurobi failed: {exc}") from exc


def solve_lp(lp, solver="highs", seed=0, tie_break=1e-7):
    """Solve ``lp`` (a :class:`LinearProgram`) after the shared preprocessing."""
    if solver not in SOLVERS:
        raise ValueError(f"lp_solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    c, A, b = _preprocess(lp, seed, tie_break)
    start = time.perf_counter()
    x = (_solve_highs if solver == "highs" else _solve_gurobi)(c, A, b, lp.lower, lp.upper)
    return LPSolution(x=x, objective=float(lp.c @ x), solver=solver, n_rows=A.shape[0],
                      n_vars=c.size, solve_time=time.perf_counter() - start)


class LPStep(NamedTuple):
    """The settings of one LP step of the hyper local search: the slack ``delta`` of the
    linearised optimality rows, the boxes on the hyper-parameter and weight moves, and the
    ``solver``."""

    delta: float
    box_hparams: float
    box_weights: float
    solver: str


def lp_direction(g, H_wl, H_ww, step, seed, iteration=0):
    """The LP of one step: minimise ``g . dw`` subject to ``|H_wl dλ + H_ww dw| <= delta``,
    ``|dλ| <= box_hparams``, ``|dw| <= box_weights`` (``H_wl``: rows x k, ``H_ww``: rows x n,
    ``g``: n). Returns the :class:`LPSolution` (x = [dλ, dw]) and its ``history_`` row."""
    k, n = H_wl.shape[1], len(g)
    lp = LinearProgram(c=np.concatenate([np.zeros(k), g]), A=np.hstack([H_wl, H_ww]),
                       delta=step.delta,
                       lower=np.r_[np.full(k, -step.box_hparams), np.full(n, -step.box_weights)],
                       upper=np.r_[np.full(k, step.box_hparams), np.full(n, step.box_weights)])
    sol = solve_lp(lp, step.solver, seed=seed)
    return sol, {"kind": "lp", "iteration": iteration, "rows": sol.n_rows,
                 "variables": sol.n_vars, "objective": sol.objective,
                 "solve_time": sol.solve_time}
