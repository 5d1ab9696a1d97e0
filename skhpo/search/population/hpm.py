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

:func:`run_hpm` (this module) is steps 1-7 for any *problem*: a population of networks
(:mod:`.students`), or a plain differentiable function in ``skhpo bench synthetic``;
:class:`~.estimator.PopulationMutationSearch` is the scikit-learn estimator around it.
"""

import math
from typing import NamedTuple

import numpy as np
import torch
from sklearn.utils import check_random_state
from torch import nn

from ...nets import TrainingDivergedError, draw_seed, seed_torch

__all__ = ["HPMSettings", "RANDOM_RANGE", "Teacher", "run_hpm"]

#: HPM w/o T: alpha_i ~ U[0.8, 1.2] (supplement)
RANDOM_RANGE = (0.8, 1.2)


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



class HPMSettings(NamedTuple):
    """The settings of :func:`run_hpm` (:class:`~.estimator.PopulationMutationSearch`
    documents each): the population, the truncation rho, the steps, the mutation
    (``"teacher"`` or ``"random"``) and the teacher's keys, learning rate and input."""

    population_size: int
    truncation: float
    n_steps: int
    mutation: str = "teacher"
    teacher_keys: int = 64
    teacher_lr: float = 1e-2
    teacher_input: str = "normalized"


def run_hpm(problem, settings, rng=None, *, on_step=None, resume=None, save=None):
    """Run HPM on ``problem`` under ``settings`` (:class:`HPMSettings`); return
    ``(students, losses, teacher, history_rows)``.

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
    population_size, truncation, n_steps, mutation, teacher_keys, teacher_lr, teacher_input = \
        settings
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
                    alpha = teacher(x_k).numpy()  # host: the teacher lives on the CPU
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
