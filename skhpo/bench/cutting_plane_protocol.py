"""CuttingPlaneTuner benchmarks (spec cpmlho.md §5, issue 7).

**compare**: digits as an MLP and as a small CNN, three dropout rates each in [0, 0.95]:

* ``cpmlho``: :class:`~skhpo.CuttingPlaneTuner` with its defaults (mu 1e-3, theta 1, hinge);
* ``delta-stn``: the same with ``theta=None, mu=0`` (Delta-STN);
* ``random``: ``RandomizedSearchCV`` over the same boxes, ``n_random`` candidates on the same
  15 % hold-out, each trained ``epochs // (n_random + 1)`` epochs, plus the refit: the same
  number of epochs as one self-tuning run;
* ``random-full``: the same candidates trained ``epochs`` epochs each, plus the refit
  (``n_random + 1`` times the epochs; about the wall time of one self-tuning run).

Each seed holds out 25 % of digits as the test set. Recorded: the final validation loss (the
self-tuning run's last epoch, or the best candidate's hold-out log loss), test accuracy and log
loss, wall time and the rates found.

**sensitivity** (the paper's Figure 2): CPMLHO on the MLP with the input dropout (dropout0)
started at 0.1, 0.2, 0.5 and 0.8, its trajectory over hyper steps (Delta-STN dashed).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from scipy.stats import uniform
from sklearn.metrics import log_loss
from sklearn.model_selection import RandomizedSearchCV, ShuffleSplit, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from skorch import NeuralNetClassifier
from torch import nn

from skhpo import CuttingPlaneTuner, TabularMLPClassifier

from ..nets import seed_everything
from .population_protocol import PerLayer
from .runner import load_task
from .stats import describe

__all__ = ["CP_METHODS", "DigitsCNN", "run_compare", "run_sensitivity", "summarize_compare",
           "plot_sensitivity"]

CP_METHODS = ("cpmlho", "delta-stn", "random", "random-full")
BOX = (0.0, 0.95)
INIT = 0.05
VALID = 0.15


class DigitsCNN(nn.Module):
    """CPMLHO's small CNN for 8 x 8 digits: input dropout (element-wise) -> conv 1->16 (3x3)
    -> ReLU -> max-pool -> channel dropout -> conv 16->32 -> ReLU -> max-pool -> channel
    dropout -> linear 128 -> 10 (logits). Pixels are scaled from [0, 16] to [0, 1]."""

    def __init__(self, p0=INIT, p1=INIT, p2=INIT):
        super().__init__()
        self.drop0 = nn.Dropout(p0)
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.drop1 = nn.Dropout2d(p1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.drop2 = nn.Dropout2d(p2)
        self.out = nn.Linear(32 * 2 * 2, 10)

    def forward(self, X):
        x = self.drop0(X.reshape(-1, 1, 8, 8) / 16.0)
        x = self.drop1(nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2))
        x = self.drop2(nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2))
        return self.out(x.flatten(1))


def _estimator(model, epochs, **kw):
    if model == "mlp":
        return Pipeline([("scale", StandardScaler()),
                         ("net", TabularMLPClassifier(width=256, depth=2, input_dropout=INIT,
                                                      dropout=INIT, max_epochs=epochs, **kw))])
    return NeuralNetClassifier(DigitsCNN, criterion=nn.CrossEntropyLoss,
                               optimizer=torch.optim.Adam, lr=1e-3, batch_size=64,
                               max_epochs=epochs, train_split=None, verbose=0, **kw)


def _names(model):
    if model == "mlp":
        return [f"net__dropout[layers.{i}]" for i in (0, 3, 6)]
    return [f"dropout[drop{i}]" for i in range(3)]


def _random_space(model):
    box = uniform(BOX[0], BOX[1] - BOX[0])
    if model == "mlp":
        return {"net__input_dropout": box, "net__dropout": PerLayer(box, 2)}
    return {f"module__p{i}": box for i in range(3)}


def _tuner(model, method, seed, epochs, starts=None):
    starts = starts or {}
    hyper = {n: (*BOX, starts.get(n, INIT)) for n in _names(model)}
    kw = {"theta": None, "mu": 0.0} if method == "delta-stn" else {}
    return CuttingPlaneTuner(_estimator(model, epochs), hyper, validation_fraction=VALID,
                             random_state=seed, **kw)


def run_compare(models=("mlp", "cnn"), seeds=5, epochs=50, n_random=4, methods=CP_METHODS,
                progress=None):
    """One row per (model, seed, method)."""
    X, y, _ = load_task("digits")
    jobs = [(m, s, meth) for m in models for s in range(seeds) for meth in methods]
    rows = []
    for i, (model, seed, method) in enumerate(jobs):
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=seed,
                                              stratify=y)
        seed_everything(seed)
        start = time.perf_counter()
        if method.startswith("random"):
            per_trial = epochs if method == "random-full" else max(1, epochs // (n_random + 1))
            search = RandomizedSearchCV(
                _estimator(model, per_trial), _random_space(model), n_iter=n_random,
                scoring="neg_log_loss", random_state=seed,
                cv=ShuffleSplit(n_splits=1, test_size=VALID, random_state=seed))
            search.fit(Xtr, ytr)
            val_loss = -float(search.best_score_)
            spent = n_random * per_trial + per_trial
            params = _plain(search.best_params_)
        else:
            search = _tuner(model, method, seed, epochs).fit(Xtr, ytr)
            val_loss = float(search.history_["valid_loss"][-1])
            spent = search.n_epochs_
            params = _plain(search.best_params_)
        wall = time.perf_counter() - start
        proba = search.predict_proba(Xte)
        rows.append({"model": model, "seed": seed, "method": method, "val_loss": val_loss,
                     "test_score": float(np.mean(search.predict(Xte) == yte)),
                     "test_loss": float(log_loss(yte, proba, labels=np.arange(10))),
                     "wall_time": wall, "epochs": spent, "params": params})
        if progress is not None:
            progress(i + 1, len(jobs), rows[-1])
    return rows


def _plain(params):
    return {k: (round(float(v), 4) if np.ndim(v) == 0 else [round(float(a), 4) for a in v])
            for k, v in params.items()}


def summarize_compare(rows):
    """Per (model, method): mean +- std of the final validation loss, test accuracy and
    test loss over seeds; median wall time and epochs."""
    out = []
    for model, method in dict.fromkeys((r["model"], r["method"]) for r in rows):
        sel = [r for r in rows if r["model"] == model and r["method"] == method]
        entry = {"model": model, "method": method, "n": len(sel)}
        for key in ("val_loss", "test_score", "test_loss"):
            v = np.array([r[key] for r in sel])
            entry[f"mean_{key}"], entry[f"std_{key}"] = float(v.mean()), float(v.std())
        entry["median_test_score"] = describe([r["test_score"] for r in sel])["median"]
        entry["median_wall"] = float(np.median([r["wall_time"] for r in sel]))
        entry["epochs"] = float(np.median([r["epochs"] for r in sel]))
        out.append(entry)
    return out


def run_sensitivity(starts=(0.1, 0.2, 0.5, 0.8), epochs=50, seed=0,
                    methods=("cpmlho", "delta-stn")):
    """``{(method, start): [dropout0 after each hyper step]}`` for the MLP."""
    X, y, _ = load_task("digits")
    Xtr, _, ytr, _ = train_test_split(X, y, test_size=0.25, random_state=seed, stratify=y)
    name = _names("mlp")[0]
    out = {}
    for method in methods:
        for start in starts:
            tuner = _tuner("mlp", method, seed, epochs, {name: start}).fit(Xtr, ytr)
            out[(method, start)] = [start] + list(tuner.hyper_history_[name])
    return out


def plot_sensitivity(trajectories, path):
    """dropout0 against hyper steps, one line per start (CPMLHO solid, Delta-STN dashed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    colors = {}
    for (method, start), traj in trajectories.items():
        color = colors.setdefault(start, f"C{len(colors)}")
        ax.plot(np.arange(len(traj)), traj, color=color, ls="-" if method == "cpmlho" else "--",
                label=f"{method}, start {start:g}")
    ax.set_xlabel("hyper step")
    ax.set_ylabel("dropout0 (input dropout rate)")
    ax.set_title("digits MLP: dropout0 from four starts")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
