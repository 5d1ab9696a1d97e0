"""A population of skorch students: the :func:`~.hpm.run_hpm` problem of
:class:`~.estimator.PopulationMutationSearch`.

* :class:`HyperStep` — the skorch callback that moves a student's hyper-parameters along
  their one-step look-ahead hypergradient while it trains (HPM's train step);
* :class:`NetPopulation` — students that are skorch nets, each trained by its own
  ``partial_fit`` (in parallel through joblib);
* :class:`FusedNetPopulation` — the same students as rows of one stacked model
  (:class:`skhpo.fused.students.StudentGroup`), following the skorch students' run to
  float32 rounding.
"""

import copy
import math
import time
from typing import NamedTuple

import numpy as np
import torch
from joblib import Parallel, delayed
from sklearn.base import clone
from skorch.callbacks import Callback
from skorch.utils import to_tensor

from ...fused import group_size
from ...fused._group import epoch_history
from ...fused.students import StudentGroup
from ...hyper.hypergrad import apply_hyperparams, lookahead_loss
from ...hyper.layers import replace_dropout
from ...models import TabularMLPClassifier
from ...nets import (
    FiniteLossGuard,
    TrainingDivergedError,
    batch_size_of,
    drawing_from,
    free_estimator,
    net_seed,
    seed_everything,
    spawn_seeds,
    trial_params,
)

__all__ = ["FusedNetPopulation", "HyperStep", "NetPopulation", "PopulationSettings"]

class HyperStep(Callback):
    """Every ``every`` training minibatches, one Adam step (lr ``hyper_lr``) of the student's
    hyper-parameters, in the unconstrained coordinates of their boxes, along the look-ahead
    hypergradient on the next validation minibatch (set in ``val_data`` by the trainer)."""

    def __init__(self, hypers, values, hyper_lr=3e-3, every=2, batch_size=64):
        self.hypers = hypers
        self.values = values
        self.hyper_lr = hyper_lr
        self.every = every
        self.batch_size = batch_size

    def initialize(self):
        if not hasattr(self, "u_"):
            self.reset(self.values)
        self.val_data = getattr(self, "val_data", None)
        self.n_batches_ = getattr(self, "n_batches_", 0)
        return self

    def reset(self, values):
        """Start again from ``values`` (``{name: float}``) with a fresh Adam state."""
        self.restore(torch.tensor([float(hp.box.inverse(values[hp.name]))
                                   for hp in self.hypers], dtype=torch.float64))

    def restore(self, u, adam=None, n_batches=None):
        """Continue from coordinates ``u`` with Adam's state ``adam`` (``step``, ``exp_avg``,
        ``exp_avg_sq``; None: a fresh one), e.g. a student of the fused population."""
        self.u_ = u.detach().clone().requires_grad_(True)
        self.opt_ = torch.optim.Adam([self.u_], lr=self.hyper_lr)
        if adam is not None:
            self.opt_.state[self.u_] = {key: value.clone() for key, value in adam.items()}
        if n_batches is not None:
            self.n_batches_ = n_batches

    def current(self):
        with torch.no_grad():
            return {hp.name: float(hp.box.forward(self.u_[i])) for i, hp in enumerate(self.hypers)}

    def on_train_begin(self, net, **kwargs):
        replace_dropout(net.module_)
        apply_hyperparams(net, self.hypers, self.current())

    def restore_module(self, net):
        """The module as training left it (its dropout layers replaced), for a checkpoint
        that rebuilds the student (:mod:`skhpo._store`) before loading its weights."""
        replace_dropout(net.module_)

    def on_batch_end(self, net, batch=None, training=None, **kwargs):
        if not training or self.val_data is None:
            return
        self.n_batches_ += 1
        if self.n_batches_ % self.every:
            return
        Xv, yv = self.val_data
        idx = torch.randint(len(yv), (min(self.batch_size, len(yv)),))
        Xb, yb = batch[0], batch[1]
        group = net.optimizer_.param_groups[0]
        values = {hp.name: hp.box.forward(self.u_[i]) for i, hp in enumerate(self.hypers)}
        loss = lookahead_loss(net.module_, _loss_fn(net), self.hypers,
                              {k: v.float() for k, v in values.items()},
                              ((to_tensor(Xb, net.device), to_tensor(yb, net.device)),
                               (Xv[idx].to(net.device), yv[idx].to(net.device))),
                              lr=group["lr"], weight_decay=group.get("weight_decay", 0.0))
        (grad,) = torch.autograd.grad(loss, [self.u_])
        if torch.isfinite(grad).all():
            self.u_.grad = grad
            self.opt_.step()
            apply_hyperparams(net, self.hypers, self.current())


def _loss_fn(net):
    return lambda y_pred, y: net.get_loss(y_pred, y, training=False)


