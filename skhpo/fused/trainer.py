"""Train many tasks of one estimator at once, and hand back ordinary fitted nets.

:class:`FusedTrainer` takes training tasks (a candidate's parameters, its seed, its training
rows), plans them into groups that can train together (:meth:`FusedTrainer.plan`: the engine
decision of :func:`~.eligibility.choose_engine` for each task, then one group per
:func:`~.eligibility.fusion_key`), trains each group as one stacked model
(:class:`~._group.StackedGroup`) and everything else alone through the estimator's own
``fit``, and returns one :class:`TaskResult` per task: a fitted clone of the estimator (its
Pipeline steps fitted on the task's rows, its net's ``module_``, ``optimizer_`` state and
``history`` those of the training), or the reason it failed.

Within a group the tasks may differ in learning rate, weight decay, Adam's betas and eps,
SGD's momentum and dampening, dropout rates, ``l2`` / ``l1``, ``max_epochs``, seed and
training rows (CV folds of unequal size); they share the architecture, batch size,
optimiser class (and SGD's Nesterov), device and the shapes after preprocessing. What
cannot fuse (:mod:`.eligibility`) trains alone, with the reason in :attr:`TaskResult.reason`.
"""

import copy
import functools
import math
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import joblib
import numpy as np
import torch
from sklearn.base import clone
from sklearn.pipeline import Pipeline
from sklearn.utils import _safe_indexing
from skorch.dataset import Dataset as SkorchDataset
from torch.utils.data import DataLoader, Subset

from ..nets import (
    TrainingDivergedError,
    array_data,
    batch_size_of,
    find_net,
    net_input,
    net_X,
    net_y,
    seed_everything,
    seeds_itself,
    trial_params,
)
from ._group import Member, StackedGroup, Valid
from ._inputs import apply, as_tensors, shapes
from ._layouts import FuncLayout, module_signature
from ._replay import Replay
from ._resume import carry, missing, restart_reason, restore, resume
from ._workers import check_n_jobs, n_workers, run_jobs, trains_on_cpu
from .cost import MEMORY_ENV, MEMORY_SHARE, group_size, max_weights, memory_budget, model_bytes
from .eligibility import (
    ENGINES,
    choose_engine,
    cross_entropy,
    data_reason,
    fusion_key,
    is_family,
    too_big,
)
from .prefit import fingerprint

__all__ = ["FusedTask", "FusedTrainer", "Plan", "TaskResult"]

@dataclass
class FusedTask:
    """One training.

    Attributes
    ----------
    params : dict
        Set on a clone of the estimator.
    seed : int or None
        The task's seed, as :class:`~skhpo.nets.TaskSeed` applies it (a net's own
        ``random_state`` wins).
    rows : array-like or None
        Its training rows (indices into X; None: all rows).
    callbacks : tuple
        ``(name, callback)`` pairs the method adds to the net; to fuse, each must only read
        the net at epoch ends (``reads_epochs = True``).
    start : dict or None
        An earlier, shorter training of this same task to continue (in a fused group):
        its net's state (:func:`skhpo.nets.net_state`) and
        :attr:`TaskResult.carry`. The task then trains only the epochs after it, with the
        result of training from the start (:mod:`._resume`); where its net's callbacks do
        not allow that, or it trains alone, it trains from the start
        (:attr:`TaskResult.restart` says why).
    """

    params: dict = field(default_factory=dict)
    seed: int | None = None
    rows: object = None
    callbacks: tuple = ()
    start: dict | None = None


@dataclass
class TaskResult:
    """What one task's training left.

    Attributes
    ----------
    estimator : estimator or None
        The fitted clone; None if the training failed.
    error : str
        "" or why it failed (``"diverged: ..."`` for a non-finite training loss).
    fit_time : float
        Its share of its group's seconds (or its own).
    group : int
        The group it trained in; -1 when it trained alone.
    reason : str
        Why it trained alone ("" if fused).
    data_key : str
        The fingerprint (:func:`skhpo.fused.prefit.fingerprint`) of the data its net trained
        on, after any preprocessing, when the fused engine has it at hand ("" otherwise).
    start : int
        The epochs it continued from (:attr:`FusedTask.start`; 0: it trained from the
        start).
    restart : str
        Why a task given a ``start`` trained from the start ("" otherwise).
    carry : dict or None
        What a later task continuing this one needs beyond its net's state (its generator,
        its guard's reference loss, its epochs: :func:`._resume.carry`); None where it
        trained alone or failed.
    """

    estimator: object
    error: str
    fit_time: float
    group: int
    reason: str
    data_key: str = ""
    start: int = 0
    restart: str = ""
    carry: dict | None = None


