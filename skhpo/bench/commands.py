"""The ``skhpo`` command: each sub-command parses its options, hands the protocol's jobs to
the one runner (:mod:`skhpo.bench.core`) and prints the protocol's summary table."""

import argparse
import json
import os
import sys
import time

from .core import (
    Column,
    print_pairwise,
    print_table,
    progress_printer,
    run_jobs,
    write_csv,
    write_json,
    write_results,
)

QUICK = dict(tasks=["breast_cancer"], seeds=5, n_trials=12, n_finalists=3, max_epochs=15, cv=3)


def _bench_parser(sub):
    p = sub.add_parser("bench", help="run skhpo's searches against scikit-learn's, side by side",
                       description="Run each method on each task and seed with the same space, "
                       "split and per-trial epochs; print test score, wall time and epochs.")
    p.add_argument("--quick", action="store_true",
                   help="the 1-minute check: breast_cancer, 5 seeds, 12 trials, 15 epochs, "
                   "3 folds; random search, its fused drop-in and flatness")
    p.add_argument("--tasks", nargs="+", default=["breast_cancer", "digits"],
                   help="bundled tasks (iris wine breast_cancer digits digits_images diabetes)")
    p.add_argument("--csv", default=None, metavar="PATH",
                   help="add a task from a CSV file (header row; categoricals are one-hot "
                   "encoded); needs --target")
    p.add_argument("--target", default=None, metavar="COL", help="target column of --csv")
    p.add_argument("--methods", nargs="+", default=None,
                   help="methods to run: random, fused-random (FusedRandomizedSearchCV: random "
                   "search's fits trained in fused groups), flatness, flatness-repo (the "
                   "authors' Bayesmark variant: min over batches, no discard, screened at lr "
                   "1e-3 without weight decay), grid, halving, fused-halving (the same "
                   "halving, each rung's fits trained in fused groups), optuna "
                   "(needs the extra 'bench'; skipped with a message without it), the "
                   "lr-only pair autohyper and lr-grid (20-point log grid of lr), hpm "
                   "(PopulationMutationSearch on the space's lr and weight decay boxes) and "
                   "cpmlho (CuttingPlaneTuner on the net's dropout layers, one run); default "
                   "random and flatness (with --quick also fused-random)")
    p.add_argument("--budget", choices=["epochs", "trials"], default="epochs",
                   help="epochs: every method gets random search's training epochs "
                   "(FlatnessSearchCV trains as many finalists as fit); trials: flatness "
                   "screens --n-trials and trains --n-finalists (the paper's setting)")
    p.add_argument("--seeds", type=int, default=5, help="number of seeds (0..N-1)")
    p.add_argument("--n-trials", type=int, default=50,
                   help="random: n_iter; flatness: n_candidates")
    p.add_argument("--n-finalists", type=int, default=10, help="flatness: n_finalists")
    p.add_argument("--max-epochs", type=int, default=30, help="epochs of every full training")
    p.add_argument("--cv", type=int, default=3, help="cross-validation folds")
    p.add_argument("--n-jobs", type=int, default=None, help="joblib workers per search")
    p.add_argument("--out", default=None,
                   help="folder for results.csv, results.json and results.png")
    _add_checkpoint(p)
    return p


