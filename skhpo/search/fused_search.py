"""``FusedRandomizedSearchCV`` and ``FusedGridSearchCV``: scikit-learn's two searches, with the
fits of skhpo's tabular MLPs trained in fused groups.

For an estimator the fused engine trains (skhpo's ``TabularMLPClassifier`` /
``TabularMLPRegressor``, alone or at the end of a Pipeline; see docs/fused.md), every (candidate,
fold) is trained first in fused groups, each candidate's fits seeded from ``random_state``; then
scikit-learn's own cross-validation runs with fits that load those folds
(:class:`~skhpo.fused.prefit.PrefitStates`). For any other estimator, or with
``engine="sequential"``, the class is scikit-learn's search, unchanged.
"""

from __future__ import annotations

import os

import numpy as np
from sklearn.model_selection import GridSearchCV, ParameterGrid, ParameterSampler
from sklearn.model_selection import RandomizedSearchCV as _RandomizedSearchCV
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import StrOptions

from ..fused import ENGINES, unfusible
from ._fused_cv import FusedCVMixin

__all__ = ["FusedGridSearchCV", "FusedRandomizedSearchCV"]


class _FusedDropIn(FusedCVMixin):
    """What both drop-ins add to scikit-learn's search."""

    def fit(self, X, y=None, **params):
        """As scikit-learn's ``fit``; the fits of a fusible estimator train in fused groups
        first (see the class)."""
        fit_params = {k: v for k, v in params.items() if k != "groups"}
        self._groups = params.get("groups")
        if getattr(self, "checkpoint", None) is not None:
            self._validate_params()
        self._fit_searching(lambda: super(_FusedDropIn, self).fit(X, y, **params), X, y,
                            fit_params)
        return self

    def _fuses(self):
        """Whether the fits train first (fused where they can): a fusible estimator, or any
        net with a checkpoint."""
        if getattr(self, "_checkpoint", None) is not None:
            return True
        return self.engine != "sequential" and not unfusible(self.estimator)

    def _run_search(self, evaluate_candidates, *, callback_ctx=None):
        """scikit-learn's own search, its fits trained in fused groups first if the estimator
        fuses."""
        if not self._fuses():
            if self.engine == "fused":
                raise ValueError(f"engine='fused': {type(self).__name__} cannot fuse this "
                                 f"estimator: {unfusible(self.estimator)}")
            return super()._run_search(evaluate_candidates, callback_ctx=callback_ctx)
        self._n_splits = self.n_splits_
        candidates = self._candidates()
        seeds = self._spawn_seeds(check_random_state(self.random_state), len(candidates))
        with self._searching(callback_ctx):
            return self._evaluate(evaluate_candidates, candidates, seeds,
                                  callback_ctx=callback_ctx)


