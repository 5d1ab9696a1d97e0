"""HyperLocalRefiner: the LP hyper local search (Sinha & Gunwal, Oper. Res. Letters 2025).

Starting from the best model of any search — its penalty coefficients lambda and its trained
weights w — the method (the paper's Algorithm 1) takes a step (:class:`~.step.NetStep`):

1-6. an LP direction in (lambda, w) from the gradient of the *unregularised* validation loss
     F, the mixed derivatives H_wλ of the training objective f = loss + sum_j lambda_j
     R_j(w) and rows of its Hessian H_ww (the LP: minimise g . dw subject to -delta <=
     H_wλ[R] dλ + H_ww[R] dw <= delta, |dλ| <= box_hparams, |dw| <= box_weights);
7. a line search on t >= 0 of F(w + t d_w) (bounding phase from ``line_step``, then golden
   section to ``gss_tol``);
8. accept only if F(w + t* d_w) < F(w): w <- w + t* d_w, lambda <- max(lambda + t* d_λ, 0),
   kept inside the range the penalty's space gives (:mod:`.penalties`).

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

import copy
import os
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.metrics import check_scoring
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ...fused import ENGINES
from ...log import report
from ...nets import check_module_output, draw_seed, find_net, net_input, net_X, net_y
from .._holdout import Holdout, HoldoutResult, HoldoutSearch, holdout_split
from .._progress import Phase
from .._trials import check_fit_data
from ..fused_search import as_fused
from .accept import loss_falls, sample_losses
from .curvature import SR1Snapshots, flat_params, objective, trainable
from .linear import LinearSettings, find_linear, refine_linear
from .lp import SOLVERS, LPStep
from .penalties import (
    check_names,
    penalties_of,
    read_penalties,
    regroup,
    requested,
    set_value,
    space_ranges,
    value,
)
from .step import NetStep, StepSettings

__all__ = ["HyperLocalRefiner"]


class HyperLocalRefiner(HoldoutSearch):
    """Refine the best model of any search by an LP descent direction in (penalties, weights).

    Parameters
    ----------
    estimator : search estimator or estimator
        ``GridSearchCV``, ``RandomizedSearchCV``, ``OptunaSearchCV``, an skhpo search, or a
        plain estimator: a skorch net, scikit-learn's ``ElasticNet``, ``Lasso`` or ``Ridge``,
        or a Pipeline ending in one. For the linear models the weights are re-solved
        exactly at every line-search trial, and only the LP's penalty direction is used
        (their penalties: ``alpha`` and ``l1_ratio``, refined as the pair l1 = alpha *
        l1_ratio, l2 = alpha * (1 - l1_ratio)). *Unfitted*: ``fit(X, y)`` splits off
        ``validation_fraction`` of the data, fits a clone of the search on the rest and
        refines its ``best_estimator_`` on the held-out part. *Already fitted*:
        ``fit(X_val, y_val, X_train=..., y_train=...)`` refines it as is; the data passed is
        the validation data, and the training data it was fitted on is needed for the
        Hessian (a better convention than ``cv="prefit"``, which has no training data).
    param_bounds : list, dict or None, default=None
        The penalty hyper-parameters to refine, by the estimator's names: ``l2`` and ``l1``
        of skhpo's models (one hyper-parameter per layer when the value is a sequence) and
        ``optimizer__weight_decay`` for optimizers with coupled decay (read as
        wd/2 ||w||^2); ``net__l2`` etc. in a Pipeline. A list of names, or a dict mapping a
        name to a range (``loguniform(low, high)``, ``uniform(low, width)``, ``(low, high)``)
        that its refined value stays in. None: the penalties among the base search's
        ``best_params_``. Without a range of its own, a refined value stays inside the range
        the base search's space gives it (a distribution, or Optuna's ``low``/``high``); a
        list of values (a grid) gives none. To let a value leave the base search's range,
        name a wider one, e.g. ``param_bounds={"l2": (0.0, 1.0)}``. Anything else (learning
        rate, batch size, epochs, dropout, architecture) is rejected: it does not enter the
        training objective smoothly.
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
    scoring : str, callable or None, default=None
        Score of ``cv_results_`` and ``best_score_`` on the validation part (None: the
        model's ``score``).
    refit : {"trained", True, False}, default="trained"
        ``"trained"``: ``best_estimator_`` is the refined model itself (a copy; the base is
        never modified). ``True``: the base estimator retrained on all the data with the
        refined penalties fixed (all of ``X``; for a fitted search, its training data and
        ``X``). ``False``: no ``best_estimator_``.
    validation_fraction : float, default=0.2
        Held-out share when the search is unfitted (stratified for classifiers).
    base_engine : {"auto", "fused", "sequential"}, default="auto"
        How an unfitted base search trains. ``"auto"`` / ``"fused"``: scikit-learn's
        ``RandomizedSearchCV`` or ``GridSearchCV`` runs as its fused drop-in
        (:class:`skhpo.FusedRandomizedSearchCV` / :class:`skhpo.FusedGridSearchCV`, same
        parameters, with this ``engine``; the grid's fits seeded from ``random_state``),
        which trains the fits of nets the engine can fuse as stacked models and is
        scikit-learn's own search for anything else; ``"sequential"``: the search as given.
        Other searches (an skhpo search, ``OptunaSearchCV``) run as given. (The refinement
        itself trains one model: it has no ``engine`` and no ``n_jobs``; the base search's
        own ``n_jobs`` parallelises it.)
    checkpoint : str, path or None, default=None
        A folder in which the fitted base search is written once it has trained
        (atomically). Calling ``fit`` again with the same refiner, data and folder
        loads it instead of training the base search again, and refines it as before
        (identical results); a folder written by another refiner is refused before any
        training. Needs an int ``random_state``; ``n_resumed_`` is 1 when the base search
        was loaded.
    random_state : int, RandomState or None, default=None
        The validation split, the row subset and the LP's tie-breaking.
    verbose : int, default=0
        Log the steps when > 0 (the ``skhpo.hyperlocal`` logger).

    Attributes
    ----------
    best_estimator_ : estimator
        See ``refit``.
    base_estimator_ : the base search's best model.
    base_search_ : the fitted base search (the given one when ``search`` was fitted; else
        the clone that ran, a fused drop-in where ``engine`` made it one).
    engine_ : {"fused", "sequential", "mixed"}
        How the base search's fits trained (its own ``engine_``; ``"sequential"`` for a
        search that has none). The refinement itself trains one model.
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
        **HoldoutSearch._parameter_constraints,
        "estimator": [object],
        "param_bounds": [list, dict, None],
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
        "base_engine": [StrOptions(set(ENGINES))],
        "checkpoint": [str, os.PathLike, None],
    }

    def __init__(self, estimator, param_bounds=None, *, weight_step="auto",
                 accept_fraction=0.5, accept_confidence=0.9, rows=0.01, hessian="hvp",
                 delta=1e-4, box_hparams=1.0, box_weights=None, line_step=None, gss_tol=None,
                 max_iter=1, lp_solver="highs", hessian_samples=4096, scoring=None,
                 refit="trained", validation_fraction=0.2, base_engine="auto",
                 checkpoint=None, random_state=None, verbose=0):
        self.estimator = estimator
        self.param_bounds = param_bounds
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
        self.scoring = scoring
        self.refit = refit
        self.validation_fraction = validation_fraction
        self.base_engine = base_engine
        self.checkpoint = checkpoint
        self.random_state = random_state
        self.verbose = verbose

    # -- before any training (HoldoutSearch.fit calls these) --------------------------------

    def _check_search_params(self):
        check_names(self.estimator, self.param_bounds, _declared_names(self.estimator))
        self._check_base_before_training()

    def _check_base_before_training(self):
        """What makes an unfitted base search useless is known before it trains: a search
        with ``refit=False`` keeps no model to refine, and ``hessian="sr1"`` needs the
        net's ``SR1Snapshots`` and the LP's rows."""
        if self.hessian == "sr1" and self.weight_step == "response":
            raise ValueError("hessian='sr1' estimates Hessian rows for the paper's LP; set "
                             "weight_step='lp' with it, or keep hessian='hvp' (the response "
                             "step needs exact Hessian-vector products)")
        if _is_fitted(self.estimator):
            return
        if getattr(self.estimator, "refit", True) is False:
            raise ValueError("the base search has refit=False, so it keeps no best_estimator_ "
                             "to refine; set refit=True (HyperLocalRefiner refines the "
                             "refitted best model)")
        est = getattr(self.estimator, "estimator", self.estimator)
        if self.hessian == "sr1" and find_linear(est) is None and not _sr1_callback(est):
            raise ValueError("hessian='sr1' needs the base net trained with "
                             "skhpo.search.hyperlocal.SR1Snapshots() among its callbacks "
                             "(at least 2 epochs); or use hessian='hvp'")

    def _draw_seeds(self, rng):
        # no split (and no draw) for a fitted search: its training data comes with fit
        return (None if _is_fitted(self.estimator) else draw_seed(rng)), None

    def _holdout(self, X, y, fit_params, seed):
        """The training and validation data (a :class:`~.._holdout.Holdout` of the raw
        data: the base search transforms it itself): the split of ``X`` (unfitted search)
        or ``X_train`` / ``y_train`` from ``fit`` and ``X``, ``y`` as the validation data."""
        unknown = sorted(set(fit_params) - {"X_train", "y_train"})
        if unknown:
            raise TypeError(f"HyperLocalRefiner.fit got unexpected arguments {unknown}; it "
                            "takes X, y and, for a fitted search, X_train and y_train")
        X_train, y_train = fit_params.get("X_train"), fit_params.get("y_train")
        if seed is None:
            if X_train is None or y_train is None:
                raise ValueError("the estimator is already fitted: pass its training data "
                                 "too, fit(X_val, y_val, X_train=..., y_train=...); the Hessian "
                                 "of the training objective needs it")
            return _raw(X_train, y_train, X, y)
        # the base search has not trained yet: the checks of every search come first
        est = getattr(self.estimator, "estimator", self.estimator)
        net_prefix = None if find_linear(est) is not None else find_net(est)[1]
        check_fit_data(X, y, bare_net=(net_prefix == ""))
        if net_prefix is not None:
            check_module_output(est, X, y)
        Xt, Xv, yt, yv = holdout_split(self.estimator, X, y, self.validation_fraction, seed)
        return _raw(Xt, yt, Xv, yv)

    # -- the method ---------------------------------------------------------------------------

    def _search(self, run):
        data = run.data
        fitted, loaded = self._base_search(run)
        base = getattr(fitted, "best_estimator_", None)
        if base is None:
            if hasattr(fitted, "cv_results_"):
                raise ValueError("the base search has no best_estimator_ (refit=False?); "
                                 "HyperLocalRefiner refines the refitted best model")
            base = fitted
        base_params = dict(getattr(fitted, "best_params_", {}))
        scorer = check_scoring(base, self.scoring)
        ranges = space_ranges(_declared_space(fitted))
        refine = self._refine_linear if find_linear(base) is not None else self._refine_net
        result, attributes = refine(base, base_params, data, run.rng, ranges)
        result.scores = [scorer(model, data.X_val, data.y_val)
                         for model in (base, result.model)]
        if not _is_fitted(self.estimator):
            epochs, trainings = _base_cost(fitted)
            result.epochs += epochs
            result.trainings += trainings
        result.attributes.update(attributes, base_estimator_=base, base_search_=fitted,
                                 n_resumed_=int(loaded), scorer_=scorer,
                                 engine_=getattr(fitted, "engine_", "sequential"))
        return result

    def _base_search(self, run):
        """``(the fitted base search, whether the checkpoint gave it back)``: the given one
        when it is fitted, else a clone of it (its fused drop-in where ``base_engine`` makes
        it one) fitted on the training part."""
        if _is_fitted(self.estimator):
            return self.estimator, False
        ck = run.checkpoint
        fitted = None if ck is None else ck.load("base", "search")
        if fitted is not None:
            return fitted, True
        with Phase(self, run.ctx, "base search", 0):  # a leaf
            search = as_fused(self.estimator, self.base_engine, self.random_state)
            fitted = search.fit(run.data.X_tr, run.data.y_tr)
        if ck is not None:
            ck.save("base", "search", fitted)
        return fitted, False

    def _refine_net(self, base, base_params, data, rng, ranges):
        """The method on a net: up to ``max_iter`` steps (:class:`~.step.NetStep`), each
        kept only if the validation loss falls (and, with ``accept_fraction``, the held-back
        check agrees). Returns the :class:`~.._holdout.HoldoutResult` (``_search`` scores its
        two rows) and the attributes."""
        model = copy.deepcopy(base)
        mnet, prefix = find_net(model)
        asked = requested(self.param_bounds, prefix)
        penalties = read_penalties(mnet, prefix, asked if asked is not None else
                                   penalties_of(base_params, prefix), ranges)
        module, criterion = mnet.module_, mnet.criterion_
        Xc, yc, Xa, ya = self._accept_split(model, data.X_val, data.y_val, rng)
        train = _tensors(mnet, net_input(model, data.X_tr), data.y_tr)
        if len(train[0]) > self.hessian_samples:
            keep = torch.as_tensor(rng.choice(len(train[0]), self.hessian_samples,
                                              replace=False), device=train[0].device)
            train = (train[0][keep], train[1][keep])
        choose = _tensors(mnet, net_input(model, Xc), yc)
        step = NetStep(self._step_settings(), module, criterion, penalties, train,
                       _snapshots(mnet) if self.hessian == "sr1" else None)
        lam = np.array([value(mnet, p) for p in penalties], dtype=float)
        val = objective(module, criterion, *_tensors(mnet, net_input(model, data.X_val),
                                                     data.y_val))
        accept_data = _tensors(mnet, net_input(model, Xa), ya)

        def loss():
            with torch.no_grad():
                return float(val(flat_params(module)))

        def held_back():
            return sample_losses(module, criterion, *accept_data), model.score(Xa, ya)

        start_loss, checked = loss(), held_back()
        start_accept = float(np.mean(checked[0]))
        weights = [p for _, p in trainable(module)]
        improved = 0
        for it in range(self.max_iter):
            found = step(lam, choose, rng, it)
            if found is None:
                break
            w_new, lam_new = found
            w_old = flat_params(module)
            torch.nn.utils.vector_to_parameters(w_new, weights)
            if self.accept_fraction > 0:
                after = held_back()
                if not self._accepted(step.log, it, checked, after):
                    torch.nn.utils.vector_to_parameters(w_old, weights)
                    break
                checked = after
            lam = lam_new
            for p, v in zip(penalties, lam):
                set_value(mnet, p, v)
            improved += 1
        best_params = {**base_params, **regroup(penalties, lam, prefix)}
        attributes = {
            "timings_": step.timings, "improved_": improved > 0, "n_iter_": improved,
            "validation_loss_": (start_loss, loss()),
            "accept_loss_": (start_accept,
                             float(np.mean(sample_losses(module, criterion, *accept_data)))),
            "refined_penalties_": {p.name: float(v) for p, v in zip(penalties, lam)}}
        result = HoldoutResult(params=[base_params, best_params],
                               scores=[],
                               best=1, model=model, history=step.log, epochs=0, trainings=0,
                               refit_params=best_params, refit_epochs=int(mnet.max_epochs))
        return result, attributes

    def _step_settings(self):
        return StepSettings(self.weight_step, self.rows, self.hessian, self._lp_settings(1.0),
                            0.1 if self.line_step is None else self.line_step,
                            1e-5 if self.gss_tol is None else self.gss_tol, self.verbose)

    def _lp_settings(self, box_weights):
        """The LP's settings (``box_weights``: the default for this kind of model)."""
        return LPStep(self.delta, self.box_hparams,
                      box_weights if self.box_weights is None else self.box_weights,
                      self.lp_solver)

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
               f"step {it}: held-back loss change {mean:.4g} (upper "
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

    def _refine_linear(self, base, base_params, data, rng, ranges):
        """The method on a linear model: one LP direction for its penalties, a line search
        with exact refits (:func:`~.linear.refine_linear`), and the held-back check; returns
        as :meth:`_refine_net` does."""
        _, prefix = find_linear(base)
        asked = requested(self.param_bounds, prefix) or {}
        bounds = {**ranges, **{k: v for k, v in asked.items() if v is not None}}
        Xc, yc, Xa, ya = self._accept_split(base, data.X_val, data.y_val, rng)
        found = refine_linear(base, (data.X_tr, data.y_tr, Xc, yc), rng, LinearSettings(
            self._lp_settings(box_weights=100.0),
            1e-3 if self.line_step is None else self.line_step,
            1e-6 if self.gss_tol is None else self.gss_tol, bounds))
        refined, params, log = found.model, found.params, found.log
        n_refits = sum(row["kind"] == "line_search" for row in log) + int(refined is not None)
        accept_loss = (_mse(base, Xa, ya),) * 2
        if refined is not None and self.accept_fraction > 0:
            before = (_errors(base, Xa, ya), base.score(Xa, ya))
            after = (_errors(refined, Xa, ya), refined.score(Xa, ya))
            if self._accepted(log, 0, before, after):
                accept_loss = (accept_loss[0], _mse(refined, Xa, ya))
            else:
                refined, params = None, {k: base.get_params()[k] for k in params}
        model = refined if refined is not None else copy.deepcopy(base)
        best_params = {**base_params, **params}
        attributes = {"timings_": found.timings, "improved_": refined is not None,
                      "n_iter_": int(refined is not None),
                      "validation_loss_": (_mse(base, data.X_val, data.y_val),
                                           _mse(model, data.X_val, data.y_val)),
                      "accept_loss_": accept_loss, "refined_penalties_": params}
        result = HoldoutResult(
            params=[{**base_params, **{k: base.get_params()[k] for k in params}}, best_params],
            scores=[],
            best=1, model=model, history=log, epochs=0, trainings=n_refits,
            refit_params=best_params)
        return result, attributes

    def _refit_inputs(self, data, X, y):
        """``refit=True`` retrains the base estimator on all the data the refiner saw."""
        estimator = getattr(self.estimator, "estimator", self.estimator)
        if not _is_fitted(self.estimator):
            return estimator, X, y
        return estimator, _concat(data.X_tr, X), _concat(data.y_tr, y)


