"""PopulationMutationSearch: HPM, hypergradient-guided population with a learned teacher
(Tao et al., "Learning to Mutate with Hypergradient Guided Population", NeurIPS 2020).

The algorithm (the paper's Algorithm 1), for a population of K students (weights theta,
hyper-parameters h in a box):

1. every student starts from fresh weights and h drawn uniformly (log-uniformly) from the box;
2. **train step** (students in parallel): one epoch (or ``step`` minibatches) of training in
   which, every ``hyper_every`` minibatches, h takes an Adam step along its one-step look-ahead
   hypergradient on a validation minibatch (:mod:`skhpo.hyper.hypergrad`); then the full
   validation loss of every student;
3. **rank**: the best ceil(rho K) students are the top, the worst ceil(rho K) (and any that
   diverged) the bottom;
4. **exploit**: each bottom student copies the weights and optimiser state of a top student
   (theta*, h*) chosen uniformly;
5. **explore**: its hyper-parameters become clip(alpha * h*), alpha = g_phi(h_bottom) =
   1 + tanh(W softmax(V^T h_bottom)) from the **teacher** [Eq. 9] (or alpha ~ U[0.8, 1.2]
   per hyper-parameter with ``mutation="random"``: the paper's "HPM w/o T");
6. **teacher step** [Eq. 10]: minimise, over phi, the look-ahead validation loss at the top
   student's weights and the mutated h' = alpha * h*, one step per validation minibatch, with
   autograd (the printed Eq. 12 has two slips; docs/population.md);
7. repeat from 2 for ``n_steps`` steps; the student with the lowest validation loss wins.

:func:`run_hpm` is steps 1-7 for any *problem* (a population of networks here, a plain
differentiable function in ``skhpo bench synthetic``); :class:`PopulationMutationSearch` is the
scikit-learn estimator around it.
"""

from __future__ import annotations

import copy
import math
import os
import time
from contextlib import contextmanager
from numbers import Integral, Real
from typing import NamedTuple

import numpy as np
import torch
from joblib import Parallel, delayed
from sklearn.base import clone
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from skorch.callbacks import Callback
from skorch.utils import to_tensor
from torch import nn

from ..fused import ENGINES, StudentGroup, group_size, max_weights, unfusible
from ..fused._mlp import epoch_history
from ..hyper import (
    apply_hyperparams,
    lookahead_loss,
    parse_name,
    read_dimension,
    replace_dropout,
    resolve_hyperparam,
)
from ..log import report
from ..models import TabularMLPClassifier, TabularMLPRegressor
from ..nets import (
    FiniteLossGuard,
    TrainingDivergedError,
    batch_size_of,
    check_param_names,
    draw_seed,
    free_estimator,
    seed_everything,
    seed_torch,
    spawn_seeds,
    trial_params,
)
from ._base import HoldoutResult, HoldoutSearch
from ._progress import Phase

__all__ = ["PopulationMutationSearch", "Teacher", "run_hpm", "RANDOM_RANGE"]

#: HPM w/o T: alpha_i ~ U[0.8, 1.2] (supplement)
RANDOM_RANGE = (0.8, 1.2)


# --------------------------------------------------------------------------------------------
# the teacher [Eq. 9] and the population loop (steps 1-7), independent of networks
# --------------------------------------------------------------------------------------------

class Teacher(nn.Module):
    """alpha = 1 + tanh(W softmax(V^T h)), W, V in R^{N x M}: attention over M keys.

    W starts as U(-0.2 sqrt(M), 0.2 sqrt(M)) and V as U(-1, 1), so that the first mutations
    spread about like U[0.8, 1.2] (std 0.115; measured 0.12 across teachers, 0.03 across
    inputs of one teacher). The PyTorch-default init, U(-1/sqrt(M),
    1/sqrt(M)) for both, gives a near-uniform attention and alpha = 1 +- 0.01: near-exact
    clones (W = 0 would make exact ones).
    """

    def __init__(self, n_hyper, n_keys=64):
        super().__init__()
        a, b = 0.2 * math.sqrt(n_keys), 1.0
        self.W = nn.Parameter(torch.empty(n_hyper, n_keys, dtype=torch.float64).uniform_(-a, a))
        self.V = nn.Parameter(torch.empty(n_hyper, n_keys, dtype=torch.float64).uniform_(-b, b))

    def forward(self, h):
        return 1.0 + torch.tanh(self.W @ torch.softmax(self.V.T @ h, dim=-1))


