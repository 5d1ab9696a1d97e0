"""Every skhpo class on one device, on a tiny task: the check to run when a GPU is lent.

    python benchmarks/device_check.py                       # CPU (what CI and a laptop have)
    python benchmarks/device_check.py --device cuda --out device_check.json

Each search fits a skhpo net built with ``device=DEVICE`` on a few hundred digits samples
(FlatnessSearchCV, AutoHyperSearchCV, HyperLocalRefiner over a RandomizedSearchCV,
PopulationMutationSearch, CuttingPlaneTuner, FusedRandomizedSearchCV with its fused engine;
the MLP, and the SmallCNN for AutoHyperSearchCV and CuttingPlaneTuner; and, since
``engine="auto"`` fuses on the CPU only, four rows with ``engine="fused"``: the drop-in on an
SGD MLP, on the SmallCNN and on a user's module (a plain skorch net, through ``torch.func``),
and PopulationMutationSearch's stacked population); eight nets of ``benchmarks/zoo.py``, as
skorch's docs and real code write them, in ``FusedGridSearchCV(engine="fused")`` (validation
split, AdamW, BatchNorm, early stopping, a CNN, a binary net, a dict of inputs, a Pipeline);
and bitwise group independence on the device (four models in one group, then two of them in
a group of their own: each must equal itself to the last bit). Each row says
whether the fit finished, where the best model's weights live, its test accuracy, its wall
time and, if it failed, the error. The process exits with 1 if any class failed, so the script
itself is the pass/fail of the device run.
"""

import argparse
import importlib.util
import json
import pathlib
import sys
import time
import traceback
import warnings

import numpy as np
import torch
from scipy.stats import loguniform, uniform
from sklearn.datasets import load_digits
from sklearn.model_selection import RandomizedSearchCV, train_test_split
from sklearn.utils import _safe_indexing
from skorch import NeuralNetClassifier

from skhpo import (
    AutoHyperSearchCV,
    CuttingPlaneTuner,
    FlatnessSearchCV,
    FusedGridSearchCV,
    FusedRandomizedSearchCV,
    HyperLocalRefiner,
    PopulationMutationSearch,
    SmallCNNClassifier,
    TabularMLPClassifier,
)
from skhpo.bench.core import write_json
from skhpo.fused import FusedTask, FusedTrainer
from skhpo.nets import find_net


class UserModule(torch.nn.Module):
    """A user's module for the torch.func path: a residual block with dropout."""

    def __init__(self, p=0.1):
        super().__init__()
        self.inp, self.hidden = torch.nn.Linear(64, 32), torch.nn.Linear(32, 32)
        self.drop, self.out = torch.nn.Dropout(p), torch.nn.Linear(32, 10)

    def forward(self, X):
        h = torch.relu(self.inp(X))
        return self.out(self.drop(h + torch.tanh(self.hidden(h))))