def bench(args):
    from .runner import (
        COLUMNS,
        METHODS,
        Budget,
        check_methods,
        describe_row,
        fused_check,
        jobs,
        missing_requirement,
        register_csv,
        run_one,
        summarize,
    )

    if args.quick:
        args = argparse.Namespace(**{**vars(args), **QUICK})
    if args.methods is None:
        args.methods = ["random", "fused-random", "flatness"] if args.quick else \
            ["random", "flatness"]
    _check_positive(args, "seeds", "n_trials", "n_finalists", "max_epochs", "cv")
    if (args.csv is None) != (args.target is None):
        raise ValueError("--csv and --target go together: --csv PATH --target COL")
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}; available: {', '.join(METHODS)}")
    for method in [m for m in args.methods if missing_requirement(m)]:
        print(f"skipping {missing_requirement(method)}", file=sys.stderr)
    methods = [m for m in args.methods if not missing_requirement(m)]
    if not methods:
        raise ValueError("no method left to run")
    tasks = args.tasks
    if args.csv is not None:
        csv_task = register_csv(args.csv, args.target)
        tasks = [csv_task] if args.quick else [*tasks, csv_task]
    budget = Budget(n_trials=args.n_trials, n_finalists=min(args.n_finalists, args.n_trials),
                    max_epochs=args.max_epochs, cv=args.cv, mode=args.budget)
    check_methods(methods, tasks, budget)
    checkpoint = _job_checkpoint(args, "bench", budget=budget,
                                 csv=None if args.csv is None else _file_digest(args.csv))
    start = time.perf_counter()
    rows = run_jobs(jobs(methods, tasks, range(args.seeds)),
                    lambda m, t, s: run_one(m, t, s, budget, n_jobs=args.n_jobs),
                    progress=progress_printer(describe_row, start), checkpoint=checkpoint)
    print_table(summarize(rows), COLUMNS, title="")
    print_pairwise(rows)
    check = fused_check(rows)
    if check:
        print("\nFusedRandomizedSearchCV against RandomizedSearchCV (same seeds, same fits):")
        print("\n".join(check))
    print(f"\ntotal {time.perf_counter() - start:.1f}s")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        write_json(os.path.join(args.out, "results.json"), rows)
        write_csv(os.path.join(args.out, "results.csv"),
                  [{**r, "best_params": json.dumps(r["best_params"])} for r in rows])
        print(f"results in {args.out}/results.csv and results.json")
        try:
            from .plot import plot_results
            plot_results(rows, os.path.join(args.out, "results.png"))
            print(f"plot in {args.out}/results.png")
        except ValueError as exc:  # no matplotlib: the numbers are saved, say why no plot
            print(f"no plot: {exc}", file=sys.stderr)
    return 0


def _add_checkpoint(p, part=None):
    p.add_argument("--checkpoint", default=None, metavar="DIR",
                   help=(f"{part}: " if part else "") + "folder that keeps every finished run: "
                   "the same command with the same folder skips them (an interrupted benchmark "
                   "resumes)")


def _file_digest(path):
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def _job_checkpoint(args, command, **settings):
    """The command's :class:`~skhpo.checkpoint.Checkpoint` (None without ``--checkpoint``):
    fingerprinted by the command and the settings every run depends on (the methods, tasks
    and seeds are in each run's own key, so more of them reuse the finished ones)."""
    if getattr(args, "checkpoint", None) is None:
        return None
    from ..checkpoint import Checkpoint

    return Checkpoint(args.checkpoint, {"command": command, "settings": settings})


def _check_positive(args, *names, **values):
    """``--name`` >= 1 for each of ``names`` (read from ``args``) and ``values``."""
    for name, value in {**{n: getattr(args, n) for n in names}, **values}.items():
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def _finish(start, out=None):
    print(f"\ntotal {time.perf_counter() - start:.1f}s")
    if out:
        print(f"results in {out}")
    return 0


def _bayesmark_parser(sub):
    from .bayesmark_protocol import DATASETS, METHODS

    p = sub.add_parser("bayesmark", help="the FGHPO paper's Bayesmark protocol (MLP-adam)",
                       description="Run studies of the Bayesmark protocol (45 suggestions of "
                       "the MLP-adam space scored by a 5-fold CV of sklearn's MLPClassifier) "
                       "and print the normalised scores, computed in one pool of every method "
                       "run. Studies are saved one file each under --out; a rerun resumes.")
    p.add_argument("--out", required=True, help="folder of the saved studies")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--studies", type=int, default=20, help="studies per method (seeds 0..N-1)")
    p.add_argument("--calls", type=int, default=45, help="suggestions per study")
    p.add_argument("--n-jobs", type=int, default=None, help="studies run in parallel")
    p.add_argument("--score-only", action="store_true",
                   help="only score what is saved under --out")
    p.add_argument("--pool", nargs="+", default=None, choices=METHODS,
                   help="score only these methods, normalised in their own pool (must "
                   "include random); default: every method saved")
    return p


