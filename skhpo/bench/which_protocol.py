"""Which method when: each skhpo method against the search a user would otherwise run for the
same job, at equal training epochs and at equal wall time (``skhpo which``).

For every (method, task, seed): split the task 75/25 (seeded, stratified for classifiers), run
the method on the training part and score its model on the test part; then run the baseline,
scikit-learn's ``RandomizedSearchCV`` over the method's own space, twice:

* **equal epochs**: as many trials as fit in the method's training epochs (its refit aside),
  ``max(1, round((E - max_epochs) / (cv * max_epochs)))``;
* **equal wall time**: as many trials as fit in the method's wall time, from the baseline's
  measured seconds per trial in the first run (that run is reused when the count is the same).

The jobs and their spaces (``default_space`` is ``skhpo bench``'s):

* ``flatness``: ``FlatnessSearchCV`` under ``skhpo bench``'s epoch budget, on the bench space;
* ``autohyper``: ``AutoHyperSearchCV`` of the learning rate; baseline space lr in [1e-4, 1e-1];
* ``hyperlocal``: ``RandomizedSearchCV`` of ``n_trials`` on the bench space refined by
  ``HyperLocalRefiner`` on its weight decay; the baseline is the same search unrefined;
* ``hpm``: ``PopulationMutationSearch`` on the bench space's continuous boxes (lr, weight decay);
* ``cpmlho``: ``CuttingPlaneTuner`` of the net's dropout, one run; baseline space: one dropout
  rate in [0, 0.8] (with the bench net's defaults otherwise);
* ``fused-halving``: ``FusedHalvingRandomSearchCV`` over ``max_epochs`` as ``skhpo bench``
  runs it (3 x n_trials candidates, factor 3, rungs E/9, E/3, E; survivors continue), on the
  bench space. A fused drop-in's own competitor is the other fused drop-in: this job also
  runs ``FusedRandomizedSearchCV`` at equal wall time (as many trials as fit in the
  method's wall time, from its measured seconds per trial at the equal-epochs count).

Scores are ``search.score`` on the test part: accuracy for classifiers, R^2 for diabetes.
"""

import time
import warnings

from scipy.stats import loguniform, uniform
from sklearn.base import clone
from sklearn.model_selection import RandomizedSearchCV, train_test_split

from skhpo import FusedRandomizedSearchCV, HyperLocalRefiner

from ..nets import seed_everything
from .core import Column, epochs_spent, run_jobs
from .core import summarize as summarize_rows
from .runner import METHODS as BENCH_METHODS
from .runner import Budget, default_estimator, default_space, load_task

__all__ = ["METHODS", "TASKS", "run_pair", "run_protocol", "summarize", "verdicts"]

TASKS = ("iris", "wine", "breast_cancer", "digits", "diabetes")
METHODS = ("flatness", "autohyper", "hyperlocal", "hpm", "cpmlho", "fused-halving")
#: methods also compared with FusedRandomizedSearchCV at equal wall time
FUSED_BASELINE = ("fused-halving",)


def baseline_space(method, kind):
    """The space of the search a user would otherwise run for ``method``'s job."""
    space = default_space(kind)
    if method == "autohyper":
        return {"net__lr": loguniform(1e-4, 1e-1)}
    if method == "hpm":
        return {k: v for k, v in space.items() if hasattr(v, "rvs")}
    if method == "cpmlho":
        return {"net__dropout": uniform(0.0, 0.8)}
    return space


def _method(method, estimator, kind, budget, seed):
    if method == "hyperlocal":
        base = RandomizedSearchCV(estimator, default_space(kind), n_iter=budget.n_trials,
                                  cv=budget.cv, random_state=seed)
        return HyperLocalRefiner(base, ["net__optimizer__weight_decay"], random_state=seed)
    return BENCH_METHODS[method](estimator, default_space(kind), budget, seed, None)


def _timed_fit(search, X, y, Xte, yte, max_epochs):
    start = time.perf_counter()
    search.fit(X, y)
    wall = time.perf_counter() - start
    return {"score": float(search.score(Xte, yte)), "wall": wall,
            "epochs": int(epochs_spent(search, max_epochs))}


def run_pair(method, task, seed, budget):
    """One method and its two baselines on one task and seed: a flat result row."""
    import torch

    torch.set_num_threads(1)
    X, y, kind = load_task(task)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=seed,
                                          stratify=None if kind == "regression" else y)
    estimator = default_estimator(kind, budget.max_epochs)
    row = {"method": method, "task": task, "seed": seed}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seed_everything(seed)
        m = _timed_fit(_method(method, clone(estimator), kind, budget, seed), Xtr, ytr, Xte, yte,
                       budget.max_epochs)
        row.update({f"method_{k}": v for k, v in m.items()})
        seeded = clone(estimator).set_params(net__random_state=seed)
        per_trial = budget.cv * budget.max_epochs
        n_epochs = max(1, round((m["epochs"] - budget.max_epochs) / per_trial))
        if method == "hyperlocal":  # the same search, unrefined
            n_epochs = budget.n_trials

        def baseline(n_iter, search=RandomizedSearchCV):
            search = search(seeded, baseline_space(method, kind), n_iter=n_iter, cv=budget.cv,
                            random_state=seed)
            return {"trials": n_iter, **_timed_fit(search, Xtr, ytr, Xte, yte,
                                                   budget.max_epochs)}

        def at_equal_wall(search=RandomizedSearchCV):
            """``search`` at the equal-epochs trial count, then at the method's wall time."""
            first = baseline(n_epochs, search)
            n_wall = max(1, round(m["wall"] / (first["wall"] / n_epochs)))
            return first, (first if n_wall == n_epochs else baseline(n_wall, search))
        at_epochs, at_wall = at_equal_wall()
        if method in FUSED_BASELINE:
            _, fused = at_equal_wall(FusedRandomizedSearchCV)
            row.update({f"fused_wall_{k}": v for k, v in fused.items()})
    row.update({f"epochs_{k}": v for k, v in at_epochs.items()})
    row.update({f"wall_{k}": v for k, v in at_wall.items()})
    return row