def searches(device, epochs):
    """``{name: search}``, each around a net on ``device``."""
    def mlp(**kw):
        return TabularMLPClassifier(depth=1, width=32, max_epochs=epochs, device=device,
                                    random_state=0, **kw)

    def cnn(**kw):
        return SmallCNNClassifier(n_filters=8, max_epochs=epochs, device=device,
                                  random_state=0, **kw)
    space = {"lr": loguniform(1e-3, 3e-2), "optimizer__weight_decay": loguniform(1e-6, 1e-3)}
    return {
        "FlatnessSearchCV": FlatnessSearchCV(mlp(), space, n_candidates=6, n_finalists=2,
                                             cv=2, random_state=0),
        "AutoHyperSearchCV (MLP)": AutoHyperSearchCV(mlp(), {"lr": None}, cv=2, max_trials=6,
                                                     random_state=0),
        "AutoHyperSearchCV (SmallCNN)": AutoHyperSearchCV(cnn(), {"lr": None}, cv=2,
                                                          max_trials=6, random_state=0),
        "HyperLocalRefiner": HyperLocalRefiner(
            RandomizedSearchCV(mlp(l2=1e-3), {"l2": loguniform(1e-5, 1e-2)}, n_iter=3, cv=2,
                               random_state=0), ["l2"], random_state=0),
        "PopulationMutationSearch": PopulationMutationSearch(
            mlp(), {"lr": (1e-3, 3e-2), "optimizer__weight_decay": (1e-6, 1e-3)},
            population_size=4, n_steps=2, random_state=0),
        "CuttingPlaneTuner (MLP)": CuttingPlaneTuner(mlp(dropout=0.2), random_state=0),
        "CuttingPlaneTuner (SmallCNN)": CuttingPlaneTuner(cnn(dropout=0.2), random_state=0),
        "FusedRandomizedSearchCV": FusedRandomizedSearchCV(
            mlp(), {"lr": loguniform(1e-3, 3e-2), "dropout": uniform(0.0, 0.3)}, n_iter=6,
            cv=2, random_state=0),
        # engine="auto" fuses on the CPU only: these run the fused engine on the device
        "FusedRandomizedSearchCV (MLP, SGD, engine=fused)": FusedRandomizedSearchCV(
            mlp(optimizer=torch.optim.SGD, optimizer__momentum=0.9),
            {"lr": loguniform(1e-3, 3e-2), "dropout": uniform(0.0, 0.3)}, n_iter=6, cv=2,
            engine="fused", random_state=0),
        "FusedRandomizedSearchCV (SmallCNN, engine=fused)": FusedRandomizedSearchCV(
            cnn(), {"lr": loguniform(1e-3, 3e-2), "dropout": uniform(0.0, 0.3)}, n_iter=4,
            cv=2, engine="fused", random_state=0),
        "FusedRandomizedSearchCV (a user's module via torch.func, engine=fused)":
            FusedRandomizedSearchCV(
                NeuralNetClassifier(UserModule, criterion=torch.nn.CrossEntropyLoss,
                                    max_epochs=epochs, train_split=None,
                                    iterator_train__shuffle=True, optimizer=torch.optim.Adam,
                                    device=device, verbose=0),
                {"lr": loguniform(1e-3, 3e-2), "module__p": uniform(0.0, 0.3)}, n_iter=4,
                cv=2, engine="fused", random_state=0),
        "PopulationMutationSearch (engine=fused)": PopulationMutationSearch(
            mlp(dropout=0.1), {"lr": (1e-3, 3e-2), "dropout": (0.0, 0.5)},
            population_size=4, n_steps=2, engine="fused", random_state=0),
    }


#: zoo configurations (benchmarks/zoo.py: nets as skorch's docs and real code write them) run
#: with engine="fused" on the device: a validation split and dropout, AdamW, BatchNorm,
#: callbacks (early stopping), a CNN, a binary net, a dict of inputs, a Pipeline
ZOO_ROWS = ("readme_clf", "adamw", "batchnorm", "early_stopping", "cnn_digits",
            "binary_logit", "slice_dict_embedding", "pipeline_scaler")


def _zoo():
    """benchmarks/zoo.py as the module ``zoo`` (importable by name: its nets pickle)."""
    if "zoo" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "zoo", pathlib.Path(__file__).resolve().parent / "zoo.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["zoo"] = module
        spec.loader.exec_module(module)
    return sys.modules["zoo"]


def zoo_check(name, device, epochs):
    """A zoo configuration's grid (its first two values per parameter) in
    ``FusedGridSearchCV(engine="fused", cv=2)`` on ``device``: the row of :func:`check`, its
    score on the last quarter of the configuration's data."""
    zoo = _zoo()
    make, grid, data = zoo.ZOO[name]
    est = make()
    net, prefix = find_net(est)
    est.set_params(**{f"{prefix}device": device, f"{prefix}max_epochs": min(net.max_epochs,
                                                                           epochs)})
    X, y = data()
    n = len(y) * 3 // 4
    train, test = np.arange(n), np.arange(n, len(y))
    split = (_safe_indexing(X, train), _safe_indexing(X, test), y[train], y[test])
    grid = {k: list(v)[:2] for k, v in grid.items()}
    return check(f"zoo {name} (engine=fused)",
                 FusedGridSearchCV(zoo._seeded(est), grid, cv=2, engine="fused"), split)