def bayesmark(args):
    from .bayesmark_protocol import load_results, run_protocol, score_results

    _check_positive(args, "studies", "calls")
    start = time.perf_counter()

    def describe(study):
        return (f"{study['dataset']:14s} {study['method']:12s} seed {study['seed']:2d}  best "
                f"acc {-min(study['acc']):.4f}  best nll {min(study['nll']):.4f}  "
                f"{study['wall_time']:6.1f}s")

    if not args.score_only:
        run_protocol(args.out, args.datasets, args.methods, args.studies, args.calls,
                     n_jobs=args.n_jobs,
                     progress=lambda done, total, study: print(f"[{done}/{total}] "
                                                               f"{describe(study)}", flush=True))
    results = load_results(args.out)
    results = {k: v for k, v in results.items() if k[0] in args.datasets}
    if not results:
        raise ValueError(f"no saved studies under {args.out}")
    if args.pool is not None and "random" not in args.pool:
        raise ValueError("--pool must include random: clip is the median of its evaluations")
    rows = score_results(results, pool=args.pool)
    if not rows:
        raise ValueError(f"nothing to score under {args.out} for the pool {args.pool}")
    print_table(rows, [Column("dataset", "dataset", "14s"), Column("method", "method", "12s"),
                       Column("studies", "n", "7d"), Column("mean", "mean", "7.2f"),
                       Column("median", "median", "7.2f"),
                       Column("wall/study", "wall_per_study", "9.1f", "s"),
                       Column("pool", "pool", "s")], title="")
    print_pairwise(rows, group="dataset", score="scores", each=True,
                   title="wins / ties / losses over datasets (two-sided Mann-Whitney U on "
                   "per-study scores, Benjamini-Hochberg at 5 %)")
    name = "scores.csv" if args.pool is None else f"scores_{'+'.join(sorted(args.pool))}.csv"
    write_csv(os.path.join(args.out, name), rows, exclude=("scores",))
    print(f"\nscores in {args.out}/{name}; total {time.perf_counter() - start:.1f}s")
    return 0


def _hyperlocal_parser(sub):
    p = sub.add_parser("hyperlocal", help="HyperLocalRefiner on the paper's four bases",
                       description="Optuna grid/random/TPE/QMC base searches of per-layer L2 "
                       "coefficients (digits MLPs with 1, 2, 4 layers on 1,000 and all "
                       "training samples) and of an elastic net (diabetes), each refined by "
                       "HyperLocalRefiner; validation/test loss and accuracy before and after.")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--n-trials", type=int, default=12, help="trials of each base search")
    p.add_argument("--max-epochs", type=int, default=30)
    p.add_argument("--n-jobs", type=int, default=None, help="runs in parallel")
    p.add_argument("--weight-step", choices=("auto", "lp", "response"), default="auto",
                   help="HyperLocalRefiner's weight_step (lp: the paper's; auto, the default: "
                   "lp up to 15,000 weights, which every net of this protocol has)")
    p.add_argument("--accept-fraction", type=float, default=0.5,
                   help="HyperLocalRefiner's accept_fraction (0: the paper's)")
    p.add_argument("--accept-confidence", type=float, default=0.9,
                   help="HyperLocalRefiner's accept_confidence")
    p.add_argument("--rows", default="0.01",
                   help="HyperLocalRefiner's rows (weight_step=lp): a fraction, a count or all")
    p.add_argument("--paper", action="store_true",
                   help="the paper's settings: --weight-step lp --accept-fraction 0")
    p.add_argument("--tasks", nargs="+", default=None, metavar="TASK",
                   help="tasks to run (default all): " + ", ".join(_hyperlocal_tasks()))
    p.add_argument("--bases", nargs="+", default=None, choices=("grid", "random", "tpe", "qmc"),
                   help="base searches to run (default all four)")
    p.add_argument("--out", default=None, help="folder for results.csv and summary.csv")
    _add_checkpoint(p)
    return p


