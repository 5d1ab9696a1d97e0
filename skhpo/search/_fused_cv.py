"""Cross-validation of candidates whose fits load folds the fused engine trained.

:class:`FusedCVMixin` sits under every search that cross-validates skorch nets through
scikit-learn's ``evaluate_candidates`` (:class:`~._cv.NetSearchCV` and the fused drop-ins
``FusedRandomizedSearchCV`` / ``FusedGridSearchCV``): it seeds each candidate's fits, trains
every (candidate, fold) in fused groups first where ``engine`` allows
(:class:`skhpo.fused.FusedTrainer`), hands scikit-learn the candidates with a
:class:`~skhpo.fused.prefit.PrefitStates` callback and the same folds, and removes its own
parameters from everything the user sees. What a fit carries is one
:class:`~._state.FitState`, held as ``_fit`` during the fit only (:meth:`_fitting`).
"""

from contextlib import contextmanager
from dataclasses import dataclass

from sklearn.base import is_classifier
from sklearn.model_selection import check_cv
from sklearn.utils import _safe_indexing, indexable

from ..checkpoint import Checkpoint, check_checkpoint, search_parts
from ..fused import FusedTask, FusedTrainer, check_n_jobs
from ..fused.prefit import PrefitStates, SharedStates, fingerprint
from ..nets import (
    find_net,
    free_estimator,
    net_input,
    net_state,
    net_y,
    seed_everything,
    seeds_itself,
    trial_params,
    user_callbacks,
)
from ._progress import Phase, search_context

__all__ = ["FusedCVMixin", "Rung"]


