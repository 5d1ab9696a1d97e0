"""``FusedRandomizedSearchCV`` and ``FusedGridSearchCV``: scikit-learn's two searches, with the
fits of skorch nets trained in fused groups.

For an estimator the fused engine trains (skorch nets, alone or at the end of a Pipeline;
what fuses: :mod:`skhpo.fused.eligibility`, docs/fused.md), every (candidate, fold) is
trained first in fused groups, each candidate's fits seeded from ``random_state``; then
scikit-learn's own cross-validation runs with fits that load those folds
(:class:`~skhpo.fused.prefit.PrefitStates`). For any other estimator, or with
``engine="sequential"``, the class is scikit-learn's search, unchanged. :func:`as_fused`
turns a scikit-learn search into its drop-in.
"""

from numbers import Integral

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, ParameterGrid, ParameterSampler
from sklearn.model_selection import RandomizedSearchCV as _RandomizedSearchCV

from ._drop_in import _FusedDropIn, with_engine
from .fused_halving import HALVING_DROP_INS

__all__ = ["FusedGridSearchCV", "FusedRandomizedSearchCV", "as_fused"]


def as_fused(search, engine="auto", random_state=None):
    """A clone of the unfitted ``search`` to run: scikit-learn's ``RandomizedSearchCV`` /
    ``GridSearchCV`` / ``HalvingRandomSearchCV`` / ``HalvingGridSearchCV`` becomes its fused
    drop-in with ``engine`` (a grid's fits seeded from ``random_state``, when it is an int);
    any other search, or ``engine="sequential"``, a plain clone."""
    drop_ins = {_RandomizedSearchCV: FusedRandomizedSearchCV, GridSearchCV: FusedGridSearchCV,
                **HALVING_DROP_INS}
    if engine == "sequential" or type(search) not in drop_ins:
        return clone(search)
    params = clone(search).get_params(deep=False)
    if "random_state" not in params:  # the grid: its fits seeded from the caller's seed
        params["random_state"] = random_state if isinstance(random_state, Integral) else None
    return drop_ins[type(search)](**params, engine=engine)


class FusedRandomizedSearchCV(_FusedDropIn, _RandomizedSearchCV):
    """scikit-learn's ``RandomizedSearchCV`` with the fits of skorch nets trained in fused
    groups.

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

    Attributes
    ----------
    cv_results_, best_params_, best_index_, best_score_, best_estimator_, refit_time_, \
scorer_, n_splits_, multimetric_
        As in scikit-learn's search.
    engine_ : {"fused", "sequential", "mixed"}
        How the search's trainings ran: all in fused groups, all alone, or some of each.
    engine_reason_ : str
        What kept trainings from fusing, most frequent first, each with how many trainings
        it kept alone ("" when every training fused); printed with ``engine="auto"`` and
        ``verbose >= 1``.
    candidate_engines_, candidate_reasons_ : list of str
        The same per candidate of ``cv_results_`` (over its cross-validation fits).
    n_resumed_ : int
        Fits loaded from ``checkpoint`` (0 without one).

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

    _parameter_constraints: dict = with_engine(_RandomizedSearchCV._parameter_constraints)

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
    """scikit-learn's ``GridSearchCV`` with the fits of skorch nets trained in fused groups.

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

    Attributes
    ----------
    cv_results_, best_params_, best_index_, best_score_, best_estimator_, refit_time_, \
scorer_, n_splits_, multimetric_
        As in scikit-learn's search.
    engine_ : {"fused", "sequential", "mixed"}
        How the search's trainings ran: all in fused groups, all alone, or some of each.
    engine_reason_ : str
        What kept trainings from fusing, most frequent first, each with how many trainings
        it kept alone ("" when every training fused); printed with ``engine="auto"`` and
        ``verbose >= 1``.
    candidate_engines_, candidate_reasons_ : list of str
        The same per candidate of ``cv_results_`` (over its cross-validation fits).
    n_resumed_ : int
        Fits loaded from ``checkpoint`` (0 without one).

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

    _parameter_constraints: dict = {**with_engine(GridSearchCV._parameter_constraints),
                                    "random_state": ["random_state"]}

    _space_param = "param_grid"

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
