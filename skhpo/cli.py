"""The ``skhpo`` command."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

QUICK = dict(tasks=["breast_cancer"], seeds=1, n_trials=20, n_finalists=4, max_epochs=20, cv=3)


def _bench_parser(sub):
    p = sub.add_parser("bench", help="run skhpo's searches against scikit-learn's, side by side",
                       description="Run each method on each task and seed with the same space, "
                       "split and per-trial epochs; print test score, wall time and epochs.")
    p.add_argument("--quick", action="store_true",
                   help="the 2-minute check: breast_cancer, 1 seed, 20 trials, 20 epochs")
    p.add_argument("--tasks", nargs="+", default=["breast_cancer", "digits"],
                   help="bundled tasks (iris wine breast_cancer digits digits_images diabetes)")
    p.add_argument("--csv", default=None, metavar="PATH",
                   help="add a task from a CSV file (header row; categoricals are one-hot "
                   "encoded); needs --target")
    p.add_argument("--target", default=None, metavar="COL", help="target column of --csv")
    p.add_argument("--methods", nargs="+", default=["random", "flatness"],
                   help="methods to run (random, flatness, grid, halving)")
    p.add_argument("--seeds", type=int, default=5, help="number of seeds (0..N-1)")
    p.add_argument("--n-trials", type=int, default=50,
                   help="random: n_iter; flatness: n_candidates")
    p.add_argument("--n-finalists", type=int, default=10, help="flatness: n_finalists")
    p.add_argument("--max-epochs", type=int, default=30, help="epochs of every full training")
    p.add_argument("--cv", type=int, default=3, help="cross-validation folds")
    p.add_argument("--n-jobs", type=int, default=None, help="joblib workers per search")
    p.add_argument("--out", default=None, help="folder for results.csv and results.json")
    return p


def bench(args):
    from .bench.runner import Budget, register_csv, run_benchmark, summarize

    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    for name in ("seeds", "n_trials", "n_finalists", "max_epochs", "cv"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if (args.csv is None) != (args.target is None):
        raise ValueError("--csv and --target go together: --csv PATH --target COL")
    if args.csv is not None:
        csv_task = register_csv(args.csv, args.target)
        args.tasks = [csv_task] if args.quick else [*args.tasks, csv_task]
    budget = Budget(n_trials=args.n_trials, n_finalists=min(args.n_finalists, args.n_trials),
                    max_epochs=args.max_epochs, cv=args.cv)
    start = time.perf_counter()

    def progress(done, total, row):
        print(f"[{done}/{total}] {row['task']:14s} seed {row['seed']} {row['method']:10s} "
              f"test {row['test_score']:.4f}  {row['wall_time']:6.1f}s  "
              f"{row['epochs']} epochs", flush=True)

    rows = run_benchmark(args.methods, args.tasks, range(args.seeds), budget,
                         n_jobs=args.n_jobs, progress=progress)
    print(f"\n{'task':14s} {'method':10s} {'runs':>4s} {'median test':>11s} {'IQR':>7s} "
          f"{'median wall':>11s} {'epochs':>7s}")
    for s in summarize(rows):
        print(f"{s['task']:14s} {s['method']:10s} {s['n']:4d} {s['median_test']:11.4f} "
              f"{s['iqr_test']:7.4f} {s['median_wall']:10.1f}s {s['median_epochs']:7.0f}")
    _print_tests(rows)
    print(f"\ntotal {time.perf_counter() - start:.1f}s")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(rows, f, indent=1)
        with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows({**r, "best_params": json.dumps(r["best_params"])} for r in rows)
        print(f"results in {args.out}/results.csv and results.json")
    return 0


def _print_tests(rows):
    """Pairwise Mann-Whitney tests per task (BH-corrected at 5 %), pooled wins/ties/losses."""
    from .bench.stats import pairwise_tests, wins_ties_losses

    tests = []
    for task in sorted({r["task"] for r in rows}):
        scores = {}
        for r in rows:
            if r["task"] == task:
                scores.setdefault(r["method"], []).append(r["test_score"])
        if len(scores) > 1 and min(len(v) for v in scores.values()) > 1:
            tests += pairwise_tests(scores)
    if not tests:
        return
    print("\nwins / ties / losses over tasks (two-sided Mann-Whitney U on test scores across "
          "seeds, Benjamini-Hochberg at 5 %)")
    for method, c in wins_ties_losses(tests).items():
        print(f"  {method:10s} {c['wins']} / {c['ties']} / {c['losses']}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="skhpo", description="skhpo command line")
    sub = parser.add_subparsers(dest="command", required=True)
    _bench_parser(sub)
    args = parser.parse_args(argv)
    try:
        return bench(args)
    except ValueError as exc:
        print(f"skhpo {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
