"""The template of the methods that train on one held-out split with their own loop:
:class:`HoldoutSearch` (PopulationMutationSearch, CuttingPlaneTuner, HyperLocalRefiner).

``fit`` runs, in this order:

1. parameter validation (``_parameter_constraints``, once, by ``_fit_context``), the
   ``_check_search_params`` hook (checks between arguments, no data) and the checkpoint's
   checks;
2. ``_draw_seeds(rng)``: the leaf's seeds (the split's and its own);
3. ``_holdout``: data checks, the split by ``validation_fraction`` and the preprocessing,
   no training;
4. ``_search(run)``: the method, given a :class:`HoldoutRun` (the data, its seeds, the
   generator, the checkpoint and the progress context), returns a :class:`HoldoutResult`;
5. the results: ``cv_results_`` with one split, ``best_*``, ``history_``, ``n_epochs_``,
   ``n_trainings_`` and the method's own attributes (``HoldoutResult.attributes``), then
   the refit policy.

``refit`` means one thing in every leaf: ``"trained"`` keeps the model the method trained
as ``best_estimator_``; ``True`` retrains the estimator on all of ``X`` with the chosen
hyper-parameters held fixed; ``False`` keeps no model.
"""

import time
from abc import abstractmethod
from dataclasses import dataclass, field
from numbers import Real

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.base import _fit_context, clone, is_classifier
from sklearn.metrics import check_scoring
from sklearn.model_selection import train_test_split
from sklearn.model_selection._search import BaseSearchCV
from sklearn.pipeline import Pipeline
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions

from ..checkpoint import Checkpoint, check_checkpoint, search_parts
from ..fused import check_n_jobs
from ..hyper.layers import DropoutRates
from ..hyper.space import parse_name
from ..nets import check_module_output, find_net, free_estimator, net_y, user_callbacks
from ._progress import Phase, root_context
from ._trials import check_fit_data, history_columns, results_table

__all__ = ["Holdout", "HoldoutResult", "HoldoutRun", "HoldoutSearch", "as_float_array",
           "fit_preprocessing", "holdout_split", "plain_net_params"]


