"""The LP hyper local search for scikit-learn's linear models (step 8 where the
weights can be re-solved exactly).

The lower level can be re-solved exactly, so the LP only chooses the direction of the penalty
coefficients; every line-search trial refits the model at the new coefficients. Exact
derivatives of each model's own objective, with X~ = [X, 1] (the intercept unpenalised):

* ``ElasticNet``: (1/2n)||y - X~w||^2 + l1 ||w||_1 + (l2/2)||w||^2 with l1 = alpha * l1_ratio,
  l2 = alpha * (1 - l1_ratio); H_ww = X~'X~/n + l2 diag(1..1, 0); H_wλ = [sign(w), w];
* ``Lasso``: (1/2n)||y - X~w||^2 + alpha ||w||_1; H_ww = X~'X~/n; H_wλ = [sign(w)];
* ``Ridge``: ||y - X~w||^2 + alpha ||w||^2; H_ww = 2 X~'X~ + 2 alpha diag(1..1, 0);
  H_wλ = [2 w].
"""

import time
from typing import NamedTuple

import numpy as np
from sklearn.base import clone
from sklearn.linear_model import ElasticNet, Lasso, Ridge
from sklearn.pipeline import Pipeline

from ...nets import draw_seed
from .linesearch import line_search
from .lp import lp_direction

__all__ = ["LINEAR", "LinearSettings", "Refinement", "find_linear", "penalty_names",
           "refine_linear"]

LINEAR = (ElasticNet, Lasso, Ridge)
_FLOOR = 1e-10


class LinearSettings(NamedTuple):
    """How a linear model is refined: the LP's settings (:class:`~.lp.LPStep`), the line
    search's first step and tolerance, and the range of each penalty parameter
    (``{name: Box}``, e.g. ``alpha``: its refined value stays inside)."""

    lp: object
    line_step: float
    gss_tol: float
    bounds: dict


class Refinement(NamedTuple):
    """What :func:`refine_linear` found: the refined model (None if no step was kept), its
    penalty parameters, the history rows, the timings and the validation loss before and
    after."""

    model: object
    params: dict
    log: list
    timings: dict
    losses: tuple


def find_linear(estimator):
    """``(model, prefix)`` if ``estimator`` is (or ends in) ElasticNet, Lasso or Ridge, else
    None."""
    if isinstance(estimator, Pipeline):
        name, last = estimator.steps[-1]
        return (last, f"{name}__") if type(last) in LINEAR else None
    return (estimator, "") if type(estimator) in LINEAR else None


def penalty_names(model):
    return ["alpha", "l1_ratio"] if type(model) is ElasticNet else ["alpha"]


def _coefficients(model):
    """The LP's hyper-parameters: (l1, l2) for ElasticNet, (alpha,) otherwise."""
    if type(model) is ElasticNet:
        return np.array([model.alpha * model.l1_ratio, model.alpha * (1 - model.l1_ratio)])
    return np.array([model.alpha])


def _as_params(model, lam, prefix, bounds):
    """The model's parameters at the LP's coefficients ``lam``, each inside its range in
    ``bounds`` (``{name with prefix: Box}``)."""
    lam = np.maximum(lam, _FLOOR)
    if type(model) is ElasticNet:
        alpha = float(lam.sum())
        params = {f"{prefix}alpha": alpha, f"{prefix}l1_ratio": float(lam[0] / alpha)}
    else:
        params = {f"{prefix}alpha": float(lam[0])}
    return {k: v if k not in bounds else min(max(v, bounds[k].lo), bounds[k].hi)
            for k, v in params.items()}


def _derivatives(model, Xt, lam):
    """(H_ww, H_wλ) at the fitted model for the transformed training inputs ``Xt``."""
    n, p = Xt.shape
    Xa = np.hstack([Xt, np.ones((n, 1))]) if model.fit_intercept else Xt
    w = np.r_[np.ravel(model.coef_), np.ravel(model.intercept_)] if model.fit_intercept \
        else np.ravel(model.coef_)
    mask = np.r_[np.ones(p), np.zeros(Xa.shape[1] - p)]  # the intercept is not penalised
    if type(model) is Ridge:
        return 2 * Xa.T @ Xa + 2 * lam[0] * np.diag(mask), (2 * w * mask)[:, None], Xa, w
    H = Xa.T @ Xa / n
    cols = [np.sign(w) * mask]
    if type(model) is ElasticNet:
        H = H + lam[1] * np.diag(mask)
        cols.append(w * mask)
    return H, np.column_stack(cols), Xa, w


def refine_linear(base, data, rng, settings):
    """One LP direction for the penalties of the fitted linear model ``base`` (alone or at
    the end of a Pipeline), then a line search with exact refits, on ``data`` (``(X_train,
    y_train, X_val, y_val)``) under ``settings`` (:class:`LinearSettings`). Returns a
    :class:`Refinement`."""
    Xt, yt, Xv, yv = data
    model, prefix = find_linear(base)
    head = Pipeline(base.steps[:-1]) if isinstance(base, Pipeline) and len(base.steps) > 1 \
        else None
    Xt_, Xv_ = (head.transform(Xt), head.transform(Xv)) if head is not None else (Xt, Xv)
    Xt_, Xv_ = np.asarray(Xt_, float), np.asarray(Xv_, float)
    yt_, yv_ = np.asarray(yt, float), np.asarray(yv, float)
    timings = {"gradients": 0.0, "hessian": 0.0, "lp": 0.0, "line_search": 0.0}
    bounds = {k[len(prefix):]: v for k, v in settings.bounds.items()}
    lam0 = _coefficients(model)

    t0 = time.perf_counter()
    H_ww, H_wl, _, w = _derivatives(model, Xt_, lam0)
    Xva = np.hstack([Xv_, np.ones((len(Xv_), 1))]) if model.fit_intercept else Xv_
    g = 2 * Xva.T @ (Xva @ w - yv_) / len(yv_)  # gradient of the validation MSE
    timings["hessian"] = time.perf_counter() - t0
    k = H_wl.shape[1]
    sol, record = lp_direction(g, H_wl, H_ww, settings.lp, seed=draw_seed(rng))
    timings["lp"] = sol.solve_time
    log = [record]

    def fitted(lam):
        m = clone(model).set_params(**_as_params(model, lam, "", bounds))
        return m.fit(Xt_, yt_)

    def phi(t):
        value = float(np.mean((fitted(lam0 + t * d).predict(Xv_) - yv_) ** 2))
        log.append({"kind": "line_search", "iteration": 0, "t": t, "validation_loss": value})
        return value

    start_loss = float(np.mean((model.predict(Xv_) - yv_) ** 2))
    d_lam = sol.x[:k]
    best_lam, best_loss = lam0, start_loss
    if np.linalg.norm(d_lam) > 0 and sol.objective < 0:
        d = d_lam / np.linalg.norm(d_lam)
        t0 = time.perf_counter()
        t_star, _ = line_search(phi, settings.line_step, settings.gss_tol)
        loss = phi(t_star)
        timings["line_search"] = time.perf_counter() - t0
        if loss < start_loss:
            best_lam, best_loss = np.maximum(lam0 + t_star * d, _FLOOR), loss
    params = _as_params(model, best_lam, prefix, settings.bounds)
    refined = clone(base).set_params(**params) if best_lam is not lam0 else None
    if refined is not None:
        refined.fit(Xt, yt)
    return Refinement(refined, params, log, timings, (start_loss, best_loss))
