"""FusedRandomizedSearchCV against scikit-learn's RandomizedSearchCV, end to end.

    python benchmarks/fused_search.py                       # digits and breast_cancer, 3 seeds

The same skhpo net (StandardScaler + TabularMLPClassifier, depth 1, width 128, batch 64, 20
epochs) and space (continuous lr, weight decay and dropout; fixed architecture), n_iter=50,
cv=3, on a 75 % training split per seed; the test score is on the other 25 %. Prints per
dataset and seed: wall seconds of both searches and their ratio, whether they drew the same
candidates, the largest difference between their per-candidate mean CV scores, and beside it
the seed noise of one candidate (the spread of RandomizedSearchCV's score for the best
candidate over refits with 3 seeds). Both searches run once on a tiny task first, so neither
pays the process's one-off costs (imports, first kernels) in its timing.
"""

import argparse
import time
import warnings

import numpy as np
import torch
from scipy.stats import loguniform, uniform
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import RandomizedSearchCV, cross_val_score, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skhpo import FusedRandomizedSearchCV, TabularMLPClassifier
from skhpo.bench.core import write_json

DATA = {"digits": load_digits, "breast_cancer": load_breast_cancer}
SPACE = {"net__lr": loguniform(1e-4, 1e-2), "net__optimizer__weight_decay": loguniform(1e-6, 1e-3),
         "net__dropout": uniform(0.0, 0.5)}


def pipe(epochs, seed=None):
    return Pipeline([("scale", StandardScaler()),
                     ("net", TabularMLPClassifier(depth=1, width=128, batch_size=64,
                                                  max_epochs=epochs, random_state=seed))])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATA), choices=list(DATA))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--n-iter", type=int, default=50)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    rows = []
    # warm-up: the first search of a process pays one-off costs (imports, first kernels)
    Xw, yw = DATA[args.datasets[0]](return_X_y=True)
    for search in (FusedRandomizedSearchCV, RandomizedSearchCV):
        search(pipe(1), SPACE, n_iter=2, cv=3, random_state=0).fit(Xw.astype(np.float32), yw)
    print(f"{'dataset':14s} {'seed':>4s} {'sklearn s':>9s} {'fused s':>8s} {'ratio':>6s} "
          f"{'same cands':>10s} {'max |d cv|':>10s} {'seed noise':>10s} {'test sk':>7s} "
          f"{'test fused':>10s}")
    for name in args.datasets:
        X, y = DATA[name](return_X_y=True)
        for seed in range(args.seeds):
            Xtr, Xte, ytr, yte = train_test_split(X.astype(np.float32), y, test_size=0.25,
                                                  random_state=seed, stratify=y)
            kw = dict(n_iter=args.n_iter, cv=3, random_state=seed)
            t0 = time.perf_counter()
            ours = FusedRandomizedSearchCV(pipe(args.epochs), SPACE, **kw).fit(Xtr, ytr)
            t_ours = time.perf_counter() - t0
            t0 = time.perf_counter()
            theirs = RandomizedSearchCV(pipe(args.epochs), SPACE, **kw).fit(Xtr, ytr)
            t_theirs = time.perf_counter() - t0
            same = ours.cv_results_["params"] == theirs.cv_results_["params"]
            diff = float(np.max(np.abs(ours.cv_results_["mean_test_score"]
                                       - theirs.cv_results_["mean_test_score"])))
            best = theirs.best_params_
            noise = float(np.ptp([cross_val_score(pipe(args.epochs, s).set_params(**best),
                                                  Xtr, ytr, cv=3).mean() for s in range(3)]))
            row = {"dataset": name, "seed": seed, "sklearn_s": t_theirs, "fused_s": t_ours,
                   "ratio": t_ours / t_theirs, "same_candidates": same, "max_abs_cv_diff": diff,
                   "seed_noise_best": noise, "test_sklearn": theirs.score(Xte, yte),
                   "test_fused": ours.score(Xte, yte)}
            rows.append(row)
            print(f"{name:14s} {seed:4d} {t_theirs:9.1f} {t_ours:8.1f} {row['ratio']:6.2f} "
                  f"{str(same):>10s} {diff:10.4f} {noise:10.4f} {row['test_sklearn']:7.4f} "
                  f"{row['test_fused']:10.4f}", flush=True)
    write_json(args.out, rows)


if __name__ == "__main__":
    main()