def run_protocol(methods=METHODS, tasks=TASKS, seeds=5, budget=None, n_jobs=None,
                 progress=None, checkpoint=None):
    """Every (method, task, seed), ``n_jobs`` in parallel; rows in job order."""
    budget = budget or Budget(n_trials=12, n_finalists=3, max_epochs=15, cv=3)
    for t in tasks:
        load_task(t)
    jobs = [(m, t, s) for t in tasks for m in methods for s in range(seeds)]
    return run_jobs(jobs, lambda m, t, s: run_pair(m, t, s, budget), n_jobs=n_jobs,
                    progress=progress, checkpoint=checkpoint)


def _wins(rows, key):
    d = [r["method_score"] - r[f"{key}_score"] for r in rows]
    return sum(v > 0 for v in d), sum(v == 0 for v in d), sum(v < 0 for v in d)


def summarize(rows):
    """Per (method, task): runs, median test score of the method and of both baselines, the
    median paired difference (method - baseline) and wins/ties/losses over seeds, median wall
    times and epochs."""
    metrics = {"method_score": ("median", "method_score"),
               "epochs_score": ("median", "epochs_score"),
               "wall_score": ("median", "wall_score"),
               "d_epochs": ("median", lambda r: r["method_score"] - r["epochs_score"]),
               "d_wall": ("median", lambda r: r["method_score"] - r["wall_score"]),
               "method_wall": ("median", "method_wall"), "method_epochs": ("median",
                                                                          "method_epochs"),
               "epochs_trials": ("median", "epochs_trials"),
               "wall_trials": ("median", "wall_trials"),
               "epochs_wall": ("median", "epochs_wall"), "wall_wall": ("median", "wall_wall"),
               "fused_wall_score": ("median", "fused_wall_score"),
               "d_fused_wall": ("median",
                                lambda r: r["method_score"] - r["fused_wall_score"]),
               "fused_wall_trials": ("median", "fused_wall_trials")}
    out = summarize_rows(rows, ("method", "task"), metrics, count="runs")
    for s in out:
        group = [r for r in rows if r["method"] == s["method"] and r["task"] == s["task"]]
        s["wins_epochs"], s["wins_wall"] = _wins(group, "epochs"), _wins(group, "wall")
        if "fused_wall_score" in s:
            s["wins_fused_wall"] = _wins(group, "fused_wall")
    return out


def verdicts(summary):
    """Per method: the tasks where it beat its baseline in the median and in most seeds, at
    equal epochs and at equal wall time (and, where it was run, the fused random search at
    equal wall time: ``"fused_wall"``)."""
    out = {}
    for s in summary:
        v = out.setdefault(s["method"], {"epochs": [], "wall": []})
        for key in ("epochs", "wall", "fused_wall"):
            if f"wins_{key}" not in s:
                continue
            v.setdefault(key, [])
            wins, _, losses = s[f"wins_{key}"]
            if s[f"d_{key}"] > 0 and wins > losses:
                v[key].append(s["task"])
    return out


def _wtl(key):
    return lambda s: "{}/{}/{}".format(*s[key]) if key in s else ""


COLUMNS = [Column("method", "method", "13s"), Column("task", "task", "13s"),
           Column("runs", "runs", "4d"), Column("method", "method_score", "7.4f"),
           Column("=epochs", "epochs_score", "7.4f"), Column("d", "d_epochs", "+7.4f"),
           Column("w/t/l", _wtl("wins_epochs"), "6s"),
           Column("=wall", "wall_score", "7.4f"), Column("d", "d_wall", "+7.4f"),
           Column("w/t/l", _wtl("wins_wall"), "6s"),
           Column("=fused wall", "fused_wall_score", "11.4f"),
           Column("d", "d_fused_wall", "+7.4f"), Column("w/t/l", _wtl("wins_fused_wall"), "6s"),
           Column("wall", "method_wall", "6.1f", "s"),
           Column("trials e/w/fw", lambda s: f"{s['epochs_trials']:g}/{s['wall_trials']:g}"
                  + (f"/{s['fused_wall_trials']:g}" if "fused_wall_trials" in s else ""),
                  "13s")]


def describe_row(row):
    """The progress line of one run."""
    fused = (f", {row['fused_wall_score']:.4f} (fused random search at equal wall, "
             f"{row['fused_wall_trials']} trials)") if "fused_wall_score" in row else ""
    return (f"{row['method']:13s} {row['task']:13s} seed {row['seed']} {row['method_score']:.4f}"
            f" vs {row['epochs_score']:.4f} (equal epochs, {row['epochs_trials']} trials), "
            f"{row['wall_score']:.4f} (equal wall, {row['wall_trials']} trials){fused}")
