"""The fused engine against the machine's limit: an arithmetic-bound search, where its time goes,
and how far it is from the peak of the group's own matrix products.

    python benchmarks/limit.py                      # 100,000 rows, with and without dropout
    python benchmarks/limit.py --rows 30000 --no-sklearn --profile
    python benchmarks/limit.py --memory             # peak RSS at 1,000,000 rows, both searches
    python benchmarks/limit.py --device cuda        # the same task on a GPU

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
from skhpo.bench.core import write_json
from skhpo.fused.cost import proc_kib

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


def bmm_peak(k, batch, width, seconds=1.0, device="cpu"):
    """GFLOP/s of ``torch.bmm`` on the group's hidden-layer shapes, (k, batch, width) x (k,
    width, width), here and now."""
    a = torch.randn(k, batch, width, device=device)
    b = torch.randn(k, width, width, device=device)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    for _ in range(5):
        torch.bmm(a, b)
    sync()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.bmm(a, b)
        n += 1
    sync()
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


def _status_mb(field):
    """``VmRSS`` / ``VmHWM`` (peak) of this process from /proc, in MB (None elsewhere)."""
    kib = proc_kib("/proc/self/status", field)
    return None if kib is None else kib / 1024


def memory_child(kind, path, n_iter):
    """One search (``kind``: fused or sklearn) on the data saved at ``path``, as the only
    thing its process does: ``{seconds, rss_before_mb, peak_rss_mb}``."""
    X, y = np.load(path + ".X.npy"), np.load(path + ".y.npy")
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    net = TabularMLPClassifier(max_epochs=1, batch_size=256)
    space = {"lr": loguniform(1e-4, 1e-2), "optimizer__weight_decay": loguniform(1e-6, 1e-3)}
    cls = FusedRandomizedSearchCV if kind == "fused" else RandomizedSearchCV
    before = _status_mb("VmRSS")
    start = time.perf_counter()
    cls(net, space, n_iter=n_iter, cv=2, random_state=0).fit(X, y)
    return {"seconds": round(time.perf_counter() - start, 2),
            "rss_before_mb": round(before, 1), "peak_rss_mb": round(_status_mb("VmHWM"), 1)}


def memory(rows, n_iter):
    """Peak RSS of both searches on ``rows`` x 50 (n_iter, cv=2, one epoch), each in a fresh
    process that loads the data from a file (the data itself, float32, is in both peaks)."""
    import os
    import subprocess
    import sys
    import tempfile
    X, y = make_classification(rows, 50, n_informative=20, n_classes=4, random_state=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data")
        np.save(path + ".X.npy", X.astype(np.float32))
        np.save(path + ".y.npy", y)
        del X, y
        out = {"rows": rows, "n_iter": n_iter, "cv": 2, "epochs": 1}
        for kind in ("fused", "sklearn"):
            code = (f"import sys, json; sys.path.insert(0, {os.path.dirname(__file__)!r}); "
                    f"import limit; print(json.dumps(limit.memory_child({kind!r}, {path!r}, "
                    f"{n_iter})))")
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True)
            out[kind] = json.loads(res.stdout.strip().splitlines()[-1])
    out["peak_ratio"] = round(out["fused"]["peak_rss_mb"] / out["sklearn"]["peak_rss_mb"], 3)
    out["time_ratio"] = round(out["fused"]["seconds"] / out["sklearn"]["seconds"], 3)
    print(json.dumps(out), flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--memory", action="store_true",
                   help="peak RSS of both searches at --rows (default 1,000,000 here), "
                        "n_iter=4, cv=2, one epoch, each in its own process")
    p.add_argument("--rows", type=int, default=None,
                   help="rows of the task (100,000; 1,000,000 with --memory)")
    p.add_argument("--n-iter", type=int, default=None, help="candidates (16; 4 with --memory)")
    p.add_argument("--device", default="cpu",
                   help="the nets' device; off the CPU the drop-in runs engine='fused' "
                        "(engine='auto' fuses on the CPU only) and scikit-learn's search "
                        "trains the same nets on the same device")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=["no-dropout", "dropout"],
                   choices=["no-dropout", "dropout"])
    p.add_argument("--no-sklearn", action="store_true", help="time the fused search only")
    p.add_argument("--profile", action="store_true", help="print the fused search's phases")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.memory:
        out = memory(args.rows or 1_000_000, args.n_iter or 4)
        write_json(args.out, out)
        return out
    args.rows, args.n_iter = args.rows or 100_000, args.n_iter or 16
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    X, y = make_classification(args.rows, 50, n_informative=20, n_classes=4, random_state=0)
    X = X.astype(np.float32)
    net = TabularMLPClassifier(max_epochs=args.epochs, batch_size=256, device=args.device)
    engine = "auto" if args.device == "cpu" else "fused"
    w = weights(50, net.width, net.depth, 4)
    flop = 6 * w * args.epochs * (args.n_iter * 3 * args.rows * 2 / 3 + args.rows)
    # warm-up: one-off costs (imports, first kernels) on neither side's clock
    for search in (FusedRandomizedSearchCV, RandomizedSearchCV):
        kw = {"engine": engine} if search is FusedRandomizedSearchCV else {}
        search(TabularMLPClassifier(max_epochs=1, device=args.device), {"lr": [1e-3, 1e-2]},
               n_iter=2, cv=2, random_state=0, **kw).fit(X[:500], y[:500])
    peak = bmm_peak(3 * args.n_iter, 256, net.width, device=args.device)
    rows = []
    for variant in args.variants:
        space = {"lr": loguniform(1e-4, 1e-2), "optimizer__weight_decay": loguniform(1e-6, 1e-3)}
        if variant == "dropout":
            space["dropout"] = uniform(0.0, 0.5)
        kw = dict(n_iter=args.n_iter, cv=3, random_state=0)

        def fused(space=space, kw=kw):
            return FusedRandomizedSearchCV(net, space, engine=engine, **kw).fit(X, y)
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
    write_json(args.out, rows)
    return rows


if __name__ == "__main__":
    main()
