"""The template of the methods that end in cross-validation: :class:`NetSearchCV`.

``fit`` runs, in this order:

1. parameter validation (``_parameter_constraints``, once, by ``_fit_context``);
2. :meth:`NetSearchCV._prepare`: the ``_check_search_params`` hook (checks between
   arguments), the data checks, one forward pass of an untrained copy, the folds drawn
   once (so that a split scikit-learn cannot make fails here), then the method's
   ``_setup_search(fit)``, which samples and checks without training and returns what the
   method carries to its search;
3. scikit-learn's own ``fit``, which calls the method's ``_run_search`` (the method:
   screening, a walk, ... then ``_evaluate``, the seeded and fused cross-validation of
   :class:`~._fused_cv.FusedCVMixin`) and refits the best candidate;
4. :meth:`NetSearchCV._after_refit`: the refit's epochs counted, its divergence an error.

A fit's state is one :class:`~._state.FitState` (``self._fit`` during the fit only).
"""

import math
import os
import time
from abc import abstractmethod

from joblib import Parallel, delayed
from sklearn.base import _fit_context, clone, is_classifier
from sklearn.exceptions import FitFailedWarning
from sklearn.model_selection import check_cv
from sklearn.model_selection._search import BaseSearchCV
from sklearn.utils import indexable
from sklearn.utils._param_validation import StrOptions

from ..fused import ENGINES, FusedTrainer
from ..nets import (
    TrainingDivergedError,
    check_module_output,
    check_param_names,
    find_net,
    free_estimator,
    net_input,
)
from ..probes.sharpness import final_linear, iter_batches
from ._fused_cv import FusedCVMixin
from ._state import FitState, sklearn_fit
from ._trials import check_finite_input, check_fit_data, run_trial, warn

__all__ = ["NetSearchCV"]


