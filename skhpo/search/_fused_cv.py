"""Cross-validation of candidates whose fits load folds the fused engine trained.

:class:`FusedCVMixin` sits under every search that cross-validates skorch nets through
scikit-learn's ``evaluate_candidates`` (``NetSearchCV`` and the fused drop-ins
``FusedRandomizedSearchCV`` / ``FusedGridSearchCV``): it seeds each candidate's fits, trains
every (candidate, fold) in fused groups first where ``engine`` allows
(:class:`skhpo.fused.FusedTrainer`), hands scikit-learn the candidates with a
:class:`~skhpo.fused.prefit.PrefitStates` callback and the same folds, and removes its own
parameters from everything the user sees. The host class sets ``_search_data``
(``(X, y, fit_params)``, ``groups`` left out), ``_groups`` and ``_task_keys`` (a set)
for the duration of ``fit``.
"""

from __future__ import annotations

from contextlib import contextmanager

from sklearn.base import is_classifier
from sklearn.model_selection import check_cv
from sklearn.utils import _safe_indexing, indexable

from ..checkpoint import Checkpoint, check_checkpoint, search_parts
from ..fused import FusedTask, FusedTrainer
from ..fused.prefit import PrefitStates, SharedStates, fingerprint, net_state
from ..fused.trainer import net_y
from ..nets import (
    find_net,
    free_estimator,
    net_input,
    seed_everything,
    spawn_seeds,
    trial_params,
    user_callbacks,
)
from ._progress import Phase, search_context

__all__ = ["FusedCVMixin"]