def independence_check(device, epochs, data):
    """Bitwise group independence on ``device``: four MLPs with dropout trained in one fused
    group, then the first two in a group of their own; each model's weights must be the same
    to the last bit (its group must not change it)."""
    Xtr, _, ytr, _ = data
    net = TabularMLPClassifier(depth=2, width=32, max_epochs=epochs, device=device)
    tasks = [FusedTask({"lr": lr, "dropout": p}, seed=seed)
             for lr, p, seed in ((3e-3, 0.1, 1), (1e-2, 0.3, 2), (3e-2, 0.0, 3),
                                 (1e-3, 0.2, 4))]
    start = time.perf_counter()
    try:
        trainer = FusedTrainer(net, engine="fused")
        four, two = trainer.fit(tasks, Xtr, ytr), trainer.fit(tasks[:2], Xtr, ytr)
        diffs = []
        for a, b in zip(four, two):
            pa = find_net(a.estimator)[0].module_.state_dict()
            pb = find_net(b.estimator)[0].module_.state_dict()
            diffs += [float((pa[k].double() - pb[k].double()).abs().max()) for k in pa]
        where = sorted({str(p.device) for p in find_net(four[0].estimator)[0].module_
                        .parameters()})
        ok = max(diffs) == 0.0
        return {"class": "fused group independence (bitwise)", "ok": ok, "weights_on": where,
                "test_accuracy": float("nan"), "wall_s": round(time.perf_counter() - start, 2),
                "error": "" if ok else f"a model in a group of 4 differs from itself in a "
                                      f"group of 2 by up to {max(diffs):.3g}"}
    except Exception as exc:
        return {"class": "fused group independence (bitwise)", "ok": False, "weights_on": [],
                "test_accuracy": float("nan"), "wall_s": round(time.perf_counter() - start, 2),
                "error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"}


def check(name, search, data):
    Xtr, Xte, ytr, yte = data
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            search.fit(Xtr, ytr)
        net, _ = find_net(search.best_estimator_)
        where = sorted({str(p.device) for p in net.module_.parameters()})
        return {"class": name, "ok": True, "weights_on": where,
                "test_accuracy": float(search.score(Xte, yte)),
                "wall_s": round(time.perf_counter() - start, 2), "error": ""}
    except Exception as exc:  # the row reports it; the exit code fails the run
        return {"class": name, "ok": False, "weights_on": [], "test_accuracy": float("nan"),
                "wall_s": round(time.perf_counter() - start, 2),
                "error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--samples", type=int, default=600, help="digits samples used")
    p.add_argument("--only", nargs="+", default=None, help="classes to run (names as printed)")
    p.add_argument("--out", default=None, help="JSON file for the rows")
    args = p.parse_args(argv)
    X, y = load_digits(return_X_y=True)
    X, y = (X[:args.samples] / 16).astype(np.float32), y[:args.samples]
    data = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    info = {"device": args.device, "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None}
    print(json.dumps(info))
    jobs = [(name, lambda name=name, search=search: check(name, search, data))
            for name, search in searches(args.device, args.epochs).items()]
    jobs += [(f"zoo {name} (engine=fused)",
              lambda name=name: zoo_check(name, args.device, args.epochs)) for name in ZOO_ROWS]
    jobs.append(("fused group independence (bitwise)",
                 lambda: independence_check(args.device, args.epochs, data)))
    rows = []
    for name, job in jobs:
        if args.only and name not in args.only:
            continue
        row = job()
        rows.append(row)
        print(f"{name:30s} {'ok  ' if row['ok'] else 'FAIL'} weights on "
              f"{','.join(row['weights_on']) or '-':8s} test {row['test_accuracy']:.4f} "
              f"{row['wall_s']:6.2f}s {row['error'].splitlines()[0] if row['error'] else ''}",
              flush=True)
    write_json(args.out, {**info, "rows": rows})
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