def _hyper_step(net):
    for callbacks in (getattr(net, "callbacks_", None), net.callbacks):
        found = dict(callbacks or ()).get("skhpo_hpm")
        if found is not None:
            return found
    raise KeyError("skhpo_hpm")


def _train_student(net, X, y, Xv_t, yv_t, seed, rows):
    """One train step of one student (in a worker): returns ``(net, val_loss, seconds)``."""
    start = time.perf_counter()
    seed_everything(seed)
    cb = _hyper_step(net)
    cb.val_data = (Xv_t, yv_t)
    try:
        net.partial_fit(X[rows], y[rows])
        with torch.no_grad():
            y_pred = net.forward(Xv_t, training=False)
            loss = float(net.get_loss(y_pred, yv_t.to(y_pred.device)))
    except TrainingDivergedError:
        loss = math.inf
    finally:
        cb.val_data = None
    return net, loss if math.isfinite(loss) else math.inf, time.perf_counter() - start


class PopulationSettings(NamedTuple):
    """How the students train: the hyper-optimiser's ``hyper_lr`` and ``hyper_every``, the
    ``step`` ("epoch" or a number of minibatches), ``n_jobs`` and the teacher's
    ``teacher_max_batches``."""

    hyper_lr: float
    hyper_every: int
    step: object
    n_jobs: object
    teacher_max_batches: object


class NetPopulation:
    """The :func:`run_hpm` problem for skorch students. ``y`` (the user's labels) is what the
    students train on; ``y_enc`` and ``yv_t`` are the targets as the net's loss takes them
    (class indices for skhpo classifiers), for the look-ahead steps."""

    #: students spread round-robin over several GPUs (one stacked population: all on one)
    spread = True

    def __init__(self, settings, net, hypers, X, y, y_enc, Xv_t, yv_t, seeds, classes=None):
        self.settings, self.net, self.hypers = settings, net, hypers
        self.boxes = [hp.box for hp in hypers]
        self.names = [hp.name for hp in hypers]
        self.X, self.y, self.y_enc, self.Xv_t, self.yv_t = X, y, y_enc, Xv_t, yv_t
        self.classes = classes
        self.seeds = seeds
        self.batch_size = batch_size_of(net, len(X))
        self.fit_time = np.zeros(len(seeds))
        self._stream = np.random.default_rng(seeds[0]).permutation(len(X))
        self._pos = 0
        # the teacher's batches and look-ahead noise: the population's own generator, so
        # they do not depend on how (or where) the students trained
        self._teacher_rng = torch.Generator().manual_seed(int(seeds[-1]))

    def init(self, k, rng):
        values = {hp.name: hp.box.sample(rng) for hp in self.hypers}
        hyper = HyperStep(self.hypers, values, self.settings.hyper_lr,
                          self.settings.hyper_every,
                          self.batch_size)
        overrides = {"max_epochs": 1, "train_split": None, "warm_start": True}
        if self.classes is not None:  # a step on a subset must still know every class
            overrides["classes"] = self.classes
        if "random_state" in self.net.get_params(deep=False):
            overrides["random_state"] = net_seed(self.seeds[k])
        params = trial_params(self.net, seed=None, task_index=k if self.spread else 0,
                              extra_callbacks=[("skhpo_hpm", hyper)], **overrides)
        return clone(self.net).set_params(**params)

    def get_state(self):
        """What the population's own bookkeeping needs to resume (see :func:`run_hpm`)."""
        return {"pos": self._pos, "fit_time": self.fit_time.copy(),
                "teacher_rng": self._teacher_rng.get_state()}

    def set_state(self, state):
        self._pos, self.fit_time = state["pos"], state["fit_time"].copy()
        self._teacher_rng.set_state(state["teacher_rng"])

    def nets(self, students):
        """The students as fitted nets (here they are)."""
        return list(students)

    def _rows(self):
        step = self.settings.step
        if step == "epoch":
            return slice(None)
        n = min(step * self.batch_size, len(self.X))
        idx = np.take(self._stream, np.arange(self._pos, self._pos + n), mode="wrap")
        self._pos = (self._pos + n) % len(self.X)
        return np.sort(idx)

    def train(self, students, step):
        rows = self._rows()
        seeds = spawn_seeds(self.seeds[0] + step, len(students))
        parallel = Parallel(n_jobs=self.settings.n_jobs)
        out = parallel(delayed(_train_student)(s, self.X, self.y, self.Xv_t, self.yv_t, sd, rows)
                       for s, sd in zip(students, seeds))
        self.fit_time += [t for _, _, t in out]
        return [s for s, _, _ in out], [loss for _, loss, _ in out]

    def values(self, student):
        cb = _hyper_step(student)
        return np.array([cb.current()[n] for n in self.names]) if hasattr(cb, "u_") else \
            np.array([cb.values[n] for n in self.names])

    def copy(self, student, h):
        new = copy.deepcopy(student)
        values = dict(zip(self.names, (float(v) for v in h)))
        _hyper_step(new).reset(values)
        apply_hyperparams(new, self.hypers, values)
        return new

    def teacher_objectives(self, student):
        max_batches = self.settings.teacher_max_batches
        n_val = len(self.yv_t)
        order = torch.randperm(n_val, generator=self._teacher_rng)
        batches = [order[i:i + self.batch_size] for i in range(0, n_val, self.batch_size)]
        if max_batches is not None:
            batches = batches[:max_batches]
        group = student.optimizer_.param_groups[0]
        module, loss_fn = student.module_, _loss_fn(student)
        Xt = torch.as_tensor(self.X)
        yt = torch.as_tensor(self.y_enc)
        device = student.device

        def objective(val_idx):
            train_idx = torch.randint(len(yt), (self.batch_size,), generator=self._teacher_rng)

            def f(h_prime):
                values = {hp.name: h_prime[i].float() for i, hp in enumerate(self.hypers)}
                with drawing_from(self._teacher_rng):  # the look-ahead's dropout noise
                    return lookahead_loss(
                        module, loss_fn, self.hypers, values,
                        ((Xt[train_idx].to(device), yt[train_idx].to(device)),
                         (self.Xv_t[val_idx].to(device), self.yv_t[val_idx].to(device))),
                        lr=group["lr"], weight_decay=group.get("weight_decay", 0.0))
            return f
        return [objective(b) for b in batches]