class NetSearchCV(FusedCVMixin, BaseSearchCV):
    """Base class of the skhpo searches that cross-validate their result (not public).

    Subclasses implement ``_setup_search(fit)`` (sampling and checks, no training; returns
    what the search needs) and ``_run_search(evaluate_candidates, *, callback_ctx=None)``
    (the method), and may implement ``_check_search_params()`` (checks between
    constructor arguments).
    """

    _parameter_constraints: dict = {
        **BaseSearchCV._parameter_constraints,
        "engine": [StrOptions(set(ENGINES))],
        "checkpoint": [str, os.PathLike, None],
        "random_state": ["random_state"],
    }

    # -- fit --------------------------------------------------------------------------------

    @_fit_context(prefer_skip_nested_validation=False)
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
        with self._fitting(self._prepare(X, y, params)):
            sklearn_fit(self, X, y, **params)
        self._after_refit()
        return self

    def _prepare(self, X, y, params):
        """Everything that happens before the first training (the parameters are valid):
        the argument, data and space checks, then the method's own setup. Returns the fit's
        :class:`~._state.FitState`."""
        fit = FitState(X, y, {k: v for k, v in params.items() if k != "groups"},
                       params.get("groups"))
        self._check_search_params()
        _, prefix = find_net(self.estimator)
        check_fit_data(X, y, bare_net=(prefix == ""))
        check_module_output(self.estimator, X, y)
        # the folds are drawn once here, so that a split scikit-learn cannot make (more
        # folds than samples or than members of every class, groups missing) fails before any
        # training
        cv = check_cv(self.cv, y, classifier=is_classifier(self.estimator))
        fit.n_splits = sum(1 for _ in cv.split(*indexable(X, y), groups=fit.groups))
        fit.setup = self._setup_search(fit)
        return fit

    def _check_search_params(self):
        """Hook: checks between constructor arguments (no data, no training). None here."""

    @abstractmethod
    def _setup_search(self, fit):
        """Sample candidates and check them against the estimator and data, before any
        training; return what ``_run_search`` needs (held as ``fit.setup``)."""

    # -- candidates and tasks -----------------------------------------------------------------

    def _check_candidate_names(self, candidates, where=None):
        where = where or self._space_param
        names = sorted({k for cand in candidates for k in cand})
        check_param_names(self.estimator, names, where=where)
        _, prefix = find_net(self.estimator)
        if f"{prefix}callbacks" in names:
            raise ValueError(f"{where}: searching over {prefix}callbacks is not supported; "
                             "search over callback parameters (callbacks__<name>__<arg>)")

    def _untrained_net(self, fit, params):
        """The net of candidate ``params`` built without training (0 epochs), as the methods
        read it, after checking that the data after any Pipeline steps is finite and that the
        net ends in an ``nn.Linear``: ``(net, its output layer)``."""
        probe = clone(self.estimator).set_params(
            **clone(params, safe=False),
            **self._task_params(None, 0, max_epochs=0, train_split=None, verbose=0))
        probe.fit(fit.X, fit.y, **fit.fit_params)
        net, _ = find_net(probe)
        Xn = net_input(probe, fit.X)
        check_finite_input(Xn, where="X after the Pipeline steps before the net")
        return net, final_linear(net, next(iter_batches(net, Xn, batch_size=2)))

    def _train_candidates(self, fit, tasks, probe, *, first_index=0, phase=None):
        """Train every task (:class:`~skhpo.fused.FusedTask`: a candidate with the method's
        overrides, its seed and extra callbacks) and read ``probe(fitted, X)`` off it: in
        fused groups where ``engine`` allows, the others through ``joblib``
        (:func:`~._trials.run_trial`).

        Returns :func:`~._trials.run_trial`'s dicts plus ``group`` (-1: trained alone) and
        ``engine_reason`` (why alone). Each finished training is reported to ``phase``
        (:class:`~._progress.Phase`) and written to the fit's checkpoint, if any.
        """
        trainer = FusedTrainer(self.estimator, engine=self.engine, n_jobs=self.n_jobs)
        plan = trainer.plan(tasks, fit.fit_params)  # over every task, loaded or not
        # with a checkpoint: the trainings it holds are loaded, the others written as each
        # finishes
        ck = fit.checkpoint
        keys = [None] * len(tasks) if ck is None else \
            [ck.key("trial", t.params, t.seed, [name for name, _ in t.callbacks]) for t in tasks]
        outs = [None if k is None else ck.load("trial", k) for k in keys]
        pending = [i for i, out in enumerate(outs) if out is None]

        def finished(i, out, write=True):
            outs[i] = out
            if phase is not None:
                phase.done(first_index + i)
            if ck is not None and write:
                ck.save("trial", keys[i], out)

        def fused(i, result):
            finished(i, self._probe_fused(result, fit.X, probe), write=False)

        def written(done):  # a fused group's trainings in one file
            if ck is not None:
                ck.save_many("trial", {keys[i]: outs[i] for i in done})

        trainer.fit(tasks, fit.X, fit.y, plan=plan.only(pending, alone=False),
                    on_result=fused, on_group=written)
        solo = sorted(set(plan.alone) & set(pending))
        parallel = Parallel(n_jobs=self.n_jobs, pre_dispatch=self.pre_dispatch,
                            return_as="generator")  # each result as soon as it is done
        runs = parallel(delayed(run_trial)(
            self.estimator, tasks[i].params,
            self._task_params(tasks[i].seed, first_index + i,
                              extra_callbacks=list(tasks[i].callbacks)),
            fit.data, self.error_score, probe) for i in solo)
        for out, i in zip(runs, solo):  # the generator first: it runs to its end
            finished(i, {**out, "group": -1, "engine_reason": plan.alone[i]})
        fit.trainings += [out["engine_reason"] for out in outs]
        return outs

    def _probe_fused(self, result, X, probe):
        """:func:`~._trials.run_trial`'s dict for a task the fused engine trained."""
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
            warn(f"{len(failures)} of the {n_total} {stage} fits failed; they are excluded "
                 f"(error_score={self.error_score!r}). Reasons:\n{reasons}", FitFailedWarning)

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
