"""What every skhpo search shares on top of scikit-learn's ``BaseSearchCV``.

* validation that runs in ``fit`` before any training (data, search space, names);
* the data of the current ``fit`` made available to ``_run_search`` (sklearn passes it only
  ``evaluate_candidates``);
* training tasks: per-task seeds, the divergence guard and device placement are added to each
  candidate's parameters (:func:`skhpo.nets.trial_params`) and removed again from everything
  the user sees (``cv_results_['params']``, ``best_params_``);
* a joblib runner for the method's own batches of independent trainings;
* ``history_`` assembly and a finite-loss check of the refitted best model.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from abc import abstractmethod
from dataclasses import dataclass, field
from numbers import Real

import numpy as np
import scipy.sparse as sp
import torch
from joblib import Parallel, delayed
from scipy.stats import rankdata
from sklearn.base import clone, is_classifier
from sklearn.exceptions import FitFailedWarning
from sklearn.metrics import check_scoring
from sklearn.model_selection import check_cv, train_test_split
from sklearn.model_selection._search import BaseSearchCV
from sklearn.pipeline import Pipeline
from sklearn.utils import check_random_state, indexable
from sklearn.utils._param_validation import HasMethods, Interval
from sklearn.utils.validation import _num_samples

from ..checkpoint import Checkpoint, check_checkpoint, search_parts
from ..fused import FusedTask, FusedTrainer
from ..hyper.layers import DropoutRates
from ..hyper.space import check_space, parse_name
from ..nets import (
    TrainingDivergedError,
    check_module_output,
    check_param_names,
    find_net,
    free_estimator,
    user_callbacks,
)
from ._fused_cv import FusedCVMixin
from ._progress import Phase, root_context

__all__ = ["NetSearchCV", "check_space", "check_finite_input", "run_trial", "history_columns",
           "results_table", "HoldoutSearch", "HoldoutResult", "Holdout", "holdout_split",
           "fit_preprocessing", "as_float_array", "plain_net_params"]


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------

def check_finite_input(X, where="X"):
    """Raise a ``ValueError`` if a numeric array ``X`` holds NaN or infinity."""
    try:
        arr = np.asarray(X)
    except Exception:  # dicts, datasets: the net's own loader validates them
        return
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        n_bad = int((~np.isfinite(arr)).sum())
        raise ValueError(f"{where} contains {n_bad} NaN or infinite values; the net cannot "
                         "train on them (impute or drop them, e.g. with a SimpleImputer step "
                         "in a Pipeline)")


def _check_fit_data(X, y, bare_net):
    n_x = _length(X)
    if n_x == 0:
        raise ValueError("X has 0 samples; at least one is required")
    n_y = None if y is None else _length(y)
    if n_x is not None and n_y is not None and n_x != n_y:
        raise ValueError(f"X and y have inconsistent numbers of samples: {n_x} and {n_y}")
    if bare_net:
        check_finite_input(X)


def _length(a):
    try:
        return _num_samples(a)
    except TypeError:
        return None


# --------------------------------------------------------------------------------------------
# training tasks
# --------------------------------------------------------------------------------------------

def run_trial(estimator, params, task_params, X, y, fit_params, error_score, probe=None):
    """Fit one candidate (in a worker) and optionally read something off it.

    Returns a dict with ``value`` (what ``probe(fitted_estimator, X)`` returned, else None),
    ``error`` ("" on success, the reason, starting "diverged:" for a non-finite loss,
    otherwise) and ``time``. The model is
    freed before returning. With ``error_score="raise"`` every error propagates.
    """
    start = time.perf_counter()
    # the candidate's values are cloned too (an estimator in the space is never fitted itself)
    est = clone(estimator).set_params(**clone(params, safe=False), **task_params)
    value, error = None, ""
    try:
        est.fit(X, y, **fit_params)
        value = probe(est, X) if probe is not None else None
    except Exception as exc:
        if error_score == "raise":
            raise
        diverged = isinstance(exc, TrainingDivergedError)
        error = f"diverged: {exc}" if diverged else f"{type(exc).__name__}: {exc}"
    finally:
        free_estimator(est)  # tolerates a net that never initialised
    return {"value": value, "error": error, "time": time.perf_counter() - start}


def results_table(params, scores, fit_times=None, score_times=None):
    """``cv_results_`` in GridSearchCV's schema for rows scored once (one split), for the
    methods that do not cross-validate: ``params`` (list of dicts), their ``scores`` (NaN for
    a failed row, ranked last as scikit-learn does) and optional per-row times."""
    n = len(params)
    res = {}
    for name, times in (("fit", fit_times), ("score", score_times)):
        res[f"mean_{name}_time"] = np.zeros(n) if times is None else np.asarray(times, float)
        res[f"std_{name}_time"] = np.zeros(n)
    for k in sorted({k for p in params for k in p}):
        col = np.ma.MaskedArray(np.empty(n, dtype=object), mask=[k not in p for p in params])
        for i, p in enumerate(params):
            if k in p:
                col[i] = p[k]
        res[f"param_{k}"] = col
    scores = np.asarray(scores, dtype=float)
    if np.isnan(scores).all():
        rank = np.ones(n, dtype=np.int32)
    else:
        filled = np.where(np.isnan(scores), np.nanmin(scores) - 1, scores)
        rank = rankdata(-filled, method="min").astype(np.int32)
    res.update({"params": list(params), "split0_test_score": scores,
                "mean_test_score": scores.copy(), "std_test_score": np.zeros(n),
                "rank_test_score": rank})
    return res


def history_columns(rows):
    """A list of row dicts -> a dict of equal-length lists (``pd.DataFrame``-ready)."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return {k: [row.get(k) for row in rows] for k in keys}