class FusedCVMixin:
    """Seeded, fused cross-validation on top of scikit-learn's ``evaluate_candidates``."""

    def _fit_searching(self, fit, X, y, fit_params):
        """Run ``fit()`` (scikit-learn's own ``fit``) with what the search reads during it
        set, and cleared after: the data, the task keys, the fused fit times and the
        checkpoint (``n_resumed_`` then counts the trainings it gave back)."""
        self._checkpoint = self._open_checkpoint(X, y, fit_params)
        self._search_data = (X, y, fit_params)
        self._task_keys, self._fused_fit_times = set(), []  # nothing left from an earlier fit
        try:
            fit()
        finally:
            del self._search_data
            ck = self.__dict__.pop("_checkpoint", None)
        self.n_resumed_ = 0 if ck is None else ck.loaded

    def __getstate__(self):
        # the estimator is shipped to joblib workers during fit; the data travel separately
        state = dict(super().__getstate__())  # may be self.__dict__ itself: copy first
        for name in ("_search_data", "_checkpoint", "_search_ctx"):
            state.pop(name, None)
        return state

    def _open_checkpoint(self, X, y, fit_params):
        """The search's :class:`~skhpo.checkpoint.Checkpoint` (None without ``checkpoint``),
        after its checks; no training."""
        check_checkpoint(self)
        if getattr(self, "checkpoint", None) is None:
            return None
        if fit_params:
            raise ValueError(f"checkpoint cannot store fits that take fit parameters; got "
                             f"{sorted(fit_params)}")
        find_net(self.estimator)  # a TypeError naming what is supported, for a non-net
        space = next((getattr(self, name) for name in ("param_distributions", "param_grid",
                                                          "params") if hasattr(self, name)),
                     None)
        return Checkpoint(self.checkpoint, search_parts(self, space, X, y, self._groups))

    @contextmanager
    def _searching(self, callback_ctx):
        """The block runs the search: its phases report to scikit-learn's callbacks under
        one ``search`` task (:mod:`skhpo.search._progress`)."""
        with search_context(self, callback_ctx) as ctx:
            self._search_ctx = ctx
            try:
                yield ctx
            finally:
                self.__dict__.pop("_search_ctx", None)

    def _spawn_seeds(self, rng, n):
        seeds = spawn_seeds(rng, n + 1)
        self._refit_seed = seeds[-1]
        return seeds[:-1]

    def _task_params(self, seed, task_index, **net_overrides):
        return trial_params(self.estimator, seed=seed, task_index=task_index, **net_overrides)

    def _evaluate(self, evaluate_candidates, candidates, seeds, more_results=None,
                  callback_ctx=None):
        """Cross-validate ``candidates`` through sklearn, each fit guarded and seeded (and,
        where ``engine`` allows, trained beforehand in fused groups: :meth:`_prefit`)."""
        tasks = []
        for i, (cand, seed) in enumerate(zip(candidates, seeds)):
            extra = self._task_params(seed, i)
            self._task_keys.update(extra)
            tasks.append({**cand, **extra})
        kwargs = {"more_results": more_results}
        if getattr(self, "engine", "sequential") != "sequential" or \
                getattr(self, "_checkpoint", None) is not None:
            kwargs["cv"], tasks = self._prefit(candidates, seeds, tasks)
        if callback_ctx is None:  # scikit-learn < 1.9 has no callbacks
            results = evaluate_candidates(tasks, **kwargs)
        else:
            parent = getattr(self, "_search_ctx", None) or callback_ctx
            with Phase(self, parent, "cross-validation", len(tasks) * self._n_splits) as cv:
                results = evaluate_candidates(tasks, callback_ctx=cv.ctx, **kwargs)
        self._seed_refit()
        return results

    def _prefit(self, candidates, seeds, tasks):
        """Train every (candidate, fold) in fused groups; return the folds (replayed to
        scikit-learn, so both sides split alike) and the candidates' parameters, each with a
        :class:`~skhpo.fused.prefit.PrefitStates` callback holding its trained folds."""
        X, y, fit_params = self._search_data
        X, y = indexable(X, y)  # as scikit-learn's fit does before it splits
        splits = list(check_cv(self.cv, y, classifier=is_classifier(self.estimator)).split(
            X, y, getattr(self, "_groups", None)))
        self._fused_fit_times = [[0.0] * len(splits) for _ in candidates]
        if fit_params:
            if self.engine == "fused":
                raise ValueError("engine='fused' cannot pass fit parameters to a fused group; "
                                 f"got {sorted(fit_params)}")
            return _Splits(splits), tasks
        fused = [FusedTask(cand, seed=seed, rows=train)
                 for cand, seed in zip(candidates, seeds) for train, _ in splits]
        # with a checkpoint: the folds it holds are loaded, the fused ones are written as their
        # group finishes, the others by their own fit when it ends (PrefitStates)
        ck = getattr(self, "_checkpoint", None)
        keys = [None] * len(fused) if ck is None else \
            [ck.key("fold", t.params, t.seed, t.rows) for t in fused]
        records = [None if k is None else ck.load("fold", k) for k in keys]
        trainer = FusedTrainer(self.estimator, engine=self.engine, n_jobs=self.n_jobs)
        todo = {i for i, r in enumerate(records) if r is None}
        # planned over every fold, loaded or not: a fold trains as in the whole plan
        groups, alone = trainer.plan(fused)
        groups = [[i for i in g if i in todo] for g in groups]  # numbers kept
        # (the folds that cannot fuse are left to scikit-learn's own fits)
        progress = Phase(self, getattr(self, "_search_ctx", None), "training",
                         sum(map(len, groups)))

        def finished(i, result):
            progress.done(i)
            records[i] = _fold_record(result, X, y, fused[i].rows)
            if result.estimator is not None:
                free_estimator(result.estimator)

        def written(done):  # a fused group's folds in one file
            if ck is not None:
                ck.save_many("fold", {keys[i]: records[i] for i in done})

        with progress:
            trainer.fit(fused, X, y, on_result=finished, plan=(groups, {}), on_group=written)
        states = [{} for _ in candidates]
        for i, record in enumerate(records):
            if record is None or record["state"] is None:  # failed: scikit-learn's fit fails
                continue                                  # alike, and error_score applies
            cand, split = divmod(i, len(splits))
            states[cand][record["key"]] = record["state"]
            self._fused_fit_times[cand][split] = record["fit_time"]
        cand_keys = [None] * len(candidates)
        if ck is not None:  # the folds scikit-learn's own fits trained and wrote
            for c, (cand, seed) in enumerate(zip(candidates, seeds)):
                cand_keys[c] = ck.key("candidate", cand, seed)
                states[c].update((r["key"], r["state"]) for r in ck.find("fit", cand_keys[c]))
        net, prefix = find_net(self.estimator)
        key = f"{prefix}callbacks"
        out = []
        for task, cand_states, cand_key in zip(tasks, states, cand_keys):
            if cand_states or ck is not None:
                base = task.get(key, user_callbacks(net))
                prefit = PrefitStates(SharedStates(cand_states), checkpoint=ck, prefix=cand_key)
                task = {**task, key: [*base, ("skhpo_prefit", prefit)]}
                self._task_keys.add(key)
            out.append(task)
        return _Splits(splits), out

    def _seed_refit(self):
        # sklearn refits the best candidate in this process right after _run_search
        net, _ = find_net(self.estimator)
        if getattr(net, "random_state", None) is None and hasattr(self, "_refit_seed"):
            seed_everything(self._refit_seed)

    def _format_results(self, candidate_params, n_splits, out, more_results=None):
        # a fit that loaded a fused fold took its share of the fused group's time
        for j, fold in enumerate(out):
            cand, split = divmod(j, n_splits)
            times = getattr(self, "_fused_fit_times", [])
            if cand < len(times) and isinstance(fold, dict) and "fit_time" in fold:
                fold["fit_time"] += times[cand][split]
        # what the user sees: the candidates without skhpo's task parameters
        public = [{k: v for k, v in p.items() if k not in self._task_keys}
                  for p in candidate_params]
        return super()._format_results(public, n_splits, out, more_results)



class _Splits:
    """A splitter that replays fixed ``(train, test)`` folds."""

    def __init__(self, splits):
        self.splits = splits

    def split(self, X=None, y=None, groups=None):
        yield from self.splits

    def get_n_splits(self, X=None, y=None, groups=None):
        return len(self.splits)


def _fold_key(result, X, y, rows):
    """The fingerprint of the data a task's net trained on (after any preprocessing): the
    engine's, or computed here for a task that trained alone."""
    if result.data_key:
        return result.data_key
    Xr = X if rows is None else _safe_indexing(X, rows)
    yr = y if rows is None else _safe_indexing(y, rows)
    net, _ = find_net(result.estimator)
    return fingerprint(net_input(result.estimator, Xr), net_y(net, yr))


def _fold_record(result, X, y, rows):
    """What a trained fold leaves: the fingerprint of its data, its state (None if it
    failed) and its fit time."""
    if result.estimator is None:
        return {"key": None, "state": None, "fit_time": result.fit_time, "error": result.error}
    return {"key": _fold_key(result, X, y, rows),
            "state": net_state(find_net(result.estimator)[0]),
            "fit_time": result.fit_time, "error": ""}




