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

from __future__ import annotations

import time

import numpy as np
from scipy.stats import loguniform, uniform
from sklearn.metrics import log_loss
from sklearn.model_selection import RandomizedSearchCV, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skhpo import PopulationMutationSearch, TabularMLPClassifier

from ..nets import seed_everything
from .runner import load_task
from .stats import describe

__all__ = ["NET_METHODS", "PerLayer", "run_networks", "summarize_networks"]

NET_METHODS = ("random", "hpm-wo-t", "hpm")
DROPOUT_BOX = (0.0, 0.75)
DECAY_BOX = (1e-6, 1e-2)


class PerLayer:
    """A distribution of one value per layer (``rvs`` returns a list), for
    RandomizedSearchCV over ``dropout`` sequences."""

    def __init__(self, dist, n):
        self.dist, self.n = dist, n

    def rvs(self, random_state=None):
        return [float(self.dist.rvs(random_state=random_state)) for _ in range(self.n)]


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


def run_networks(tasks=("digits", "wine"), seeds=5, methods=NET_METHODS, population=20,
                 n_steps=30, cv=3, n_jobs=None, progress=None):
    """One row per (task, seed, method): test accuracy (``test_score``) and log loss, the
    search's own
    validation score, wall time, training epochs and the chosen hyper-parameters."""
    jobs = [(t, s, m) for t in tasks for s in range(seeds) for m in methods]
    rows = []
    for i, (task, seed, method) in enumerate(jobs):
        X, y, _ = load_task(task)
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=seed,
                                              stratify=y)
        seed_everything(seed)
        search = _search(method, seed, population, n_steps, cv, n_jobs)
        start = time.perf_counter()
        search.fit(Xtr, ytr)
        wall = time.perf_counter() - start
        if method == "random":
            epochs = len(search.cv_results_["params"]) * cv * n_steps + n_steps
        else:
            epochs = search.n_epochs_
        proba = search.predict_proba(Xte)
        rows.append({"task": task, "seed": seed, "method": method,
                     "test_score": float(search.score(Xte, yte)),  # accuracy
                     "test_loss": float(log_loss(yte, proba, labels=search.classes_)),
                     "val_score": float(search.best_score_), "wall_time": wall,
                     "epochs": float(epochs),
                     "best_params": {k: (v if np.ndim(v) == 0 else list(v))
                                     for k, v in search.best_params_.items()}})
        if progress is not None:
            progress(i + 1, len(jobs), rows[-1])
    return rows


def summarize_networks(rows):
    """Per (task, method): median test accuracy (IQR), mean test log loss, median wall time
    and epochs."""
    out = []
    for task, method in dict.fromkeys((r["task"], r["method"]) for r in rows):
        sel = [r for r in rows if r["task"] == task and r["method"] == method]
        acc = describe([r["test_score"] for r in sel])
        out.append({"task": task, "method": method, "n": acc["n"],
                    "median_test_acc": acc["median"], "iqr_test_acc": acc["iqr"],
                    "mean_test_acc": acc["mean"],
                    "mean_test_loss": float(np.mean([r["test_loss"] for r in sel])),
                    "median_wall": float(np.median([r["wall_time"] for r in sel])),
                    "median_epochs": float(np.median([r["epochs"] for r in sel]))})
    return out
