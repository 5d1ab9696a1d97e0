"""Which part of FGHPO's two variants matters, at random search's epochs (``skhpo bench``).

    python benchmarks/flatness_variants.py                    # 5 tasks x 5 seeds, ~5 min
    python benchmarks/flatness_variants.py --out rows.json

FlatnessSearchCV under the bench's equal-epoch budget (12 trials' epochs, 15-epoch nets,
3 folds) in four variants, and RandomizedSearchCV:

* ``flatness``: the paper's Algorithm 1 (the default: max over batches, bounds <= 0
  discarded, each candidate screened with its own optimiser settings);
* ``flatness-min``: only the aggregation of the authors' Bayesmark code (min over batches,
  nothing discarded);
* ``flatness-fixed``: only its screen under one optimiser (``screen_params``: lr 1e-3, no
  weight decay);
* ``flatness-repo``: both (``skhpo bench``'s method of that name).

Prints the median test score per task and method, and seeds won / lost against the default
and against random search (paired by seed).
"""

import argparse

import numpy as np

from skhpo.bench import runner
from skhpo.bench.core import write_json
from skhpo.bench.runner import Budget, run_benchmark

TASKS = ["iris", "wine", "breast_cancer", "digits", "diabetes"]
METHODS = ["flatness", "flatness-min", "flatness-fixed", "flatness-repo", "random"]


def _variant(**params):
    def make(estimator, space, budget, seed, n_jobs):
        return runner.METHODS["flatness"](estimator, space, budget, seed, n_jobs).set_params(
            **params)
    return make


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--n-jobs", type=int, default=2, help="workers per search")
    parser.add_argument("--out", default=None, help="JSON file for the per-run rows")
    args = parser.parse_args()
    runner.METHODS["flatness-min"] = _variant(aggregate="min", discard_nonpositive=False)
    runner.METHODS["flatness-fixed"] = _variant(
        screen_params=runner.FLATNESS_REPO["screen_params"])
    budget = Budget(n_trials=12, n_finalists=3, max_epochs=15, cv=3)
    rows = run_benchmark(METHODS, TASKS, range(args.seeds), budget, n_jobs=args.n_jobs)
    score = {(r["method"], r["task"], r["seed"]): r["test_score"] for r in rows}
    print(f"{'task':14s}" + "".join(f"{m:>16s}" for m in METHODS))
    for t in TASKS:
        print(f"{t:14s}" + "".join(
            f"{np.median([score[m, t, s] for s in range(args.seeds)]):16.4f}" for m in METHODS))
    for m in METHODS[1:-1]:
        pairs = [(score[m, t, s], score["flatness", t, s], score["random", t, s])
                 for t in TASKS for s in range(args.seeds)]
        print(f"{m}: against flatness {sum(a > b for a, b, _ in pairs)} won / "
              f"{sum(a < b for a, b, _ in pairs)} lost; against random "
              f"{sum(a > c for a, _, c in pairs)} / {sum(a < c for a, _, c in pairs)}")
    write_json(args.out, rows)


if __name__ == "__main__":
    main()