# --------------------------------------------------------------------------------------------
# the base class
# --------------------------------------------------------------------------------------------

class NetSearchCV(FusedCVMixin, BaseSearchCV):
    """Base class of the skhpo searches (not public).

    Subclasses implement ``_setup_search(X, y, fit_params)`` (sampling and checks, no
    training), ``_run_search(evaluate_candidates, *, callback_ctx=None)`` (the method) and may
    implement ``_check_search_params()`` (checks between constructor arguments).
    """

    _parameter_constraints: dict = {
        **BaseSearchCV._parameter_constraints,
        "random_state": ["random_state"],
        "checkpoint": [str, os.PathLike, None],
    }

    # -- fit --------------------------------------------------------------------------------

    def fit(self, X, y=None, **params):
        """Run the search: validate everything, then the method, then the refit.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Training data (anything the net accepts).
        y : array-like of shape (n_samples,) or (n_samples, n_outputs), default=None
            Targets.
        **params : dict
            Passed to the estimator's ``fit``, except ``groups``, which goes to the splitter
            only (as in ``GridSearchCV``).

        Returns
        -------
        self : object
            The fitted search.
        """
        fit_params = self._route(params)
        self._prepare(X, y, fit_params)
        self._fit_searching(lambda: super(NetSearchCV, self).fit(X, y, **params), X, y,
                            fit_params)
        self._after_refit()
        return self

    def _route(self, params):
        """The fit parameters for the net: ``groups`` goes to the splitter only (kept in
        ``_groups``), as scikit-learn routes it."""
        self._groups = params.get("groups")
        return {k: v for k, v in params.items() if k != "groups"}

    def _prepare(self, X, y, params):
        """Everything that happens before the first training: parameter, data and space
        checks, then the method's own setup."""
        self._validate_params()
        self._check_search_params()
        _, prefix = find_net(self.estimator)
        _check_fit_data(X, y, bare_net=(prefix == ""))
        check_module_output(self.estimator, X, y)
        # the folds are drawn once here, so that a split scikit-learn cannot make (more
        # folds than samples or than members of every class, groups missing) fails before any
        # training; scikit-learn < 1.9 sets n_splits_ only after the search: use _n_splits
        cv = check_cv(self.cv, y, classifier=is_classifier(self.estimator))
        self._n_splits = sum(1 for _ in cv.split(*indexable(X, y), groups=self._groups))
        self._setup_search(X, y, params)

    def _check_search_params(self):
        """Hook: checks between constructor arguments (no data, no training). None here."""

    @abstractmethod
    def _setup_search(self, X, y, fit_params):
        """Sample candidates and check them against the estimator and data, before any
        training."""

    # -- candidates and tasks -----------------------------------------------------------------

    def _check_candidate_names(self, candidates, where="param_distributions"):
        names = sorted({k for cand in candidates for k in cand})
        check_param_names(self.estimator, names, where=where)
        _, prefix = find_net(self.estimator)
        if f"{prefix}callbacks" in names:
            raise ValueError(f"{where}: searching over {prefix}callbacks is not supported; "
                             "search over callback parameters (callbacks__<name>__<arg>)")

    def _run_trials(self, tasks):
        """Run ``run_trial`` on each task dict through ``joblib.Parallel(n_jobs)``."""
        parallel = Parallel(n_jobs=self.n_jobs, pre_dispatch=self.pre_dispatch,
                            return_as="generator")  # each result as soon as it is done
        return parallel(delayed(run_trial)(**task) for task in tasks)

    def _train_candidates(self, candidates, seeds, X, y, fit_params, probe, callbacks=None,
                          first_index=0, phase=None, **net_overrides):
        """Train every candidate (its seed, its extra ``callbacks`` — ``(name, callback)``
        pairs, one list per candidate — and the ``net_overrides`` such as ``max_epochs``) and
        read ``probe(fitted, X)`` off it: in fused groups where ``engine`` allows
        (:class:`skhpo.fused.FusedTrainer`), the others through :meth:`_run_trials`. Returns
        :func:`run_trial`'s dicts plus ``group`` (-1: trained alone) and ``engine_reason``
        (why alone). Each finished training is reported to ``phase``
        (:class:`~skhpo.search._progress.Phase`) and written to the checkpoint, if any."""
        engine = getattr(self, "engine", "sequential")
        prefix = find_net(self.estimator)[1]
        overrides = {prefix + k: v for k, v in net_overrides.items()}
        callbacks = callbacks or [()] * len(candidates)
        fused = [FusedTask({**cand, **overrides}, seed=seed, callbacks=tuple(cbs))
                 for cand, seed, cbs in zip(candidates, seeds, callbacks)]
        # with a checkpoint: the trainings it holds are loaded, the others written as each
        # finishes
        ck = getattr(self, "_checkpoint", None)
        keys = [None] * len(fused) if ck is None else \
            [ck.key("trial", t.params, t.seed, [name for name, _ in t.callbacks]) for t in fused]
        outs = [None if k is None else ck.load("trial", k) for k in keys]
        todo = [i for i, out in enumerate(outs) if out is None]

        def finished(i, out, write=True):
            outs[i] = out
            if phase is not None:
                phase.done(first_index + i)
            if ck is not None and write:
                ck.save("trial", keys[i], out)

        if fit_params:
            groups, alone = [], dict.fromkeys(range(len(fused)), "fit parameters")
            if engine == "fused":
                raise ValueError("engine='fused' cannot pass fit parameters to a fused group; "
                                 f"got {sorted(fit_params)}")
        else:  # planned over every task, loaded or not: a task trains as in the whole plan
            groups, alone = FusedTrainer(self.estimator, engine=engine).plan(fused)
        todo_set = set(todo)
        groups = [[i for i in g if i in todo_set] for g in groups]  # numbers kept
        trainer = FusedTrainer(self.estimator, engine="fused" if engine == "fused" else "auto",
                               n_jobs=self.n_jobs)
        trainer.fit(fused, X, y, plan=(groups, {}),
                    on_result=lambda i, result: finished(i, self._probe_fused(result, X, probe),
                                                         write=False),
                    on_group=lambda done: ck is not None and ck.save_many(
                        "trial", {keys[i]: outs[i] for i in done}))
        solo = sorted(i for i in alone if i in todo_set)
        reasons = alone
        tasks = [dict(estimator=self.estimator, params=candidates[i],
                      task_params=self._task_params(seeds[i], first_index + i,
                                                    extra_callbacks=list(callbacks[i]),
                                                    **net_overrides),
                      X=X, y=y, fit_params=fit_params, error_score=self.error_score,
                      probe=probe)
                 for i in solo]
        for out, i in zip(self._run_trials(tasks), solo):  # the generator runs to its end
            finished(i, {**out, "group": -1, "engine_reason": reasons[i]})
        return outs

    def _probe_fused(self, result, X, probe):
        """:func:`run_trial`'s dict for a task the fused engine trained."""
        start = time.perf_counter()
        value, error = None, result.error
        if error and self.error_score == "raise":
            raise (TrainingDivergedError if error.startswith("diverged") else RuntimeError)(
                error)
        if not error:
            try:
                value = probe(result.estimator, X) if probe is not None else None
            except Exception as exc:
                if self.error_score == "raise":
                    raise
                error = f"{type(exc).__name__}: {exc}"
            finally:
                free_estimator(result.estimator)
        return {"value": value, "error": error,
                "time": result.fit_time + time.perf_counter() - start,
                "group": result.group, "engine_reason": result.reason}

    def _warn_failures(self, failures, n_total, stage):
        if failures:
            reasons = "\n".join(f"  {r}" for r in sorted(set(failures))[:5])
            warnings.warn(f"{len(failures)} of the {n_total} {stage} fits failed; they are "
                          f"excluded (error_score={self.error_score!r}). Reasons:\n{reasons}",
                          FitFailedWarning, stacklevel=3)

    # -- after the search -----------------------------------------------------------------------

    def _after_refit(self):
        """Count the refit's epochs and fail loudly if the refit diverged."""
        if not self.refit or not hasattr(self, "best_estimator_"):
            return
        if hasattr(self, "n_epochs_"):
            self.n_epochs_ += self._nominal_epochs(self.best_params_)
        if hasattr(self, "n_trainings_"):
            self.n_trainings_ += 1
        net, _ = find_net(self.best_estimator_)
        try:
            losses = net.history[:, "train_loss"]
        except Exception:
            return
        if not all(math.isfinite(v) for v in losses):
            raise TrainingDivergedError(
                "the refit of the best candidate on the whole data diverged (non-finite "
                f"training loss) with params {self.best_params_}")

    def _nominal_epochs(self, params):
        net, prefix = find_net(self.estimator)
        return int(params.get(f"{prefix}max_epochs", net.max_epochs))


