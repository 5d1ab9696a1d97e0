"""FlatnessSearchCV with the fused engine against one fit at a time.

    python benchmarks/fused_flatness.py

50 candidates screened for one epoch, the 10 flattest cross-validated (cv=3, 20 epochs), on
digits and breast_cancer, 3 seeds, one torch thread; two spaces for StandardScaler +
TabularMLPClassifier: ``mixed`` (the README's: lr, width {16, 64, 256}, depth {1, 2, 3}) and
``continuous`` (lr, weight decay, dropout at depth 1, width 128). Prints the wall seconds of
``engine="sequential"`` and ``engine="auto"``, their ratio, and whether both chose the same
finalists and the same best parameters.
"""

import argparse
import time
import warnings

import numpy as np
import torch
from scipy.stats import loguniform, uniform
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skhpo import FlatnessSearchCV, TabularMLPClassifier
from skhpo.bench.core import write_json

DATA = {"digits": load_digits, "breast_cancer": load_breast_cancer}
SPACES = {
    "mixed": {"net__lr": loguniform(1e-4, 3e-2), "net__width": [16, 64, 256],
              "net__depth": [1, 2, 3]},
    "continuous": {"net__lr": loguniform(1e-4, 1e-2),
                   "net__optimizer__weight_decay": loguniform(1e-6, 1e-3),
                   "net__dropout": uniform(0.0, 0.5)},
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    rows = []
    print(f"{'dataset':14s} {'space':10s} {'seed':>4s} {'sequential s':>12s} {'auto s':>7s} "
          f"{'ratio':>6s} {'same finalists':>14s} {'same best':>9s}")
    for name, load in DATA.items():
        X, y = load(return_X_y=True)
        X = X.astype(np.float32)
        for space_name, space in SPACES.items():
            net = TabularMLPClassifier(max_epochs=20, **({"depth": 1, "width": 128}
                                                         if space_name == "continuous" else {}))
            pipe = Pipeline([("scale", StandardScaler()), ("net", net)])
            for seed in range(args.seeds):
                runs = {}
                for engine in ("sequential", "auto"):
                    start = time.perf_counter()
                    search = FlatnessSearchCV(pipe, space, n_candidates=50, n_finalists=10,
                                              cv=3, engine=engine, random_state=seed).fit(X, y)
                    runs[engine] = (time.perf_counter() - start, search)
                (t_seq, a), (t_auto, b) = runs["sequential"], runs["auto"]
                same_finalists = a.cv_results_["params"] == b.cv_results_["params"]
                same_best = a.best_params_ == b.best_params_
                rows.append({"dataset": name, "space": space_name, "seed": seed,
                             "sequential_s": t_seq, "auto_s": t_auto, "ratio": t_auto / t_seq,
                             "same_finalists": same_finalists, "same_best": same_best})
                print(f"{name:14s} {space_name:10s} {seed:4d} {t_seq:12.1f} {t_auto:7.1f} "
                      f"{t_auto / t_seq:6.2f} {str(same_finalists):>14s} {str(same_best):>9s}",
                      flush=True)
    write_json(args.out, rows)


if __name__ == "__main__":
    main()