class HoldoutSearch(BaseSearchCV):
    """Base class of the methods that train on one held-out split (not public).

    A leaf implements ``_draw_seeds(rng)`` and ``_search(run)``, names its space parameter
    in ``_space_param``, and may implement ``_check_search_params()``; ``predict``,
    ``predict_proba``, ``score``, ``transform``, ``classes_`` and ``n_features_in_`` are
    scikit-learn's, forwarded to ``best_estimator_``.
    """

    _space_param = "param_bounds"

    _parameter_constraints: dict = {
        "estimator": [HasMethods(["fit"])],
        "scoring": [str, callable, None],
        "refit": ["boolean", StrOptions({"trained"})],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def _space(self):
        """The search space the user gave (the one hook every search reads it through)."""
        return getattr(self, self._space_param)

    @_fit_context(prefer_skip_nested_validation=False)
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
        self._check_search_params()
        check_checkpoint(self)
        if hasattr(self, "n_jobs"):
            check_n_jobs(self.n_jobs)
        rng = check_random_state(self.random_state)
        split_seed, seeds = self._draw_seeds(rng)
        data = self._holdout(X, y, params, split_seed)
        checkpoint = None if self.checkpoint is None else \
            Checkpoint(self.checkpoint, search_parts(self, X, y))
        with root_context(self, X, y) as ctx:  # scikit-learn's callbacks, if any
            start = time.perf_counter()
            result = self._search(HoldoutRun(data, seeds, rng, checkpoint, ctx))
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
    def _search(self, run):
        """Run the method (``run``: a :class:`HoldoutRun`); return a :class:`HoldoutResult`."""

    def _holdout(self, X, y, fit_params, seed):
        """Checks (no training), then ``X``, ``y`` split by ``validation_fraction`` and passed
        through the Pipeline's earlier steps (fitted on the training part)."""
        if fit_params:
            raise TypeError(f"{type(self).__name__}.fit got fit parameters "
                            f"{sorted(fit_params)}; they are not supported (the search trains "
                            "the net with its own loop)")
        net, prefix = find_net(self.estimator)
        check_fit_data(X, y, bare_net=(prefix == ""))
        if y is None:
            raise ValueError(f"{type(self).__name__} needs y (supervised nets only)")
        check_module_output(self.estimator, X, y)
        self.scorer_ = check_scoring(self.estimator, self.scoring)
        X_tr, X_val, y_tr, y_val = holdout_split(self.estimator, X, y,
                                                 self.validation_fraction, seed)
        pre, net = fit_preprocessing(self.estimator, X_tr, y_tr)
        return Holdout(net, prefix, pre, X_tr, X_val, np.asarray(y_tr), np.asarray(y_val),
                       as_float_array(pre, X_tr), as_float_array(pre, X_val))

    def _resume(self, run, stage, phase, total, unit):
        """The one resume preamble of the methods that checkpoint their own loop.

        Returns ``(state, done, progress)``: the state the checkpoint holds for ``stage``
        (None without a checkpoint or before the first save), the units it completed (its
        ``"done"``) and the ``phase`` of ``total`` units (:class:`~._progress.Phase`), with
        those units reported as ``unit``s.
        """
        state = None if run.checkpoint is None else run.checkpoint.load(stage, "state")
        done = 0 if state is None else int(state["done"])
        progress = Phase(self, run.ctx, phase, total)
        for i in range(done):
            progress.done(i, unit)  # loaded from the checkpoint
        return state, done, progress

    def _initialised_net(self, data):
        """An initialised, untrained copy of the net (``max_epochs=0``: module sized and
        classes read from the training part) and the training and validation targets as its
        loss takes them (class indices for skhpo classifiers), as tensors."""
        plain = clone(data.net).set_params(max_epochs=0, train_split=None)
        plain.fit(data.Xt, data.y_tr)
        return plain, torch.as_tensor(net_y(plain, data.y_tr)), \
            torch.as_tensor(net_y(plain, data.y_val))

    def _with_preprocessing(self, data, net):
        """``net`` behind the fitted preprocessing steps (a Pipeline), or ``net`` itself."""
        if data.pre is None:
            return net
        return Pipeline([*data.pre.steps, (self.estimator.steps[-1][0], net)])

    def _set_results(self, result):
        """``cv_results_`` (one split, plus ``val_loss``), ``best_*``, ``history_``, the cost
        counters and the method's own attributes, from the method's result."""
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
        for name, value in result.attributes.items():
            setattr(self, name, value)

    def _set_best_estimator(self, result, data, X, y):
        """The refit policy (see the module docstring)."""
        self.refit_time_ = 0.0
        if self.refit == "trained":
            self.best_estimator_ = result.model
            return
        if result.model is not None:
            free_estimator(result.model)
        if not self.refit:
            return
        t0 = time.perf_counter()
        estimator, X, y = self._refit_inputs(data, X, y)
        self.best_estimator_ = clone(estimator).set_params(**result.refit_params).fit(X, y)
        self.refit_time_ = time.perf_counter() - t0
        self.n_epochs_ += result.refit_epochs
        self.n_trainings_ += 1

    def _refit_inputs(self, data, X, y):
        """``(estimator, X, y)`` of ``refit=True``: the estimator and the whole data (``data``:
        the fit's :class:`Holdout`)."""
        return self.estimator, X, y


@dataclass
class HoldoutRun:
    """What :meth:`HoldoutSearch._search` is given.

    Attributes
    ----------
    data : Holdout
        The split and the preprocessed arrays.
    seeds : object
        The leaf's own seeds (``_draw_seeds``).
    rng : numpy.random.RandomState
        The fit's generator, after the seeds were drawn.
    checkpoint : skhpo.checkpoint.Checkpoint or None
    ctx : object
        The fit's progress context (None without scikit-learn's callbacks).
    """

    data: object
    seeds: object
    rng: object
    checkpoint: object = None
    ctx: object = None


@dataclass
class HoldoutResult:
    """What a hold-out method hands back to :class:`HoldoutSearch`.

    Attributes
    ----------
    params, scores : list
        One entry per row of ``cv_results_``: the hyper-parameters and their score on the
        validation part (NaN for a failed row).
    best : int
        The chosen row.
    model : estimator or None
        The chosen model as the method trained it, behind the preprocessing (the
        ``best_estimator_`` of ``refit="trained"``).
    history : list of dict
        The rows of ``history_``.
    epochs : float
        Training epochs spent, without a refit.
    trainings : int
        Nets trained, without a refit.
    fit_times, score_times, val_losses : list or None
        Per row of ``cv_results_`` (``val_losses`` becomes its ``val_loss`` column).
    refit_params : dict
        What ``refit=True`` sets on a clone of the estimator before fitting it on all of X.
    refit_epochs : int
        The epochs of that refit.
    attributes : dict
        The method's own fitted attributes (``name_`` -> value), set on the search.
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
    refit_params: dict = field(default_factory=dict)
    refit_epochs: int = 0
    attributes: dict = field(default_factory=dict)


@dataclass
class Holdout:
    """The data of one hold-out fit.

    Attributes
    ----------
    net : skorch net
        The user's net (the Pipeline's last step).
    prefix : str
        Its parameter prefix in the estimator ("" for a bare net).
    pre : Pipeline or None
        The steps before the net, fitted on the training part.
    X_tr, X_val, y_tr, y_val : array-like
        The split as the user's data holds it.
    Xt, Xv : numpy.ndarray
        The training and validation parts as the net sees them (float32).
    """

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


def plain_net_params(estimator, best, max_epochs, coefs):
    """``set_params`` of a plain net that trains with the final hyper-parameters ``best``
    fixed, for ``max_epochs`` (``coefs``: the net's per-layer ``l2``/``l1`` coefficients
    before tuning)."""
    net, prefix = find_net(estimator)
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
