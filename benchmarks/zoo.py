"""The zoo: skorch nets written the way skorch's docs, tutorials and tabular-benchmark code write
them, each under scikit-learn's ``GridSearchCV`` and skhpo's ``FusedGridSearchCV``.

    python benchmarks/zoo.py                        # every configuration, about 6 minutes
    python benchmarks/zoo.py --only readme_clf cnn  # some of them
    python benchmarks/zoo.py --list                 # their names

The modules, nets and grids below are this project's own code, written after the patterns of
skorch's README, its docs (callbacks, ``NeuralNetBinaryClassifier``, ``SliceDict``, a
``get_loss`` override), its MNIST and regression notebooks, and the tabular-benchmark scripts
that tune skorch nets with ``GridSearchCV``: the default validation split kept, optimiser
classes and their ``optimizer__`` arguments in the grid, callbacks, softmax outputs with the
default ``NLLLoss``, BatchNorm, a Pipeline with a scaler.

Each configuration runs both searches with ``cv=3`` and one torch thread, alternately, twice
(``--repeats``; the faster run of each counts); both get the same
seeded net (a :class:`skhpo.nets.TaskSeed` in its callbacks, so that each of scikit-learn's
fits is seeded as the drop-in seeds it). Per configuration it prints: whether the drop-in
fused (``engine_``, and ``engine_reason_`` where not), the wall-time ratio drop-in /
scikit-learn, whether both found the same best candidate, and |Δ best score|. With
``--out`` the rows are written as JSON. A warm-up search runs first, so neither side pays the
process's one-off costs in its timing.
"""

import argparse
import time
import warnings

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_digits, make_classification, make_regression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from skorch import NeuralNetBinaryClassifier, NeuralNetClassifier, NeuralNetRegressor
from skorch.callbacks import (
    EarlyStopping,
    EpochScoring,
    GradientNormClipping,
    Initializer,
    LRScheduler,
)
from skorch.helper import SliceDict
from torch import nn

from skhpo import FusedGridSearchCV
from skhpo.bench.core import write_json
from skhpo.nets import TaskSeed

# -- modules, as skorch's docs and tutorials write them ------------------------------------------


class ClassifierModule(nn.Module):
    """skorch's README classifier: two hidden layers, dropout, a softmax output."""

    def __init__(self, num_units=10, nonlin=nn.ReLU(), dropout=0.5, n_in=20):  # noqa: B008
        super().__init__()
        self.dense0 = nn.Linear(n_in, num_units)
        self.nonlin = nonlin
        self.dropout = nn.Dropout(dropout)
        self.dense1 = nn.Linear(num_units, num_units)
        self.output = nn.Linear(num_units, 2)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, X, **kwargs):
        X = self.nonlin(self.dense0(X))
        X = self.dropout(X)
        X = self.nonlin(self.dense1(X))
        return self.softmax(self.output(X))


class RegressorModule(nn.Module):
    """skorch's README regressor."""

    def __init__(self, num_units=10, nonlin=nn.ReLU(), n_out=1):  # noqa: B008
        super().__init__()
        self.dense0 = nn.Linear(20, num_units)
        self.nonlin = nonlin
        self.dense1 = nn.Linear(num_units, 10)
        self.output = nn.Linear(10, n_out)

    def forward(self, X, **kwargs):
        X = self.nonlin(self.dense0(X))
        X = torch.relu(self.dense1(X))
        return self.output(X)


class MLP(nn.Module):
    """A tabular MLP with logits out, as tabular-benchmark code writes it: ``norm`` is
    ``"batch"``, ``"layer"`` or None after each hidden linear layer."""

    def __init__(self, n_in=20, hidden=64, n_out=2, depth=2, dropout=0.1, norm=None):
        super().__init__()
        layers, width = [], n_in
        for _ in range(depth):
            layers.append(nn.Linear(width, hidden))
            if norm == "batch":
                layers.append(nn.BatchNorm1d(hidden))
            elif norm == "layer":
                layers.append(nn.LayerNorm(hidden))
            layers += [nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, n_out))
        self.net = nn.Sequential(*layers)

    def forward(self, X):
        return self.net(X)


class BinaryModule(nn.Module):
    """One logit out, for ``NeuralNetBinaryClassifier`` (``BCEWithLogitsLoss``)."""

    def __init__(self, n_in=30, hidden=32):
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, X):
        return self.seq(X).squeeze(-1)


