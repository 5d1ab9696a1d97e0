"""Train many candidates of one estimator at once, and hand back ordinary fitted nets.

:class:`FusedTrainer` takes training tasks (a candidate's parameters, its seed, its training
rows), plans them into groups that can train together (:meth:`FusedTrainer.plan`, a pure
function of the tasks and the estimator), trains each group as one stacked model
(:class:`~._mlp.MLPGroup`) and everything else alone through the estimator's own ``fit``, and
returns one :class:`TaskResult` per task: a fitted clone of the estimator (its Pipeline steps
fitted on the task's rows, its net's ``module_``, ``optimizer_`` state and ``history`` those of
the training), or the reason it failed.

What fuses: skorch nets (alone or as a Pipeline's last step) with Adam or SGD, no validation
split, no ``warm_start``, skhpo's ``ArrayBatchIterator`` or torch's ``DataLoader``, and no
callbacks that act during training. skhpo's ``TabularMLPClassifier`` / ``TabularMLPRegressor``
(their own module and criterion) stack as batched products, its ``SmallCNNClassifier`` with
per-model convolutions, any other module through ``torch.func``
(:class:`~._generic.FuncLayout`, which refuses, with the reason, what it cannot replay).
Within a group the tasks may differ in learning rate, weight decay, Adam's betas and eps,
SGD's momentum and dampening, dropout rates, ``l2`` / ``l1``, ``max_epochs``, seed and
training rows (CV folds of unequal size); they share the architecture, batch size, optimiser
class (and SGD's Nesterov), device and the shapes after preprocessing. Anything else trains
alone, with the reason in :attr:`TaskResult.reason`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import joblib
import numpy as np
import torch
from joblib import Parallel, delayed
from sklearn.base import clone
from sklearn.pipeline import Pipeline
from sklearn.utils import _safe_indexing
from torch.utils.data import DataLoader

from ..models import (
    MLPModule,
    SmallCNNClassifier,
    SmallCNNModule,
    TabularMLPClassifier,
    TabularMLPRegressor,
)
from ..nets import (
    ArrayBatchIterator,
    FiniteLossGuard,
    TaskSeed,
    TrainingDivergedError,
    batch_size_of,
    find_net,
    net_input,
    trial_params,
)
from ._generic import FuncLayout, stateful_layer
from ._mlp import MLPGroup, MLPMember, epoch_history
from .cost import group_size, max_weights
from .prefit import fingerprint

__all__ = ["ENGINES", "MAX_WEIGHTS", "FusedTask", "FusedTrainer", "TaskResult", "unfusible"]

ENGINES = ("auto", "fused", "sequential")
#: ``engine="auto"``: nets with more weights train alone (measured on the machine that built
#: skhpo, docs/fused.md; ``$SKHPO_MAX_WEIGHTS`` overrides it: :mod:`skhpo.fused.cost`)
MAX_WEIGHTS = 150_000
#: the optimisers the engine has a batched twin of, and the arguments that may differ per model
_OPTIMIZER_ARGS = {torch.optim.Adam: {"weight_decay", "betas", "eps"},
                   torch.optim.SGD: {"weight_decay", "momentum", "dampening", "nesterov"}}
_CE = torch.nn.CrossEntropyLoss
_MODULES = {TabularMLPClassifier: MLPModule, TabularMLPRegressor: MLPModule,
            SmallCNNClassifier: SmallCNNModule}
_CRITERIA = {TabularMLPClassifier: torch.nn.CrossEntropyLoss,
             SmallCNNClassifier: torch.nn.CrossEntropyLoss,
             TabularMLPRegressor: torch.nn.MSELoss}


@dataclass
class FusedTask:
    """One training: ``params`` set on a clone of the estimator, the task's ``seed`` (as
    :class:`~skhpo.nets.TaskSeed` applies it; a net's own ``random_state`` wins), its
    training ``rows`` (indices into X, or None for all rows) and ``callbacks`` the method adds
    to the net (``(name, callback)`` pairs; to fuse, each must only read the net at epoch
    ends: ``reads_epochs = True``)."""

    params: dict = field(default_factory=dict)
    seed: int | None = None
    rows: object = None
    callbacks: tuple = ()


@dataclass
class TaskResult:
    """``estimator``: the fitted clone (None if the training failed); ``error``: "" or the
    reason it failed (``"diverged: ..."`` for a non-finite training loss); ``fit_time``: its
    share of its group's time; ``group``: the group it trained in (-1: alone); ``reason``:
    why it trained alone ("" if fused); ``data_key``: the fingerprint
    (:func:`skhpo.fused.prefit.fingerprint`) of the data its net trained on, after any
    preprocessing, when the fused engine has it at hand ("" otherwise)."""

    estimator: object
    error: str
    fit_time: float
    group: int
    reason: str
    data_key: str = ""


class FusedTrainer:
    """Train tasks of one ``estimator`` in fused groups where possible.

    Parameters
    ----------
    estimator : skorch net or Pipeline ending in one
        The estimator every task clones.
    engine : {"auto", "fused", "sequential"}, default="auto"
        ``"sequential"``: every task through the estimator's own ``fit``. ``"fused"``: every
        task in a group; a task that cannot fuse is a ``ValueError`` naming the reason.
        ``"auto"``: groups of at least two tasks of nets with at most ``max_weights`` weights
        fuse, the others train alone.
    max_group : int, default=64
        Largest group (on one CPU core the gain per model flattens from about 16-32 models).
        A group of bigger nets is split further so that it holds at most
        ``$SKHPO_MAX_GROUP_WEIGHTS`` (1,500,000) weights in all, at least 2 models: beyond
        that its state leaves the cache and the gain falls (:mod:`skhpo.fused.cost`).
    max_weights : int or None, default=None
        ``"auto"``: nets with more weights train alone. None: ``$SKHPO_MAX_WEIGHTS`` if set
        (``skhpo calibrate`` measures it on your machine), else 150,000. On a CPU a fused
        step of a big net is bound by its arithmetic, so fusing stops paying: measured on
        one thread, groups of 2-8 trained 1.6-1.8x faster than one at a time at 85k
        weights, 1.1-1.2x at 176k, and 0.9-1.1x at 301k (``benchmarks/fused.py --depth 2
        --width 512``).
    n_jobs : int or None, default=None
        Groups (and tasks that train alone) run in parallel through ``joblib.Parallel``;
        results do not depend on it.
    """

    def __init__(self, estimator, *, engine="auto", max_group=64, max_weights=None,
                 n_jobs=None):
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
        self.estimator = estimator
        self.engine = engine
        self.max_group = max_group
        self.max_weights = max_weights
        self.n_jobs = n_jobs

    # -- the plan (no training) --------------------------------------------------------------

    def plan(self, tasks):
        """``(groups, alone)``: lists of task indices that may train together, in task order
        per fusion key, and ``{task index: reason}`` of the tasks that train alone."""
        self._max_weights()  # a bad $SKHPO_MAX_WEIGHTS fails here, before any training
        groups, alone = {}, {}
        for i, task in enumerate(tasks):
            if self.engine == "sequential":
                alone[i] = "engine='sequential'"
                continue
            est = clone(self.estimator).set_params(**task.params)
            reason = unfusible(est) or _unreadable(task.callbacks)
            if reason:
                if self.engine == "fused":
                    raise ValueError(f"engine='fused': task {i} cannot be fused: {reason}")
                alone[i] = reason
                continue
            key = fusion_key(est)
            if self.engine == "auto" and not key[-1].startswith("cpu"):
                alone[i] = ("engine='auto' fuses on the CPU only until the GPU path has been "
                            "measured; engine='fused' trains GPU groups")
                continue
            groups.setdefault(key, []).append(i)
        planned = []
        for members in groups.values():
            if len(members) == 1 and self.engine == "auto":
                alone[members[0]] = "the only task of its architecture and batch size"
                continue
            planned += [members[j:j + self.max_group]
                        for j in range(0, len(members), self.max_group)]
        return planned, alone

    # -- training ----------------------------------------------------------------------------

    def fit(self, tasks, X, y, on_result=None, plan=None, on_group=None):
        """Train every task; one :class:`TaskResult` per task, in task order.
        ``on_result(i, result)``, if given, is called for each task as soon as its group (or
        its own training) has finished, and then ``on_group([i, ...])`` once for the whole
        group (or the one task), e.g. to write them to a checkpoint in one file. ``plan``:
        ``(groups, alone)`` as :meth:`plan` made them for ``tasks``, restricted to the tasks
        to train now (the others get None; a group may be left empty, so that the others
        keep their numbers): each group then trains fused whatever its size now, so every
        task trains as it would have in the whole plan (a search resumed from a checkpoint
        gives the uninterrupted run's results)."""
        groups, alone = self.plan(tasks) if plan is None else plan
        keep_single = plan is not None
        results = [None] * len(tasks)
        for g, members in enumerate(groups):  # the generic path: can it run? (no training)
            reason = self._func_reason(tasks[members[0]], X, y) if members else ""
            if reason:
                if self.engine == "fused":
                    raise ValueError(f"engine='fused': task {members[0]} cannot be fused: "
                                     f"{reason}")
                alone.update({i: reason for i in members})
                groups[g] = []

        def parallel(jobs):  # each result as soon as it is done
            return Parallel(n_jobs=self.n_jobs, return_as="generator")(jobs)

        numbered = [(g, members) for g, members in enumerate(groups) if members]
        done = parallel(delayed(self._fit_group)(g, [tasks[i] for i in members], X, y,
                                                 keep_single)
                        for g, members in numbered)
        # the generator first in zip: it runs to its end (and shuts its workers down)
        for (trained, moved), (_, members) in zip(done, numbered):
            for j, result in trained.items():
                results[members[j]] = result
                if on_result is not None:
                    on_result(members[j], result)
            if on_group is not None and trained:
                on_group([members[j] for j in trained])
            alone.update({members[j]: reason for j, reason in moved.items()})
        solo = sorted(i for i in alone if results[i] is None)
        # devices round-robin: each group, then each task that trains alone, its own slot
        first = len(groups)
        for result, i in zip(parallel(delayed(self._fit_alone)(tasks[i], X, y, alone[i],
                                                               first + n)
                                      for n, i in enumerate(solo)), solo):
            results[i] = result
            if on_result is not None:
                on_result(i, result)
            if on_group is not None:
                on_group([i])
        return results

    def _func_reason(self, task, X, y):
        """For a task whose module takes the ``torch.func`` path: "" if its forward runs
        under ``vmap`` (a 0-epoch initialisation on a few rows and two stacked copies, no
        training), else why not."""
        est = clone(self.estimator).set_params(**clone(task.params, safe=False))
        net, _ = find_net(est)
        if type(net) in _MODULES and net.module is _MODULES[type(net)]:
            return ""
        rows = np.arange(min(len(y), 8)) if task.rows is None else np.asarray(task.rows)[:8]
        try:
            with torch.random.fork_rng(devices=[]):
                est.set_params(**trial_params(self.estimator, seed=task.seed, max_epochs=0))
                est.fit(_rows(X, rows), _rows(y, rows))
                net = find_net(est)[0]
                sample = torch.as_tensor(np.ascontiguousarray(
                    net_input(est, _rows(X, rows)) if est is not net else _net_X(net, _rows(
                        X, rows))))[:2]
                FuncLayout(net.module_, sample)
        except ValueError as exc:
            return f"its module cannot be fused: {exc}"
        except Exception as exc:  # trains alone, and fails there as its own fit does
            return f"its initialisation failed ({type(exc).__name__})"
        return ""

    def _max_weights(self):
        return max_weights() if self.max_weights is None else self.max_weights

    def _fit_alone(self, task, X, y, reason, slot=0):
        start = time.perf_counter()
        est = self._clone(task, task.params, task_index=slot)
        Xr, yr = _rows(X, task.rows), _rows(y, task.rows)
        try:
            est.fit(Xr, yr)
            error = ""
        except TrainingDivergedError as exc:
            est, error = None, f"diverged: {exc}"
        except Exception as exc:  # the caller applies its error_score
            est, error = None, f"{type(exc).__name__}: {exc}"
        return TaskResult(est, error, time.perf_counter() - start, -1, reason)

    def _clone(self, task, params, task_index=0, **overrides):
        """A clone with the task's parameters, seed and loss guard (``overrides`` win), on
        device slot ``task_index`` (round-robin over several GPUs)."""
        extra = trial_params(self.estimator, seed=task.seed, extra_callbacks=task.callbacks,
                             task_index=task_index, **overrides)
        return clone(self.estimator).set_params(**{**clone(params, safe=False), **extra})

    def _fit_group(self, g, tasks, X, y, keep_single=False):
        """One planned group (in a worker with ``n_jobs``): initialise each task's net (0
        epochs: the net's own init from its seed), split the group by the shapes after
        preprocessing, train, hand back. Returns ``({position: TaskResult}, {position:
        reason})`` for the tasks trained here and those that must train alone."""
        trained, moved, shared, inits = {}, {}, {}, []
        with torch.random.fork_rng(devices=[]):
            for j, task in enumerate(tasks):
                try:
                    inits.append(self._init(task, X, y, shared, slot=g))
                except Exception as exc:  # trains alone, and fails there as its own fit does
                    inits.append(None)
                    moved[j] = f"its initialisation failed ({type(exc).__name__})"
        by_shape = {}
        for j, init in enumerate(inits):
            if init is None:
                continue
            member = init[1]
            limit = self._max_weights()
            if self.engine == "auto" and _n_weights(member.net) > limit:
                moved[j] = f"{_n_weights(member.net)} weights > max_weights={limit}"
                continue
            key = (tuple(member.X.shape[1:]), tuple(np.shape(member.y)[1:]),
                   tuple(tuple(p.shape) for p in member.net.module_.parameters()))
            by_shape.setdefault(key, []).append(j)
        for same in by_shape.values():
            if len(same) == 1 and self.engine == "auto" and not keep_single:
                moved[same[0]] = "the only task of its shapes after preprocessing"
                continue
            members = [inits[j][1] for j in same]
            net = members[0].net
            batch = batch_size_of(net, max(len(m.rows) for m in members))
            size = group_size(_n_weights(net), self.max_group)
            classifier = _CRITERIA.get(type(net)) is _CE
            for i in range(0, len(members), size):  # a group's state kept within the cache
                MLPGroup(members[i:i + size], batch, classifier, net.device).run()
            for j in same:
                trained[j] = self._hand_back(g, tasks[j], *inits[j])
        return trained, moved

    def _init(self, task, X, y, shared, slot=0):
        """The task's net fitted for 0 epochs (its own initialisation from its seed) on device
        slot ``slot`` (its group's: groups go round-robin over several GPUs), the state of
        torch's generator after it, and its training data: without preprocessing every
        member indexes one shared copy of X (and of y, for equal classes)."""
        params = clone(task.params, safe=False)
        template, prefix = find_net(self.estimator)
        epochs = int(params.get(f"{prefix}max_epochs", template.max_epochs))
        est = clone(self.estimator).set_params(**{  # one set_params: a Pipeline's is slow
            **params, **trial_params(self.estimator, seed=task.seed, task_index=slot,
                                     extra_callbacks=task.callbacks, max_epochs=0)})
        Xr, yr = _rows(X, task.rows), _rows(y, task.rows)
        net, _ = find_net(est)
        pre = _plain_preprocessing(est)
        if pre is None:
            est.fit(Xr, yr)
        else:  # the steps before the net, fitted once per fold and shared by its tasks
            # the fold (its rows, alive and shared by the group's tasks) and the task's own
            # parameters of these steps: hashing the steps themselves cost 0.4 ms a task
            names = {name for name, _ in pre.steps}
            own = {k: v for k, v in params.items() if k.split("__", 1)[0] in names}
            key = ("pre", id(task.rows), joblib.hash(own) if own else "")
            if key not in shared:
                shared[key] = ([step for _, step in pre.steps], pre.fit_transform(Xr, yr))
            fitted, Xt_pre = shared[key]
            for i, step in enumerate(fitted):  # each task its own copy of the fitted steps
                est.steps[i] = (est.steps[i][0], step if step is pre.steps[i][1] else
                                copy.deepcopy(step))
            net.fit(Xt_pre, yr)  # as Pipeline.fit feeds it: the steps' fit_transform
        generator = torch.Generator().set_state(torch.get_rng_state())
        shuffle = ("dataloader" if net.iterator_train is DataLoader else "array") + \
            ("" if net.get_params_for("iterator_train").get("shuffle", False) else "-ordered")
        if est is not net:  # preprocessing fitted on the task's rows: its own data
            if pre is None:
                Xt, yt = net_input(est, Xr), net_y(net, yr)
            else:
                data = (key, tuple(np.asarray(getattr(net, "classes_", ())).tolist()))
                if data not in shared:
                    shared[data] = (_net_X(net, Xt_pre), net_y(net, yr))
                Xt, yt = shared[data]
            Xt = torch.as_tensor(np.ascontiguousarray(Xt))
            return est, MLPMember(net, Xt, torch.as_tensor(yt), generator, epochs,
                                  shuffle=shuffle)
        if "X" not in shared:
            shared["X"] = torch.as_tensor(np.ascontiguousarray(_net_X(net, X)))
        classes = tuple(np.asarray(getattr(net, "classes_", ())).tolist())
        if classes not in shared:
            shared[classes] = torch.as_tensor(net_y(net, y))
        return est, MLPMember(net, shared["X"], shared[classes], generator, epochs, task.rows,
                              shuffle=shuffle)

    @staticmethod
    def _hand_back(g, task, est, member):
        if member.error:
            return TaskResult(None, member.error, member.seconds, g, "")
        net = member.net
        net.history_ = epoch_history(member.losses)
        net.max_epochs = member.epochs
        net.module_.eval()
        rows = member.rows.numpy()  # the data as the net received it, without recomputing
        key = fingerprint(member.X.numpy()[rows], member.y.numpy()[rows])
        return TaskResult(est, "", member.seconds, g, "", key)


# -- what fuses ------------------------------------------------------------------------------

def unfusible(estimator):
    """Why ``estimator`` (parameters set) cannot train in a fused group, or ""."""
    try:
        net, _ = find_net(estimator)
    except TypeError:
        return (f"{type(estimator).__name__} is not a skorch net (the fused engine trains "
                "skorch nets)")
    kind = type(net)
    family = kind in _MODULES and net.module is _MODULES[kind]
    extra = set(net.get_params_for("optimizer")) - _OPTIMIZER_ARGS.get(net.optimizer, set())
    iterator = net.get_params_for("iterator_train")
    checks = [
        (not family and _own_get_loss(kind) is None,
         f"{kind.__name__} overrides get_loss (the fused engine computes each model's loss "
         "with skorch's or skhpo's get_loss)"),
        (family and bool(net.get_params_for("module")), "module__ arguments"),
        (net.optimizer not in _OPTIMIZER_ARGS,
         f"optimizer {getattr(net.optimizer, '__name__', net.optimizer)} (the fused engine "
         "has Adam and SGD)"),
        (bool(extra), f"optimizer arguments {sorted(extra)}"),
        (family and (net.criterion is not _CRITERIA[kind] or
                     bool(net.get_params_for("criterion"))),
         "a criterion other than the model's default"),
        (net.train_split is not None, "train_split (a validation split every epoch)"),
        (bool(net.warm_start), "warm_start"),
        (bool(getattr(net, "compile", False)), "compile=True"),
        (net.iterator_train not in (ArrayBatchIterator, DataLoader) or
         bool(set(iterator) - {"shuffle", "batch_size"}),
         "a training iterator other than ArrayBatchIterator or DataLoader (with no arguments "
         "but shuffle and batch_size)"),
        (int(net.max_epochs) < 1, "max_epochs < 1"),
    ]
    for failed, reason in checks:
        if failed:
            return reason
    for cb in net.callbacks or ():
        cb = cb[1] if isinstance(cb, tuple) else cb
        if not isinstance(cb, (TaskSeed, FiniteLossGuard)) and not _reads_epochs(cb):
            return (f"the callback {type(cb).__name__} acts during training (the fused engine "
                    "runs skhpo's seed and loss guard, and callbacks that only read the net at "
                    "epoch ends)")
    if not family:  # the torch.func path: a layer whose state or randomness it cannot keep
        return _layer_reason(net)
    return ""


_LAYER_REASONS = {}


def _layer_reason(net):
    """:func:`~._generic.stateful_layer` of ``net``'s module: read off a module instance,
    else built once per module class and arguments (a plan asks for every task); "" when
    the module is sized from the data (skhpo's models: checked before training)."""
    if isinstance(net.module, torch.nn.Module):
        return stateful_layer(net.module)
    kwargs = net.get_params_for("module")
    key = (net.module, repr(sorted(kwargs.items())))
    if key not in _LAYER_REASONS:
        try:
            with torch.random.fork_rng(devices=[]):
                _LAYER_REASONS[key] = stateful_layer(net.module(**kwargs))
        except Exception:
            return ""
    return _LAYER_REASONS[key]


def _own_get_loss(kind):
    """The ``get_loss`` of skorch or skhpo that ``kind`` uses, or None if it has its own."""
    from skorch import NeuralNet, NeuralNetClassifier

    from ..models import _SkhpoNetMixin

    known = {NeuralNet.get_loss, NeuralNetClassifier.get_loss, _SkhpoNetMixin.get_loss}
    return kind.get_loss if kind.get_loss in known else None


def _reads_epochs(callback):
    return bool(getattr(callback, "reads_epochs", False))


def _unreadable(callbacks):
    for _, cb in callbacks:
        if not _reads_epochs(cb):
            return (f"the callback {type(cb).__name__} acts during training (the fused engine "
                    "runs callbacks that only read the net at epoch ends)")
    return ""


def fusion_key(estimator):
    """What tasks must share to train together (model class, its architecture, batch size,
    optimiser class and Nesterov or not, device; the device last): ``estimator`` with the
    task's parameters set. For a module on the ``torch.func`` path: the module and its
    arguments, the criterion and the training iterator (the parameters' shapes are compared
    once the nets are initialised)."""
    net, _ = find_net(estimator)
    p = net.get_params(deep=False)
    batch = net.get_params_for("iterator_train").get("batch_size", net.batch_size)
    nesterov = bool(net.get_params_for("optimizer").get("nesterov", False))
    if type(net) in _MODULES and net.module is _MODULES[type(net)]:
        shape = tuple(p[k] for k in ("n_blocks", "n_filters", "kernel_size", "image_shape",
                                     "width", "activation")) \
            if isinstance(net, SmallCNNClassifier) else \
            (p["depth"], p.get("input_dropout") is None, p["width"], p["activation"])
    else:
        module = net.module if isinstance(net.module, type) else type(net.module)
        shape = (f"{module.__module__}.{module.__qualname__}",
                 repr(sorted(net.get_params_for("module").items())),
                 repr(net.criterion), repr(sorted(net.get_params_for("criterion").items())),
                 net.iterator_train.__name__)
    return (type(net).__name__, *shape, batch, net.optimizer.__name__, nesterov,
            str(net.device))


def _net_X(net, X):
    """``X`` as the net's training sees it (skhpo's models validate it to float32)."""
    return net._check_X(X, reset=False) if hasattr(net, "_check_X") else np.asarray(X)


def _plain_preprocessing(estimator):
    """The steps before the net of a plain Pipeline (no memory, no ``transform_input``, more
    than one step), whose ``fit`` is each step's ``fit_transform`` then the net's ``fit``;
    else None."""
    if not isinstance(estimator, Pipeline) or len(estimator.steps) < 2:
        return None
    if estimator.memory is not None or getattr(estimator, "transform_input", None):
        return None
    return estimator[:-1]


def net_y(net, y):
    """``y`` as the net's loss takes it (skhpo's classifiers: class indices)."""
    return net._check_y(y, reset=False) if hasattr(net, "_check_y") else np.asarray(y)


def _rows(a, rows):
    """The task's rows of ``a``, indexed as scikit-learn's cross-validation indexes them."""
    return a if rows is None else _safe_indexing(a, rows)


def _n_weights(net):
    return sum(p.numel() for p in net.module_.parameters())