def run_hpm(problem, *, population_size, truncation, n_steps, mutation="teacher",
            teacher_keys=64, teacher_lr=1e-2, teacher_input="normalized", rng=None,
            on_step=None, resume=None, save=None):
    """Run HPM on ``problem``; return ``(students, losses, teacher, history_rows)``.

    ``problem`` provides ``boxes`` (one :class:`~skhpo.hyper.Box` per hyper-parameter),
    ``init(k, rng)`` -> student, ``train(students, step)`` -> ``(students, losses)`` (``inf``
    for a student that diverged), ``values(student)`` -> h (array), ``copy(student, h)`` -> a
    copy of ``student`` (weights and optimiser state) that continues with h, and
    ``teacher_objectives(student)`` -> callables ``f(h') -> scalar tensor`` (the look-ahead
    validation loss at that student's weights, one per validation batch). An optional
    ``exhausted`` attribute ends the run early (a function-evaluation budget).

    ``save(state)``, if given, is called after every completed step but the last with all the
    run needs to go on (the students, the teacher and its optimiser, the generators, the
    history, ``problem.get_state()``); ``resume=state`` continues such a run after that step,
    exactly as if it had not stopped.
    """
    rng = check_random_state(rng)
    boxes = problem.boxes
    n_sel = math.ceil(truncation * population_size)
    students = [problem.init(k, rng) for k in range(population_size)]
    teacher, opt = None, None
    if mutation == "teacher":
        seed_torch(draw_seed(rng))
        teacher = Teacher(len(boxes), teacher_keys)
        opt = torch.optim.SGD(teacher.parameters(), lr=teacher_lr)
    lo = torch.tensor([b.lo + b.eps for b in boxes], dtype=torch.float64)
    hi = torch.tensor([b.hi - b.eps for b in boxes], dtype=torch.float64)

    def teacher_in(h):
        x = [b.normalize(v) for b, v in zip(boxes, h)] if teacher_input == "normalized" else h
        return torch.as_tensor(np.asarray(x, dtype=float), dtype=torch.float64)

    rows, first = [], 0
    if resume is not None:
        students, rows, first = resume["students"], resume["rows"], resume["step"] + 1
        if teacher is not None:
            teacher.load_state_dict(resume["teacher"])
            opt.load_state_dict(resume["optimizer"])
        rng.set_state(resume["rng"])
        torch.set_rng_state(resume["torch"])
        problem.set_state(resume["problem"])
    for step in range(first, n_steps):
        students, losses = problem.train(students, step)
        losses = np.asarray(losses, dtype=float)
        step_rows = [{"step": step, "student": k, **_named(problem, problem.values(s)),
                      "val_loss": losses[k], "diverged": not np.isfinite(losses[k]),
                      "exploited_from": -1, "alpha": None}
                     for k, s in enumerate(students)]
        rows += step_rows
        healthy = np.flatnonzero(np.isfinite(losses))
        if healthy.size == 0:
            raise TrainingDivergedError(f"every student diverged at step {step}")
        if step == n_steps - 1 or getattr(problem, "exhausted", False):
            if on_step is not None:
                on_step(step, step_rows)
            break
        order = healthy[np.argsort(losses[healthy], kind="stable")]
        top = order[:n_sel]
        bottom = sorted(set(order[len(order) - n_sel:]) - set(top)
                        | set(np.flatnonzero(~np.isfinite(losses))))
        for k in bottom:
            src = int(top[rng.randint(len(top))])
            h_star = np.array([b.clip(v) for b, v in zip(boxes, problem.values(students[src]))])
            x_k = teacher_in(problem.values(students[k]))
            if teacher is None:
                alpha = rng.uniform(*RANDOM_RANGE, size=len(boxes))
            else:
                with torch.no_grad():
                    alpha = teacher(x_k).numpy()
            h_new = np.array([b.clip(a * v) for b, a, v in zip(boxes, alpha, h_star)])
            if teacher is not None:
                _teacher_step(teacher, opt, problem.teacher_objectives(students[src]), x_k,
                              h_star, (lo, hi))
            students[k] = problem.copy(students[src], h_new)
            step_rows[k].update(exploited_from=src, alpha=[float(a) for a in alpha])
        if on_step is not None:
            on_step(step, step_rows)
        if getattr(problem, "exhausted", False):
            break
        if save is not None:
            save({"step": step, "students": students, "rows": rows,
                  "teacher": None if teacher is None else teacher.state_dict(),
                  "optimizer": None if opt is None else opt.state_dict(),
                  "rng": rng.get_state(), "torch": torch.get_rng_state(),
                  "problem": problem.get_state()})
    return students, losses, teacher, rows