class Cnn(nn.Module):
    """skorch's MNIST notebook CNN, sized for 8x8 digits."""

    def __init__(self, dropout=0.5, channels=16):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, kernel_size=3, padding=1)
        self.conv2_drop = nn.Dropout2d(p=dropout)
        self.fc1 = nn.Linear(channels * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)
        self.fc1_drop = nn.Dropout(p=dropout)

    def forward(self, x):
        x = torch.relu(torch.max_pool2d(self.conv2_drop(self.conv1(x)), 2))
        x = x.view(-1, x.size(1) * x.size(2) * x.size(3))
        x = torch.relu(self.fc1_drop(self.fc1(x)))
        return torch.softmax(self.fc2(x), dim=-1)


class TwoInputs(nn.Module):
    """Numeric features and a categorical code through an embedding, given as a SliceDict."""

    def __init__(self, n_codes=10, emb=4, hidden=32):
        super().__init__()
        self.emb = nn.Embedding(n_codes, emb)
        self.seq = nn.Sequential(nn.Linear(19 + emb, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, num, cat):
        return self.seq(torch.cat([num, self.emb(cat)], dim=1))


class L1Net(NeuralNetClassifier):
    """skorch's docs example of a ``get_loss`` override: an L1 penalty on the weights."""

    def __init__(self, *args, lambda1=0.01, **kwargs):
        super().__init__(*args, **kwargs)
        self.lambda1 = lambda1

    def get_loss(self, y_pred, y_true, X=None, training=False):
        loss = super().get_loss(y_pred, y_true, X=X, training=training)
        return loss + self.lambda1 * sum(w.abs().sum() for w in self.module_.parameters())


# -- data -----------------------------------------------------------------------------------------

def _clf():
    X, y = make_classification(1500, 20, n_informative=10, random_state=0)
    return X.astype(np.float32), y.astype(np.int64)


def _reg(targets=1):
    X, y = make_regression(1500, 20, n_informative=10, n_targets=targets, noise=10,
                           random_state=0)
    return X.astype(np.float32), (y / y.std()).astype(np.float32).reshape(len(y), -1)


def _cancer():
    X, y = load_breast_cancer(return_X_y=True)  # float targets, as BCEWithLogitsLoss takes
    return StandardScaler().fit_transform(X).astype(np.float32), y.astype(np.float32)


def _digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16).astype(np.float32).reshape(-1, 1, 8, 8), y.astype(np.int64)


def _two_inputs():
    X, y = _clf()
    codes = np.digitize(X[:, 0], np.quantile(X[:, 0], np.linspace(0.1, 0.9, 9)))
    return SliceDict(num=X[:, 1:], cat=codes.astype(np.int64)), y


# -- the configurations ---------------------------------------------------------------------------

def _readme(**kw):
    return NeuralNetClassifier(ClassifierModule, **{"max_epochs": 10, "lr": 0.1,
                                                    "iterator_train__shuffle": True, **kw})


def _mlp(**kw):
    return NeuralNetClassifier(MLP, **{"criterion": nn.CrossEntropyLoss, "max_epochs": 10,
                                       "lr": 0.01, "optimizer": torch.optim.Adam,
                                       "iterator_train__shuffle": True, **kw})


