"""Tasks, methods and the loop that runs them (public API only)."""

import importlib
import os
import time
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.stats import loguniform
from sklearn import datasets
from sklearn.base import clone
from sklearn.experimental import enable_halving_search_cv  # noqa: F401
from sklearn.model_selection import (
    GridSearchCV,
    HalvingRandomSearchCV,
    RandomizedSearchCV,
    train_test_split,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skhpo import (
    AutoHyperSearchCV,
    CuttingPlaneTuner,
    FlatnessSearchCV,
    FusedHalvingRandomSearchCV,
    FusedRandomizedSearchCV,
    PopulationMutationSearch,
    SmallCNNClassifier,
    TabularMLPClassifier,
    TabularMLPRegressor,
)

from ..nets import seed_everything
from .core import Column, epochs_spent, plain_params, run_jobs, trainings_spent
from .core import summarize as core_summarize
from .data import load_csv

TASKS = {
    "iris": ("classification", datasets.load_iris),
    "wine": ("classification", datasets.load_wine),
    "breast_cancer": ("classification", datasets.load_breast_cancer),
    "digits": ("classification", datasets.load_digits),
    "digits_images": ("images", datasets.load_digits),
    "diabetes": ("regression", datasets.load_diabetes),
}


BUDGETS = ("epochs", "trials")


@dataclass
class Budget:
    """What each method may spend, every full training being ``max_epochs`` epochs and
    cross-validated with ``cv`` folds. Random search and Optuna run ``n_trials`` candidates;
    the grid has at most ``n_trials`` points; successive halving starts 3 x ``n_trials``
    candidates at ``max_epochs / 9``. FlatnessSearchCV keeps the ratio
    ``n_trials : n_finalists`` of candidates to finalists and, with ``mode="epochs"``, gets as
    many finalists as fit in random search's cross-validation epochs
    (``n_trials * cv * max_epochs``), screening included; with ``mode="trials"`` it screens
    ``n_trials`` and trains ``n_finalists`` (the paper's setting: the same candidates, fewer
    epochs). See docs/bench.md."""

    n_trials: int = 50
    n_finalists: int = 10
    max_epochs: int = 30
    cv: int = 3
    mode: str = "epochs"

    def __post_init__(self):
        if self.mode not in BUDGETS:
            raise ValueError(f"budget mode must be one of {', '.join(BUDGETS)}, got {self.mode!r}")
        for name in ("n_trials", "n_finalists", "max_epochs", "cv"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_finalists > self.n_trials:
            raise ValueError(f"n_finalists={self.n_finalists} must be <= n_trials="
                             f"{self.n_trials}")

    @property
    def epochs(self):
        """Cross-validation epochs of random search (every method also refits once)."""
        return self.n_trials * self.cv * self.max_epochs

    def flatness_sizes(self):
        """``(n_candidates, n_finalists)`` of FlatnessSearchCV under this budget."""
        if self.mode == "trials":
            return self.n_trials, self.n_finalists
        ratio = self.n_trials / self.n_finalists
        finalists = int(self.epochs // (self.cv * self.max_epochs + ratio))
        if finalists < 1:
            raise ValueError(
                f"the budget of {self.epochs} epochs (n_trials x cv x max_epochs) is too small "
                f"for flatness: one finalist costs {self.cv * self.max_epochs} epochs plus "
                f"{ratio:g} one-epoch screens (n_trials / n_finalists); raise --n-trials, or use "
                "--budget trials")
        return int(round(ratio * finalists)), finalists


_CSV_TASKS = {}


def register_csv(path, target):
    """Make a CSV file a task (named after the file) and return its name; fails early with a
    clear message if the file or column is unusable."""
    load_csv(path, target)
    name = os.path.splitext(os.path.basename(path))[0]
    _CSV_TASKS[name] = (path, target)
    return name


def load_task(name):
    """``(X, y, kind)`` of a task; ``kind`` is classification, images or regression."""
    if name in _CSV_TASKS:
        X, y, kind, _ = load_csv(*_CSV_TASKS[name])
        return X, y, kind
    try:
        kind, loader = TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(TASKS)} "
                         "(or --csv PATH --target COL)") from None
    X, y = loader(return_X_y=True)
    return X.astype(np.float32), y, kind


def default_estimator(kind, max_epochs):
    """The net each method tunes: scaler + skhpo model (no scaling for images in [0, 1])."""
    if kind == "images":
        return Pipeline([("scale", "passthrough"),
                         ("net", SmallCNNClassifier(max_epochs=max_epochs))])
    model = TabularMLPRegressor if kind == "regression" else TabularMLPClassifier
    return Pipeline([("scale", StandardScaler()), ("net", model(max_epochs=max_epochs))])


def default_space(kind):
    """FGHPO's OpenML MLP space (the FGHPO paper, Table 3), narrowed to what trains in seconds on
    2 cores, with ``alpha`` applied as Adam weight decay."""
    space = {"net__batch_size": [16, 32, 64, 128],
             "net__lr": loguniform(1e-4, 3e-2),
             "net__optimizer__weight_decay": loguniform(1e-8, 1e-2)}
    if kind == "images":
        space.update({"net__n_filters": [4, 8, 16, 32], "net__n_blocks": [1, 2],
                      "net__kernel_size": [3, 5]})
    else:
        space.update({"net__depth": [1, 2, 3], "net__width": [16, 32, 64, 128, 256]})
    return space


def grid_from_space(space, max_points):
    """A ``GridSearchCV`` grid of at most ``max_points`` points from a randomized space:
    lists are kept (thinned evenly if needed), each distribution becomes evenly spaced
    quantiles; the number of quantiles grows while the grid still fits."""
    lists = {k: list(v) for k, v in space.items() if not hasattr(v, "rvs")}
    dists = {k: v for k, v in space.items() if hasattr(v, "rvs")}

    def size(levels):
        n = levels ** len(dists)
        for v in lists.values():
            n *= len(v)
        return n

    while size(1) > max_points:  # thin the longest list
        key = max(lists, key=lambda k: len(lists[k]))
        values = lists[key]
        if len(values) == 1:
            break
        idx = np.unique(np.linspace(0, len(values) - 1, len(values) - 1).round().astype(int))
        lists[key] = [values[i] for i in idx]
    levels = 1
    while dists and size(levels + 1) <= max_points:
        levels += 1
    grid = dict(lists)
    for k, dist in dists.items():
        qs = [0.5] if levels == 1 else np.linspace(0.1, 0.9, levels)
        grid[k] = [float(dist.ppf(q)) for q in qs]
    return grid


def _grid(estimator, space, budget, seed, n_jobs):
    return GridSearchCV(estimator, grid_from_space(space, budget.n_trials), cv=budget.cv,
                        n_jobs=n_jobs)


def _halving(estimator, space, budget, seed, n_jobs, search=HalvingRandomSearchCV):
    # successive halving over max_epochs (factor 3, 3 rungs: E/9, E/3, E); 3x the random
    # candidates costs the random search's epochs: 3 rungs x (3n) x E/9 = n x E, exactly when
    # n is a multiple of 3 and E of 9 (rounding of the rung sizes adds a little otherwise)
    min_epochs = max(1, budget.max_epochs // 9)
    return search(estimator, space, n_candidates=3 * budget.n_trials,
                  resource="net__max_epochs", min_resources=min_epochs,
                  max_resources=budget.max_epochs, factor=3, cv=budget.cv, random_state=seed,
                  n_jobs=n_jobs)


def _fused_halving(estimator, space, budget, seed, n_jobs):
    # the same halving, each rung's fits trained in fused groups
    return _halving(estimator, space, budget, seed, n_jobs, search=FusedHalvingRandomSearchCV)


def _random(estimator, space, budget, seed, n_jobs):
    return RandomizedSearchCV(estimator, space, n_iter=budget.n_trials, cv=budget.cv,
                              random_state=seed, n_jobs=n_jobs)


def _fused_random(estimator, space, budget, seed, n_jobs):
    return FusedRandomizedSearchCV(estimator, space, n_iter=budget.n_trials, cv=budget.cv,
                                   random_state=seed, n_jobs=n_jobs)


def _flatness(estimator, space, budget, seed, n_jobs):
    n_candidates, n_finalists = budget.flatness_sizes()
    return FlatnessSearchCV(estimator, space, n_candidates=n_candidates,
                            n_finalists=n_finalists, cv=budget.cv, random_state=seed,
                            n_jobs=n_jobs)


#: FlatnessSearchCV as the authors' Bayesmark code ran it: the smallest per-batch minimum,
#: nothing discarded, the screen at one fixed optimiser (lr 1e-3, no weight decay)
FLATNESS_REPO = {"aggregate": "min", "discard_nonpositive": False,
                 "screen_params": {"net__lr": 1e-3, "net__optimizer__weight_decay": 0.0}}


def _flatness_repo(estimator, space, budget, seed, n_jobs):
    return _flatness(estimator, space, budget, seed, n_jobs).set_params(**FLATNESS_REPO)


def optuna_space(space):
    """The bench space as Optuna distributions: lists become categorical, scipy's
    ``loguniform`` / ``uniform`` / ``randint`` their Optuna counterparts."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for key, value in space.items():
        if not hasattr(value, "rvs"):
            out[key] = CategoricalDistribution(list(value))
            continue
        name, (low, high) = value.dist.name, value.support()
        if name in ("loguniform", "reciprocal"):
            out[key] = FloatDistribution(float(low), float(high), log=True)
        elif name == "uniform":
            out[key] = FloatDistribution(float(low), float(high))
        elif name == "randint":
            out[key] = IntDistribution(int(low), int(high))
        else:
            raise ValueError(f"no Optuna counterpart for the {name} distribution of {key!r}")
    return out


def _optuna(estimator, space, budget, seed, n_jobs):
    import optuna
    from optuna_integration import OptunaSearchCV

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed))
    return OptunaSearchCV(estimator, optuna_space(space), n_trials=budget.n_trials,
                          cv=budget.cv, study=study, random_state=seed, n_jobs=n_jobs)


#: the learning-rate-only comparison of autoHyper's paper: every other parameter stays at the
#: estimator's default, and the baseline is a 20-point log grid of lr in [1e-4, 1e-1]
LR_GRID = np.geomspace(1e-4, 1e-1, 20)


def _autohyper(estimator, space, budget, seed, n_jobs):
    return AutoHyperSearchCV(estimator, {"net__lr": None}, cv=budget.cv, random_state=seed,
                             n_jobs=n_jobs)


def _lr_grid(estimator, space, budget, seed, n_jobs):
    return GridSearchCV(estimator, {"net__lr": list(LR_GRID)}, cv=budget.cv, n_jobs=n_jobs)


def _hpm(estimator, space, budget, seed, n_jobs):
    # the space's continuous boxes (lr, weight decay): HPM cannot copy weights across
    # architectures. Equal epochs: min(20, n_trials) students share random search's epochs.
    bounds = {k: v for k, v in space.items() if hasattr(v, "rvs")}
    population = max(2, min(20, budget.n_trials))
    return PopulationMutationSearch(estimator, bounds, population_size=population,
                                    n_steps=max(1, budget.epochs // population),
                                    random_state=seed, n_jobs=n_jobs)


def _cpmlho(estimator, space, budget, seed, n_jobs):
    # one self-tuning run of max_epochs tuning every dropout layer of the default net
    return CuttingPlaneTuner(estimator, random_state=seed)


METHODS = {"random": _random, "fused-random": _fused_random, "flatness": _flatness,
           "flatness-repo": _flatness_repo,
           "grid": _grid, "halving": _halving, "fused-halving": _fused_halving,
           "optuna": _optuna, "autohyper": _autohyper,
           "lr-grid": _lr_grid, "hpm": _hpm, "cpmlho": _cpmlho}

#: the methods whose nets are seeded through ``random_state`` (scikit-learn's and Optuna's
#: searches, and the fused drop-in, which then trains exactly random search's fits)
BASELINES = ("random", "fused-random", "grid", "halving", "fused-halving", "optuna", "lr-grid")

#: methods that need an optional extra: name -> (modules, install hint)
OPTIONAL = {"optuna": (("optuna", "optuna_integration"),
                       'pip install "skhpo[bench]" (optuna and optuna-integration)')}


def _importable(module):
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def missing_requirement(method):
    """Why ``method`` cannot run here (a missing optional package), or None."""
    modules, hint = OPTIONAL.get(method, ((), ""))
    missing = [m for m in modules if not _importable(m)]
    return f"{method} needs {', '.join(missing)}: {hint}" if missing else None


def run_one(method, task, seed, budget, n_jobs=None):
    """Run one method on one task and seed; return the result row."""
    X, y, kind = load_task(task)
    stratify = None if kind == "regression" else y
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=seed,
                                          stratify=stratify)
    estimator = default_estimator(kind, budget.max_epochs)
    seed_everything(seed)
    if method in BASELINES:
        # scikit-learn's and Optuna's searches fit in worker processes whose generators
        # nobody seeds (with n_jobs > 1): the net seeds itself at every fit instead
        estimator.set_params(net__random_state=seed)
    with warnings.catch_warnings():
        if method == "optuna":  # OptunaSearchCV is "experimental"; optuna's own deprecations
            warnings.filterwarnings("ignore", message=".*experimental.*")
            warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
        search = METHODS[method](clone(estimator), default_space(kind), budget, seed, n_jobs)
        start = time.perf_counter()
        search.fit(Xtr, ytr)
        wall = time.perf_counter() - start
    return {"method": method, "task": task, "seed": seed,
            "test_score": float(search.score(Xte, yte)),
            "cv_score": float(search.best_score_), "wall_time": wall,
            "epochs": int(epochs_spent(search, budget.max_epochs)),
            "n_trainings": trainings_spent(search),
            "best_params": plain_params(search.best_params_)}


def check_methods(methods, tasks, budget):
    """Everything about a run that can fail before any training: unknown or unavailable
    methods, tasks that do not load, a budget too small for flatness."""
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; available: {', '.join(METHODS)}")
        if missing_requirement(m):
            raise ValueError(missing_requirement(m))
    if "flatness" in methods or "flatness-repo" in methods:
        budget.flatness_sizes()
    for t in tasks:
        load_task(t)


def jobs(methods, tasks, seeds):
    """Every (method, task, seed), tasks outermost, then seeds."""
    return [(m, t, s) for t in tasks for s in seeds for m in methods]


def run_benchmark(methods, tasks, seeds, budget, n_jobs=None, progress=None):
    """All (task, seed, method) runs, in that order; ``progress(done, total, row)`` is called
    after each. ``n_jobs`` is each search's own."""
    check_methods(methods, tasks, budget)
    return run_jobs(jobs(methods, tasks, seeds),
                    lambda m, t, s: run_one(m, t, s, budget, n_jobs=n_jobs), progress=progress)


def fused_check(rows):
    """Per task, FusedRandomizedSearchCV against RandomizedSearchCV on the same seeds (both
    nets seeded alike, so the fused search trains random search's fits): in how many seeds
    they chose the same candidate, the largest difference of their test and best CV scores,
    and the median (min, max) of their wall-time ratio. One line per task; none without
    both methods."""
    lines = []
    for task in dict.fromkeys(r["task"] for r in rows):
        pairs = {}
        for r in rows:
            if r["task"] == task and r["method"] in ("random", "fused-random"):
                pairs.setdefault(r["seed"], {})[r["method"]] = r
        pairs = [p for p in pairs.values() if len(p) == 2]
        if not pairs:
            continue
        same = sum(p["random"]["best_params"] == p["fused-random"]["best_params"] for p in pairs)
        ratio = [p["fused-random"]["wall_time"] / p["random"]["wall_time"] for p in pairs]
        test = max(abs(p["random"]["test_score"] - p["fused-random"]["test_score"])
                   for p in pairs)
        cv = max(abs(p["random"]["cv_score"] - p["fused-random"]["cv_score"]) for p in pairs)
        lines.append(f"  {task:14s} same best candidate in {same}/{len(pairs)} seeds, largest "
                     f"|d test score| {test:.4f}, |d best CV score| {cv:.4f}; wall-time ratio "
                     f"fused / scikit-learn {np.median(ratio):.2f} ({min(ratio):.2f}-"
                     f"{max(ratio):.2f})")
    return lines


def summarize(rows):
    """Per (task, method): median test score, IQR, median wall time and epochs."""
    return core_summarize(rows, ("task", "method"), {
        "median_test": ("median", "test_score"), "iqr_test": ("iqr", "test_score"),
        "median_wall": ("median", "wall_time"), "median_epochs": ("median", "epochs")})


COLUMNS = [Column("task", "task", "14s"), Column("method", "method", "12s"),
           Column("runs", "n", "4d"), Column("median test", "median_test", "11.4f"),
           Column("IQR", "iqr_test", "7.4f"), Column("median wall", "median_wall", "10.1f", "s"),
           Column("epochs", "median_epochs", "7.0f")]


def describe_row(row):
    """The progress line of one run."""
    return (f"{row['task']:14s} seed {row['seed']} {row['method']:12s} test "
            f"{row['test_score']:.4f} {row['wall_time']:6.1f}s {row['epochs']} epochs")
