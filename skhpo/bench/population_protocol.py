"""PopulationMutationSearch on networks: dropout rates and weight decay of an MLP (digits,
wine) against RandomizedSearchCV with the same total training epochs.

* the net: StandardScaler + TabularMLPClassifier (2 hidden layers of 128, Adam lr 1e-3,
  batch 64), ``n_steps`` epochs per training;
* the box: one dropout rate per hidden layer in [0, 0.75] (the paper's CIFAR-10 range) and
  Adam's weight decay in loguniform(1e-6, 1e-2);
* ``hpm`` and ``hpm-wo-t``: a population of ``population`` students for ``n_steps`` one-epoch
  steps (``population * n_steps`` epochs); the best student is the model;
* ``random``: RandomizedSearchCV with ``population // cv`` candidates, ``cv``-fold, each
  trained ``n_steps`` epochs, plus the refit (``(population // cv) * cv * n_steps + n_steps``
  epochs, at most the population's);
* 25 % of the data is the test set (stratified, per seed).
"""

import time
from typing import NamedTuple

from scipy.stats import loguniform, uniform
from sklearn.metrics import log_loss
from sklearn.model_selection import RandomizedSearchCV, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skhpo import PopulationMutationSearch, TabularMLPClassifier

from ..nets import seed_everything
from .core import Column, epochs_spent, plain_params, run_jobs, summarize
from .runner import load_task
from .spaces import PerLayer

__all__ = ["COLUMNS", "NET_METHODS", "describe_row", "run_networks", "run_one",
           "summarize_networks"]

NET_METHODS = ("random", "hpm-wo-t", "hpm")
DROPOUT_BOX = (0.0, 0.75)
DECAY_BOX = (1e-6, 1e-2)


def _estimator(n_steps):
    return Pipeline([("scale", StandardScaler()),
                     ("net", TabularMLPClassifier(depth=2, width=128, lr=1e-3, batch_size=64,
                                                  max_epochs=n_steps))])


def _search(method, seed, population, n_steps, cv, n_jobs):
    if method == "random":
        low, high = DROPOUT_BOX
        space = {"net__dropout": PerLayer(uniform(low, high - low), 2),
                 "net__optimizer__weight_decay": loguniform(*DECAY_BOX)}
        return RandomizedSearchCV(_estimator(n_steps), space, n_iter=max(1, population // cv),
                                  cv=cv, random_state=seed, n_jobs=n_jobs)
    bounds = {"net__dropout[layers.2]": DROPOUT_BOX, "net__dropout[layers.5]": DROPOUT_BOX,
              "net__optimizer__weight_decay": loguniform(*DECAY_BOX)}
    return PopulationMutationSearch(_estimator(n_steps), bounds, population_size=population,
                                    n_steps=n_steps,
                                    mutation="teacher" if method == "hpm" else "random",
                                    random_state=seed, n_jobs=n_jobs)


class NetBudget(NamedTuple):
    """The size of every run of :func:`run_networks`: students, one-epoch steps, CV folds of
    the baseline, and each search's own ``n_jobs``."""

    population: int = 20
    n_steps: int = 30
    cv: int = 3
    n_jobs: object = None


def run_networks(tasks=("digits", "wine"), seeds=5, methods=NET_METHODS, budget=None, *,
                 progress=None, checkpoint=None):
    """One row per (task, seed, method): test accuracy (``test_score``) and log loss, the
    search's own validation score, wall time, training epochs and the chosen
    hyper-parameters (``budget``: a :class:`NetBudget`, None: its defaults)."""
    budget = budget or NetBudget()
    jobs = [(t, s, m) for t in tasks for s in range(seeds) for m in methods]
    return run_jobs(jobs, lambda *job: run_one(*job, *budget), progress=progress,
                    checkpoint=checkpoint)


def run_one(task, seed, method, population=20, n_steps=30, cv=3, n_jobs=None):
    """One search on one task and seed; the result row."""
    X, y, _ = load_task(task)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=seed, stratify=y)
    seed_everything(seed)
    search = _search(method, seed, population, n_steps, cv, n_jobs)
    start = time.perf_counter()
    search.fit(Xtr, ytr)
    wall = time.perf_counter() - start
    proba = search.predict_proba(Xte)
    return {"task": task, "seed": seed, "method": method,
            "test_score": float(search.score(Xte, yte)),  # accuracy
            "test_loss": float(log_loss(yte, proba, labels=search.classes_)),
            "val_score": float(search.best_score_), "wall_time": wall,
            "epochs": float(epochs_spent(search, n_steps)),
            "best_params": plain_params(search.best_params_)}


def summarize_networks(rows):
    """Per (task, method): median test accuracy (IQR), mean test log loss, median wall time
    and epochs."""
    return summarize(rows, ("task", "method"), {
        "median_test_acc": ("median", "test_score"), "iqr_test_acc": ("iqr", "test_score"),
        "mean_test_acc": ("mean", "test_score"), "mean_test_loss": ("mean", "test_loss"),
        "median_wall": ("median", "wall_time"), "median_epochs": ("median", "epochs")},
        order="seen")


COLUMNS = [Column("task", "task", "8s"), Column("method", "method", "9s"),
           Column("median acc", "median_test_acc", "10.4f"),
           Column("IQR", "iqr_test_acc", "6.4f"), Column("mean loss", "mean_test_loss", "9.4f"),
           Column("wall s", "median_wall", "7.1f"), Column("epochs", "median_epochs", "6.0f")]


def describe_row(row):
    """The progress line of one run."""
    return (f"{row['task']:8s} seed {row['seed']} {row['method']:9s} test acc "
            f"{row['test_score']:.4f} {row['wall_time']:6.1f}s {row['epochs']:.0f} epochs")