# -- helpers ------------------------------------------------------------------------------------

def _is_fitted(est):
    if hasattr(est, "cv_results_") or hasattr(est, "best_estimator_"):
        return True
    try:
        check_is_fitted(est)
    except Exception:
        return False
    return True


def _raw(X_train, y_train, X_val, y_val):
    """The refiner's :class:`~.._holdout.Holdout`: the raw split (the base search transforms
    its data itself)."""
    return Holdout(net=None, prefix="", pre=None, X_tr=X_train, X_val=X_val, y_tr=y_train,
                   y_val=y_val, Xt=None, Xv=None)


def _concat(a, b):
    """``a`` then ``b`` (arrays, lists or pandas objects) along the rows."""
    if hasattr(a, "iloc"):
        import pandas as pd  # pandas objects only come from a user who has pandas

        return pd.concat([a, b])
    return np.concatenate([np.asarray(a), np.asarray(b)])


def _sr1_callback(net_or_pipeline):
    """Whether the (unfitted) net carries :class:`SR1Snapshots` among its callbacks."""
    net, _ = find_net(net_or_pipeline)
    callbacks = net.callbacks if isinstance(net.callbacks, (list, tuple)) else []
    return any(isinstance(cb[1] if isinstance(cb, tuple) else cb, SR1Snapshots)
               for cb in callbacks)


