"""HPM's synthetic-function experiment (the supplement of Tao et al. 2020).

Four test functions, minimised by five methods under a budget of function evaluations
(every evaluation of f by any member counts once; f and its gradient together count once):

* ``random``: uniform random search in the domain;
* ``pbt``: population 5; each step every member proposes a uniform random point and keeps it
  if it is better (one evaluation); then the bottom 20 % copy a top member and multiply each
  coordinate by 0.8 or 1.2 (the simplified PBT of the paper);
* ``hypergradient``: one SGD run (lr 0.01) on f from a uniform random start;
* ``hpm-wo-t``: :func:`skhpo.search.population.run_hpm` with random mutations U[0.8, 1.2];
* ``hpm``: the same with the teacher (M = 64 keys, SGD lr 0.01, one step per call; the
  teacher's evaluation of f at the mutated point counts as one evaluation).

Students are SGD iterates clipped to the domain (docs/bench.md). Results: the best f seen
after 30, 60, ..., 300 evaluations, 10 seeds.
"""

import math

import numpy as np
import torch

from ..hyper import Box
from ..search.population import HPMSettings, run_hpm
from .core import run_jobs

__all__ = ["FUNCTIONS", "METHODS", "best_so_far", "plot_synthetic", "run_method", "run_synthetic",
           "summarize"]


def branin(x):
    x1, x2 = x[0], x[1]
    return ((x2 - 5.1 * x1 ** 2 / (4 * math.pi ** 2) + 5 * x1 / math.pi - 6) ** 2
            + 10 * (1 - 1 / (8 * math.pi)) * torch.cos(x1) + 10)


_H_ALPHA = torch.tensor([1.0, 1.2, 3.0, 3.2], dtype=torch.float64)
_H_A = torch.tensor([[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14],
                     [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]], dtype=torch.float64)
_H_P = 1e-4 * torch.tensor([[1312, 1696, 5569, 124, 8283, 5886],
                            [2329, 4135, 8307, 3736, 1004, 9991],
                            [2348, 1451, 3522, 2883, 3047, 6650],
                            [4047, 8828, 8732, 5743, 1091, 381]],
                           dtype=torch.float64)


def hartmann6(x):
    return -(_H_ALPHA * torch.exp(-(_H_A * (x - _H_P) ** 2).sum(dim=1))).sum()


def rosenbrock(x):
    return 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2


def bohachevsky(x):
    return (x[0] ** 2 + 2 * x[1] ** 2 - 0.3 * torch.cos(3 * math.pi * x[0])
            - 0.4 * torch.cos(4 * math.pi * x[1]) + 0.7)


#: name -> (f, domain [(lo, hi)] per coordinate, global minimum)
FUNCTIONS = {
    "branin": (branin, [(-5.0, 10.0), (0.0, 15.0)], 0.397887),
    "hartmann6": (hartmann6, [(0.0, 1.0)] * 6, -3.32237),
    "rosenbrock": (rosenbrock, [(-5.0, 10.0)] * 2, 0.0),
    "bohachevsky": (bohachevsky, [(-100.0, 100.0)] * 2, 0.0),
}
METHODS = ("random", "pbt", "hypergradient", "hpm-wo-t", "hpm")
POPULATION, TRUNCATION, LR, KEYS = 5, 0.2, 0.01, 64


class _Counter:
    """f with a budget: every evaluation is recorded; ``exhausted`` once it is spent."""

    def __init__(self, f, budget):
        self.f, self.budget, self.trace = f, budget, []

    @property
    def exhausted(self):
        return len(self.trace) >= self.budget

    def __call__(self, x):
        value = self.f(x)
        self.trace.append(value.item())
        return value

    def value_and_grad(self, x, clip=None):
        """f and its gradient at ``x`` (one evaluation); the gradient's norm is capped at
        ``clip`` when given."""
        x = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        value = self(x)
        (grad,) = torch.autograd.grad(value, [x])
        grad = grad.numpy()  # host: x was made on the CPU above
        norm = float(np.linalg.norm(grad))
        if clip is not None and norm > clip:
            grad = grad * (clip / norm)
        return value.item(), grad


class _Point:
    def __init__(self, x, f=math.inf):
        self.x, self.f = np.asarray(x, dtype=float), f


class FunctionPopulation:
    """The :func:`run_hpm` problem of a test function: a student is a point, its training
    step one clipped SGD step (lr 0.01), its validation loss f at the point."""

    def __init__(self, f, domain, budget, lr=LR, grad_clip=None):
        self.counter = _Counter(f, budget)
        self.boxes = [Box(lo, hi) for lo, hi in domain]
        self.lo = np.array([lo for lo, _ in domain])
        self.hi = np.array([hi for _, hi in domain])
        self.lr, self.grad_clip = lr, grad_clip

    @property
    def exhausted(self):
        return self.counter.exhausted

    def init(self, k, rng):
        return _Point(rng.uniform(self.lo, self.hi))

    def train(self, students, step):
        out = []
        for s in students:
            if self.exhausted:
                out.append(s)
                continue
            value, grad = self.counter.value_and_grad(s.x, self.grad_clip)
            out.append(_Point(np.clip(s.x - self.lr * grad, self.lo, self.hi), value))
        return out, [s.f for s in out]

    def values(self, student):
        return student.x

    def copy(self, student, h):
        return _Point(h, student.f)

    def teacher_objectives(self, student):
        return [] if self.exhausted else [self.counter]


