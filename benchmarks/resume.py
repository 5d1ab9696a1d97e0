"""Kill a checkpointed search part-way (SIGKILL, a real process kill), resume it, compare.

    python benchmarks/resume.py                    # FlatnessSearchCV on digits, 50 -> 10
    python benchmarks/resume.py --engine auto --kill-after 20
    python benchmarks/resume.py --method hpm --kill-after 5    # PopulationMutationSearch

FlatnessSearchCV (StandardScaler + MLP; lr, width, weight decay; 50 candidates screened for one
epoch, the 10 flattest cross-validated with cv=3 at 20 epochs) runs in a child process with
``checkpoint=<folder>`` and is killed once ``--kill-after`` trainings are in the folder; the
same search is then fitted here with the same folder. Prints the trainings the killed run
finished, how many the resumed fit loaded and how many it trained, whether its results equal
an uninterrupted run's (cv_results_, history_ and best_params_, timings aside), and the time a
checkpoint adds: the uninterrupted search with and without a (fresh) folder, per training.

``--method hpm``: PopulationMutationSearch (20 students, 15 one-epoch steps; lr, weight decay
and dropout), killed once ``--kill-after`` steps are in its checkpoint; it resumes after the
last completed step (a training here is one student's step).
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from scipy.stats import loguniform
from sklearn.datasets import load_digits
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skhpo import FlatnessSearchCV, PopulationMutationSearch, TabularMLPClassifier


def search(checkpoint, engine, method="flatness"):
    if method == "hpm":
        net = Pipeline([("scale", StandardScaler()),
                        ("net", TabularMLPClassifier(max_epochs=1, dropout=0.2))])
        return PopulationMutationSearch(
            net, {"net__lr": loguniform(1e-4, 3e-2), "net__dropout": (0.0, 0.5),
                  "net__optimizer__weight_decay": loguniform(1e-6, 1e-3)},
            population_size=20, n_steps=15, random_state=0, checkpoint=checkpoint)
    net = Pipeline([("scale", StandardScaler()),
                    ("net", TabularMLPClassifier(max_epochs=20, batch_size=64))])
    space = {"net__lr": loguniform(1e-4, 3e-2), "net__width": [32, 64, 128],
             "net__optimizer__weight_decay": loguniform(1e-6, 1e-3)}
    return FlatnessSearchCV(net, space, n_candidates=50, n_finalists=10, cv=3, engine=engine,
                            random_state=0, checkpoint=checkpoint, refit=False)


def data():
    X, y = load_digits(return_X_y=True)
    return X.astype(np.float32), y


def done(folder, method):
    """Trainings (flatness) or completed steps (hpm) in the folder."""
    from skhpo.checkpoint import SUFFIX, DamagedFile, read_file

    files = [f for f in os.listdir(folder) if f.endswith(SUFFIX)]
    if method != "hpm":  # a fused group's trainings share one file
        n = 0
        for name in files:
            try:
                n += len(read_file(os.path.join(folder, name))) if "-group-" in name else 1
            except (DamagedFile, FileNotFoundError):
                continue  # being replaced by its writer: counted at the next look
        return n
    for _ in range(5):  # the state file may be being replaced: read it again
        try:
            return read_file(os.path.join(folder, files[0]))["step"] + 1
        except (IndexError, DamagedFile, FileNotFoundError):
            time.sleep(0.01)
    return 0


def same(a, b):
    keys = [k for k in a.cv_results_ if not k.endswith("_time")]
    ok = a.best_params_ == b.best_params_ and all(
        np.array_equal(np.asarray(a.cv_results_[k]), np.asarray(b.cv_results_[k]))
        if k != "params" else a.cv_results_[k] == b.cv_results_[k] for k in keys)
    return ok and all(a.history_[k] == b.history_[k] for k in a.history_
                      if not k.endswith("time"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="flatness", choices=["flatness", "hpm"])
    p.add_argument("--engine", default="sequential", choices=["sequential", "auto"])
    p.add_argument("--kill-after", type=int, default=30,
                   help="trainings in the folder when the child is killed")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    X, y = data()
    if args.child:  # the run that gets killed
        search(args.child, args.engine, args.method).fit(X, y)
        return
    folder = tempfile.mkdtemp(prefix="skhpo-resume-")
    child = subprocess.Popen([sys.executable, __file__, "--engine", args.engine, "--method",
                              args.method, "--child", folder])
    while child.poll() is None:
        if done(folder, args.method) >= args.kill_after:
            child.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    child.wait()
    finished = done(folder, args.method)
    start = time.perf_counter()
    resumed = search(folder, args.engine, args.method).fit(X, y)
    t_resumed = time.perf_counter() - start
    start = time.perf_counter()
    plain = search(None, args.engine, args.method).fit(X, y)
    t_plain = time.perf_counter() - start
    start = time.perf_counter()
    fresh = search(tempfile.mkdtemp(prefix="skhpo-resume-"), args.engine, args.method).fit(X, y)
    t_fresh = time.perf_counter() - start
    if args.method == "hpm":
        n, finished = len(resumed.history_["step"]), finished * 20
    else:
        n = resumed.n_trainings_
    print(f"{args.method}, engine={args.engine}: {n} trainings in all; killed (SIGKILL, exit "
          f"{child.returncode}) with {finished} finished and written")
    print(f"resumed fit: loaded {resumed.n_resumed_}, trained {n - resumed.n_resumed_}, "
          f"{t_resumed:.1f} s; results equal an uninterrupted run's: "
          f"{same(resumed, plain) and same(fresh, plain)}")
    print(f"uninterrupted: {t_plain:.1f} s without a checkpoint, {t_fresh:.1f} s with one: "
          f"{1000 * (t_fresh - t_plain) / n:+.1f} ms per training")


if __name__ == "__main__":
    main()