class FusedRandomizedSearchCV(_FusedDropIn, _RandomizedSearchCV):
    """scikit-learn's ``RandomizedSearchCV`` with the fits of skhpo's tabular MLPs trained in
    fused groups.

    Same signature, attributes and ``cv_results_`` as ``RandomizedSearchCV``, plus ``engine``.
    The candidates are scikit-learn's (``ParameterSampler`` with ``random_state``); for an
    estimator the fused engine trains, every candidate's fits are seeded from
    ``random_state`` (so results are reproducible, and ``n_jobs`` does not change them) and
    equal the same seeded fits trained one by one to float32 rounding; ``mean_fit_time``
    includes each fit's share of its fused group's time.

    Parameters
    ----------
    estimator, param_distributions, n_iter, scoring, n_jobs, refit, cv, verbose, pre_dispatch, \
random_state, error_score, return_train_score
        As in ``RandomizedSearchCV``.
    engine : {"auto", "fused", "sequential"}, default="auto"
        ``"auto"``: fuse where the engine can (groups of two or more tasks of one
        architecture and batch size), else scikit-learn's fits; ``"fused"``: a ``ValueError``
        before any training if the estimator cannot fuse; ``"sequential"``: exactly
        scikit-learn's search.
    checkpoint : str, path or None, default=None
        A folder that keeps every finished fit, so that an interrupted ``fit`` resumes
        without retraining it (as in :class:`~skhpo.FlatnessSearchCV`; docs/core.md). Needs
        an int ``random_state``, a skorch net and no fit parameters; every fit is then seeded
        from ``random_state``, also for nets that cannot fuse.

    Examples
    --------
    >>> from scipy.stats import loguniform
    >>> from sklearn.datasets import load_iris
    >>> from skhpo import FusedRandomizedSearchCV, TabularMLPClassifier
    >>> X, y = load_iris(return_X_y=True)
    >>> search = FusedRandomizedSearchCV(TabularMLPClassifier(max_epochs=5),
    ...                                  {"lr": loguniform(1e-3, 1e-1)}, n_iter=4, cv=2,
    ...                                  random_state=0).fit(X, y)
    >>> len(search.cv_results_["params"]), sorted(search.best_params_)
    (4, ['lr'])
    """

    _parameter_constraints: dict = {
        **_RandomizedSearchCV._parameter_constraints,
        "engine": [StrOptions(set(ENGINES))],
        "checkpoint": [str, os.PathLike, None],
    }

    def __init__(self, estimator, param_distributions, *, n_iter=10, scoring=None, n_jobs=None,
                 refit=True, cv=None, verbose=0, pre_dispatch="2*n_jobs", random_state=None,
                 error_score=np.nan, return_train_score=False, engine="auto", checkpoint=None):
        super().__init__(estimator, param_distributions, n_iter=n_iter, scoring=scoring,
                         n_jobs=n_jobs, refit=refit, cv=cv, verbose=verbose,
                         pre_dispatch=pre_dispatch, random_state=random_state,
                         error_score=error_score, return_train_score=return_train_score)
        self.engine = engine
        self.checkpoint = checkpoint

    def _candidates(self):
        return list(ParameterSampler(self.param_distributions, self.n_iter,
                                     random_state=self.random_state))


class FusedGridSearchCV(_FusedDropIn, GridSearchCV):
    """scikit-learn's ``GridSearchCV`` with the fits of skhpo's tabular MLPs trained in fused
    groups.

    Same signature, attributes and ``cv_results_`` as ``GridSearchCV``, plus ``engine`` and
    ``random_state`` (which seeds every candidate's fits when the estimator fuses; None: a fresh
    seed per fit call).

    Parameters
    ----------
    estimator, param_grid, scoring, n_jobs, refit, cv, verbose, pre_dispatch, error_score, \
return_train_score
        As in ``GridSearchCV``.
    engine : {"auto", "fused", "sequential"}, default="auto"
        As in :class:`FusedRandomizedSearchCV`.
    checkpoint : str, path or None, default=None
        As in :class:`FusedRandomizedSearchCV`.
    random_state : int, RandomState or None, default=None
        Seeds the fits of a fusible estimator.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from skhpo import FusedGridSearchCV, TabularMLPClassifier
    >>> X, y = load_iris(return_X_y=True)
    >>> search = FusedGridSearchCV(TabularMLPClassifier(max_epochs=5),
    ...                            {"lr": [1e-3, 1e-2, 1e-1]}, cv=2, random_state=0).fit(X, y)
    >>> len(search.cv_results_["params"]), sorted(search.best_params_)
    (3, ['lr'])
    """

    _parameter_constraints: dict = {
        **GridSearchCV._parameter_constraints,
        "engine": [StrOptions(set(ENGINES))],
        "random_state": ["random_state"],
        "checkpoint": [str, os.PathLike, None],
    }

    def __init__(self, estimator, param_grid, *, scoring=None, n_jobs=None, refit=True, cv=None,
                 verbose=0, pre_dispatch="2*n_jobs", error_score=np.nan,
                 return_train_score=False, engine="auto", random_state=None, checkpoint=None):
        super().__init__(estimator, param_grid, scoring=scoring, n_jobs=n_jobs, refit=refit,
                         cv=cv, verbose=verbose, pre_dispatch=pre_dispatch,
                         error_score=error_score, return_train_score=return_train_score)
        self.engine = engine
        self.random_state = random_state
        self.checkpoint = checkpoint

    def _candidates(self):
        return list(ParameterGrid(self.param_grid))
