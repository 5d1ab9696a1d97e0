"""PopulationMutationSearch with its students as one stacked population against one at a time.

    python benchmarks/fused_population.py [--seeds 3] [--optimizer adam|sgd] [--out rows.json]

20 students of StandardScaler + TabularMLPClassifier (2 x 128), 10 one-epoch steps, on digits
and breast_cancer, one torch thread, two spaces: ``lr-wd`` (learning rate and weight decay:
the look-ahead needs no double backward) and ``dropout-wd`` (both dropout rates and weight
decay: a double backward through the concrete dropout). Prints the wall seconds of
``engine="sequential"`` (skorch students, one ``partial_fit`` each) and ``engine="fused"``,
their ratio, whether both runs made the same exploit decisions and chose the same best
student, the largest relative difference of the best student's hyper-parameters, and both
best students' validation scores (``best_score_``). Float32 rounding differs between a batched
and a single product; where two students' validation losses are nearly tied it can swap their
ranks, and from then on the two runs take different (equally good) paths. ``--optimizer sgd``:
the students train with SGD, momentum 0.9, lr 0.01 (the STN / HPM benchmark setting) instead
of Adam, lr 3e-3.
"""

import argparse
import time
import warnings

import numpy as np
import pandas as pd
import torch
from scipy.stats import loguniform
from sklearn.datasets import load_breast_cancer, load_digits, load_iris
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skhpo import PopulationMutationSearch, TabularMLPClassifier
from skhpo.bench.core import write_json

DATA = {"digits": load_digits, "breast_cancer": load_breast_cancer}
SPACES = {
    "lr-wd": {"net__lr": loguniform(1e-4, 1e-1),
              "net__optimizer__weight_decay": loguniform(1e-6, 1e-2)},
    "dropout-wd": {"net__dropout[layers.2]": (0.0, 0.75), "net__dropout[layers.5]": (0.0, 0.75),
                   "net__optimizer__weight_decay": loguniform(1e-6, 1e-2)},
}


OPTIMIZERS = {"adam": {"lr": 3e-3},
              "sgd": {"optimizer": torch.optim.SGD, "optimizer__momentum": 0.9, "lr": 1e-2}}


def _search(space, engine, seed, n_steps=10, population=20, optimizer="adam"):
    net = TabularMLPClassifier(dropout=0.1, **OPTIMIZERS[optimizer])
    pipe = Pipeline([("scale", StandardScaler()), ("net", net)])
    return PopulationMutationSearch(pipe, space, population_size=population, n_steps=n_steps,
                                    engine=engine, random_state=seed)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    X, y = load_iris(return_X_y=True)  # warm-up: the process's one-off costs, untimed
    for engine in ("sequential", "fused"):
        _search(SPACES["dropout-wd"], engine, 0, n_steps=1, population=2,
                optimizer=args.optimizer).fit(X, y)
    rows = []
    print(f"{'dataset':14s} {'space':10s} {'seed':>4s} {'sequential s':>12s} {'fused s':>8s} "
          f"{'ratio':>6s} {'same exploits':>13s} {'same best':>9s} {'max rel diff':>12s} "
          f"{'score seq':>9s} {'score fused':>11s}")
    for name, load in DATA.items():
        X, y = load(return_X_y=True)
        X = X.astype(np.float32)
        for space_name, space in SPACES.items():
            for seed in range(args.seeds):
                runs = {}
                for engine in ("sequential", "fused"):
                    start = time.perf_counter()
                    search = _search(space, engine, seed, optimizer=args.optimizer).fit(X, y)
                    runs[engine] = (time.perf_counter() - start, search)
                (t_seq, a), (t_fused, b) = runs["sequential"], runs["fused"]
                same_exploits = (pd.DataFrame(a.history_).exploited_from.tolist()
                                 == pd.DataFrame(b.history_).exploited_from.tolist())
                same_best = a.best_index_ == b.best_index_
                diff = max(abs(a.best_params_[k] - b.best_params_[k]) / abs(a.best_params_[k])
                           for k in space)
                rows.append({"dataset": name, "space": space_name, "seed": seed,
                             "sequential_s": t_seq, "fused_s": t_fused,
                             "ratio": t_fused / t_seq, "same_exploits": same_exploits,
                             "same_best": same_best, "max_rel_diff": diff,
                             "score_sequential": a.best_score_, "score_fused": b.best_score_,
                             "engine": b.engine_, "optimizer": args.optimizer})
                print(f"{name:14s} {space_name:10s} {seed:4d} {t_seq:12.1f} {t_fused:8.1f} "
                      f"{t_fused / t_seq:6.2f} {str(same_exploits):>13s} {str(same_best):>9s} "
                      f"{diff:12.1e} {a.best_score_:9.4f} {b.best_score_:11.4f}", flush=True)
    write_json(args.out, rows)


if __name__ == "__main__":
    main()
