"""The benchmark of the LP hyper local search (the paper's Section 5 protocol).

Each run: split the data into train / validation / test (seeded), run a base search of
``n_trials`` trials with one of Optuna's four samplers (grid, random, TPE, QMC, the paper's
bases), each trial trained on the training part and judged by its validation loss; then refine
the best trial's model with :class:`HyperLocalRefiner` (already fitted: validation data plus the
training data) and record validation and test loss and accuracy before and after, and the
refinement's time as a fraction of the base search's.

* ``mlp``: digits, an MLP with 1, 2 or 4 linear layers (``n_hp``), one L2 coefficient per
  layer in [1e-6, 1e-1] (log), ``train_size`` training samples or all;
* ``enet``: diabetes, ``ElasticNet`` with l1 = alpha * l1_ratio and l2 = alpha * (1 - l1_ratio)
  each in [1e-10, 1] (uniform, as the paper's elastic-net runs), loss = MSE.
"""

import time
import warnings
from typing import NamedTuple

import numpy as np
from sklearn import datasets
from sklearn.linear_model import ElasticNet
from sklearn.metrics import log_loss
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from skhpo import HyperLocalRefiner, TabularMLPClassifier

from .core import Column, run_jobs
from .core import summarize as summarize_rows

SAMPLERS = ("grid", "random", "tpe", "qmc")