def _hyperlocal_tasks():
    from .hyperlocal_protocol import TASKS, task_name

    return [task_name(t) for t in TASKS]


def _refiner_params(args):
    """HyperLocalRefiner's keyword arguments from the command line."""
    rows = args.rows if args.rows == "all" else float(args.rows) if "." in args.rows or \
        "e" in args.rows else int(args.rows)
    if args.paper:
        return {"weight_step": "lp", "accept_fraction": 0.0, "rows": rows}
    return {"weight_step": args.weight_step, "accept_fraction": args.accept_fraction,
            "accept_confidence": args.accept_confidence, "rows": rows}


def hyperlocal(args):
    from .. import HyperLocalRefiner
    from .hyperlocal_protocol import COLUMNS, Settings, describe_row, run_protocol, summarize

    _check_positive(args, "seeds", "n_trials", "max_epochs")
    unknown = sorted(set(args.tasks or ()) - set(_hyperlocal_tasks()))
    if unknown:
        raise ValueError(f"--tasks: unknown {unknown}; accepted: {_hyperlocal_tasks()}")
    try:
        params = _refiner_params(args)
    except ValueError:
        raise ValueError(f"--rows must be a fraction in (0, 1], a count >= 1 or 'all', got "
                         f"{args.rows!r}") from None
    # the refiner's own validation, before any base search trains
    HyperLocalRefiner(None, **params)._validate_params()
    start = time.perf_counter()
    rows = run_protocol(args.seeds, Settings(args.n_trials, args.max_epochs, params),
                        only={"tasks": args.tasks, "bases": args.bases}, n_jobs=args.n_jobs,
                        progress=progress_printer(describe_row, start),
                        checkpoint=_job_checkpoint(args, "hyperlocal", n_trials=args.n_trials,
                                                   max_epochs=args.max_epochs, **params))
    summary = summarize(rows)
    print_table(summary, COLUMNS, title="")
    print("(medians over seeds of after - before)")
    if args.out:
        write_results(args.out, rows, summary)
    return _finish(start, args.out)


def _hpm_parser(sub):
    p = sub.add_parser("hpm", help="PopulationMutationSearch: the paper's synthetic functions, "
                       "and MLP dropout/decay against RandomizedSearchCV",
                       description="synthetic: HPM's synthetic-function protocol (Branin, "
                       "Hartmann-6, Rosenbrock, Bohachevsky; population 5, SGD lr 0.01, "
                       "M = 64) against random search, PBT, one hypergradient run and HPM "
                       "without teacher. nets: dropout rates and weight decay of an MLP on "
                       "digits and wine, against RandomizedSearchCV with the same epochs.")
    p.add_argument("part", choices=["synthetic", "nets"])
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds (default: 10 for synthetic, 5 for nets)")
    p.add_argument("--budget", type=int, default=300,
                   help="synthetic: function evaluations per run (reported every 30)")
    p.add_argument("--grad-clip", type=float, default=None,
                   help="synthetic: cap the gradient norm of the SGD steps (off in the paper)")
    p.add_argument("--tasks", nargs="+", default=["digits", "wine"], help="nets: tasks")
    p.add_argument("--population", type=int, default=20, help="nets: students")
    p.add_argument("--n-steps", type=int, default=30, help="nets: one-epoch steps")
    p.add_argument("--cv", type=int, default=3, help="nets: folds of RandomizedSearchCV")
    p.add_argument("--n-jobs", type=int, default=None, help="nets: joblib workers")
    p.add_argument("--out", default=None, help="folder for results.csv, summary.csv (and "
                   "synthetic.png)")
    _add_checkpoint(p, "nets")
    return p


