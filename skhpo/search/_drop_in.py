"""What every fused drop-in adds to the scikit-learn search it replaces: ``fit`` with its
fit state, ``n_jobs`` given to the fused engine's processes, ``_run_search`` through the
seeded, fused cross-validation of :class:`~._fused_cv.FusedCVMixin`, and the ``engine`` /
``checkpoint`` parameters (:func:`with_engine`)."""

import os
from contextlib import contextmanager

from sklearn.base import _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import StrOptions

from ..fused import ENGINES, choose_engine, n_workers, trains_on_cpu
from ..fused.eligibility import data_reason
from ._fused_cv import FusedCVMixin
from ._state import FitState, sklearn_fit

__all__ = ["with_engine"]


def with_engine(constraints):
    """A scikit-learn search's parameter constraints, with a drop-in's ``engine`` and
    ``checkpoint``."""
    return {**constraints, "engine": [StrOptions(set(ENGINES))],
            "checkpoint": [str, os.PathLike, None]}


class _FusedDropIn(FusedCVMixin):
    """What both drop-ins add to scikit-learn's search."""

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None, **params):
        """As scikit-learn's ``fit``; the fits of a fusible estimator train in fused groups
        first (see the class)."""
        fit = FitState(X, y, {k: v for k, v in params.items() if k != "groups"},
                       params.get("groups"))
        with self._fitting(fit), self._jobs_in_trainer(fit):
            sklearn_fit(self, X, y, **params)
        return self

    @contextmanager
    def _jobs_in_trainer(self, fit):
        """With ``n_jobs`` above 1 on a search whose fits fuse on the CPU, the processes are
        the fused engine's (:func:`skhpo.fused.FusedTrainer`: its groups split evenly over
        them, forked workers that start with this process's imports and data), which train
        every fold, alone or fused; scikit-learn's cross-validation then only loads and scores
        them, in this process (``n_jobs`` reads None to it for the block): no worker of its
        own starts, and no trained fold is shipped to one."""
        fit.trainer_jobs = None
        if (n_workers(self.n_jobs) <= 1 or fit.fit_params
                or choose_engine(self.estimator, self.engine, also=data_reason(fit.X),
                                 what="").engine == "sequential"
                or not trains_on_cpu(self.estimator)):
            yield
            return
        fit.trainer_jobs, self.n_jobs = self.n_jobs, None
        try:
            yield
        finally:
            self.n_jobs = fit.trainer_jobs

    def _run_search(self, evaluate_candidates, *, callback_ctx=None):
        """scikit-learn's own search, its fits trained in fused groups first if the estimator
        fuses (:func:`~skhpo.fused.choose_engine`), or if a checkpoint keeps them."""
        fit = self._fit
        decision = choose_engine(self.estimator, self.engine, also=data_reason(fit.X),
                                 what=f"{type(self).__name__}'s estimator")
        if decision.engine == "sequential" and fit.checkpoint is None:
            fit.evaluated([[decision.reason] * self.n_splits_] * len(self._candidates()))
            return super()._run_search(evaluate_candidates, callback_ctx=callback_ctx)
        fit.n_splits = self.n_splits_
        candidates = self._candidates()
        seeds = fit.spawn_seeds(check_random_state(self.random_state), len(candidates))
        with self._searching(callback_ctx):
            return self._evaluate(evaluate_candidates, candidates, seeds,
                                  callback_ctx=callback_ctx)