class FusedCVMixin:
    """Seeded, fused cross-validation on top of scikit-learn's ``evaluate_candidates``.

    A host class names its space parameter in ``_space_param`` and has ``engine``,
    ``checkpoint`` and ``n_jobs``.
    """

    _space_param = "param_distributions"

    def _space(self):
        """The search space the user gave (the one hook every search reads it through)."""
        return getattr(self, self._space_param)

    @contextmanager
    def _fitting(self, fit):
        """The block is the fit: ``fit`` (a :class:`~._state.FitState`) is the search's
        ``_fit`` until it ends, with its checkpoint open (``n_resumed_`` then counts the
        trainings it gave back)."""
        check_n_jobs(self.n_jobs)  # before scikit-learn's own Parallel, with our message
        fit.checkpoint = self._open_checkpoint(fit)
        self._fit = fit
        try:
            yield fit
        finally:
            del self._fit
        self.n_resumed_ = 0 if fit.checkpoint is None else fit.checkpoint.loaded
        for name, value in fit.engine_attributes().items():
            setattr(self, name, value)
        if self.engine == "auto" and self.verbose >= 1 and self.engine_reason_:
            print(f"[{type(self).__name__}] engine_={self.engine_!r}; trained alone: "
                  f"{self.engine_reason_}")

    def __getstate__(self):
        # the search may be shipped to joblib workers during fit; its fit state stays here
        state = dict(super().__getstate__())  # may be self.__dict__ itself: copy first
        state.pop("_fit", None)
        return state

    def _open_checkpoint(self, fit):
        """The search's :class:`~skhpo.checkpoint.Checkpoint` (None without ``checkpoint``),
        after its checks; no training."""
        check_checkpoint(self)
        if self.checkpoint is None:
            return None
        if fit.fit_params:
            raise ValueError(f"checkpoint cannot store fits that take fit parameters; got "
                             f"{sorted(fit.fit_params)}")
        find_net(self.estimator)  # a TypeError naming what is supported, for a non-net
        return Checkpoint(self.checkpoint, search_parts(self, fit.X, fit.y, fit.groups))

    @contextmanager
    def _searching(self, callback_ctx):
        """The block runs the search: its phases report to scikit-learn's callbacks under
        one ``search`` task (:mod:`skhpo.search._progress`), the fit state's ``ctx``."""
        with search_context(self, callback_ctx) as ctx:
            self._fit.ctx = ctx
            yield ctx

    def _task_params(self, seed, task_index, **net_overrides):
        return trial_params(self.estimator, seed=seed, task_index=task_index, **net_overrides)

    def _evaluate(self, evaluate_candidates, candidates, seeds, more_results=None,
                  callback_ctx=None, rung=None):
        """Cross-validate ``candidates`` through sklearn, each fit guarded and seeded (and,
        where ``engine`` allows, trained beforehand in fused groups: :meth:`_prefit`), on the
        search's folds, or a halving ``rung``'s (a :class:`Rung`: its splitter, the earlier
        trainings its folds continue; scikit-learn's fits then report straight to
        ``callback_ctx``, the rung's, which numbers them itself)."""
        fit = self._fit
        tasks = []
        for i, (cand, seed) in enumerate(zip(candidates, seeds)):
            extra = self._task_params(seed, i)
            fit.task_keys.update(extra)
            tasks.append({**cand, **extra})
        kwargs = {"more_results": more_results}
        if rung is not None and rung.cv is not None:
            kwargs["cv"] = rung.cv
        if self.engine != "sequential" or fit.checkpoint is not None:
            kwargs["cv"], tasks = self._prefit(candidates, seeds, tasks, rung or Rung())
        else:
            fit.evaluated([["engine='sequential'"] * fit.n_splits] * len(candidates))
        if callback_ctx is None or rung is not None:  # (scikit-learn < 1.9 has no callbacks)
            if callback_ctx is not None:
                kwargs["callback_ctx"] = callback_ctx
            results = evaluate_candidates(tasks, **kwargs)
        else:
            parent = fit.ctx or callback_ctx
            with Phase(self, parent, "cross-validation", len(tasks) * fit.n_splits) as cv:
                results = evaluate_candidates(tasks, callback_ctx=cv.ctx, **kwargs)
        self._seed_refit()
        return results

    def _prefit(self, candidates, seeds, tasks, rung):
        """Train every (candidate, fold) in fused groups, on the folds of ``rung.cv`` (None:
        the search's), each continuing what ``rung.start_of`` gives it; return the folds
        (replayed to scikit-learn, so both sides split alike) and the candidates' parameters,
        each with a :class:`~skhpo.fused.prefit.PrefitStates` callback holding its trained
        folds. Each fold's record (:func:`_fold_record`, with the epochs it ``start``-ed from
        and why it did not continue, ``restart``) is in ``fit.records`` afterwards, with its
        rows."""
        fit = self._fit
        X, y = indexable(fit.X, fit.y)  # as scikit-learn's fit does before it splits
        splits = list(check_cv(self.cv if rung.cv is None else rung.cv, y,
                               classifier=is_classifier(self.estimator)).split(
            X, y, groups=fit.groups))
        # each call's candidates after the ones before (halving calls once per rung)
        first = len(fit.fit_times)
        fit.fit_times += [[0.0] * len(splits) for _ in candidates]
        folds = [(c, train) for c in range(len(candidates)) for train, _ in splits]
        starts = [(None, "") if rung.start_of is None else rung.start_of(c, train)
                  for c, train in folds]
        fused = [FusedTask(candidates[c], seed=seeds[c], rows=train, start=start[0])
                 for (c, train), start in zip(folds, starts)]
        in_trainer = fit.trainer_jobs is not None  # every fold, alone or not, trains here
        trainer = FusedTrainer(self.estimator, engine=self.engine,
                               n_jobs=fit.trainer_jobs if in_trainer else self.n_jobs)
        # planned over every fold, loaded or not: a fold trains as in the whole plan
        plan = trainer.plan(fused, fit.fit_params)
        # with a checkpoint: the folds it holds are loaded, the fused ones are written as their
        # group finishes, the others by their own fit when it ends (PrefitStates)
        ck = fit.checkpoint
        keys = [None] * len(fused) if ck is None else \
            [ck.key("fold", t.params, t.seed, t.rows) for t in fused]
        records = [None if k is None else ck.load("fold", k) for k in keys]
        # (the folds that cannot fuse are left to scikit-learn's own fits, but where its
        # n_jobs went to the trainer)
        todo = plan.only([i for i, r in enumerate(records) if r is None], alone=in_trainer)
        progress = Phase(self, fit.ctx, "training", sum(map(len, todo.groups)) + len(todo.alone))

        def kept(i, result):  # where the fold trained (a worker): only its record travels
            record = _fold_record(result, X, y, fused[i].rows)
            if result.estimator is not None:
                free_estimator(result.estimator)
            return record

        def finished(i, record):
            progress.done(i)
            records[i] = record

        def written(done):  # a fused group's folds in one file
            if ck is not None:
                ck.save_many("fold", {keys[i]: records[i] for i in done})

        with progress:
            trainer.fit(fused, X, y, on_result=finished, plan=todo, on_group=written,
                        reduce=kept)
        reasons = [plan.alone[i] if i in plan.alone else (r or {}).get("reason", "")
                   for i, r in enumerate(records)]
        fit.records = [(t.rows, {"start": 0, **(r or {}),
                                 "restart": (r or {}).get("restart") or why})
                       for t, r, (_, why) in zip(fused, records, starts)]
        fit.evaluated(reasons[i:i + len(splits)] for i in range(0, len(reasons), len(splits)))
        return _Splits(splits), self._with_prefit(candidates, seeds, tasks, records, first)

    def _with_prefit(self, candidates, seeds, tasks, records, first=0):
        """The candidates' parameters, each with a :class:`PrefitStates` callback holding
        its trained folds (``records``, candidate-major) and, with a checkpoint, the folds
        scikit-learn's own fits trained and wrote."""
        fit = self._fit
        n_splits = len(records) // max(1, len(candidates))
        states = [{} for _ in candidates]
        for i, record in enumerate(records):
            if record is None or record["state"] is None:  # failed: scikit-learn's fit fails
                continue                                  # alike, and error_score applies
            cand, split = divmod(i, n_splits)
            states[cand][record["key"]] = record["state"]
            fit.fit_times[first + cand][split] = record["fit_time"]
        ck = fit.checkpoint
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
                fit.task_keys.add(key)
            out.append(task)
        return out

    def _seed_refit(self):
        # sklearn refits the best candidate in this process right after _run_search
        net, _ = find_net(self.estimator)
        if not seeds_itself(net) and self._fit.refit_seed is not None:
            seed_everything(self._fit.refit_seed)

    def _format_results(self, candidate_params, n_splits, out, more_results=None):
        fit = self._fit
        # a fit that loaded a fused fold took its share of the fused group's time
        # (scikit-learn passes every fold so far at each call, in order: the new ones only)
        for j in range(fit.timed, len(out)):
            cand, split = divmod(j, n_splits)
            fold = out[j]
            if cand < len(fit.fit_times) and isinstance(fold, dict) and "fit_time" in fold:
                fold["fit_time"] += fit.fit_times[cand][split]
        fit.timed = len(out)
        # what the user sees: the candidates without skhpo's task parameters
        public = [{k: v for k, v in p.items() if k not in fit.task_keys}
                  for p in candidate_params]
        return super()._format_results(public, n_splits, out, more_results)


@dataclass
class Rung:
    """A successive-halving rung's cross-validation (:meth:`FusedCVMixin._evaluate`).

    Attributes
    ----------
    cv : splitter or None
        The rung's folds (scikit-learn's subsampling splitter for ``resource="n_samples"``);
        None: the search's ``cv``.
    start_of : callable or None
        ``start_of(candidate index, train rows)``: ``(start, why)``, an earlier training of
        that fold to continue (:attr:`skhpo.fused.FusedTask.start`), or None and why not
        ("": there is none to continue).
    """

    cv: object = None
    start_of: object = None


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
    failed), its fit time, why it trained alone ("" if fused), the epochs it continued from
    (``start``), why it did not continue a ``start`` it was given (``restart``) and what a
    later training continuing it needs (``carry``: :attr:`skhpo.fused.TaskResult.carry`)."""
    common = {"fit_time": result.fit_time, "reason": result.reason, "start": result.start,
              "restart": result.restart}
    if result.estimator is None:
        return {"key": None, "state": None, "error": result.error, "carry": None, **common}
    return {"key": _fold_key(result, X, y, rows),
            "state": net_state(find_net(result.estimator)[0]), "error": "",
            "carry": result.carry, **common}