@dataclass
class Plan:
    """Which tasks train together: ``groups`` (lists of task indices, each one fused group)
    and ``alone`` (``{task index: why it trains alone}``)."""

    groups: list
    alone: dict

    def only(self, todo, alone=True):
        """The plan of the tasks in ``todo`` (e.g. those a checkpoint does not hold): a group
        keeps its number even when it is left empty, so each task trains as in the whole
        plan; ``alone=False`` leaves out the tasks that train alone (the caller trains
        them)."""
        todo = set(todo)
        return Plan([[i for i in g if i in todo] for g in self.groups],
                    {i: r for i, r in self.alone.items() if i in todo} if alone else {})


def _pieces(members, max_group, workers):
    """``members`` (one fusion key's tasks, in order) in groups of at most ``max_group``;
    with several ``workers``, as many pieces of equal size as the workers (or a multiple
    of them), each every n-th task, none of fewer than two tasks."""
    n = math.ceil(len(members) / max_group)
    if workers <= 1:
        return [[int(i) for i in piece] for piece in np.array_split(members, n) if len(piece)]
    n = min(math.ceil(n / workers) * workers, max(n, len(members) // 2))
    # every n-th task: what makes one task slower than another (its rates, its data) is
    # spread over the pieces, so that the processes end together
    return [[int(i) for i in members[k::n]] for k in range(n) if members[k::n]]


class FusedTrainer:
    """Train tasks of one ``estimator`` in fused groups where possible.

    Parameters
    ----------
    estimator : skorch net or Pipeline ending in one
        The estimator every task clones.
    engine : {"auto", "fused", "sequential"}, default="auto"
        ``"sequential"``: every task through the estimator's own ``fit``. ``"fused"``: every
        task in a group; a task that cannot fuse is a ``ValueError`` naming the reason.
        ``"auto"``: groups of at least two tasks of nets with at most
        :func:`~skhpo.fused.cost.max_weights` weights fuse, the others train alone (the
        decision: :func:`~skhpo.fused.eligibility.choose_engine`).
    max_group : int, default=64
        Largest group (on one CPU core the gain per model flattens from about 16-32 models).
        A group of bigger nets is split further so that it holds at most
        ``$SKHPO_MAX_GROUP_WEIGHTS`` (1,500,000) weights in all, at least 2 models: beyond
        that its state leaves the cache and the gain falls (:mod:`skhpo.fused.cost`).
    n_jobs : int or None, default=None
        Processes for the groups and the tasks that train alone (None: 1, -1: every core),
        as in scikit-learn. With more than one, each task's group is split into pieces of
        equal size, as many as the processes or a multiple of them (never below two tasks),
        so that the processes end together; on a Linux CPU the workers are forked from this
        process (no start-up, the data inherited, one torch thread each), elsewhere they are
        ``joblib.Parallel``'s (:mod:`._workers`). Results do not depend on it.
    """

    def __init__(self, estimator, *, engine="auto", max_group=64, n_jobs=None):
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
        self.estimator = estimator
        self.engine = engine
        self.max_group = max_group
        self.n_jobs = check_n_jobs(n_jobs)

    # -- the plan (no training) --------------------------------------------------------------

    def plan(self, tasks, fit_params=None):
        """The :class:`Plan` of ``tasks``: each task's engine decision
        (:func:`~skhpo.fused.eligibility.choose_engine`), then one group per fusion key, in
        task order. With ``fit_params`` every task trains alone (a group cannot pass them).
        A pure function of the tasks and the estimator: no training."""
        max_weights(), memory_budget()  # a bad setting fails here, before any training
        if fit_params:
            reason = choose_engine(self.estimator, self.engine, fit_params=fit_params,
                                   what="a search given fit parameters").reason
            return Plan([], dict.fromkeys(range(len(tasks)), reason))
        keys, alone = {}, {}
        for i, task in enumerate(tasks):
            est = clone(self.estimator).set_params(**task.params)
            decision = choose_engine(est, self.engine, what=f"task {i}")
            if decision.reason:
                alone[i] = decision.reason
            else:
                keys.setdefault(fusion_key(est), []).append(i)
        groups, workers = [], n_workers(self.n_jobs)
        for members in keys.values():
            if len(members) == 1 and self.engine == "auto" and tasks[members[0]].start is None:
                alone[members[0]] = ("the only task of its architecture and batch size (two "
                                     "or more such tasks fuse)")
                continue
            groups += _pieces(members, self.max_group, workers)
        return Plan(groups, alone)

    # -- training ----------------------------------------------------------------------------

    def fit(self, tasks, X, y, on_result=None, plan=None, on_group=None, reduce=None):
        """Train the tasks; one :class:`TaskResult` per task (or what ``reduce`` makes of it),
        in task order.

        Parameters
        ----------
        tasks : list of FusedTask
        X, y : array-like
            The data the tasks' ``rows`` index.
        on_result : callable or None, default=None
            ``on_result(i, result)`` for each task as soon as its group (or its own
            training) has finished.
        plan : Plan or None, default=None
            :meth:`plan`'s plan of ``tasks``, restricted (:meth:`Plan.only`) to the tasks to
            train now; the others get None. Each group then trains fused whatever its size
            now, so every task trains as it would have in the whole plan (a search resumed
            from a checkpoint gives the uninterrupted run's results). None: :meth:`plan`.
        on_group : callable or None, default=None
            ``on_group([i, ...])`` once per finished group (or task trained alone), e.g. to
            write its tasks to a checkpoint in one file.
        reduce : callable or None, default=None
            ``reduce(i, result)`` of each task's :class:`TaskResult`, run where the task
            trained (with ``n_jobs``, in the worker): its return value is what ``on_result``
            gets and ``fit`` returns, and all that travels back from a worker (e.g. the
            weights a caller keeps of a net, so the fitted nets themselves stay there).
        """
        keep_single = plan is not None
        plan = self.plan(tasks) if plan is None else plan
        reason = data_reason(X)
        if reason and plan.groups:
            if self.engine == "fused":
                raise ValueError(f"engine='fused': the tasks cannot be fused: {reason}; use "
                                 "engine='auto' or 'sequential'")
            plan = Plan([], {**plan.alone, **{i: reason for g in plan.groups for i in g}})
        groups, alone = [list(g) for g in plan.groups], dict(plan.alone)
        results = [None] * len(tasks)
        for g, members in enumerate(groups):  # the generic path: can it run? (no training)
            probed = {}  # once per module arguments of the group's tasks
            for i in members:
                args = self._module_args(tasks[i])
                if args not in probed:
                    probed[args] = self._func_reason(tasks[i], X, y)
                reason = probed[args]
                if reason and self.engine == "fused":
                    raise ValueError(f"engine='fused': task {i} cannot be fused: {reason}; use "
                                     "engine='auto' (it fuses what it can) or 'sequential'")
                if reason:
                    alone[i] = reason
            groups[g] = [i for i in members if i not in alone]

        on_cpu = trains_on_cpu(self.estimator, [task.params for task in tasks])

        def parallel(jobs):  # each result as soon as it is done
            return run_jobs(jobs, self.n_jobs, on_cpu)

        numbered = [(g, members) for g, members in enumerate(groups) if members]
        done = parallel(functools.partial(_reduced, functools.partial(
            self._fit_group, g, [tasks[i] for i in members], X, y, keep_single), members,
            reduce) for g, members in numbered)
        finished = set()
        for k, (trained, moved) in done:  # runs to its end (and shuts its workers down)
            members = numbered[k][1]
            for j, result in trained.items():
                results[members[j]] = result
                finished.add(members[j])
                if on_result is not None:
                    on_result(members[j], result)
            if on_group is not None and trained:
                on_group([members[j] for j in trained])
            alone.update({members[j]: reason for j, reason in moved.items()})
        solo = sorted(i for i in alone if i not in finished)
        # devices round-robin: each group, then each task that trains alone, its own slot
        first = len(groups)
        for k, (trained, _) in parallel(functools.partial(_reduced, functools.partial(
                _alone_job, self, tasks[i], X, y, alone[i], first + n), [i], reduce)
                for n, i in enumerate(solo)):
            i, result = solo[k], trained[0]
            results[i] = result
            if on_result is not None:
                on_result(i, result)
            if on_group is not None:
                on_group([i])
        return results

    def _module_args(self, task):
        """The module arguments of ``task``'s net (its module class and ``module__``
        parameters), as a hashable key."""
        net, _ = find_net(clone(self.estimator).set_params(**clone(task.params, safe=False)))
        return repr((net.module, sorted(net.get_params_for("module").items())))

    def _func_reason(self, task, X, y):
        """For a task whose module takes the ``torch.func`` path: "" if its forward runs
        under ``vmap`` (a 0-epoch initialisation on a few rows and two stacked copies, no
        training), else why not."""
        est = clone(self.estimator).set_params(**clone(task.params, safe=False))
        net, _ = find_net(est)
        if is_family(net):
            return ""
        rows = np.arange(min(len(y), 8)) if task.rows is None else np.asarray(task.rows)[:8]
        try:
            with torch.random.fork_rng(devices=[]):
                est.set_params(**trial_params(self.estimator, seed=task.seed, max_epochs=0,
                                              train_split=None))
                with _initialising(net):
                    est.fit(_rows(X, rows), _rows(y, rows))
                sample = apply(lambda t: t[:2], as_tensors(
                    net_input(est, _rows(X, rows)) if est is not net else net_X(net, _rows(
                        X, rows))))
                FuncLayout(net.module_, sample)
        except ValueError as exc:
            return f"its module cannot be fused: {exc}"
        except Exception as exc:  # trains alone, and fails there as its own fit does
            return _init_failed(exc)
        return ""

    def _fit_alone(self, task, X, y, reason, slot=0):
        start = time.perf_counter()
        est = self._clone(task, task.params, task_index=slot)
        Xr, yr = _rows(X, task.rows), _rows(y, task.rows)
        _seed_without_callbacks(est, task.seed)
        try:
            est.fit(Xr, yr)
            error = ""
        except TrainingDivergedError as exc:
            est, error = None, f"diverged: {exc}"
        except Exception as exc:  # the caller applies its error_score
            est, error = None, f"{type(exc).__name__}: {exc}"
        return TaskResult(est, error, time.perf_counter() - start, -1, reason, restart=(
            "" if task.start is None else "it trained alone (a training continues in a "
            "fused group only)"))

    def _clone(self, task, params, task_index=0, **overrides):
        """A clone with the task's parameters, seed and loss guard (``overrides`` win), on
        device slot ``task_index`` (round-robin over several GPUs)."""
        extra = trial_params(self.estimator, seed=task.seed, extra_callbacks=task.callbacks,
                             task_index=task_index, **overrides)
        return clone(self.estimator).set_params(**{**clone(params, safe=False), **extra})

    def _fit_group(self, g, tasks, X, y, keep_single=False):
        """One planned group (in a worker with ``n_jobs``): initialise each task's net (0
        epochs: the net's own init from its seed), split the group by the shapes after
        preprocessing and what the module's arguments built, train, hand back. Returns
        ``({position: TaskResult}, {position: reason})`` for the tasks trained here and
        those that must train alone."""
        trained, moved, shared, inits, keys = {}, {}, {}, [], {}  # keys: data fingerprints
        with torch.random.fork_rng(devices=[]):
            for j, task in enumerate(tasks):
                try:
                    inits.append(self._init(task, X, y, shared, slot=g))
                except Exception as exc:  # trains alone, and fails there as its own fit does
                    inits.append(None)
                    moved[j] = _init_failed(exc)
        by_shape = {}
        for j, init in enumerate(inits):
            if init is None:
                continue
            member = init[1]
            big = too_big(_n_weights(member.net)) if self.engine == "auto" else ""
            if big:
                moved[j] = big
                continue
            module = member.net.module_
            key = (shapes(member.X), tuple(np.shape(member.y)[1:]),
                   tuple(tuple(p.shape) for p in module.parameters()),
                   None if is_family(member.net) else module_signature(module),
                   member.start)  # a group's members start at one epoch
            by_shape.setdefault(key, []).append(j)
        for same in by_shape.values():
            same = self._begin(same, inits, moved, trained, (g, tasks, keys))
            if not same:
                continue
            if len(same) == 1 and self.engine == "auto" and not keep_single and \
                    tasks[same[0]].start is None:  # (one given a start stays, even alone)
                moved[same[0]] = ("the only task of its shapes after preprocessing and its "
                                  "module's layers (two or more such tasks fuse)")
                continue
            members = [inits[j][1] for j in same]
            net = members[0].net
            batch = batch_size_of(net, max(len(m.rows) for m in members))
            size = _within_memory(members, batch, group_size(_n_weights(net), self.max_group))
            classifier = cross_entropy(net)
            for i in range(0, len(members), size):  # a group's state kept within the cache
                _train(members[i:i + size], batch, classifier, net.device)
            for j in same:
                trained[j] = self._hand_back(g, tasks[j], *inits[j], keys)
        return trained, moved

    def _begin(self, same, inits, moved, trained, group):
        """The positions of ``same`` that train in the group, after each net's
        ``on_train_begin`` (its own fit's first call): a member whose split is not arrays, or
        whose callbacks replaced its module or parameters when training began, trains alone
        (``moved``); one whose ``on_train_begin`` failed fails (``trained``), and so does a
        continued one that had stopped early (``trained``, as it was: :mod:`._resume`)."""
        g, tasks, keys = group
        out = []
        for j in same:
            member = inits[j][1]
            if member.moved:
                moved[j] = member.moved
                continue
            module = member.net.module_
            params = list(module.parameters())
            replay = Replay(member)
            replay.train_begin()
            if member.start and not member.error:  # a continued training
                member.stopped = restore(member) or member.stopped
                if member.stopped:  # its early stopping had stopped it: it trains no more
                    replay.train_end()
            if member.error or (member.start and member.stopped):
                trained[j] = self._hand_back(g, tasks[j], *inits[j], keys)
            elif member.net.module_ is not module or any(
                    p is not q for p, q in zip(params, member.net.module_.parameters())):
                moved[j] = ("a callback replaced its module or parameters when training "
                            "began (a fused group trains the module it was given)")
            else:
                out.append(j)
        return out

    def _init(self, task, X, y, shared, slot=0):
        """The task's net fitted for 0 epochs (its own initialisation from its seed, and the
        validation split its own fit makes) on device slot ``slot`` (its group's: groups go
        round-robin over several GPUs), the state of torch's generator after it, and its
        data: without preprocessing every member indexes one shared copy of X (and of y,
        for equal classes), and the members of one fold share the one copy of its rows their
        callbacks are given (``fit``'s ``X``, ``dataset_train``)."""
        params = clone(task.params, safe=False)
        template, prefix = find_net(self.estimator)
        epochs = int(params.get(f"{prefix}max_epochs", template.max_epochs))
        est = clone(self.estimator).set_params(**{  # one set_params: a Pipeline's is slow
            **params, **trial_params(self.estimator, seed=task.seed, task_index=slot,
                                     extra_callbacks=task.callbacks, max_epochs=0)})
        fold = ("fold", id(task.rows))  # the fold's rows: alive, one object per fold
        if fold not in shared:
            shared[fold] = (_rows(X, task.rows), _rows(y, task.rows))
        Xr, yr = shared[fold]
        net, _ = find_net(est)
        pre = _plain_preprocessing(est)
        _seed_without_callbacks(est, task.seed)
        with _initialising(net) as split:  # what its own fit splits off for validation
            if pre is None:
                est.fit(Xr, yr)
                fit_X = Xr
            else:  # the steps before the net, fitted once per fold and shared by its tasks
                key, fit_X = self._fit_steps(est, pre, (params, task.rows, shared), Xr, yr)
                net.fit(fit_X, yr)  # as Pipeline.fit feeds it: the steps' fit_transform
        generator = torch.Generator().set_state(torch.get_rng_state())
        shuffle = ("dataloader" if net.iterator_train is DataLoader else "array") + \
            ("" if net.get_params_for("iterator_train").get("shuffle", False) else "-ordered")
        if est is not net:  # preprocessing fitted on the task's rows: its own data
            if pre is None:
                Xt, yt = net_input(est, Xr), net_y(net, yr)
            else:
                data = (key, tuple(np.asarray(getattr(net, "classes_", ())).tolist()))
                if data not in shared:
                    shared[data] = (net_X(net, fit_X), net_y(net, yr))
                Xt, yt = shared[data]
            Xt = as_tensors(Xt)
            member = Member(net, Xt, torch.as_tensor(yt), generator, epochs, shuffle=shuffle)
        else:
            if "X" not in shared:
                shared["X"] = as_tensors(net_X(net, X))
            classes = tuple(np.asarray(getattr(net, "classes_", ())).tolist())
            if classes not in shared:
                shared[classes] = torch.as_tensor(net_y(net, y))
            member = Member(net, shared["X"], shared[classes], generator, epochs, task.rows,
                            shuffle=shuffle)
        _split_member(member, split["datasets"], fit_X, yr)
        if task.start is not None:
            member.restart = restart_reason(net) or missing(net, task.start) or (
                "" if task.start["epochs"] < epochs else
                f"its earlier training had {task.start['epochs']} epochs, not fewer")
            if not member.restart:
                resume(member, task.start)
        return est, member

    @staticmethod
    def _fit_steps(est, pre, task, Xr, yr):
        """``(cache key, X the net receives)``: the Pipeline's steps before the net, fitted
        once per fold and shared by its tasks (each task its own copy of the fitted steps).
        ``task``: its parameters, its rows and the group's cache."""
        params, rows, shared = task
        # the fold (its rows, alive and shared by the group's tasks) and the task's own
        # parameters of these steps: hashing the steps themselves cost 0.4 ms a task
        names = {name for name, _ in pre.steps}
        own = {k: v for k, v in params.items() if k.split("__", 1)[0] in names}
        key = ("pre", id(rows), joblib.hash(own) if own else "")
        if key not in shared:
            shared[key] = ([step for _, step in pre.steps], pre.fit_transform(Xr, yr))
        fitted, Xt_pre = shared[key]
        for i, step in enumerate(fitted):
            est.steps[i] = (est.steps[i][0], step if step is pre.steps[i][1] else
                            copy.deepcopy(step))
        return key, Xt_pre

    @staticmethod
    def _hand_back(g, task, est, member, keys):
        """The member's :class:`TaskResult`, with the fingerprint of the data its fit
        received (``keys``: the group's, one per data and fold, which its members share)."""
        restart = member.restart
        if member.error:
            return TaskResult(None, member.error, member.seconds, g, "", start=member.start,
                              restart=restart)
        net = member.net
        net.max_epochs = member.epochs
        net.module_.eval()
        # the data as its fit received it, not recomputed (wherever the group kept it)
        data = (id(member.X), id(member.y), member.fit_rows.data_ptr(), len(member.fit_rows))
        if data not in keys:
            rows = member.fit_rows.cpu().numpy()
            keys[data] = fingerprint(apply(lambda t: t.cpu().numpy()[rows], member.X),
                                     member.y.cpu().numpy()[rows])
        return TaskResult(est, "", member.seconds, g, "", keys[data], start=member.start,
                          restart=restart, carry=carry(member))


def _seed_without_callbacks(estimator, seed):
    """A net with ``callbacks="disable"`` cannot take a :class:`~skhpo.nets.TaskSeed`: its
    task's seed is applied here, before it initialises (as the callback would)."""
    net, _ = find_net(estimator)
    if seed is not None and net.callbacks == "disable" and not seeds_itself(net):
        seed_everything(seed)


def _init_failed(exc):
    """Why a task whose 0-epoch initialisation in the engine raised trains alone (where its
    own fit fails alike, or trains if the engine's data handling was the cause)."""
    message = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
    return f"its initialisation failed ({type(exc).__name__}{': ' if message else ''}{message})"


def _train(members, batch, classifier, device):
    """Train ``members`` as one :class:`~._group.StackedGroup`; an error that stops the whole
    group (a module output its nets' own fits refuse alike) fails each member's fit with it
    (``error_score`` applies, as to their own fits)."""
    try:
        StackedGroup(members, batch, classifier, device).run()
    except Exception as exc:
        for m in members:
            m.error = m.error or f"{type(exc).__name__}: {exc}"


def _plain_preprocessing(estimator):
    """The steps before the net of a plain Pipeline (no memory, no ``transform_input``, more
    than one step), whose ``fit`` is each step's ``fit_transform`` then the net's ``fit``;
    else None."""
    if not isinstance(estimator, Pipeline) or len(estimator.steps) < 2:
        return None
    if estimator.memory is not None or getattr(estimator, "transform_input", None):
        return None
    return estimator[:-1]


def _rows(a, rows):
    """The task's rows of ``a``, indexed as scikit-learn's cross-validation indexes them."""
    return a if rows is None else _safe_indexing(a, rows)


def _n_weights(net):
    return sum(p.numel() for p in net.module_.parameters())


def _reduced(job, members, reduce):
    """``job()``'s ``({position: TaskResult}, moved)`` with each result passed through
    ``reduce(task index, result)`` (where the job ran: in a worker, only what ``reduce``
    keeps travels back)."""
    trained, moved = job()
    if reduce is not None:
        trained = {j: reduce(members[j], result) for j, result in trained.items()}
    return trained, moved


def _alone_job(trainer, task, X, y, reason, slot):
    """A task that trains alone, as a group job: ``({0: TaskResult}, {})``."""
    return {0: trainer._fit_alone(task, X, y, reason, slot)}, {}


class GroupSplitWarning(UserWarning):
    """A fused group was split before training, to stay within the memory it may take."""


def _within_memory(members, batch, size):
    """``size`` (models trained together), or fewer where that many would take more than
    :func:`~.cost.memory_budget` (then a :class:`GroupSplitWarning` says so, before any of
    them trains): never an out-of-memory error half-way through a group."""
    budget = memory_budget()
    if budget is None or len(members) < 2:
        return size
    module = members[0].net.module_
    units = sum(p.shape[0] for p in module.parameters() if p.dim() >= 2)
    X = members[0].X
    features = sum(int(np.prod(v.shape[1:])) for v in (X.values() if isinstance(X, dict)
                                                         else [X]))
    rows, n_weights = max(len(m.rows) for m in members), _n_weights(members[0].net)
    per_model = model_bytes(n_weights, rows, batch, features, units)
    fits = max(1, budget // per_model)
    wanted = min(size, len(members))
    if fits >= wanted:
        return size
    warnings.warn(GroupSplitWarning(
        f"a fused group of {wanted} models ({n_weights:,} weights, "
        f"{rows:,} rows each) would take about {wanted * per_model / 1e9:.2f} GB "
        f"({per_model / 1e6:.1f} MB a model) beyond the data, more than the "
        f"{budget / 1e9:.2f} GB it may hold ({MEMORY_SHARE:.0%} of the memory available, or "
        f"${MEMORY_ENV}): it trains as groups of {fits}"), stacklevel=2)
    return fits


@contextmanager
def _initialising(net):
    """The block's fit of ``net`` (0 epochs) initialises it without calling its callbacks
    (its ``on_train_begin`` runs when the group begins, once, as in its own fit; its
    ``on_train_end`` when it leaves the group), and records, in the dict it yields under
    ``"datasets"``, what the net's own ``get_split_datasets`` returned: its training and
    validation parts."""
    seen = {}
    original = net.get_split_datasets

    def capture(*args, **kwargs):
        seen["datasets"] = original(*args, **kwargs)
        return seen["datasets"]

    net.get_split_datasets = capture
    net.notify = _silent
    try:
        yield seen
    finally:
        del net.get_split_datasets, net.notify


def _silent(method_name, **cb_kwargs):
    return None


def _split_member(member, datasets, fit_X, fit_y):
    """The member's training rows and validation part, from the split its net's own fit made
    (``datasets``); what its callbacks are given with it. A part that is not arrays (a custom
    Dataset) leaves ``member.moved`` saying why it trains alone."""
    dataset_train, dataset_valid = datasets
    member.datasets = {"dataset_train": dataset_train, "dataset_valid": dataset_valid}
    member.fit_kwargs = {"X": fit_X, "y": fit_y}
    n = len(member.fit_rows)
    train = _subset(dataset_train, n)
    if train is False:
        member.moved = "its training part after the validation split is not array data"
        return
    if train is not None:
        member.rows = member.fit_rows[torch.as_tensor(train, dtype=torch.long)]
    if dataset_valid is None:
        return
    net = member.net
    valid = _subset(dataset_valid, n)
    if valid is False:
        arrays = array_data(dataset_valid)
        if arrays is None or arrays[1] is None:
            member.moved = "its validation data is not arrays of inputs and targets"
            return
        Xv, yv = arrays
    else:
        rows = member.fit_rows if valid is None else \
            member.fit_rows[torch.as_tensor(valid, dtype=torch.long)]
        Xv = apply(lambda t: t.index_select(0, rows), member.X)
        yv = member.y.index_select(0, rows)
    size = net.get_params_for("iterator_valid").get("batch_size", net.batch_size)
    member.valid = Valid(Xv, yv, len(yv) if size == -1 else size,
                         draws=net.iterator_valid is DataLoader)


def _subset(dataset, n):
    """The indices of ``dataset`` into the ``n`` rows the fit received (None: all of them),
    or False when it is not a part of them."""
    if isinstance(dataset, Subset) and type(dataset.dataset) is SkorchDataset \
            and len(dataset.dataset) == n:
        return np.asarray(dataset.indices)
    if type(dataset) is SkorchDataset and len(dataset) == n:
        return None
    return False