def _teacher_step(teacher, opt, objectives, x, h_star, bounds):
    """[Eq. 10]: one SGD step of the teacher per objective (the look-ahead validation loss at
    the top student's weights theta*), at h' = clip(alpha(x) * h*), theta* and h* held fixed;
    a step with a non-finite gradient is skipped."""
    lo, hi = bounds
    h_star = torch.as_tensor(h_star, dtype=torch.float64)
    for f in objectives:
        loss = f(torch.minimum(torch.maximum(teacher(x) * h_star, lo), hi))
        opt.zero_grad()
        loss.backward()
        if all(torch.isfinite(p.grad).all() for p in teacher.parameters()):
            opt.step()


def _named(problem, values):
    names = getattr(problem, "names", None) or [f"h{i}" for i in range(len(values))]
    return {n: float(v) for n, v in zip(names, values)}


# --------------------------------------------------------------------------------------------
# a population of skorch nets
# --------------------------------------------------------------------------------------------

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
                              (to_tensor(Xb, net.device), to_tensor(yb, net.device)),
                              (Xv[idx].to(net.device), yv[idx].to(net.device)),
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


def _settings(search):
    return PopulationSettings(search.hyper_lr, search.hyper_every, search.step, search.n_jobs,
                              search.teacher_max_batches)


class _NetPopulation:
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
            overrides["random_state"] = int(self.seeds[k] % (2**31 - 1))
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
                with _drawing_from(self._teacher_rng):  # the look-ahead's dropout noise
                    return lookahead_loss(
                        module, loss_fn, self.hypers, values,
                        (Xt[train_idx].to(device), yt[train_idx].to(device)),
                        (self.Xv_t[val_idx].to(device), self.yv_t[val_idx].to(device)),
                        lr=group["lr"], weight_decay=group.get("weight_decay", 0.0))
            return f
        return [objective(b) for b in batches]


@contextmanager
def _drawing_from(generator):
    """Run the block with torch's (CPU) global generator in ``generator``'s state, and keep
    the state it leaves in ``generator``."""
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(generator.get_state())
        yield
        generator.set_state(torch.get_rng_state())


class _FusedNetPopulation(_NetPopulation):
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
                net.random_state = int(self.seeds[state.root] % (2**31 - 1))
            out.append(net)
        return out

    def _into(self, state, net):
        """``net`` holding ``state``'s weights, optimiser state and current
        hyper-parameters."""
        self.group.into_net(state, net)
        apply_hyperparams(net, self.hypers, self.group.current(state.u))
        return net


# --------------------------------------------------------------------------------------------
# the estimator
# --------------------------------------------------------------------------------------------