def hpm(args):
    start = time.perf_counter()
    if args.part == "synthetic":
        from .synthetic import METHODS, plot_synthetic, run_synthetic, summarize, table

        seeds = 10 if args.seeds is None else args.seeds
        _check_positive(args, seeds=seeds)
        if args.budget < 30:
            raise ValueError(f"--budget must be >= 30, got {args.budget}")
        if args.grad_clip is not None and not args.grad_clip > 0:
            raise ValueError(f"--grad-clip must be > 0, got {args.grad_clip}")
        rows = run_synthetic(seeds=seeds, budget=args.budget, grad_clip=args.grad_clip)
        summary = summarize(rows)
        print_table(table(summary), [Column("function", "function", "12s"),
                                     *(Column(m, m, ">19s") for m in METHODS)],
                    title=f"best f after {args.budget} evaluations, mean +- std over {seeds} "
                    "seeds")
        if args.out:
            write_results(args.out, rows,
                          [{"function": f, "method": m, "budget": args.budget, "mean": v[0],
                            "std": v[1]} for (f, m), v in summary.items()])
            plot_synthetic(rows, os.path.join(args.out, "synthetic.png"))
        return _finish(start, args.out)
    from .population_protocol import (
        COLUMNS,
        NetBudget,
        describe_row,
        run_networks,
        summarize_networks,
    )

    seeds = 5 if args.seeds is None else args.seeds
    _check_positive(args, "population", "n_steps", "cv", seeds=seeds)
    budget = NetBudget(args.population, args.n_steps, args.cv, args.n_jobs)
    rows = run_networks(args.tasks, seeds, budget=budget,
                        progress=progress_printer(describe_row, start),
                        checkpoint=_job_checkpoint(args, "hpm nets", population=args.population,
                                                   n_steps=args.n_steps, cv=args.cv))
    summary = summarize_networks(rows)
    print_table(summary, COLUMNS, title="")
    print_pairwise(rows)
    if args.out:
        write_results(args.out, rows, summary)
    return _finish(start, args.out)


def _cpmlho_parser(sub):
    p = sub.add_parser("cpmlho", help="CuttingPlaneTuner: digits MLP/CNN against Delta-STN and "
                       "RandomizedSearchCV, and the dropout0 sensitivity figure",
                       description="compare: CPMLHO, Delta-STN (theta=None, mu=0) and "
                       "RandomizedSearchCV over the same dropout boxes at an equal number of "
                       "epochs, on digits as an MLP and as a small CNN. sensitivity: dropout0 "
                       "of the MLP started at 0.1, 0.2, 0.5, 0.8 (the paper's Figure 2).")
    p.add_argument("part", choices=["compare", "sensitivity"])
    p.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    p.add_argument("--seeds", type=int, default=5, help="compare: seeds")
    p.add_argument("--epochs", type=int, default=50,
                   help="epochs of one self-tuning run (random search spends the same)")
    p.add_argument("--n-random", type=int, default=4, help="compare: random-search candidates")
    p.add_argument("--weights", choices=["net", "reference"], default="net",
                   help="sensitivity: the weights' optimiser: the net's own (Adam, lr 1e-3) or "
                   "the Delta-STN reference code's (SGD, lr 0.01, momentum 0.9)")
    p.add_argument("--methods", nargs="+", default=None,
                   choices=["cpmlho", "delta-stn", "random", "random-full"],
                   help="compare: methods (default: all four; random-full trains each "
                   "candidate the full --epochs)")
    p.add_argument("--out", default=None, help="folder for the CSV files (and sensitivity.png)")
    _add_checkpoint(p, "compare")
    return p


