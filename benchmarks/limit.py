"""The fused engine against the machine's limit: an arithmetic-bound search, where its time goes,
and how far it is from the peak of the group's own matrix products.

    python benchmarks/limit.py                      # 100,000 rows, with and without dropout
    python benchmarks/limit.py --rows 30000 --no-sklearn --profile

The task: ``make_classification(rows, 50, n_informative=20, n_classes=4)``,
``TabularMLPClassifier(max_epochs=3, batch_size=256)`` (two hidden layers of 128: 23,296
weights in its linear layers), ``RandomizedSearchCV`` / ``FusedRandomizedSearchCV`` with
``n_iter=16, cv=3``, over the learning rate and weight decay (and, as ``--dropout``, the
dropout rate), one torch thread. Printed per variant: both searches' wall seconds and their
ratio, the training arithmetic (6 x rows x weights per epoch, over the 48 fold trainings and
the refit) per second against the same run's ``torch.bmm`` peak on the group's shapes, and,
with ``--profile``, where the fused search's time goes (a cProfile of it, by phase, scaled to
its unprofiled wall time).
"""

import argparse
import cProfile
import json
import pstats
import time
import warnings

import numpy as np
import torch
from scipy.stats import loguniform, uniform
from sklearn.datasets import make_classification
from sklearn.model_selection import RandomizedSearchCV

from skhpo import FusedRandomizedSearchCV, TabularMLPClassifier

#: the phases of a fused search: the cumulative time of these (file, function) pairs
PHASES = {
    "dropout masks": [("fused/_group.py", "_masks")],
    "forward (without the masks)": [("fused/_layouts.py", "forward")],
    "loss": [("fused/_group.py", "_loss")],
    "backward": [("fused/_group.py", "_gradient")],
    "optimiser update": [("fused/_adam.py", "step"), ("fused/_sgd.py", "step"),
                         ("fused/_stacked.py", "step")],
    "gathering batches": [("fused/_group.py", "_gather_batches")],
    "divergence check": [("fused/_group.py", "_check")],
    "epoch hooks, validation, history": [("fused/_group.py", "_each"),
                                         ("fused/_group.py", "_record_count"),
                                         ("fused/_group.py", "_validate")],
    "initialisation (0-epoch fits)": [("fused/trainer.py", "_init"),
                                      ("fused/trainer.py", "_func_reason")],
    "scikit-learn's loading fits and scoring": [("model_selection/_search.py",
                                                 "evaluate_candidates")],
}


def weights(n_features, width, depth, n_classes):
    return n_features * width + (depth - 1) * width * width + width * n_classes


def bmm_peak(k, batch, width, seconds=1.0):
    """GFLOP/s of ``torch.bmm`` on the group's hidden-layer shapes, (k, batch, width) x (k,
    width, width), here and now."""
    a, b = torch.randn(k, batch, width), torch.randn(k, width, width)
    for _ in range(5):
        torch.bmm(a, b)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.bmm(a, b)
        n += 1
    return 2 * k * batch * width * width * n / (time.perf_counter() - start) / 1e9


def _profile_phases(run):
    """Seconds per phase of ``run()`` under cProfile (and the refit, scikit-learn's ``fit``
    after the search, and what no phase holds)."""
    profile = cProfile.Profile()
    profile.enable()
    run()
    profile.disable()
    stats = pstats.Stats(profile).stats

    def cumulative(path, name):
        return sum(row[3] for (file, _, func), row in stats.items()
                   if func == name and file.replace("\\", "/").endswith(path))
    out = {phase: sum(cumulative(*pair) for pair in pairs) for phase, pairs in PHASES.items()}
    out["forward (without the masks)"] -= out["dropout masks"]
    total = cumulative("model_selection/_search.py", "fit")
    out["refit (one ordinary fit)"] = total - cumulative("search/fused_search.py", "_run_search")
    out["other"] = total - sum(out.values())
    return out, total


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--n-iter", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=["no-dropout", "dropout"],
                   choices=["no-dropout", "dropout"])
    p.add_argument("--no-sklearn", action="store_true", help="time the fused search only")
    p.add_argument("--profile", action="store_true", help="print the fused search's phases")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    X, y = make_classification(args.rows, 50, n_informative=20, n_classes=4, random_state=0)
    X = X.astype(np.float32)
    net = TabularMLPClassifier(max_epochs=args.epochs, batch_size=256)
    w = weights(50, net.width, net.depth, 4)
    flop = 6 * w * args.epochs * (args.n_iter * 3 * args.rows * 2 / 3 + args.rows)
    # warm-up: one-off costs (imports, first kernels) on neither side's clock
    for search in (FusedRandomizedSearchCV, RandomizedSearchCV):
        search(TabularMLPClassifier(max_epochs=1), {"lr": [1e-3, 1e-2]}, n_iter=2, cv=2,
               random_state=0).fit(X[:500], y[:500])
    peak = bmm_peak(3 * args.n_iter, 256, net.width)
    rows = []
    for variant in args.variants:
        space = {"lr": loguniform(1e-4, 1e-2), "optimizer__weight_decay": loguniform(1e-6, 1e-3)}
        if variant == "dropout":
            space["dropout"] = uniform(0.0, 0.5)
        kw = dict(n_iter=args.n_iter, cv=3, random_state=0)

        def fused(space=space, kw=kw):
            return FusedRandomizedSearchCV(net, space, **kw).fit(X, y)
        start = time.perf_counter()
        fused()
        t_fused = time.perf_counter() - start
        t_sk = None
        if not args.no_sklearn:
            start = time.perf_counter()
            RandomizedSearchCV(net, space, **kw).fit(X, y)
            t_sk = time.perf_counter() - start
        row = {"variant": variant, "rows": args.rows, "fused_s": round(t_fused, 2),
               "sklearn_s": None if t_sk is None else round(t_sk, 2),
               "ratio": None if t_sk is None else round(t_fused / t_sk, 3),
               "gflops_fused": round(flop / t_fused / 1e9, 1),
               "gflops_sklearn": None if t_sk is None else round(flop / t_sk / 1e9, 1),
               "bmm_peak_gflops": round(peak, 1),
               "share_of_peak": round(flop / t_fused / 1e9 / peak, 3)}
        print(json.dumps(row), flush=True)
        if args.profile:
            phases, total = _profile_phases(fused)
            scale = t_fused / total
            row["phases_s"] = {k: round(v * scale, 2) for k, v in phases.items()}
            for k, v in row["phases_s"].items():
                print(f"  {k:42s} {v:7.2f} s  {v / t_fused:6.1%}")
        rows.append(row)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