ZOO = {
    # skorch's README net, its grid search (train_split=False as the README's grid example)
    "readme_clf": (lambda: _readme(), {"lr": [0.05, 0.1], "module__num_units": [10, 20],
                                       "module__dropout": [0, 0.5]}, _clf),
    "readme_clf_no_split": (lambda: _readme(train_split=False),
                            {"lr": [0.05, 0.1], "max_epochs": [10, 20],
                             "module__num_units": [10, 20]}, _clf),
    "readme_reg": (lambda: NeuralNetRegressor(RegressorModule, max_epochs=20, lr=0.1),
                   {"lr": [0.05, 0.1], "module__num_units": [10, 20, 40]}, _reg),
    "multi_output_reg": (lambda: NeuralNetRegressor(RegressorModule, max_epochs=20, lr=0.05,
                                                    module__n_out=3),
                         {"lr": [0.02, 0.05], "module__num_units": [10, 20, 40]},
                         lambda: _reg(3)),
    "activation_grid": (lambda: _readme(), {"module__nonlin": [nn.ReLU(), nn.Tanh()],
                                            "lr": [0.05, 0.1, 0.2]}, _clf),
    # optimisers and their arguments
    "adam_optimizer_lr": (lambda: _mlp(), {"optimizer__lr": [1e-3, 3e-3, 1e-2],
                                           "module__dropout": [0.0, 0.2]}, _clf),
    "optimizer_classes": (lambda: _mlp(), {"optimizer": [torch.optim.SGD, torch.optim.Adam,
                                                         torch.optim.RMSprop],
                                           "lr": [0.003, 0.03]}, _clf),
    "adamw": (lambda: _mlp(optimizer=torch.optim.AdamW),
              {"lr": [1e-3, 1e-2], "optimizer__weight_decay": [1e-4, 1e-2, 1e-1]}, _clf),
    "adamax": (lambda: _mlp(optimizer=torch.optim.Adamax), {"lr": [2e-3, 1e-2, 3e-2],
                                                            "module__hidden": [32, 64]}, _clf),
    "rmsprop": (lambda: _mlp(optimizer=torch.optim.RMSprop),
                {"lr": [1e-3, 1e-2], "optimizer__momentum": [0.0, 0.9], "module__depth": [2]},
                _clf),
    "adadelta": (lambda: _mlp(optimizer=torch.optim.Adadelta, lr=1.0),
                 {"lr": [0.5, 1.0], "module__hidden": [32, 64, 128]}, _clf),
    "nadam_radam": (lambda: _mlp(), {"optimizer": [torch.optim.NAdam, torch.optim.RAdam],
                                     "lr": [1e-3, 1e-2, 3e-2]}, _clf),
    "sgd_nesterov": (lambda: _mlp(optimizer=torch.optim.SGD, optimizer__momentum=0.9,
                                  optimizer__nesterov=True),
                     {"lr": [0.01, 0.03, 0.1], "batch_size": [64, 128]}, _clf),
    # callbacks
    "early_stopping": (lambda: _mlp(max_epochs=40, callbacks=[EarlyStopping(patience=5)]),
                       {"lr": [1e-3, 3e-3, 1e-2, 3e-2]}, _clf),
    "es_patience_grid": (lambda: _mlp(max_epochs=40,
                                      callbacks=[("es", EarlyStopping(patience=5))]),
                         {"callbacks__es__patience": [3, 6], "lr": [3e-3, 1e-2]}, _clf),
    "cosine_lr": (lambda: _mlp(max_epochs=15, callbacks=[
        LRScheduler(policy=torch.optim.lr_scheduler.CosineAnnealingLR, T_max=15)]),
        {"lr": [3e-3, 1e-2, 3e-2], "module__dropout": [0.0, 0.2]}, _clf),
    "plateau_lr": (lambda: _mlp(max_epochs=15, callbacks=[
        LRScheduler(policy=torch.optim.lr_scheduler.ReduceLROnPlateau, monitor="valid_loss",
                    patience=2)]), {"lr": [3e-3, 1e-2, 3e-2]}, _clf),
    "step_lr_sgd": (lambda: _mlp(optimizer=torch.optim.SGD, lr=0.05, callbacks=[
        LRScheduler(policy=torch.optim.lr_scheduler.StepLR, step_size=4, gamma=0.5)]),
        {"lr": [0.02, 0.05, 0.1], "optimizer__momentum": [0.0, 0.9]}, _clf),
    "grad_clipping": (lambda: _mlp(callbacks=[GradientNormClipping(1.0)]),
                      {"lr": [1e-3, 1e-2, 3e-2], "module__hidden": [32, 64]}, _clf),
    "auc_scoring": (lambda: _mlp(callbacks=[EpochScoring("roc_auc", lower_is_better=False)]),
                    {"lr": [1e-3, 1e-2], "module__dropout": [0.0, 0.3, 0.5]}, _clf),
    "initializer": (lambda: _mlp(callbacks=[Initializer("net.*weight",
                                                        fn=nn.init.xavier_uniform_)]),
                    {"lr": [1e-3, 1e-2, 3e-2]}, _clf),
    # layers and heads
    "batchnorm": (lambda: _mlp(module__norm="batch"), {"lr": [1e-3, 1e-2, 3e-2],
                                                       "module__hidden": [32, 64]}, _clf),
    "layernorm": (lambda: _mlp(module__norm="layer"), {"lr": [1e-3, 1e-2, 3e-2],
                                                       "module__hidden": [32, 64]}, _clf),
    "cnn_digits": (lambda: NeuralNetClassifier(Cnn, max_epochs=8, lr=0.002,
                                               optimizer=torch.optim.Adam),
                   {"lr": [1e-3, 3e-3], "module__dropout": [0.25, 0.5]}, _digits),
    "binary_logit": (lambda: NeuralNetBinaryClassifier(BinaryModule, max_epochs=15, lr=0.01,
                                                       optimizer=torch.optim.Adam),
                     {"lr": [1e-3, 3e-3, 1e-2], "module__hidden": [16, 32]}, _cancer),
    "label_smoothing": (lambda: _mlp(), {"criterion__label_smoothing": [0.0, 0.1],
                                         "lr": [1e-3, 1e-2, 3e-2]}, _clf),
    "class_weight": (lambda: _mlp(criterion__weight=torch.tensor([1.0, 2.0])),
                     {"lr": [1e-3, 1e-2, 3e-2]}, _clf),
    "pipeline_scaler": (lambda: Pipeline([("scale", StandardScaler()), ("net", _mlp())]),
                        {"net__lr": [1e-3, 1e-2], "net__module__hidden": [32, 64, 128]},
                        _clf),
    "get_loss_override": (lambda: L1Net(MLP, criterion=nn.CrossEntropyLoss, max_epochs=10,
                                        lr=0.01, optimizer=torch.optim.Adam, lambda1=1e-4),
                          {"lr": [1e-3, 1e-2], "lambda1": [0.0, 1e-4, 1e-3]}, _clf),
    "slice_dict_embedding": (lambda: NeuralNetClassifier(TwoInputs, criterion=nn.CrossEntropyLoss,
                                                         max_epochs=10, lr=0.01,
                                                         optimizer=torch.optim.Adam),
                             {"lr": [1e-3, 1e-2], "module__emb": [2, 4, 8]}, _two_inputs),
    "batch_size_epochs": (lambda: _mlp(), {"batch_size": [32, 128], "max_epochs": [5, 10],
                                           "lr": [1e-3, 1e-2]}, _clf),
}