def _snapshots(net):
    """The fitted net's :class:`SR1Snapshots` (``hessian="sr1"``)."""
    snaps = [cb for _, cb in getattr(net, "callbacks_", []) if isinstance(cb, SR1Snapshots)]
    if not snaps or len(snaps[0].weights_) < 2:
        raise ValueError("hessian='sr1' needs the base net trained with "
                         "skhpo.search.hyperlocal.SR1Snapshots() among its callbacks "
                         "(at least 2 epochs); or use hessian='hvp'")
    return snaps[0]


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


def _declared_space(search):
    """The space a search declares: an skhpo search's (its ``_space()``), or scikit-learn's
    and Optuna's ``param_grid`` / ``param_distributions``; None for a plain estimator."""
    if hasattr(search, "_space"):
        return search._space()
    return getattr(search, "param_grid", None) or getattr(search, "param_distributions", None)


def _declared_names(search):
    """Parameter names a search will tune (its space), or None."""
    space = _declared_space(search)
    if not space:
        return None
    names = set()
    for part in space if isinstance(space, list) else [space]:  # dicts, or names alone
        names.update(part if isinstance(part, dict) else [part] if isinstance(part, str) else ())
    return sorted(names)


def _tensors(net, X, y):
    """X and y as the net trains on them (skhpo models: their own validation/encoding)."""
    return torch.as_tensor(net_X(net, X) if hasattr(net, "_check_X") else
                           np.asarray(X, np.float32), device=net.device), \
        torch.as_tensor(net_y(net, y), device=net.device)


def _errors(model, X, y):
    return (model.predict(X) - np.asarray(y, float)) ** 2


def _mse(model, X, y):
    return float(np.mean(_errors(model, X, y)))