def _sampler(name, space, n_trials, seed):
    import optuna

    if name == "grid":
        per = max(2, int(np.floor(n_trials ** (1 / len(space)) + 1e-9)))
        grid = {k: list(np.geomspace(lo, hi, per)) if log else list(np.linspace(lo, hi, per))
                for k, (lo, hi, log) in space.items()}
        return optuna.samplers.GridSampler(grid, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.QMCSampler(seed=seed)


def _base_search(sampler, space, n_trials, seed, train_and_score):
    """Optuna over ``space`` (a grid stops when exhausted); returns (best model, seconds)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=_sampler(sampler, space, n_trials, seed))
    best = {"loss": np.inf, "model": None}

    def objective(trial):
        params = {k: trial.suggest_float(k, lo, hi, log=log) for k, (lo, hi, log) in
                  space.items()}
        model, loss = train_and_score(params)
        if loss < best["loss"]:
            best.update(loss=loss, model=model)
        return loss if np.isfinite(loss) else 1e12

    start = time.perf_counter()
    study.optimize(objective, n_trials=n_trials)
    return best["model"], time.perf_counter() - start


def _mlp_run(n_hp, train_size, sampler, seed, n_trials, max_epochs, refiner_params):
    X, y = datasets.load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X).astype(np.float32)
    Xrest, Xte, yrest, yte = train_test_split(X, y, test_size=0.2, random_state=seed,
                                              stratify=y)
    Xtr, Xv, ytr, yv = train_test_split(Xrest, yrest, test_size=0.2, random_state=seed,
                                        stratify=yrest)
    if train_size is not None and train_size < len(Xtr):
        Xtr, ytr = Xtr[:train_size], ytr[:train_size]
    space = {f"l2_{k}": (1e-6, 1e-1, True) for k in range(n_hp)}

    def train_and_score(params):
        l2 = [params[f"l2_{k}"] for k in range(n_hp)]
        net = TabularMLPClassifier(depth=n_hp - 1, width=64, l2=l2, max_epochs=max_epochs,
                                   batch_size=128, random_state=seed).fit(Xtr, ytr)
        return net, log_loss(yv, net.predict_proba(Xv), labels=net.classes_)

    model, base_time = _base_search(sampler, space, n_trials, seed, train_and_score)
    start = time.perf_counter()
    refiner = HyperLocalRefiner(model, ["l2"], random_state=seed, **refiner_params)
    refiner.fit(Xv, yv, X_train=Xtr, y_train=ytr)
    refine_time = time.perf_counter() - start

    def metrics(m):
        return {"val_loss": log_loss(yv, m.predict_proba(Xv), labels=m.classes_),
                "test_loss": log_loss(yte, m.predict_proba(Xte), labels=m.classes_),
                "val_acc": m.score(Xv, yv), "test_acc": m.score(Xte, yte)}
    return metrics(model), metrics(refiner.best_estimator_), base_time, refine_time, refiner


def _enet_run(sampler, seed, n_trials, refiner_params):
    X, y = datasets.load_diabetes(return_X_y=True)
    Xrest, Xte, yrest, yte = train_test_split(X, y, test_size=0.2, random_state=seed)
    Xtr, Xv, ytr, yv = train_test_split(Xrest, yrest, test_size=0.2, random_state=seed)
    scaler = StandardScaler().fit(Xtr)
    Xtr, Xv, Xte = scaler.transform(Xtr), scaler.transform(Xv), scaler.transform(Xte)
    space = {"l1": (1e-10, 1.0, False), "l2": (1e-10, 1.0, False)}

    def train_and_score(params):
        alpha = params["l1"] + params["l2"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = ElasticNet(alpha=alpha, l1_ratio=params["l1"] / alpha, max_iter=10000)
            m.fit(Xtr, ytr)
        return m, float(np.mean((m.predict(Xv) - yv) ** 2))

    model, base_time = _base_search(sampler, space, n_trials, seed, train_and_score)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        refiner = HyperLocalRefiner(model, random_state=seed, **refiner_params)
        refiner.fit(Xv, yv, X_train=Xtr, y_train=ytr)
    refine_time = time.perf_counter() - start

    def metrics(m):
        return {"val_loss": float(np.mean((m.predict(Xv) - yv) ** 2)),
                "test_loss": float(np.mean((m.predict(Xte) - yte) ** 2))}
    return metrics(model), metrics(refiner.best_estimator_), base_time, refine_time, refiner


def run_one(task, sampler, seed, n_trials=12, max_epochs=30, refiner_params=None):
    """One base search + refinement; ``task`` is ``("mlp", n_hp, train_size)`` or
    ``("enet",)``; ``refiner_params``: keyword arguments of :class:`HyperLocalRefiner`
    (e.g. the paper's ``weight_step="lp", accept_fraction=0``). Returns a flat result
    row."""
    import torch

    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's experimental samplers, sklearn's FutureWarnings
        return _run_one(task, sampler, seed, n_trials, max_epochs, dict(refiner_params or {}))


def task_name(task):
    return f"mlp-{task[1]}hp-{task[2] or 'all'}" if task[0] == "mlp" else "enet-diabetes"


def _run_one(task, sampler, seed, n_trials, max_epochs, refiner_params):
    if task[0] == "mlp":
        before, after, tb, tr, ref = _mlp_run(task[1], task[2], sampler, seed, n_trials,
                                              max_epochs, refiner_params)
    else:
        before, after, tb, tr, ref = _enet_run(sampler, seed, n_trials, refiner_params)
    row = {"task": task_name(task), "base": sampler, "seed": seed, "base_time": tb,
           "refine_time": tr, "added_time": tr / tb, "accepted": bool(ref.improved_)}
    for k in before:
        row[f"{k}_before"], row[f"{k}_after"] = float(before[k]), float(after[k])
    # the held-back check of the first step (NaN without one): its statistics
    checks = [i for i, k in enumerate(ref.history_["kind"]) if k == "accept"]
    for key in ("mean_change", "std_error", "score_change"):
        row[f"accept_{key}"] = float(ref.history_[key][checks[0]]) if checks else float("nan")
    # not worse on the test data: accuracy for the classifiers, MSE for the elastic net
    row["not_worse"] = bool(row["test_acc_after"] >= row["test_acc_before"] if "test_acc_after"
                            in row else row["test_loss_after"] <= row["test_loss_before"])
    return row


def summarize(rows):
    """Per (task, base): runs, share accepted (a step was kept), share improved (validation
    loss fell), share not worse on the test data (accuracy; MSE for the elastic net), median
    changes of the metrics (after - before), median added time."""
    metrics = {"accepted": ("mean", "accepted"),
               "improved": ("mean", lambda r: r["val_loss_after"] < r["val_loss_before"]),
               "not_worse": ("mean", "not_worse"), "added_time": ("median", "added_time")}
    for k in ("val_loss", "test_loss", "val_acc", "test_acc"):
        metrics[f"d_{k}"] = ("median", lambda r, k=k: r[f"{k}_after"] - r[f"{k}_before"])
    return summarize_rows(rows, ("task", "base"), metrics, count="runs")


COLUMNS = [Column("task", "task", "16s"), Column("base", "base", "6s"),
           Column("runs", "runs", "4d"),
           Column("kept", lambda s: 100 * s["accepted"], "5.0f", "%"),
           Column("improved", lambda s: 100 * s["improved"], "7.0f", "%"),
           Column("test ok", lambda s: 100 * s["not_worse"], "7.0f", "%"),
           Column("d val loss", "d_val_loss", "10.4g"),
           Column("d test loss", "d_test_loss", "11.4g"),
           Column("d val acc", "d_val_acc", "9.4f"), Column("d test acc", "d_test_acc", "10.4f"),
           Column("added time", lambda s: 100 * s["added_time"], "9.1f", "%")]


def describe_row(row):
    """The progress line of one run."""
    return (f"{row['task']:16s} {row['base']:6s} seed {row['seed']} val loss "
            f"{row['val_loss_before']:.4g} -> {row['val_loss_after']:.4g}  "
            f"+{100 * row['added_time']:.0f}% time")


TASKS = [("mlp", n_hp, size) for n_hp in (1, 2, 4) for size in (1000, None)] + [("enet",)]


class Settings(NamedTuple):
    """What every run of :func:`run_protocol` shares: the base search's trials, the nets'
    epochs and the refiner's own parameters."""

    n_trials: int = 12
    max_epochs: int = 30
    refiner_params: dict | None = None


def run_protocol(seeds, settings=None, *, only=None, n_jobs=None, progress=None,
                 checkpoint=None):
    """Every (task, base, seed) of the benchmark under ``settings`` (:class:`Settings`; None:
    its defaults), ``n_jobs`` runs in parallel; rows in job order (finished ones kept in
    ``checkpoint``, see :func:`~skhpo.bench.core.run_jobs`). ``only``: ``{"tasks": names of
    :func:`task_name`, "bases": samplers}`` to keep (a missing key or None: all)."""
    n_trials, max_epochs, refiner_params = settings or Settings()
    only = only or {}
    tasks, bases = only.get("tasks"), only.get("bases")
    chosen = [t for t in TASKS if tasks is None or task_name(t) in tasks]
    jobs = [(t, b, s) for t in chosen for b in SAMPLERS if bases is None or b in bases
            for s in range(seeds)]
    return run_jobs(jobs, lambda t, b, s: run_one(t, b, s, n_trials, max_epochs,
                                                  refiner_params),
                    n_jobs=n_jobs, progress=progress, checkpoint=checkpoint)