def cpmlho(args):
    from .cutting_plane_protocol import (
        COLUMNS,
        CP_METHODS,
        describe_row,
        plot_sensitivity,
        run_compare,
        run_sensitivity,
        summarize_compare,
    )

    _check_positive(args, "seeds", "epochs", "n_random")
    start = time.perf_counter()
    if args.part == "sensitivity":
        trajectories = run_sensitivity(epochs=args.epochs, weights=args.weights)
        print(f"dropout0 after {args.epochs} epochs (digits MLP, seed 0, weights: "
              f"{args.weights})")
        for (method, start0), traj in trajectories.items():
            print(f"  {method:9s} start {start0:.1f} -> {traj[-1]:.4f} "
                  f"({len(traj) - 1} hyper steps)")
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            write_csv(os.path.join(args.out, "sensitivity.csv"),
                      [{"method": m, "start": s0, "step": i, "dropout0": v}
                       for (m, s0), traj in trajectories.items() for i, v in enumerate(traj)])
            plot_sensitivity(trajectories, os.path.join(args.out, "sensitivity.png"))
        return _finish(start)
    if args.epochs < args.n_random + 1:
        raise ValueError(f"--epochs must be >= --n-random + 1 = {args.n_random + 1} (each "
                         "random candidate and the refit train at least one epoch)")
    rows = run_compare(args.models, args.seeds, args.epochs, args.n_random,
                       methods=args.methods or CP_METHODS,
                       progress=progress_printer(describe_row, start),
                       checkpoint=_job_checkpoint(args, "cpmlho compare", epochs=args.epochs,
                                                  n_random=args.n_random))
    summary = summarize_compare(rows)
    print_table(summary, COLUMNS, title="")
    for model in args.models:
        print_pairwise([{**r, "task": r["model"]} for r in rows if r["model"] == model])
    if args.out:
        write_results(args.out, rows, summary)
    return _finish(start, args.out)


def _which_parser(sub):
    from .which_protocol import METHODS, TASKS

    p = sub.add_parser("which", help="which method when: each method against the search a "
                       "user would otherwise run, at equal epochs and equal wall time",
                       description="Each skhpo method against scikit-learn's "
                       "RandomizedSearchCV over the method's own space, given the method's "
                       "training epochs and, separately, its wall time; test scores over "
                       "seeds (docs/results.md#which-method-when).")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), metavar="TASK",
                   help="bundled tasks (default: " + " ".join(TASKS) + ")")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--n-trials", type=int, default=12,
                   help="random search's trials that set the budget of flatness, hpm and "
                   "hyperlocal's base search")
    p.add_argument("--max-epochs", type=int, default=15, help="epochs of every full training")
    p.add_argument("--cv", type=int, default=3, help="cross-validation folds")
    p.add_argument("--n-jobs", type=int, default=None, help="runs in parallel")
    p.add_argument("--out", default=None, help="folder for results.csv and summary.csv")
    _add_checkpoint(p)
    return p


