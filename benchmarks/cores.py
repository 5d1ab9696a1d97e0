"""Both cores: a fused search with ``n_jobs=2`` against itself with ``n_jobs=1`` (and
scikit-learn's search the same way), warm and on a process's first call.

    python benchmarks/cores.py                  # digits, both searches, warm and first call
    python benchmarks/cores.py --searches fused --spaces no-dropout

The task: digits (1797 x 64), ``Pipeline(StandardScaler, TabularMLPClassifier(depth=2,
width=128, max_epochs=10))``, ``n_iter=32, cv=3`` over the learning rate, weight decay and
(``--spaces dropout``) the dropout rate; ``OMP_NUM_THREADS=1`` (one torch thread per
process, so that ``n_jobs=1`` is one core for the arithmetic; the fused engine's dropout
draws still run ahead on the second core when it is free). ``warm``: the search's own call
in a process that has already run it (the median of ``--repeats``); ``first``: the search as
the first thing a fresh Python process does after its imports (a subprocess per
measurement), so worker start-up, a worker's import of torch and the first kernels count.
Prints seconds per setting and the speed-up of ``n_jobs=2`` over ``n_jobs=1`` for each search.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import warnings

from skhpo.bench.core import write_json

os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported, here and in the subprocesses
SEARCHES = ("fused", "sklearn")


def search(kind, n_jobs, dropout=True):
    from scipy.stats import loguniform, uniform
    from sklearn.model_selection import RandomizedSearchCV
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from skhpo import FusedRandomizedSearchCV, TabularMLPClassifier
    pipe = Pipeline([("scale", StandardScaler()),
                     ("net", TabularMLPClassifier(depth=2, width=128, max_epochs=10))])
    space = {"net__lr": loguniform(1e-4, 1e-2),
             "net__optimizer__weight_decay": loguniform(1e-6, 1e-3)}
    if dropout:
        space["net__dropout"] = uniform(0.0, 0.5)
    cls = FusedRandomizedSearchCV if kind == "fused" else RandomizedSearchCV
    return cls(pipe, space, n_iter=32, cv=3, n_jobs=n_jobs, random_state=0)


def timed(kind, n_jobs, dropout=True):
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    s = search(kind, n_jobs, dropout)
    start = time.perf_counter()
    s.fit(X.astype("float32"), y)
    return time.perf_counter() - start


def first_call(kind, n_jobs, dropout=True):
    """Seconds of the search as a fresh process's first call (after its imports)."""
    code = ("import warnings; warnings.simplefilter('ignore'); import sys; "
            f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            "import torch, sklearn, skorch, skhpo; "
            f"import cores; print(cores.timed({kind!r}, {n_jobs}, {dropout}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--searches", nargs="+", default=list(SEARCHES), choices=SEARCHES)
    p.add_argument("--repeats", type=int, default=3, help="warm runs per setting (median)")
    p.add_argument("--spaces", nargs="+", default=["dropout", "no-dropout"],
                   choices=["dropout", "no-dropout"],
                   help="with the dropout rate in the space, or learning rate and weight "
                        "decay only")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    rows = []
    for space, kind in ((space, kind) for space in args.spaces for kind in args.searches):
        row, dropout = {"search": kind, "space": space}, space == "dropout"
        for n_jobs in (1, 2):
            row[f"first_n_jobs={n_jobs}_s"] = round(first_call(kind, n_jobs, dropout), 2)
            timed(kind, n_jobs, dropout)  # this process's own first call, not timed
            runs = sorted(timed(kind, n_jobs, dropout) for _ in range(args.repeats))
            row[f"warm_n_jobs={n_jobs}_s"] = round(runs[len(runs) // 2], 2)
        row["speedup_warm"] = round(row["warm_n_jobs=1_s"] / row["warm_n_jobs=2_s"], 2)
        row["speedup_first"] = round(row["first_n_jobs=1_s"] / row["first_n_jobs=2_s"], 2)
        print(json.dumps(row), flush=True)
        rows.append(row)
    write_json(args.out, rows)
    return rows


if __name__ == "__main__":
    main()
