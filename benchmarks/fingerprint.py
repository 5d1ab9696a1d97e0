"""The fixed-seed fingerprint of every search: what each class hands back on small tasks.

A refactor that should change no result runs this before and after and compares:

    python benchmarks/fingerprint.py --out before.json        # on the old code
    python benchmarks/fingerprint.py --compare before.json    # on the new code

Each case fits one class with a fixed ``random_state`` on one thread and records its
``best_params_``, ``best_score_``, ``best_index_``, ``cv_results_`` and ``history_`` (times
left out), the method's own attributes and the best model's predictions, at full precision.
``--compare`` prints every difference and exits 1 if there is one. About a minute on 2 cores.
"""

import argparse
import json
import math
import sys
import warnings

import numpy as np
import torch
from scipy.stats import loguniform, uniform
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import ElasticNet
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skhpo import (
    AutoHyperSearchCV,
    CuttingPlaneTuner,
    FlatnessSearchCV,
    FusedGridSearchCV,
    FusedRandomizedSearchCV,
    HyperLocalRefiner,
    PopulationMutationSearch,
    TabularMLPClassifier,
)
from skhpo.bench.core import write_json

ATTRIBUTES = ("best_params_", "best_score_", "best_index_", "n_epochs_", "n_trainings_",
              "finalists_", "steps_", "stop_reason_", "n_trials_", "engine_", "engine_reason_",
              "applied_params_", "refined_penalties_", "validation_loss_", "accept_loss_",
              "improved_", "n_iter_", "n_resumed_", "hyper_history_")


def _net(**kw):
    return TabularMLPClassifier(**{"width": 16, "max_epochs": 4, **kw})


def _pipe(**kw):
    return Pipeline([("scale", StandardScaler()), ("net", _net(**kw))])


def cases():
    """name -> (a function that builds the search, dataset)."""
    lr = {"lr": loguniform(1e-3, 1e-1)}
    return {
        "flatness-auto": (lambda: FlatnessSearchCV(
            _net(dropout=0.1), {**lr, "width": [8, 16]}, n_candidates=8, n_finalists=3, cv=2,
            random_state=0), "iris"),
        "flatness-sequential-pipeline": (lambda: FlatnessSearchCV(
            _pipe(), {"net__lr": loguniform(1e-3, 1e-1)}, n_candidates=5, n_finalists=2,
            cv=2, engine="sequential", random_state=1), "iris"),
        "autohyper-auto": (lambda: AutoHyperSearchCV(
            _net(), {"lr": loguniform(1e-4, 1e-1)}, epochs_per_trial=2, max_trials=12, cv=2,
            random_state=0), "iris"),
        "autohyper-sequential": (lambda: AutoHyperSearchCV(
            _net(), {"lr": None}, epochs_per_trial=1, max_trials=9, cv=2,
            engine="sequential", random_state=0), "iris"),
        "population-fused": (lambda: PopulationMutationSearch(
            _net(dropout=0.2), {**lr, "dropout": (0.0, 0.5)}, population_size=4, n_steps=3,
            engine="fused", random_state=0), "iris"),
        "population-sequential-refit": (lambda: PopulationMutationSearch(
            _net(), {"optimizer__weight_decay": loguniform(1e-6, 1e-2)}, population_size=3,
            n_steps=2, engine="sequential", refit=True, random_state=0), "iris"),
        "cutting-plane": (lambda: CuttingPlaneTuner(
            _net(dropout=0.1, max_epochs=4), warmup_epochs=1, random_state=0), "iris"),
        "cutting-plane-refit": (lambda: CuttingPlaneTuner(
            _pipe(dropout=0.1, max_epochs=3), {"net__dropout": uniform(0.0, 0.5)},
            warmup_epochs=1, refit=True, random_state=0), "iris"),
        "hyperlocal-random": (lambda: HyperLocalRefiner(
            RandomizedSearchCV(_net(l2=1e-3, random_state=0),
                               {"l2": loguniform(1e-5, 1e-2)}, n_iter=3, cv=2,
                               random_state=0), random_state=0), "iris"),
        "hyperlocal-grid-response": (lambda: HyperLocalRefiner(
            GridSearchCV(_net(max_epochs=3, random_state=0),
                         {"optimizer__weight_decay": [1e-4, 1e-3]}, cv=2),
            weight_step="response", accept_fraction=0.0, random_state=0), "iris"),
        "hyperlocal-linear": (lambda: HyperLocalRefiner(
            GridSearchCV(ElasticNet(), {"alpha": [0.1, 1.0], "l1_ratio": [0.2, 0.8]}, cv=2),
            random_state=0), "diabetes"),
        "fused-random": (lambda: FusedRandomizedSearchCV(
            _net(), lr, n_iter=4, cv=2, random_state=0), "iris"),
        "fused-grid-pipeline": (lambda: FusedGridSearchCV(
            _pipe(), {"net__lr": [1e-3, 1e-2], "net__width": [8, 16]}, cv=2,
            random_state=0), "iris"),
    }


def _data(name):
    if name == "iris":
        X, y = load_iris(return_X_y=True)
        return ((X - X.mean(0)) / X.std(0)).astype(np.float32), y
    X, y = load_diabetes(return_X_y=True)
    return X, y


def plain(value):
    """``value`` as JSON: floats exactly (repr), arrays and containers element by element."""
    if isinstance(value, (np.ndarray, np.ma.MaskedArray)):
        return [plain(v) for v in np.asarray(value, dtype=object).tolist()]
    if isinstance(value, torch.Tensor):
        return plain(value.detach().cpu().numpy())
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return repr(value) if not math.isfinite(value) else value
    if value is None or isinstance(value, str):
        return value
    return repr(value)


def _timeless(table):
    return {k: plain(v) for k, v in table.items()
            if not (k.endswith("_time") or k.endswith("time") or k == "dur" or k == "timings_")}


def fingerprint(search, X):
    out = {"cv_results_": _timeless(search.cv_results_)}
    if hasattr(search, "history_"):
        out["history_"] = _timeless(search.history_)
    for name in ATTRIBUTES:
        if hasattr(search, name):
            value = getattr(search, name)
            out[name] = _timeless(value) if name in ("steps_", "hyper_history_") else \
                plain(value)
    model = getattr(search, "best_estimator_", None)
    if model is not None:
        out["predictions"] = plain(model.predict(X))
        if hasattr(model, "predict_proba"):
            out["probabilities"] = plain(np.asarray(model.predict_proba(X), dtype=float))
    return out


def run(names=None):
    torch.set_num_threads(1)
    results = {}
    for name, (make, data) in cases().items():
        if names and name not in names:
            continue
        X, y = _data(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results[name] = fingerprint(make().fit(X, y), X)
        print(f"{name}: done", flush=True)
    return results


def differences(old, new, path=""):
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            if key not in old or key not in new:
                out.append(f"{path}/{key}: only in {'new' if key in new else 'old'}")
            else:
                out += differences(old[key], new[key], f"{path}/{key}")
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new))
                for d in differences(a, b, f"{path}[{i}]")]
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the fingerprint to this JSON file")
    parser.add_argument("--compare", help="compare with the fingerprint in this JSON file")
    parser.add_argument("--cases", nargs="*", help="only these cases")
    args = parser.parse_args(argv)
    results = run(args.cases)
    write_json(args.out, results)
    if args.compare:
        with open(args.compare) as f:
            old = json.load(f)
        if args.cases:
            old = {k: v for k, v in old.items() if k in args.cases}
        diff = differences(old, results)
        print("\n".join(diff) if diff else "identical")
        return 1 if diff else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