def _seeded(estimator):
    """The estimator with a :class:`TaskSeed` in its net's callbacks (both searches then
    train the same seeded fits)."""
    net = estimator[-1] if isinstance(estimator, Pipeline) else estimator
    callbacks = list(net.callbacks or [])
    net.set_params(callbacks=[*callbacks, ("zoo_seed", TaskSeed(0))], verbose=0)
    return estimator


def run(name, repeats=2):
    """Both searches on configuration ``name``, alternately ``repeats`` times (the fastest
    time of each: this machine's timing noise is ~10 %)."""
    make, grid, data = ZOO[name]
    X, y = data()
    scoring = "neg_mean_squared_error" if name.endswith("_reg") else "accuracy"
    out = {"config": name}
    timings = {"sklearn": [], "fused": []}
    for _ in range(repeats):
        for label, search in (("sklearn", GridSearchCV), ("fused", FusedGridSearchCV)):
            start = time.perf_counter()
            out[label] = search(_seeded(make()), grid, cv=3, scoring=scoring,
                                error_score="raise").fit(X, y)
            timings[label].append(time.perf_counter() - start)
    timings = {k: min(v) for k, v in timings.items()}
    sk, fu = out.pop("sklearn"), out.pop("fused")
    out.update({
        "engine": fu.engine_, "reason": fu.engine_reason_,
        "sklearn_s": round(timings["sklearn"], 2), "fused_s": round(timings["fused"], 2),
        "ratio": round(timings["fused"] / timings["sklearn"], 3),
        "same_best": bool(sk.best_index_ == fu.best_index_),
        "abs_d_best": float(abs(sk.best_score_ - fu.best_score_)),
        "max_abs_d_mean": float(np.max(np.abs(sk.cv_results_["mean_test_score"]
                                              - fu.cv_results_["mean_test_score"]))),
        "n_fits": 3 * len(sk.cv_results_["params"])})
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", default=list(ZOO), choices=list(ZOO))
    p.add_argument("--list", action="store_true", help="print the configurations' names")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    p.add_argument("--repeats", type=int, default=2,
                   help="runs of each search per configuration; the fastest counts")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(ZOO))
        return []
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    X, y = _clf()  # warm-up: one-off costs (imports, first kernels) on neither side's clock
    for search in (GridSearchCV, FusedGridSearchCV):
        search(_seeded(_readme(max_epochs=1)), {"lr": [0.1, 0.2]}, cv=2).fit(X, y)
    print(f"{'config':22s} {'engine':10s} {'sk s':>6s} {'fused s':>7s} {'ratio':>6s} "
          f"{'same best':>9s} {'|d best|':>9s}  reason")
    rows = []
    for name in args.only:
        row = run(name, args.repeats)
        rows.append(row)
        print(f"{name:22s} {row['engine']:10s} {row['sklearn_s']:6.1f} {row['fused_s']:7.1f} "
              f"{row['ratio']:6.2f} {str(row['same_best']):>9s} {row['abs_d_best']:9.2e}  "
              f"{row['reason'][:90]}", flush=True)
    fused = [r for r in rows if r["engine"] == "fused"]
    if fused:
        print(f"\n{len(fused)} of {len(rows)} configurations fuse; median ratio over them "
              f"{np.median([r['ratio'] for r in fused]):.2f}; same best candidate in "
              f"{sum(r['same_best'] for r in rows)} of {len(rows)}")
    write_json(args.out, rows)
    return rows


if __name__ == "__main__":
    main()