def which(args):
    from .runner import Budget
    from .which_protocol import COLUMNS, describe_row, run_protocol, summarize, verdicts

    _check_positive(args, "seeds", "n_trials", "max_epochs")
    if args.cv < 2:
        raise ValueError(f"--cv must be >= 2, got {args.cv}")
    budget = Budget(n_trials=args.n_trials, n_finalists=max(1, args.n_trials // 4),
                    max_epochs=args.max_epochs, cv=args.cv)
    budget.flatness_sizes()
    start = time.perf_counter()
    rows = run_protocol(args.methods, args.tasks, args.seeds, budget, args.n_jobs,
                        progress_printer(describe_row, start),
                        checkpoint=_job_checkpoint(args, "which", n_trials=args.n_trials,
                                                   max_epochs=args.max_epochs, cv=args.cv))
    summary = summarize(rows)
    print_table(summary, COLUMNS, title="")
    print("(medians over seeds; d: method - baseline, paired by seed; w/t/l: seeds won, tied, "
          "lost)")
    for method, v in verdicts(summary).items():
        fused = "" if "fused_wall" not in v else (
            "; the fused random search at equal wall time on "
            f"{', '.join(v['fused_wall']) or 'no task'}")
        print(f"{method}: beats random search at equal epochs on "
              f"{', '.join(v['epochs']) or 'no task'}; at equal wall time on "
              f"{', '.join(v['wall']) or 'no task'}{fused}")
    if args.out:
        write_results(args.out, rows, [{k: (list(v) if isinstance(v, tuple) else v)
                                        for k, v in s.items()} for s in summary])
    return _finish(start, args.out)


def _calibrate_parser(sub):
    p = sub.add_parser("calibrate", help="does fusing pay on this machine? measure the "
                       "largest net engine='auto' should fuse",
                       description="Times K ordinary fits one after the other against the "
                       "same K tasks in one fused group, for MLPs of growing width on random "
                       "data, and prints the largest net (in weights) that still gains: set it "
                       "as SKHPO_MAX_WEIGHTS for engine='auto' (docs/fused.md).")
    p.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 384, 512, 768],
                   help="hidden units per layer to measure")
    p.add_argument("--depth", type=int, default=2, help="hidden layers")
    p.add_argument("--k", type=int, default=None,
                   help="models per fused group (default: as the engine groups them, "
                   "SKHPO_MAX_GROUP_WEIGHTS weights in all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--features", type=int, default=64, help="input features")
    p.add_argument("--batches", type=int, default=20, help="minibatches timed per model")
    p.add_argument("--min-speedup", type=float, default=1.1,
                   help="the gain a net must show to be fused")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's own choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="JSON file for the rows")
    return p


def calibrate(args):
    import torch

    from ..fused.cost import ENV, max_group_weights
    from .calibrate import Data, recommend
    from .calibrate import calibrate as measure_all

    _check_positive(args, "depth", "batch_size", "features", "batches",
                    **({} if args.k is None else {"k": args.k}))
    if not args.widths or min(args.widths) < 1:
        raise ValueError(f"--widths must be positive, got {args.widths}")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print(f"{args.device}, {torch.get_num_threads()} torch thread(s), depth {args.depth}, "
          f"batch {args.batch_size}, {args.features} features, groups of "
          f"{args.k or f'at most {max_group_weights()} weights'}")
    print(f"{'width':>6s} {'weights':>9s} {'K':>4s} {'alone s/model':>14s} "
          f"{'fused s/model':>14s} {'speedup':>8s}")

    def show(row):
        print(f"{row['width']:6d} {row['weights']:9d} {row['k']:4d} {row['alone_s']:14.4f} "
              f"{row['fused_s']:14.4f} {row['speedup']:7.2f}x", flush=True)
    data = Data(batch_size=args.batch_size, n_features=args.features, n_batches=args.batches)
    rows = measure_all(args.widths, args.depth, k=args.k, data=data, device=args.device,
                       progress=show)
    best = recommend(rows, args.min_speedup)
    print(f"\nfusing gains at least {args.min_speedup}x up to {best} weights here; "
          f"for engine='auto':\n  export {ENV}={best}")
    write_json(args.out, rows)
    return _finish(start)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="skhpo", description="skhpo command line")
    sub = parser.add_subparsers(dest="command", required=True)
    _bench_parser(sub)
    _bayesmark_parser(sub)
    _hyperlocal_parser(sub)
    _hpm_parser(sub)
    _cpmlho_parser(sub)
    _which_parser(sub)
    _calibrate_parser(sub)
    args = parser.parse_args(argv)
    try:
        return {"bench": bench, "bayesmark": bayesmark, "hyperlocal": hyperlocal,
                "hpm": hpm, "cpmlho": cpmlho, "which": which,
                "calibrate": calibrate}[args.command](args)
    except ValueError as exc:
        print(f"skhpo {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
