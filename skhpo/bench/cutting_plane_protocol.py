"""CuttingPlaneTuner benchmarks (docs/cutting_plane.md).

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
from .core import Column, epochs_spent, plain_params, run_jobs, summarize
from .runner import load_task
from .spaces import PerLayer

__all__ = ["COLUMNS", "CP_METHODS", "DigitsCNN", "describe_row", "plot_sensitivity",
           "run_compare", "run_one", "run_sensitivity", "summarize_compare"]

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


#: the weight optimisers of the sensitivity protocol: the net's own (Adam, lr 1e-3) or the
#: Delta-STN reference code's (SGD, lr 0.01, momentum 0.9)
WEIGHTS = {"net": {}, "reference": {"optimizer": torch.optim.SGD, "lr": 0.01,
                                    "optimizer__momentum": 0.9}}


def _tuner(model, method, seed, epochs, starts=None, weights="net"):
    starts = starts or {}
    hyper = {n: (*BOX, starts.get(n, INIT)) for n in _names(model)}
    kw = {"theta": None, "mu": 0.0} if method == "delta-stn" else {}
    return CuttingPlaneTuner(_estimator(model, epochs, **WEIGHTS[weights]), hyper,
                             validation_fraction=VALID, random_state=seed, **kw)


def run_compare(models=("mlp", "cnn"), seeds=5, epochs=50, n_random=4, methods=CP_METHODS,
                progress=None, checkpoint=None):
    """One row per (model, seed, method) (finished ones kept in ``checkpoint``)."""
    jobs = [(m, s, meth) for m in models for s in range(seeds) for meth in methods]
    return run_jobs(jobs, lambda *job: run_one(*job, epochs, n_random), progress=progress,
                    checkpoint=checkpoint)


def run_one(model, seed, method, epochs=50, n_random=4):
    """One method on one model and seed; the result row."""
    X, y, _ = load_task("digits")
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=seed, stratify=y)
    seed_everything(seed)
    start = time.perf_counter()
    if method.startswith("random"):
        per_trial = epochs if method == "random-full" else max(1, epochs // (n_random + 1))
        search = RandomizedSearchCV(
            _estimator(model, per_trial), _random_space(model), n_iter=n_random,
            scoring="neg_log_loss", random_state=seed,
            cv=ShuffleSplit(n_splits=1, test_size=VALID, random_state=seed)).fit(Xtr, ytr)
        val_loss = -float(search.best_score_)
    else:
        per_trial = epochs
        search = _tuner(model, method, seed, epochs).fit(Xtr, ytr)
        val_loss = float(search.history_["valid_loss"][-1])
    wall = time.perf_counter() - start
    proba = search.predict_proba(Xte)
    return {"model": model, "seed": seed, "method": method, "val_loss": val_loss,
            "test_score": float(np.mean(search.predict(Xte) == yte)),
            "test_loss": float(log_loss(yte, proba, labels=np.arange(10))),
            "wall_time": wall, "epochs": epochs_spent(search, per_trial),
            "params": plain_params(search.best_params_, digits=4)}


def summarize_compare(rows):
    """Per (model, method): mean +- std of the final validation loss, test accuracy and
    test loss over seeds; median wall time and epochs."""
    metrics = {}
    for key in ("val_loss", "test_score", "test_loss"):
        metrics.update({f"mean_{key}": ("mean", key), f"std_{key}": ("std", key)})
    metrics.update({"median_test_score": ("median", "test_score"),
                    "median_wall": ("median", "wall_time"), "epochs": ("median", "epochs")})
    return summarize(rows, ("model", "method"), metrics, order="seen")


def _mean_std(key):
    return lambda s: f"{s['mean_' + key]:8.4f} +- {s['std_' + key]:.4f}"


COLUMNS = [Column("model", "model", "5s"), Column("method", "method", "11s"),
           Column("val loss", _mean_std("val_loss"), ">16s"),
           Column("test acc", _mean_std("test_score"), ">16s"),
           Column("test loss", _mean_std("test_loss"), ">16s"),
           Column("wall s", "median_wall", "6.1f"), Column("epochs", "epochs", "6.0f")]


def describe_row(row):
    """The progress line of one run."""
    return (f"{row['model']} seed {row['seed']} {row['method']:11s} val loss "
            f"{row['val_loss']:.4f} test acc {row['test_score']:.4f} {row['wall_time']:5.1f}s")


def run_sensitivity(starts=(0.1, 0.2, 0.5, 0.8), epochs=50, seed=0,
                    methods=("cpmlho", "delta-stn"), weights="net"):
    """``{(method, start): [dropout0 after each hyper step]}`` for the MLP, its weights
    trained by ``weights`` (:data:`WEIGHTS`)."""
    X, y, _ = load_task("digits")
    Xtr, _, ytr, _ = train_test_split(X, y, test_size=0.25, random_state=seed, stratify=y)
    name = _names("mlp")[0]
    out = {}
    for method in methods:
        for start in starts:
            tuner = _tuner("mlp", method, seed, epochs, {name: start}, weights).fit(Xtr, ytr)
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