# --------------------------------------------------------------------------------------------
# methods with their own training loop (one held-out validation part)
# --------------------------------------------------------------------------------------------

class HoldoutSearch(BaseSearchCV):
    """Template of the methods that train their models on one held-out split instead of
    cross-validating candidates (PopulationMutationSearch, CuttingPlaneTuner,
    HyperLocalRefiner).

    ``fit`` runs, in this order: parameter validation (``_parameter_constraints``), the
    ``_check_search_params`` hook (checks between arguments, no data), ``_draw_seeds(rng)``
    (the leaf's seeds: the split's and its own), ``_holdout`` (data checks, the split and the
    preprocessing, no training), ``_search(data, seeds, rng)`` (the method, which returns a
    :class:`HoldoutResult`), then the results (``cv_results_`` with one split, ``best_*``,
    ``history_``, ``n_epochs_``, ``n_trainings_``) and the refit policy. A leaf implements
    ``_search`` and ``_draw_seeds`` only; ``predict``, ``predict_proba``, ``score``,
    ``transform``, ``classes_`` and ``n_features_in_`` are scikit-learn's, forwarded to
    ``best_estimator_``.

    ``refit``: a string (``"student"``, ``"tuned"``) keeps the model the method trained as
    ``best_estimator_``; ``True`` retrains the estimator on all of ``X`` with the chosen
    hyper-parameters held fixed; ``False`` keeps no model.
    """

    _parameter_constraints: dict = {
        "estimator": [HasMethods(["fit"])],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "scoring": [str, callable, None],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def fit(self, X, y=None, **params):
        """Split off the validation part, run the method, then apply the refit policy.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,)
            Targets.
        **params : dict
            Not supported by the methods that train with their own loop (a ``TypeError``
            names them); see the class for the ones it takes.

        Returns
        -------
        self : object
            The fitted search.
        """
        self._validate_params()
        self._check_search_params()
        check_checkpoint(self)
        rng = check_random_state(self.random_state)
        split_seed, seeds = self._draw_seeds(rng)
        data = self._holdout(X, y, params, split_seed)
        if getattr(self, "checkpoint", None) is not None:  # the methods that resume
            space = next((getattr(self, name) for name in ("param_bounds", "hyperparams",
                                                           "continuous") if hasattr(self, name)),
                         None)
            self._checkpoint = Checkpoint(self.checkpoint, search_parts(self, space, X, y))
        with root_context(self, X, y) as ctx:  # scikit-learn's callbacks, if any
            self._search_ctx = ctx
            start = time.perf_counter()
            try:
                result = self._search(data, seeds, rng)
            finally:
                self.__dict__.pop("_checkpoint", None)
                self.__dict__.pop("_search_ctx", None)
            self.search_time_ = time.perf_counter() - start
            self._set_results(result)
            with Phase(self, ctx if self.refit is True else None, "refit", 0):  # a leaf
                self._set_best_estimator(result, data, X, y)
        return self

    def _check_search_params(self):
        """Hook: checks between constructor arguments (no data, no training). None here."""

    @abstractmethod
    def _draw_seeds(self, rng):
        """``(seed of the validation split, the method's own seeds)`` drawn from ``rng``."""

    @abstractmethod
    def _search(self, data, seeds, rng):
        """Run the method on ``data`` (a :class:`Holdout`); return a :class:`HoldoutResult`."""

    def _holdout(self, X, y, fit_params, seed):
        """Checks (no training), then ``X``, ``y`` split by ``validation_fraction`` and passed
        through the Pipeline's earlier steps (fitted on the training part)."""
        if fit_params:
            raise TypeError(f"{type(self).__name__}.fit got fit parameters "
                            f"{sorted(fit_params)}; they are not supported (the search trains "
                            "the net with its own loop)")
        net, prefix = find_net(self.estimator)
        _check_fit_data(X, y, bare_net=(prefix == ""))
        if y is None:
            raise ValueError(f"{type(self).__name__} needs y (supervised nets only)")
        check_module_output(self.estimator, X, y)
        self.scorer_ = check_scoring(self.estimator, self.scoring)
        X_tr, X_val, y_tr, y_val = holdout_split(self.estimator, X, y,
                                                 self.validation_fraction, seed)
        pre, net = fit_preprocessing(self.estimator, X_tr, y_tr)
        return Holdout(net, prefix, pre, X_tr, X_val, np.asarray(y_tr), np.asarray(y_val),
                       as_float_array(pre, X_tr), as_float_array(pre, X_val))

    def _initialised_net(self, data):
        """An initialised, untrained copy of the net (``max_epochs=0``: module sized and
        classes read from the training part) and the training and validation targets as its
        loss takes them (class indices for skhpo classifiers), as tensors."""
        plain = clone(data.net).set_params(max_epochs=0, train_split=None)
        plain.fit(data.Xt, data.y_tr)
        encode = getattr(plain, "_check_y", None)

        def targets(y):
            return torch.as_tensor(encode(y, reset=False) if encode else np.asarray(y))
        return plain, targets(data.y_tr), targets(data.y_val)

    def _with_preprocessing(self, data, net):
        """``net`` behind the fitted preprocessing steps (a Pipeline), or ``net`` itself."""
        if data.pre is None:
            return net
        return Pipeline([*data.pre.steps, (self.estimator.steps[-1][0], net)])

    def _set_results(self, result):
        """``cv_results_`` (one split, plus ``val_loss``), ``best_*``, ``history_`` and the
        cost counters, from the method's result."""
        self.cv_results_ = results_table(result.params, result.scores, result.fit_times,
                                         result.score_times)
        if result.val_losses is not None:
            self.cv_results_["val_loss"] = np.asarray(result.val_losses, dtype=float)
        self.best_index_ = int(result.best)
        self.best_params_ = dict(result.params[result.best])
        self.best_score_ = float(result.scores[result.best])
        self.n_splits_ = 1
        self.multimetric_ = False
        self.history_ = history_columns(result.history)
        self.n_epochs_ = result.epochs
        self.n_trainings_ = result.trainings

    def _set_best_estimator(self, result, data, X, y):
        """The refit policy (see the class docstring)."""
        self.refit_time_ = 0.0
        if isinstance(self.refit, str):
            self.best_estimator_ = result.model
            return
        if result.model is not None:
            free_estimator(result.model)
        if not self.refit:
            return
        t0 = time.perf_counter()
        params = plain_net_params(self.estimator, data.prefix, self.best_params_,
                                  result.refit_epochs, result.coefs)
        self.best_estimator_ = clone(self.estimator).set_params(**params).fit(X, y)
        self.refit_time_ = time.perf_counter() - t0
        self.n_epochs_ += result.refit_epochs
        self.n_trainings_ += 1


@dataclass
class HoldoutResult:
    """What a hold-out method hands back to :class:`HoldoutSearch`.

    ``params``, ``scores`` (on the validation part; NaN for a failed row), ``fit_times``,
    ``score_times`` and ``val_losses`` (or None): one entry per row of ``cv_results_``;
    ``best``: the chosen row; ``model``: the chosen model as the method trained it (the
    ``best_estimator_`` of a string ``refit``), behind the preprocessing; ``history``: the
    rows of ``history_``; ``epochs`` and ``trainings``: the cost, without a refit;
    ``refit_epochs`` and ``coefs`` (the net's per-layer ``l2``/``l1`` before tuning): what
    ``refit=True`` retrains with.
    """

    params: list
    scores: list
    best: int
    model: object
    history: list
    epochs: float
    trainings: int
    fit_times: list | None = None
    score_times: list | None = None
    val_losses: list | None = None
    refit_epochs: int = 0
    coefs: dict = field(default_factory=dict)


@dataclass
class Holdout:
    """The data of one hold-out fit: the net and its prefix, the fitted preprocessing (or
    None), the raw split and the float32 arrays the net sees."""

    net: object
    prefix: str
    pre: object
    X_tr: object
    X_val: object
    y_tr: np.ndarray
    y_val: np.ndarray
    Xt: np.ndarray
    Xv: np.ndarray


def holdout_split(estimator, X, y, fraction, seed):
    """``X_train, X_val, y_train, y_val``: a seeded shuffled split, stratified for
    classifiers when every class allows it."""
    stratify = y if is_classifier(estimator) else None
    try:
        return train_test_split(X, y, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError:  # a class too small to stratify
        return train_test_split(X, y, test_size=fraction, random_state=seed)


def fit_preprocessing(estimator, X, y):
    """``(fitted steps before the net or None, the net)``."""
    net, prefix = find_net(estimator)
    if not prefix or len(estimator.steps) == 1:
        return None, net
    return clone(estimator[:-1]).fit(X, y), net


def as_float_array(pre, X):
    """``X`` through the fitted preprocessing ``pre`` (if any) as a contiguous float32 array."""
    X = X if pre is None else pre.transform(X)
    if sp.issparse(X):
        raise TypeError("sparse input is not supported: this search trains on dense float32 "
                        "arrays; densify X (X.toarray()) or make the Pipeline's last "
                        "transformer dense (e.g. OneHotEncoder(sparse_output=False))")
    return np.ascontiguousarray(np.asarray(X, dtype=np.float32))


def plain_net_params(estimator, prefix, best, max_epochs, coefs):
    """``set_params`` of a plain net that trains with the final hyper-parameters fixed
    (``coefs``: the net's per-layer ``l2``/``l1`` coefficients before tuning)."""
    net, _ = find_net(estimator)
    out, rates = {f"{prefix}max_epochs": max_epochs}, {}
    for name, value in best.items():
        pname = parse_name(name, prefix)
        if pname.kind == "dropout" and pname.path is not None:
            rates[pname.path] = value
        elif pname.kind in ("l2", "l1") and pname.index is not None:
            key = f"{prefix}{pname.kind}"
            layer_coefs = out.setdefault(key, list(coefs[pname.kind]))
            layer_coefs[pname.index] = value
        else:
            out[name] = value
    if rates:
        out[f"{prefix}callbacks"] = user_callbacks(net) + [("skhpo_dropout_rates",
                                                            DropoutRates(rates))]
    return out
