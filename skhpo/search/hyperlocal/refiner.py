"""HyperLocalRefiner: the LP hyper local search (Sinha & Gunwal, Oper. Res. Letters 2025).

Starting from the best model of any search — its penalty coefficients lambda and its trained
weights w — one step of the method (the paper's Algorithm 1):

1. the gradient g of the *unregularised* validation loss F at w;
2. the mixed derivatives H_wλ of the training objective f = loss + sum_j lambda_j R_j(w), in
   closed form (2 W for an L2 term, sign(W) for L1, w for coupled weight decay);
3. a seeded subset R of the weight coordinates a penalty touches (``rows``);
4. exact rows H_ww[R, :] of the Hessian of f at w (Hessian-vector products, training data,
   eval mode);
5. the LP: minimise g . dw subject to -delta <= H_wλ[R] dλ + H_ww[R] dw <= delta (the
   linearised "w stays optimal for f"), |dλ| <= box_hparams, |dw| <= box_weights;
6. the direction d = x* / ||x*|| (no step if the LP finds no descent);
7. a line search on t >= 0 of F(w + t d_w) (bounding phase from ``line_step``, then golden
   section to ``gss_tol``), t* the midpoint;
8. accept only if F(w + t* d_w) < F(w): w <- w + t* d_w, lambda <- max(lambda + t* d_λ, 0).

The model is never retrained; the cost is a few gradient, Hessian-vector and LP evaluations.

A safeguard against a step that only fits the validation set, on by default (the paper's
method is ``accept_fraction=0``):

* ``accept_fraction``: the validation data is split; the direction and the line search use one
  part, and the step is kept only if the other part's loss falls with confidence
  ``accept_confidence`` and its score does not fall;

and an alternative weight move, ``weight_step="response"``: the weights do not get a free move.
Every row of the linearised optimality is kept and met exactly: dw = -H_ww^{-1} H_wλ dλ
(conjugate gradient on exact Hessian-vector products), so the LP reduces to its penalty part,
minimise h . dλ with the implicit hypergradient h = -H_wλ^T H_ww^{-1} g, solved by
dλ = -box sign(h) (the vertex the full LP takes with all rows and delta -> 0).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Mapping
from numbers import Integral, Real
from typing import NamedTuple

import numpy as np
import torch
from sklearn.base import clone
from sklearn.metrics import check_scoring
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ...fused import ENGINES
from ...hyper.space import check_space, parse_name, penalty_gradient, penalty_term, read_dimension
from ...log import report
from ...nets import check_module_output, draw_seed, find_net, net_input
from .._base import HoldoutResult, HoldoutSearch, _check_fit_data, holdout_split
from .._progress import Phase
from .accept import loss_falls, sample_losses
from .curvature import (
    SR1Snapshots,
    conjugate_gradient,
    flat_gradient,
    flat_params,
    hessian_rows,
    hvp_operator,
    objective,
    sr1_rows,
    trainable,
)
from .linear import find_linear, penalty_names, refine_linear
from .linesearch import line_search
from .lp import SOLVERS, LPStep, lp_direction

__all__ = ["HyperLocalRefiner"]

#: hyper-parameters that cannot be refined, and why
_NOT_PENALTIES = {
    "lr": "the learning rate does not enter the training objective",
    "batch_size": "the batch size does not enter the training objective",
    "max_epochs": "the number of epochs does not enter the training objective",
    "dropout": "dropout has no deterministic training objective to differentiate",
}
_DECOUPLED = ("AdamW",)
_PENALTY_NAMES = ("l2", "l1", "optimizer__weight_decay")
#: weight_step="auto" takes the LP step up to this many trainable weights and the response
#: step beyond: the LP has rows x weights dense coefficients with rows ~ 1 % of the weights,
#: and HiGHS took about 6 s on 13,134 weights (2-core CPU) and minutes on ~150,000
_LP_MAX_WEIGHTS = 15_000
#: conjugate gradient of the response step: damping added to H_ww, Hessian-vector products
#: at most, relative residual
_CG = {"damping": 1e-4, "max_iter": 100, "tol": 1e-3}


class _Penalty(NamedTuple):
    """One continuous hyper-parameter: its name, the net's attribute, the coefficient's place
    in the net's value (``index`` into a per-layer sequence, or None), its ``kind`` (``l2``,
    ``l1`` or ``weight_decay``), the weights its term R touches and its ``box`` (or None)."""

    name: str
    attr: str
    index: int | None
    kind: str
    params: list
    box: object = None

    def term(self, weights):
        """R_j(w) on ``{param name: tensor}``."""
        return penalty_term(self.kind, [weights[p] for p in self.params])

    def column(self, weights):
        """dR_j/dw as ``{param name: tensor}`` (the H_wλ column, up to flattening)."""
        return {p: penalty_gradient(self.kind, weights[p]) for p in self.params}


class HyperLocalRefiner(HoldoutSearch):
    """Refine the best model of any search by an LP descent direction in (penalties, weights).

    Parameters
    ----------
    search : search estimator or estimator
        ``GridSearchCV``, ``RandomizedSearchCV``, ``OptunaSearchCV``, an skhpo search, or a
        plain estimator: a skorch net, scikit-learn's ``ElasticNet``, ``Lasso`` or ``Ridge``,
        or a Pipeline ending in one. For the linear models the weights are re-solved
        exactly at every line-search trial, and only the LP's penalty direction is used
        (their penalties: ``alpha`` and ``l1_ratio``, refined as the pair l1 = alpha *
        l1_ratio, l2 = alpha * (1 - l1_ratio)). *Unfitted*: ``fit(X, y)`` splits off
        ``validation_fraction`` of the data, fits a clone of ``search`` on the rest and refines
        its ``best_estimator_`` on the held-out part. *Already fitted*: ``fit(X_val, y_val,
        X_train=..., y_train=...)`` refines it as is; the data passed is the validation data,
        and the training data it was fitted on is needed for the Hessian (a better convention
        than ``cv="prefit"``, which has no training data).
    continuous : list of str or None, default=None
        The penalty hyper-parameters to refine, by the estimator's names: ``l2`` and ``l1`` of
        skhpo's models (one hyper-parameter per layer when the value is a sequence) and
        ``optimizer__weight_decay`` for optimizers with coupled decay (read as
        wd/2 ||w||^2); ``net__l2`` etc. in a Pipeline. None: the penalties among the base
        search's ``best_params_``. Anything else (learning rate, batch size, epochs,
        dropout, architecture) is rejected: it does not enter the training objective smoothly.
    validation_fraction : float, default=0.2
        Held-out share when ``search`` is unfitted (stratified for classifiers).
    weight_step : {"auto", "lp", "response"}, default="auto"
        How the weights move with the penalties (nets; linear models always re-solve them
        exactly). ``"auto"``: ``"lp"`` for nets of at most 15,000 trainable weights (and
        with ``hessian="sr1"``), ``"response"`` beyond, where the LP over every weight gets
        slow. ``"lp"``: the paper's LP over (dλ, dw) with ``rows`` rows, in which most
        weights are unconstrained, so the step is largely a sign-gradient step of the
        weights on the (choosing part of the) validation data. ``"response"``: along the
        implicit response dw = -H_ww^{-1} H_wλ dλ of the linearised training optimality,
        every row met exactly (conjugate gradient on exact Hessian-vector products),
        dλ = -box_hparams sign(h) from the implicit hypergradient h; cheaper for large nets,
        but it moves the weights much less.
    accept_fraction : float in [0, 1), default=0.5
        Share of the validation data held back to accept the step (stratified for
        classifiers): the direction and line search use the rest, and a step is kept only
        if the held-back part's loss falls (see ``accept_confidence``) and its score does
        not. 0: one set chooses and accepts (the paper).
    accept_confidence : float in [0.5, 1), default=0.9
        How sure the held-back check must be that the loss fell: the upper one-sided
        ``accept_confidence`` bound of the mean per-sample change, mean + z sd / sqrt(n),
        must be below 0 (0.5: the mean merely falls). Unused when ``accept_fraction=0``.
    rows : float, int or "all", default=0.01
        Hessian rows in the LP of ``weight_step="lp"``: a fraction of the weights (at least
        10), a count, or every penalised coordinate; at most 2,000.
    hessian : {"hvp", "sr1"}, default="hvp"
        Exact Hessian rows by Hessian-vector products on the training data, or (with
        ``weight_step="lp"``) the paper's SR1 estimate from the last epochs of the base
        training, which needs the base net trained with
        :class:`skhpo.search.hyperlocal.SR1Snapshots` among its callbacks (and at most
        30,000 weights; its gradients include the penalties). Nets only.
    delta : float, default=1e-4
        Slack of the linearised optimality rows.
    box_hparams : float, default=1.0
        Box on the LP's hyper-parameter moves (its trust region).
    box_weights : float or None, default=None
        Box on the LP's weight moves; None: 1.0 for nets, 100 for linear models (the
        paper's settings).
    line_step : float or None, default=None
        First step of the bounding phase; None: 0.1 for nets, 1e-3 for linear models.
    gss_tol : float or None, default=None
        Width at which the golden-section search stops; None: 1e-5 for nets, 1e-6 for
        linear models.
    max_iter : int, default=1
        LP + line-search steps (the paper: one).
    lp_solver : {"highs", "gurobi"}, default="highs"
    hessian_samples : int, default=4096
        Training samples used for the Hessian rows (a seeded subset if more).
    engine : {"auto", "fused", "sequential"}, default="auto"
        How an unfitted base search trains. ``"auto"`` / ``"fused"``: scikit-learn's
        ``RandomizedSearchCV`` or ``GridSearchCV`` runs as its fused drop-in
        (:class:`skhpo.FusedRandomizedSearchCV` / :class:`skhpo.FusedGridSearchCV`, same
        parameters, with this ``engine``; the grid's fits seeded from ``random_state``),
        which trains the fits of nets the engine can fuse as stacked models and is
        scikit-learn's own search for anything else; ``"sequential"``: the search as given.
        Other searches (an skhpo search, ``OptunaSearchCV``) run as given; the refinement
        itself trains one model.
    random_state : int, RandomState or None, default=None
        The validation split, the row subset and the LP's tie-breaking.
    checkpoint : str, path or None, default=None
        A folder in which the fitted base search is written once it has trained
        (atomically). Calling ``fit`` again with the same refiner, data and folder
        loads it instead of training the base search again, and refines it as before
        (identical results); a folder written by another refiner is refused before any
        training. Needs an int ``random_state``; ``n_resumed_`` is 1 when the base search
        was loaded.
    verbose : int, default=0
        Log the steps when > 0.

    Attributes
    ----------
    best_estimator_ : the refined model (a copy; the base is never modified).
    base_estimator_ : the base search's best model.
    base_search_ : the fitted base search (the given one when ``search`` was fitted; else
        the clone that ran, a fused drop-in where ``engine`` made it one).
    best_params_ : dict
        The base's best parameters with the refined penalty values.
    best_score_ : float
        The refined model's score on the validation part (both parts of it).
    cv_results_ : dict
        ``GridSearchCV``'s keys for two rows, before and after, scored on the validation part.
    history_ : dict of lists
        One row per event: ``kind`` (``lp`` or ``response``: the direction; ``line_search``;
        ``accept``: the held-back check), ``iteration``, ``t``, ``validation_loss``, for the
        direction ``rows``, ``variables``, ``objective`` (the predicted change of the
        validation loss), ``solve_time`` (and ``hessian_products`` of the response step),
        and for the check ``mean_change`` and ``std_error`` of the held-back per-sample
        loss, ``upper_bound``, ``score_change`` and ``accepted``.
    timings_ : dict
        Seconds spent in ``gradients``, ``hessian``, ``lp`` and ``line_search``.
    improved_ : bool
        Whether a step was accepted.
    n_iter_ : int
        Steps accepted (at most ``max_iter``).
    validation_loss_ : tuple of float
        The unregularised loss on the whole validation part before and after.
    accept_loss_ : tuple of float
        The same on the held-back part that accepts a step (the whole validation part when
        ``accept_fraction=0``).
    refined_penalties_ : dict
        The refined value of each penalty coefficient (per layer as ``l2[k]``).


    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.model_selection import GridSearchCV
    >>> from skhpo import HyperLocalRefiner, TabularMLPClassifier
    >>> X, y = load_iris(return_X_y=True)
    >>> net = TabularMLPClassifier(l2=1e-3, max_epochs=5, random_state=0)
    >>> grid = GridSearchCV(net, {"l2": [1e-4, 1e-3]}, cv=2)
    >>> refiner = HyperLocalRefiner(grid, random_state=0).fit(X, y)
    >>> before, after = refiner.validation_loss_
    >>> after <= before  # a step is kept only if the validation loss falls
    True
    >>> sorted(refiner.best_params_)
    ['l2']
    """

    _parameter_constraints: dict = {
        "search": [object],
        "continuous": [list, dict, None],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "weight_step": [StrOptions({"auto", "response", "lp"})],
        "accept_fraction": [Interval(Real, 0, 1, closed="left")],
        "accept_confidence": [Interval(Real, 0.5, 1, closed="left")],
        "rows": [Interval(Real, 0, 1, closed="right"), Interval(Integral, 1, None,
                                                                 closed="left"),
                 StrOptions({"all"})],
        "hessian": [StrOptions({"hvp", "sr1"})],
        "delta": [Interval(Real, 0, None, closed="neither")],
        "box_hparams": [Interval(Real, 0, None, closed="neither")],
        "box_weights": [Interval(Real, 0, None, closed="neither"), None],
        "line_step": [Interval(Real, 0, None, closed="neither"), None],
        "gss_tol": [Interval(Real, 0, None, closed="neither"), None],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "lp_solver": [StrOptions(set(SOLVERS))],
        "hessian_samples": [Interval(Integral, 1, None, closed="left")],
        "engine": [StrOptions(set(ENGINES))],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "checkpoint": [str, os.PathLike, None],
    }

    def __init__(self, search, continuous=None, *, validation_fraction=0.2,
                 weight_step="auto", accept_fraction=0.5, accept_confidence=0.9,
                 rows=0.01, hessian="hvp", delta=1e-4, box_hparams=1.0, box_weights=None,
                 line_step=None, gss_tol=None, max_iter=1, lp_solver="highs",
                 hessian_samples=4096, engine="auto", random_state=None, checkpoint=None,
                 verbose=0):
        self.search = search
        self.continuous = continuous
        self.validation_fraction = validation_fraction
        self.weight_step = weight_step
        self.accept_fraction = accept_fraction
        self.accept_confidence = accept_confidence
        self.rows = rows
        self.hessian = hessian
        self.delta = delta
        self.box_hparams = box_hparams
        self.box_weights = box_weights
        self.line_step = line_step
        self.gss_tol = gss_tol
        self.max_iter = max_iter
        self.lp_solver = lp_solver
        self.hessian_samples = hessian_samples
        self.engine = engine
        self.random_state = random_state
        self.checkpoint = checkpoint
        self.verbose = verbose

    #: the refined model is always kept as ``best_estimator_`` (there is no ``refit``
    #: parameter); scikit-learn's forwarders (``predict``, ``score``, ...) read this
    refit = "refined"

    @property
    def estimator(self):
        """The estimator being refined: ``search`` (scikit-learn's tags and forwarders read
        it)."""
        return self.search

    # -- the method (HoldoutSearch.fit calls these) -----------------------------------------

    def _check_search_params(self):
        self._check_names_before_training()
        self._check_base_before_training()

    def _check_base_before_training(self):
        """What makes an unfitted base search useless is known before it trains: a search
        with ``refit=False`` keeps no model to refine, and ``hessian="sr1"`` needs the
        net's ``SR1Snapshots`` and the LP's rows."""
        if self.hessian == "sr1" and self.weight_step == "response":
            raise ValueError("hessian='sr1' estimates Hessian rows for the paper's LP; set "
                             "weight_step='lp' with it, or keep hessian='hvp' (the response "
                             "step needs exact Hessian-vector products)")
        if _is_fitted(self.search):
            return
        if getattr(self.search, "refit", True) is False:
            raise ValueError("the base search has refit=False, so it keeps no best_estimator_ "
                             "to refine; set refit=True (HyperLocalRefiner refines the "
                             "refitted best model)")
        est = getattr(self.search, "estimator", self.search)
        if self.hessian == "sr1" and find_linear(est) is None:
            net, _ = find_net(est)
            callbacks = net.callbacks if isinstance(net.callbacks, (list, tuple)) else []
            if not any(isinstance(cb[1] if isinstance(cb, tuple) else cb, SR1Snapshots)
                       for cb in callbacks):
                raise ValueError("hessian='sr1' needs the base net trained with "
                                 "skhpo.search.hyperlocal.SR1Snapshots() among its callbacks "
                                 "(at least 2 epochs); or use hessian='hvp'")

    def _draw_seeds(self, rng):
        # no split (and no draw) for a fitted search: its training data comes with fit
        return (None if _is_fitted(self.search) else draw_seed(rng)), None

    def _holdout(self, X, y, fit_params, seed):
        """``(X_train, y_train, X_val, y_val)``: the split of ``X`` (unfitted ``search``) or
        ``X_train``/``y_train`` from ``fit`` and ``X``, ``y`` as the validation data."""
        unknown = sorted(set(fit_params) - {"X_train", "y_train"})
        if unknown:
            raise TypeError(f"HyperLocalRefiner.fit got unexpected arguments {unknown}; it "
                            "takes X, y and, for a fitted search, X_train and y_train")
        X_train, y_train = fit_params.get("X_train"), fit_params.get("y_train")
        if seed is None:
            if X_train is None or y_train is None:
                raise ValueError("search is already fitted: pass its training data too, "
                                 "fit(X_val, y_val, X_train=..., y_train=...); the Hessian of "
                                 "the training objective needs it")
            return X_train, y_train, X, y
        # the base search has not trained yet: the checks of every search come first
        est = getattr(self.search, "estimator", self.search)
        net_prefix = None if find_linear(est) is not None else find_net(est)[1]
        _check_fit_data(X, y, bare_net=(net_prefix == ""))
        if net_prefix is not None:
            check_module_output(est, X, y)
        Xt, Xv, yt, yv = holdout_split(self.search, X, y, self.validation_fraction, seed)
        return Xt, yt, Xv, yv

    def _search(self, data, seeds, rng):
        Xt, yt, Xv, yv = data
        prefit = _is_fitted(self.search)
        ctx = getattr(self, "_search_ctx", None)
        ck = getattr(self, "_checkpoint", None)
        fitted = self.search if prefit else None if ck is None else ck.load("base", "search")
        self.n_resumed_ = int(fitted is not None and not prefit)
        if fitted is None:
            with Phase(self, ctx, "base search", 0):  # a leaf
                fitted = _with_engine(self.search, self.engine, self.random_state).fit(Xt, yt)
            if ck is not None:
                ck.save("base", "search", fitted)
        base = getattr(fitted, "best_estimator_", None)
        if base is None:
            if hasattr(fitted, "cv_results_"):
                raise ValueError("the base search has no best_estimator_ (refit=False?); "
                                 "HyperLocalRefiner refines the refitted best model")
            base = fitted
        base_params = dict(getattr(fitted, "best_params_", {}))
        self.base_estimator_, self.base_search_ = base, fitted
        self.scorer_ = check_scoring(base)
        epochs, trainings = (0, 0) if prefit else _base_cost(fitted)
        if find_linear(base) is not None:
            result = self._refine_linear(base, base_params, Xt, yt, Xv, yv, rng)
        else:
            net, prefix = find_net(base)
            penalties = self._penalties(net, prefix, base_params)
            snapshots = None
            if self.hessian == "sr1":
                snaps = [cb for _, cb in getattr(net, "callbacks_", []) if
                         isinstance(cb, SR1Snapshots)]
                if not snaps or len(snaps[0].weights_) < 2:
                    raise ValueError("hessian='sr1' needs the base net trained with "
                                     "skhpo.search.hyperlocal.SR1Snapshots() among its "
                                     "callbacks (at least 2 epochs); or use hessian='hvp'")
                snapshots = snaps[0]
            result = self._refine(base, prefix, penalties, base_params, Xt, yt, Xv, yv, rng,
                                  snapshots)
        result.epochs += epochs
        result.trainings += trainings
        return result

    def _check_names_before_training(self):
        """Reject names that can never be refined before the base search trains anything."""
        est = getattr(self.search, "estimator", self.search)
        linear = find_linear(est)
        if linear is not None:
            model, prefix = linear
            allowed = [prefix + n for n in penalty_names(model)]
            requested = self._requested(prefix)
            bad = [n for n in (requested or []) if n not in allowed]
            if bad or requested == {}:
                raise ValueError(f"{type(model).__name__}: continuous may name {allowed} "
                                 f"(its penalties); got {self.continuous}")
            return
        net, prefix = find_net(est)
        requested = self._requested(prefix)
        if requested is None:
            names = _declared_names(self.search)
            if names is not None:
                _check_some_penalty([k for k in names if _bare(k, prefix) in _PENALTY_NAMES],
                                    "tunes")
            return
        _check_some_penalty(list(requested), None)
        for name in requested:
            self._check_name(net, prefix, name)

    def _requested(self, prefix):
        """``continuous`` read by the shared vocabulary: ``{name: box or None}`` (a
        distribution or a ``(low, high)`` tuple bounds the refined value; a list of values,
        e.g. the base search's grid, does not), or None."""
        if self.continuous is None:
            return None
        if not isinstance(self.continuous, Mapping):
            return dict.fromkeys(self.continuous)
        out = {}
        for name, spec in self.continuous.items():
            own = prefix if isinstance(name, str) and name.startswith(prefix) else ""
            pname = parse_name(name, own, "continuous")
            if hasattr(spec, "rvs") or isinstance(spec, tuple):
                out[name] = read_dimension("continuous", pname, spec).box
            else:
                check_space({name: spec}, "continuous", prefix=own)
                out[name] = None
        return out

    def _check_name(self, net, prefix, name):
        pname = parse_name(name, prefix if name.startswith(prefix) else "", "continuous")
        bare, last = pname.bare, pname.bare.rsplit("__", 1)[-1]
        if pname.kind in ("l2", "l1") and not pname.per_layer:
            if not hasattr(net, "penalized_layers"):
                raise ValueError(f"{name!r}: only skhpo's models have l2/l1 penalties in "
                                 "their training loss; use optimizer__weight_decay")
        elif pname.kind == "weight_decay":
            optimizer = getattr(net, "optimizer", None)
            if getattr(optimizer, "__name__", "") in _DECOUPLED:
                raise ValueError(f"{name!r}: {optimizer.__name__} decouples weight decay "
                                 "from the gradient, so it is not an L2 term of the "
                                 "training objective; use Adam or SGD, or l2")
        elif last in _NOT_PENALTIES or bare.startswith("module__"):
            why = _NOT_PENALTIES.get(last, "architecture parameters are discrete")
            raise ValueError(f"{name!r} cannot be refined: {why}. HyperLocalRefiner moves "
                             "only penalty coefficients that enter the training objective "
                             "smoothly (l2, l1, optimizer__weight_decay); leave the others "
                             "to the base search")
        else:
            raise ValueError(f"{name!r} is not a penalty HyperLocalRefiner knows; accepted: "
                             "l2, l1 (skhpo models), optimizer__weight_decay")

    def _penalties(self, net, prefix, base_params):
        """The continuous hyper-parameters as :class:`_Penalty` terms (one per layer for a
        per-layer coefficient), from the fitted base model."""
        requested = self._requested(prefix)
        if requested is None:
            requested = dict.fromkeys(k for k in base_params if _bare(k, prefix) in
                                      _PENALTY_NAMES)
            _check_some_penalty(list(requested), "tuned")
        _check_some_penalty(list(requested), None)
        weights = dict(trainable(net.module_))
        by_id = {id(p): n for n, p in weights.items()}
        out = []
        for name, box in requested.items():
            self._check_name(net, prefix, name)
            bare = _bare(name, prefix)
            if bare == "optimizer__weight_decay":
                out.append(_Penalty(name, bare, None, "weight_decay", list(weights), box))
                continue
            layer_params = [by_id[id(layer.weight)] for layer in net.penalized_layers()
                            if id(layer.weight) in by_id]
            if np.ndim(getattr(net, bare)) == 0:
                out.append(_Penalty(name, bare, None, bare, layer_params, box))
            else:
                out += [_Penalty(f"{name}[{k}]", bare, k, bare, [p], box)
                        for k, p in enumerate(layer_params)]
        return out

    # -- the method ---------------------------------------------------------------------------

    def _refine(self, base, prefix, penalties, base_params, Xt, yt, Xv, yv, rng, snapshots):
        model = copy.deepcopy(base)
        mnet, _ = find_net(model)
        module, criterion = mnet.module_, mnet.criterion_
        Xc, yc, Xa, ya = self._accept_split(model, Xv, yv, rng)
        Xtr, ytr = _tensors(mnet, net_input(model, Xt), yt)
        if len(Xtr) > self.hessian_samples:
            keep = torch.as_tensor(rng.choice(len(Xtr), self.hessian_samples, replace=False),
                                   device=Xtr.device)
            Xtr, ytr = Xtr[keep], ytr[keep]
        choose = _tensors(mnet, net_input(model, Xc), yc)
        lam = np.array([_value(mnet, p) for p in penalties], dtype=float)
        self.timings_ = {"gradients": 0.0, "hessian": 0.0, "lp": 0.0, "line_search": 0.0}
        log, before_score = [], model.score(Xv, yv)
        val = objective(module, criterion, *_tensors(mnet, net_input(model, Xv), yv))
        accept_data = _tensors(mnet, net_input(model, Xa), ya)

        def loss():
            with torch.no_grad():
                return float(val(flat_params(module)))

        def held_back():
            return sample_losses(module, criterion, *accept_data), model.score(Xa, ya)
        start_loss, (per_sample, score) = loss(), held_back()
        start_accept = float(np.mean(per_sample))
        weights = [p for _, p in trainable(module)]
        self.improved_, self.n_iter_ = False, 0
        for it in range(self.max_iter):
            step = self._one_step(module, criterion, penalties, lam, (Xtr, ytr, *choose), rng,
                                  it, log, snapshots)
            if step is None:
                break
            w_new, lam_new = step
            w_old = flat_params(module)
            torch.nn.utils.vector_to_parameters(w_new, weights)
            if self.accept_fraction > 0:
                per_after, score_after = held_back()
                if not self._accepted(log, it, (per_sample, score), (per_after, score_after)):
                    torch.nn.utils.vector_to_parameters(w_old, weights)
                    break
                per_sample, score = per_after, score_after
            lam = lam_new
            for p, v in zip(penalties, lam):
                _set_value(mnet, p, v)
            self.improved_ = True
            self.n_iter_ += 1
        after_score = model.score(Xv, yv)
        self.validation_loss_ = (start_loss, loss())
        self.accept_loss_ = (start_accept,
                             float(np.mean(sample_losses(module, criterion, *accept_data))))
        self.refined_penalties_ = {p.name: float(v) for p, v in zip(penalties, lam)}
        best_params = {**base_params, **_regroup(penalties, lam, prefix)}
        return HoldoutResult(params=[base_params, best_params], scores=[before_score, after_score],
                             best=1, model=model, history=log, epochs=0, trainings=0)

    def _accepted(self, log, it, before, after):
        """The held-back check (:mod:`.accept`) of a step: ``before`` and ``after`` are
        (per-sample losses, score) of the held-back part; logged and reported."""
        ok, mean, se, bound = loss_falls(before[0], after[0], self.accept_confidence)
        ok = ok and after[1] >= before[1]
        log.append({"kind": "accept", "iteration": it, "validation_loss":
                    float(np.mean(after[0])), "mean_change": mean, "std_error": se,
                    "upper_bound": bound, "score_change": after[1] - before[1],
                    "accepted": ok})
        report("hyperlocal", self.verbose,
               f"[HyperLocal] step {it}: held-back loss change {mean:.4g} (upper "
               f"{self.accept_confidence:g} bound {bound:.4g}), score {before[1]:.4f} -> "
               f"{after[1]:.4f}: {'kept' if ok else 'rejected'}")
        return ok

    def _accept_split(self, model, Xv, yv, rng):
        """``(X_choose, y_choose, X_accept, y_accept)``: ``accept_fraction`` of the validation
        data held back to accept a step (seeded, stratified for classifiers), or the whole
        validation data twice when it is 0."""
        if self.accept_fraction == 0:
            return Xv, yv, Xv, yv
        if len(yv) < 2:
            raise ValueError(f"accept_fraction={self.accept_fraction} splits the validation "
                             f"data, which has {len(yv)} sample (at least 2 needed); pass "
                             "more validation data or accept_fraction=0")
        Xc, Xa, yc, ya = holdout_split(model, Xv, yv, self.accept_fraction, draw_seed(rng))
        return Xc, yc, Xa, ya

    def _refine_linear(self, base, base_params, Xt, yt, Xv, yv, rng):
        _, prefix = find_linear(base)
        Xc, yc, Xa, ya = self._accept_split(base, Xv, yv, rng)
        refined, params, log, timings, _ = refine_linear(
            self._lp_settings(box_weights=100.0), base, prefix, Xt, yt, Xc, yc, rng,
            line_step=1e-3 if self.line_step is None else self.line_step,
            gss_tol=1e-6 if self.gss_tol is None else self.gss_tol)
        n_refits = sum(row["kind"] == "line_search" for row in log) + int(refined is not None)

        def errors(m, X_, y_):
            return (m.predict(X_) - np.asarray(y_, float)) ** 2

        def mse(m, X_, y_):
            return float(np.mean(errors(m, X_, y_)))
        self.accept_loss_ = (mse(base, Xa, ya),) * 2
        if refined is not None and self.accept_fraction > 0:
            before = (errors(base, Xa, ya), base.score(Xa, ya))
            after = (errors(refined, Xa, ya), refined.score(Xa, ya))
            if self._accepted(log, 0, before, after):
                self.accept_loss_ = (self.accept_loss_[0], mse(refined, Xa, ya))
            else:
                refined, params = None, {k: base.get_params()[k] for k in params}
        self.improved_ = refined is not None
        self.n_iter_ = int(self.improved_)
        model = refined if refined is not None else copy.deepcopy(base)
        self.timings_ = timings
        self.validation_loss_ = (mse(base, Xv, yv), mse(model, Xv, yv))
        self.refined_penalties_ = params
        return HoldoutResult(
            params=[{**base_params, **{k: base.get_params()[k] for k in params}},
                    {**base_params, **params}],
            scores=[base.score(Xv, yv), model.score(Xv, yv)], best=1, model=model,
            history=log, epochs=0, trainings=n_refits)

    def _lp_settings(self, box_weights):
        """The LP's settings (``box_weights``: the default for this kind of model)."""
        return LPStep(self.delta, self.box_hparams,
                      box_weights if self.box_weights is None else self.box_weights,
                      self.lp_solver)

    def _one_step(self, module, criterion, penalties, lam, tensors, rng, it, log, snapshots):
        """One direction + line search on the choosing data from the module's current
        weights: ``(new weights, new penalties)``, or None if there is no descent."""
        Xtr, ytr, Xva, yva = tensors
        t0 = time.perf_counter()
        w0 = flat_params(module)
        g = flat_gradient(module, criterion, Xva, yva)
        H_wl = _mixed_derivatives(module, penalties)
        candidates = torch.nonzero(H_wl.abs().sum(1) > 0).ravel().cpu().numpy()
        if len(candidates) == 0:
            raise ValueError("no weight is touched by the penalties: nothing to refine")
        self.timings_["gradients"] += time.perf_counter() - t0

        def penalty(params):
            return sum(float(v) * p.term(params) for p, v in zip(penalties, lam))

        if self._weight_step(g.numel()) == "response":
            d = self._response_direction(module, criterion, (Xtr, ytr), penalty, g, H_wl, it,
                                         log)
        else:
            d = self._lp_direction(module, criterion, (Xtr, ytr), penalty, g, H_wl,
                                   candidates, rng, it, log, snapshots)
        if d is None:
            return None
        k = len(penalties)
        d_lam, d_w = d[:k].cpu().numpy().astype(float), d[k:]

        t0 = time.perf_counter()
        val = objective(module, criterion, Xva, yva)

        def phi(t):
            with torch.no_grad():
                return float(val(w0 + t * d_w))

        t_star, trials = line_search(phi, 0.1 if self.line_step is None else self.line_step,
                                     1e-5 if self.gss_tol is None else self.gss_tol)
        phi0, phi_star = phi(0.0), phi(t_star)
        self.timings_["line_search"] += time.perf_counter() - t0
        log += [{"kind": "line_search", "iteration": it, "t": t, "validation_loss": v}
                for t, v in trials]
        report("hyperlocal", self.verbose,
               f"[HyperLocal] step {it}: t*={t_star:.4g}, validation loss {phi0:.5f} -> "
               f"{phi_star:.5f}")
        if not phi_star < phi0:
            return None
        lam = np.maximum(lam + t_star * d_lam, 0.0)
        return w0 + t_star * d_w, np.array([v if p.box is None else min(max(v, p.box.lo),
                                                                         p.box.hi)
                                            for p, v in zip(penalties, lam)])

    def _weight_step(self, n_weights):
        """``weight_step`` resolved for a net of ``n_weights`` trainable weights."""
        if self.weight_step != "auto":
            return self.weight_step
        return "lp" if self.hessian == "sr1" or n_weights <= _LP_MAX_WEIGHTS else "response"

    def _lp_direction(self, module, criterion, train, penalty, g, H_wl, candidates, rng, it,
                      log, snapshots):
        """The paper's LP over (dλ, dw) on a subset of Hessian rows: the unit direction, or
        None if the LP finds no descent."""
        rows = self._row_subset(candidates, g.numel(), rng)
        t0 = time.perf_counter()
        if self.hessian == "sr1":
            H_ww = sr1_rows(snapshots.weights_, snapshots.gradients_, rows)
        else:
            H_ww = hessian_rows(module, criterion, *train, rows, penalty=penalty)
        self.timings_["hessian"] += time.perf_counter() - t0
        sol, record = lp_direction(g.cpu().numpy().astype(float),
                                   H_wl[torch.as_tensor(rows, device=H_wl.device)]
                                   .cpu().numpy().astype(float),
                                   H_ww.cpu().numpy().astype(float), self._lp_settings(1.0),
                                   seed=draw_seed(rng), iteration=it)
        self.timings_["lp"] += sol.solve_time
        log.append(record)
        norm = float(np.linalg.norm(sol.x))
        report("hyperlocal", self.verbose,
               f"[HyperLocal] step {it}: LP objective {sol.objective:.3g}")
        if norm == 0 or sol.objective >= 0:
            return None
        return torch.as_tensor(sol.x / norm, dtype=g.dtype, device=g.device)

    def _response_direction(self, module, criterion, train, penalty, g, H_wl, it, log):
        """The LP with every optimality row met exactly: the implicit hypergradient
        h = -H_wλ^T H_ww^{-1} g, dλ = -box_hparams sign(h), dw = -H_ww^{-1} H_wλ dλ (both
        solves by conjugate gradient); the unit direction, or None if h = 0."""
        t0 = time.perf_counter()
        hvp = hvp_operator(module, criterion, *train, penalty=penalty)
        q, n1 = conjugate_gradient(hvp, g, **_CG)
        h = -(H_wl.T @ q)
        d_lam = -self.box_hparams * torch.sign(h)
        d_w, n2 = (conjugate_gradient(hvp, -(H_wl @ d_lam), **_CG) if bool(d_lam.any())
                   else (torch.zeros_like(g), 0))
        self.timings_["hessian"] += time.perf_counter() - t0
        x = torch.cat([d_lam, d_w])
        predicted = float(g @ d_w)
        log.append({"kind": "response", "iteration": it, "rows": g.numel(),
                    "variables": x.numel(), "objective": predicted,
                    "hessian_products": n1 + n2, "solve_time": time.perf_counter() - t0})
        report("hyperlocal", self.verbose,
               f"[HyperLocal] step {it}: hypergradient {h.cpu().numpy()}, predicted change "
               f"{predicted:.3g} ({n1 + n2} Hessian-vector products)")
        norm = float(x.norm())
        if norm == 0 or not predicted < 0:
            return None
        return x / norm

    def _row_subset(self, candidates, n, rng):
        if self.rows == "all":
            r = len(candidates)
        elif isinstance(self.rows, Integral):
            r = self.rows
        else:
            r = max(10, math.ceil(self.rows * n))
        r = min(r, len(candidates), 2000)
        return np.sort(rng.choice(candidates, r, replace=False))

# -- helpers ------------------------------------------------------------------------------------

def _is_fitted(est):
    if hasattr(est, "cv_results_") or hasattr(est, "best_estimator_"):
        return True
    try:
        check_is_fitted(est)
    except Exception:
        return False
    return True


def _check_some_penalty(names, verb):
    """The one message for "nothing to refine" (``verb``: how the base search was asked)."""
    if names:
        return
    if verb is None:
        raise ValueError("continuous is empty: name at least one penalty")
    raise ValueError(f"continuous=None, but the base search {verb} no penalty (l2, l1, "
                     "optimizer__weight_decay); name the penalties to refine, e.g. "
                     "continuous=['l2']")


def _base_cost(fitted):
    """``(epochs, trainings)`` the base search spent: its own counters (an skhpo search),
    else its fits (candidates x splits + refit) with each net's ``max_epochs``; a plain
    estimator is one training."""
    if hasattr(fitted, "n_trainings_") and hasattr(fitted, "n_epochs_"):
        return fitted.n_epochs_, fitted.n_trainings_
    params = fitted.cv_results_["params"] if hasattr(fitted, "cv_results_") else [{}]
    splits = getattr(fitted, "n_splits_", 1) if hasattr(fitted, "cv_results_") else 1
    refit = int(hasattr(fitted, "cv_results_") and bool(getattr(fitted, "refit", False)))
    est = getattr(fitted, "estimator", fitted)
    try:
        net, prefix = find_net(est)
    except TypeError:  # a linear model: no epochs
        return 0, len(params) * splits + refit
    epochs = [int(p.get(f"{prefix}max_epochs", net.max_epochs)) for p in params]
    best = getattr(fitted, "best_params_", {}).get(f"{prefix}max_epochs", net.max_epochs)
    return sum(epochs) * splits + refit * int(best), len(params) * splits + refit


def _with_engine(search, engine, random_state):
    """A clone of the unfitted ``search`` to run: scikit-learn's ``RandomizedSearchCV`` /
    ``GridSearchCV`` as its fused drop-in with ``engine`` (unless "sequential")."""
    from sklearn.model_selection import GridSearchCV, RandomizedSearchCV

    from ..fused_search import FusedGridSearchCV, FusedRandomizedSearchCV

    drop_ins = {RandomizedSearchCV: FusedRandomizedSearchCV, GridSearchCV: FusedGridSearchCV}
    if engine == "sequential" or type(search) not in drop_ins:
        return clone(search)
    params = clone(search).get_params(deep=False)
    if "random_state" not in params:  # the grid: its fits seeded from the refiner's seed
        params["random_state"] = random_state if isinstance(random_state, Integral) else None
    return drop_ins[type(search)](**params, engine=engine)


def _declared_names(search):
    """Parameter names a search will tune (its grid or distributions), or None."""
    space = getattr(search, "param_grid", None) or getattr(search, "param_distributions", None)
    if space is None:
        return None
    spaces = space if isinstance(space, list) else [space]
    return sorted({k for sp in spaces for k in sp})


def _bare(name, prefix):
    return name[len(prefix):] if prefix and name.startswith(prefix) else name


def _mixed_derivatives(module, penalties):
    """H_wλ: column j is dR_j/dw at the module's weights, flat (zero off the weights the
    penalty touches)."""
    w = flat_params(module)
    weights = {n: p.detach() for n, p in trainable(module)}
    offsets = _offsets(module)
    H_wl = torch.zeros(w.numel(), len(penalties), dtype=w.dtype, device=w.device)
    for j, p in enumerate(penalties):
        for name, col in p.column(weights).items():
            a, b = offsets[name]
            H_wl[a:b, j] = col.reshape(-1)
    return H_wl


def _offsets(module):
    out, start = {}, 0
    for name, p in trainable(module):
        out[name] = (start, start + p.numel())
        start += p.numel()
    return out


def _tensors(net, X, y):
    """X and y as the net trains on them (skhpo models: their own validation/encoding)."""
    if hasattr(net, "_check_X") and hasattr(net, "_check_y"):
        X, y = net._check_X(X, reset=False), net._check_y(y, reset=False)
    else:
        X, y = np.asarray(X, np.float32), np.asarray(y)
    return torch.as_tensor(X, device=net.device), torch.as_tensor(y, device=net.device)


def _value(net, penalty):
    value = getattr(net, penalty.attr) if penalty.attr != "optimizer__weight_decay" else \
        net.get_params().get("optimizer__weight_decay", 0.0)
    return value if penalty.index is None else list(value)[penalty.index]


def _set_value(net, penalty, v):
    if penalty.index is None:
        net.set_params(**{penalty.attr: float(v)})
    else:
        values = list(getattr(net, penalty.attr))
        values[penalty.index] = float(v)
        net.set_params(**{penalty.attr: values})


def _regroup(penalties, lam, prefix):
    """The refined values under the estimator's own parameter names (per-layer ones as a
    list again)."""
    out = {}
    for p, v in zip(penalties, lam):
        key = prefix + p.attr
        if p.index is None:
            out[key] = float(v)
        else:
            out.setdefault(key, [])
            out[key].append(float(v))
    return out