class FusedNetPopulation(NetPopulation):
    """The same students as rows of one stacked model (:class:`skhpo.fused.StudentGroup`):
    each student is initialised by its own net, and draws what its ``partial_fit`` would from
    its own generator, so the run follows the skorch students' to float32 rounding. The
    students are :class:`~skhpo.fused.StudentState` until :meth:`nets`."""

    group = None
    spread = False

    def init(self, k, rng):
        net = super().init(k, rng)
        with torch.random.fork_rng(devices=[]):
            net.set_params(max_epochs=0)
            net.partial_fit(self.X, self.y)  # the net's own initialisation, from its seed
            net.set_params(max_epochs=1)
            if self.group is None:
                self.template = net
                self.group = StudentGroup(
                    net, self.hypers, torch.as_tensor(np.asarray(self.X)), self.y_enc,
                    self.Xv_t, self.yv_t, batch_size=self.batch_size,
                    hyper_lr=self.settings.hyper_lr, every=self.settings.hyper_every,
                    classifier=isinstance(net, TabularMLPClassifier))
            state = self.group.state_of(net, _hyper_step(net).u_, k)
        if net is not self.template:
            free_estimator(net)
        return state

    def train(self, students, step):
        rows = self._rows()
        index = torch.arange(len(self.X)) if isinstance(rows, slice) else torch.as_tensor(rows)
        generators = []
        for state, seed in zip(students, spawn_seeds(self.seeds[0] + step, len(students))):
            generator = torch.Generator()
            if state.init_state is not None:  # the first step continues the initialisation
                generator.set_state(state.init_state)
            else:  # as seed_everything(seed) before the student's partial_fit
                generator.manual_seed(int(seed))
            generators.append(generator)
        size = group_size(sum(p.numel() for p in self.template.module_.parameters()),
                          len(students))
        losses = []
        for i in range(0, len(students), size):  # each part's state kept within the cache
            part, seconds = self.group.train(students[i:i + size], generators[i:i + size],
                                             index)
            losses += part
            self.fit_time[i:i + size] += seconds
        return students, losses

    def values(self, student):
        current = self.group.current(student.u)
        return np.array([current[n] for n in self.names])

    def copy(self, student, h):
        return student.copy(torch.tensor([float(hp.box.inverse(float(v)))
                                          for hp, v in zip(self.hypers, h)],
                                         dtype=torch.float64))

    def teacher_objectives(self, student):
        return super().teacher_objectives(self._into(student, self.template))

    def nets(self, students):
        out = []
        for state in students:
            net = self._into(state, copy.deepcopy(self.template))
            adam = {"step": torch.tensor(state.hyper_steps), "exp_avg": state.hyper_m,
                    "exp_avg_sq": state.hyper_v} if state.hyper_steps else None
            _hyper_step(net).restore(state.u, adam, state.n_batches)
            for _, cb in net.callbacks_:
                if isinstance(cb, FiniteLossGuard):
                    cb.first_loss_ = state.first_loss
            net.history_ = epoch_history(state.history)
            if "random_state" in net.get_params(deep=False):
                net.random_state = net_seed(self.seeds[state.root])
            out.append(net)
        return out

    def _into(self, state, net):
        """``net`` holding ``state``'s weights, optimiser state and current
        hyper-parameters."""
        self.group.into_net(state, net)
        apply_hyperparams(net, self.hypers, self.group.current(state.u))
        return net