class PopulationMutationSearch(HoldoutSearch):
    """Hyper-parameter schedules by a population trained with hypergradients (HPM).

    A population of ``population_size`` copies of the net trains side by side; each student's
    continuous hyper-parameters (learning rate, weight decay, ``l2``/``l1`` penalties, dropout
    rates) follow their one-step look-ahead hypergradient on a held-out validation part while
    it trains. After every step the worst students copy the weights of the best ones, and a
    small attention network, the *teacher*, learns by how much to scale the copied
    hyper-parameters (the mutation).

    Parameters
    ----------
    estimator : skorch NeuralNet or Pipeline ending in one
        The net to tune. Its dropout layers (``nn.Dropout``) become concrete-dropout layers in
        the students, so that their rates have a gradient.
    param_bounds : dict
        ``name -> (low, high)`` or ``scipy.stats.loguniform(low, high)`` (log scale). Names
        (with the Pipeline prefix, e.g. ``net__lr``): ``lr``, ``optimizer__weight_decay``,
        ``l2``, ``l1`` (skhpo models; ``l2[i]``/``l1[i]`` for the i-th linear layer alone),
        ``dropout`` or ``module__dropout`` (every dropout layer) and ``dropout[path]`` (the
        layer at ``path`` in ``module_.named_modules()``, e.g. ``dropout[layers.2]``).
        Dropout boxes must lie in [0, 1), the others in [0, inf).
    population_size : int, default=20
        Number of students K (>= 2).
    truncation : float, default=0.2
        Fraction rho in (0, 0.5]: the worst ceil(rho K) students copy one of the best
        ceil(rho K) after every step.
    n_steps : int, default=10
        Number of train steps (exploit/explore happens between steps).
    step : "epoch" or int, default="epoch"
        One step is one epoch over the training part, or this many minibatches.
    hyper_lr : float, default=3e-3
        Adam learning rate of the hyper-parameters, in the unconstrained coordinates of their
        boxes (STN's default).
    hyper_every : int, default=2
        One hyper-parameter step every this many training minibatches.
    mutation : {"teacher", "random"}, default="teacher"
        ``"random"`` mutates by alpha ~ U[0.8, 1.2] (HPM without teacher).
    teacher_keys : int, default=64
        Number of keys M of the teacher's attention.
    teacher_lr : float, default=1e-2
        SGD learning rate of the teacher.
    teacher_input : {"normalized", "raw"}, default="normalized"
        Feed the teacher the hyper-parameters' position in their boxes (in [0, 1]) or their
        raw values (the paper's text).
    teacher_max_batches : int or None, default=None
        Cap on the validation minibatches of one teacher call (None: one validation epoch).
    validation_fraction : float, default=0.2
        Part of ``X`` held out (stratified for classifiers) for the hypergradients, the
        ranking and ``cv_results_``.
    scoring : str, callable or None, default=None
        Score of ``cv_results_`` and ``best_score_`` (None: the estimator's ``score``).
    refit : {"student", True, False}, default="student"
        ``"student"``: ``best_estimator_`` is the best student itself (trained on the
        training part, with its hyper-parameter schedule). ``True``: the estimator retrained
        on all of ``X`` with the best student's final hyper-parameters held fixed, for as many
        epochs as a student trained. ``False``: no ``best_estimator_``.
    n_jobs : int or None, default=None
        Students trained in parallel (joblib) when they train one by one
        (``engine_ == "sequential"``).
    engine : {"auto", "fused", "sequential"}, default="auto"
        How the students train. ``"fused"``: all of them as one stacked model
        (:class:`skhpo.fused.StudentGroup`: one batched forward, backward and optimiser step
        per minibatch, one batched look-ahead hypergradient per hyper step), each drawing its
        shuffling and dropout noise from its own generator as its skorch ``partial_fit``
        would, so the run follows the sequential one to float32 rounding (docs/fused.md);
        for skhpo's ``TabularMLPClassifier`` / ``TabularMLPRegressor`` with Adam or SGD
        (momentum, dampening, Nesterov: the fused engine's family), else a ``ValueError``
        naming why, before any training.
        ``"sequential"``: every student is a skorch net trained by its own ``partial_fit``.
        ``"auto"``: fused where the family allows, on the CPU, for nets of at most 150,000
        weights (or ``$SKHPO_MAX_WEIGHTS``, see ``skhpo calibrate``); else sequential, with the
        reason in ``engine_reason_``.
    random_state : int, RandomState or None, default=None
        Seeds the split, the initial hyper-parameters, the students and the teacher.
    checkpoint : str, path or None, default=None
        A folder in which the whole run (students, teacher, generators, history) is written
        after every completed step, atomically. Calling ``fit`` again with the same search,
        data and folder continues after the last completed step, with results identical to
        an uninterrupted run (timings aside); a folder written by another search is refused
        before any training. Needs an int ``random_state``.
    verbose : int, default=0
        Print one line per step when > 0.

    Attributes
    ----------
    best_params_ : dict
        The best student's final hyper-parameters.
    best_index_ : int
        Its row in ``cv_results_`` (the student with the lowest validation loss).
    best_score_ : float
        Its score on the validation part. The hyper-parameters followed that part's gradient,
        so this is optimistic, like GridSearchCV's ``best_score_``.
    best_estimator_ : estimator
        See ``refit``.
    cv_results_ : dict
        One row per final student in GridSearchCV's schema (one split: the validation part),
        plus ``val_loss``.
    history_ : dict of lists
        One row per student per step: ``step``, ``student``, the hyper-parameters after the
        step's training, ``val_loss``, ``diverged``, ``exploited_from`` (-1 or the top
        student it copied after this step) and ``alpha`` (the mutation factors, or None).
    teacher_ : Teacher or None
        The trained teacher (``mutation="teacher"``).
    n_resumed_ : int
        Student-steps loaded from ``checkpoint`` (completed steps x ``population_size``).
    n_epochs_ : float
        Training epochs spent by all students (plus the refit's).
    engine_ : {"fused", "sequential"}
        How the students trained.
    engine_reason_ : str
        Why they trained one by one ("" when fused).

    Notes
    -----
    Deviations from the paper (see docs/population.md): the hypergradient is the one-step look-
    ahead of :mod:`skhpo.hyper.hypergrad` (the paper's benchmark hypergradient is not in the
    text we could read; probably STN best responses); dropout uses the concrete relaxation (tau
    = 0.1) in the students' training; hyper-parameters step in logit/log coordinates and
    mutations are clipped to the box; the teacher sees box-normalised input by default; the
    teacher is trained by autograd on Eq. 10 (the printed Eq. 12 has two slips); the teacher
    updates after it produced the mutation.

    References
    ----------
    Tao, Li, Ding, Zhang, Zhou, Fu. Learning to Mutate with Hypergradient Guided Population.
    NeurIPS 2020.

    Examples
    --------
    >>> from scipy.stats import uniform
    >>> from sklearn.datasets import load_iris
    >>> from skhpo import PopulationMutationSearch, TabularMLPClassifier
    >>> X, y = load_iris(return_X_y=True)
    >>> net = TabularMLPClassifier(dropout=0.2, max_epochs=2)
    >>> search = PopulationMutationSearch(net, {"dropout": uniform(0, 0.5)}, population_size=2,
    ...                                   n_steps=2, random_state=0).fit(X, y)
    >>> len(search.cv_results_["params"]), search.n_trainings_  # one row per student
    (2, 2)
    >>> 0 <= search.best_params_["dropout"] <= 0.5
    True
    """

    _parameter_constraints: dict = {
        **HoldoutSearch._parameter_constraints,
        "param_bounds": [dict],
        "population_size": [Interval(Integral, 2, None, closed="left")],
        "truncation": [Interval(Real, 0, 0.5, closed="right")],
        "n_steps": [Interval(Integral, 1, None, closed="left")],
        "step": [StrOptions({"epoch"}), Interval(Integral, 1, None, closed="left")],
        "hyper_lr": [Interval(Real, 0, None, closed="left")],
        "hyper_every": [Interval(Integral, 1, None, closed="left")],
        "mutation": [StrOptions({"teacher", "random"})],
        "teacher_keys": [Interval(Integral, 1, None, closed="left")],
        "teacher_lr": [Interval(Real, 0, None, closed="left")],
        "teacher_input": [StrOptions({"normalized", "raw"})],
        "teacher_max_batches": [Interval(Integral, 1, None, closed="left"), None],
        "refit": ["boolean", StrOptions({"student"})],
        "n_jobs": [Integral, None],
        "engine": [StrOptions(set(ENGINES))],
        "checkpoint": [str, os.PathLike, None],
    }

    def __init__(self, estimator, param_bounds, *, population_size=20, truncation=0.2,
                 n_steps=10, step="epoch", hyper_lr=3e-3, hyper_every=2, mutation="teacher",
                 teacher_keys=64, teacher_lr=1e-2, teacher_input="normalized",
                 teacher_max_batches=None, validation_fraction=0.2, scoring=None,
                 refit="student", n_jobs=None, engine="auto", random_state=None,
                 checkpoint=None, verbose=0):
        self.estimator = estimator
        self.param_bounds = param_bounds
        self.population_size = population_size
        self.truncation = truncation
        self.n_steps = n_steps
        self.step = step
        self.hyper_lr = hyper_lr
        self.hyper_every = hyper_every
        self.mutation = mutation
        self.teacher_keys = teacher_keys
        self.teacher_lr = teacher_lr
        self.teacher_input = teacher_input
        self.teacher_max_batches = teacher_max_batches
        self.validation_fraction = validation_fraction
        self.scoring = scoring
        self.refit = refit
        self.n_jobs = n_jobs
        self.engine = engine
        self.random_state = random_state
        self.checkpoint = checkpoint
        self.verbose = verbose

    # -- the method (HoldoutSearch.fit calls these) -----------------------------------------

    def _draw_seeds(self, rng):
        seeds = spawn_seeds(rng, self.population_size + 2)
        return int(seeds[-1] % (2**31 - 1)), seeds[:self.population_size]

    def _search(self, data, seeds, rng):
        dims = self._dimensions(data.prefix)
        hypers, y_enc, yv_enc, classes, coefs, n_weights = self._resolve(data, dims)
        self.engine_, self.engine_reason_ = self._choose_engine(data.net, n_weights)
        population = _FusedNetPopulation if self.engine_ == "fused" else _NetPopulation
        problem = population(_settings(self), clone(data.net), hypers, data.Xt, data.y_tr,
                             y_enc, torch.as_tensor(data.Xv), yv_enc, seeds, classes)
        ck = getattr(self, "_checkpoint", None)
        resume = None if ck is None else ck.load("population", "state")
        self.n_resumed_ = 0 if resume is None else (resume["step"] + 1) * self.population_size
        progress = Phase(self, getattr(self, "_search_ctx", None), "steps", self.n_steps)
        for step in range(0 if resume is None else resume["step"] + 1):
            progress.done(step, "step")  # loaded from the checkpoint

        def on_step(step, rows):
            progress.done(step, "step")
            if self.verbose:
                self._report(step, rows)

        with progress:
            students, losses, self.teacher_, rows = run_hpm(
                problem, population_size=self.population_size, truncation=self.truncation,
                n_steps=self.n_steps, mutation=self.mutation, teacher_keys=self.teacher_keys,
                teacher_lr=self.teacher_lr, teacher_input=self.teacher_input, rng=rng,
                on_step=on_step, resume=resume,
                save=None if ck is None else lambda state: ck.save("population", "state",
                                                                    state))
        epochs_per_step = 1.0 if self.step == "epoch" else min(
            1.0, self.step * problem.batch_size / len(data.Xt))
        finals = [dict(zip(problem.names, (float(v) for v in problem.values(s))))
                  for s in students]
        students = problem.nets(students)
        scores, score_times = [], []
        for s, loss in zip(students, losses):
            t0 = time.perf_counter()
            scores.append(self.scorer_(s, data.Xv, data.y_val) if np.isfinite(loss) else np.nan)
            score_times.append(time.perf_counter() - t0)
        best = int(np.nanargmin(np.where(np.isfinite(losses), losses, np.nan)))
        for k, s in enumerate(students):
            if k != best:
                free_estimator(s)
        # the user's training settings again (the hyper-parameters stay at their final
        # values: without validation data the student's HyperStep does nothing)
        model = students[best].set_params(max_epochs=data.net.max_epochs,
                                          warm_start=data.net.warm_start,
                                          train_split=data.net.train_split)
        return HoldoutResult(
            params=finals, scores=scores, best=best, model=self._with_preprocessing(data, model),
            history=rows, epochs=epochs_per_step * len(rows), trainings=self.population_size,
            fit_times=problem.fit_time, score_times=score_times, val_losses=losses,
            refit_epochs=max(1, round(self.n_steps * epochs_per_step)), coefs=coefs)

    def _dimensions(self, prefix):
        """``param_bounds`` read by the shared vocabulary: every entry needs a box."""
        if not self.param_bounds:
            raise ValueError("param_bounds is empty: give at least one hyper-parameter box")
        dims = [read_dimension("param_bounds", parse_name(name, prefix, "param_bounds"), spec)
                for name, spec in self.param_bounds.items()]
        for dim in dims:
            if dim.box is None:
                raise ValueError(f"param_bounds[{dim.name.name!r}]: the students draw their "
                                 "start values from a range; give loguniform(low, high), "
                                 "uniform(low, width) or (low, high)")
        return dims

    def _resolve(self, data, dims):
        """Names -> HyperParams on an initialised (untrained) copy of the net, the encoded
        targets, the classes every student must know and the net's penalty coefficients. No
        training happens here."""
        plain = [d.name.name for d in dims if not d.name.per_layer]
        if plain:
            check_param_names(self.estimator, plain, where="param_bounds")
        template, y_enc, yv_enc = self._initialised_net(data)
        replace_dropout(template.module_)
        hypers = [resolve_hyperparam(template, d.name, d.box) for d in dims]
        coefs = (template.penalty_coefficients()
                 if hasattr(template, "penalty_coefficients") else {})
        classes = None
        if data.net.get_params(deep=False).get("classes", "absent") is None:
            classes = getattr(template, "classes_", None)
        n_weights = sum(p.numel() for p in template.module_.parameters())
        free_estimator(template)
        return hypers, y_enc, yv_enc, classes, coefs, n_weights

    def _choose_engine(self, net, n_weights):
        """``(engine, reason)``: "fused" where ``engine`` and the net allow, else
        "sequential" and why; ``engine="fused"`` on a net that cannot fuse is a ValueError
        (before any training)."""
        if self.engine == "sequential":
            return "sequential", "engine='sequential'"
        reason = unfusible(clone(net).set_params(max_epochs=1, train_split=None,
                                                 warm_start=False))
        if not reason and not isinstance(net, (TabularMLPClassifier, TabularMLPRegressor)):
            reason = (f"{type(net).__name__} (the fused population trains skhpo's tabular "
                      "MLPs)")
        if reason and self.engine == "fused":
            raise ValueError(f"engine='fused': the students cannot be trained as one stacked "
                             f"model: {reason}; use engine='auto' or 'sequential'")
        if not reason and self.engine == "auto":
            if not str(net.device).startswith("cpu"):
                reason = ("engine='auto' fuses on the CPU only until the GPU path has been "
                          "measured; engine='fused' trains a GPU population")
            elif n_weights > max_weights():
                reason = f"{n_weights} weights > max_weights={max_weights()} (engine='auto')"
        return ("sequential", reason) if reason else ("fused", "")

    def _report(self, step, rows):
        losses = [r["val_loss"] for r in rows]
        report("population", self.verbose,
               f"[HPM] step {step + 1}/{self.n_steps}: best val loss {np.nanmin(losses):.4f}, "
               f"{sum(r['exploited_from'] >= 0 for r in rows)} exploited, "
               f"{sum(r['diverged'] for r in rows)} diverged")