def run_method(method, function, budget=300, seed=0, grad_clip=None):
    """The trace of f values ``method`` evaluated on ``function`` (at most ``budget``);
    ``grad_clip`` caps the gradient norm of the SGD steps (off in the paper's protocol)."""
    f, domain, _ = FUNCTIONS[function]
    rng = np.random.RandomState(seed)
    lo, hi = np.array(domain).T
    counter = _Counter(f, budget)
    as_t = lambda x: torch.as_tensor(x, dtype=torch.float64)  # noqa: E731
    if method == "random":
        while not counter.exhausted:
            counter(as_t(rng.uniform(lo, hi)))
    elif method == "hypergradient":
        x = rng.uniform(lo, hi)
        while not counter.exhausted:
            _, grad = counter.value_and_grad(x, grad_clip)
            x = np.clip(x - LR * grad, lo, hi)
    elif method == "pbt":
        _pbt(counter, rng, lo, hi)
    elif method in ("hpm", "hpm-wo-t"):
        problem = FunctionPopulation(f, domain, budget, grad_clip=grad_clip)
        run_hpm(problem, HPMSettings(POPULATION, TRUNCATION, 10 * budget,
                                     "teacher" if method == "hpm" else "random",
                                     teacher_keys=KEYS, teacher_lr=LR), rng)
        counter = problem.counter
    else:
        raise ValueError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    return np.array(counter.trace[:budget])


def _pbt(counter, rng, lo, hi):
    n_sel = math.ceil(TRUNCATION * POPULATION)
    xs = [rng.uniform(lo, hi) for _ in range(POPULATION)]
    fs = [math.inf] * POPULATION
    while not counter.exhausted:
        for k in range(POPULATION):
            if counter.exhausted:
                break
            proposal = rng.uniform(lo, hi) if np.isfinite(fs[k]) else xs[k]
            value = float(counter(torch.as_tensor(proposal)))
            if value < fs[k]:
                xs[k], fs[k] = proposal, value
        order = np.argsort(fs)
        for k in order[-n_sel:]:
            src = order[rng.randint(n_sel)]
            xs[k] = np.clip(xs[src] * rng.choice([0.8, 1.2], size=len(lo)), lo, hi)
            fs[k] = math.inf  # evaluated at the next step


def best_so_far(trace, budgets):
    running = np.minimum.accumulate(trace)
    return [float(running[min(b, len(running)) - 1]) for b in budgets]


def run_synthetic(functions=tuple(FUNCTIONS), methods=METHODS, seeds=10, budget=300, every=30,
                  grad_clip=None):
    """Rows ``{function, method, seed, budget, best}`` for budgets every, 2 every, ..., budget."""
    budgets = list(range(every, budget + 1, every))
    jobs = [(f, m, s) for f in functions for m in methods for s in range(seeds)]
    traces = run_jobs(jobs, lambda f, m, s: run_method(m, f, budget, s, grad_clip))
    return [{"function": f, "method": m, "seed": s, "budget": b, "best": v}
            for (f, m, s), trace in zip(jobs, traces)
            for b, v in zip(budgets, best_so_far(trace, budgets))]


def summarize(rows, budget=None):
    """``{(function, method): (mean, std)}`` of the best-so-far at ``budget`` (the largest
    by default)."""
    budget = budget or max(r["budget"] for r in rows)
    out = {}
    for r in rows:
        if r["budget"] == budget:
            out.setdefault((r["function"], r["method"]), []).append(r["best"])
    return {k: (float(np.mean(v)), float(np.std(v))) for k, v in out.items()}


def table(summary):
    """The summary as printable rows: one per function, ``mean +- std`` per method."""
    functions = dict.fromkeys(f for f, _ in summary)
    methods = dict.fromkeys(m for _, m in summary)
    return [{"function": f, **{m: f"{summary[(f, m)][0]:>10.4g} +- {summary[(f, m)][1]:<5.2g}"
                               for m in methods}} for f in functions]


def plot_synthetic(rows, path):
    """The paper's figure as regret: mean of best-so-far f minus the global minimum against
    evaluations (log scale), shaded between the 25th and 75th percentiles over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    functions = list(dict.fromkeys(r["function"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, len(functions), figsize=(4.2 * len(functions), 3.6), squeeze=False)
    for ax, function in zip(axes[0], functions):
        f_min = FUNCTIONS[function][2]
        for method in methods:
            sel = [r for r in rows if r["function"] == function and r["method"] == method]
            budgets = sorted({r["budget"] for r in sel})
            gap = np.array([[max(r["best"] - f_min, 1e-6) for r in sel if r["budget"] == b]
                            for b in budgets])
            ax.plot(budgets, gap.mean(axis=1), marker="o", ms=3, label=method)
            q1, q3 = np.percentile(gap, [25, 75], axis=1)
            ax.fill_between(budgets, q1, q3, alpha=0.15)
        ax.set_yscale("log")
        ax.set_title(function)
        ax.set_xlabel("function evaluations")
    axes[0][0].set_ylabel("best f so far - global min (mean; IQR)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
