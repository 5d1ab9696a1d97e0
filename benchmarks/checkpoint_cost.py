"""What a checkpoint costs in the file format (JSON and arrays, no pickle), per file and as a
share of the trainings it stores.

    python benchmarks/checkpoint_cost.py [--out FILE]

Two searches on digits, one torch thread, each fitted once with ``checkpoint=<a temporary
folder>``: ``FusedRandomizedSearchCV`` (MLP 128x2, 10 epochs, 16 candidates x 3 folds: its
fused groups' files) and ``PopulationMutationSearch`` (20 students, 3 one-epoch steps: its
population state, rewritten after every step). For the largest file of each: its size, the
time to write its bytes (:func:`skhpo._store.dumps` and the SHA-256 of the checksum) and to
read and verify it (:func:`skhpo.checkpoint.read_file`), median of 5, beside ``pickle.dumps``
of the same value (what format 1 and 2 wrote, their own tensor handling aside) and the
seconds of training the file stores (the search's wall time per training times the trainings
in the file).
"""

import argparse
import hashlib
import os
import pickle
import statistics
import tempfile
import time
import warnings

import numpy as np
import torch
from scipy.stats import loguniform
from sklearn.datasets import load_digits

from skhpo import FusedRandomizedSearchCV, PopulationMutationSearch, TabularMLPClassifier
from skhpo._store import dumps
from skhpo.bench.core import write_json
from skhpo.checkpoint import SUFFIX, read_file


def _median_time(fn, repeat=5):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _costs(search, X, y, trainings_of):
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        search.set_params(checkpoint=folder).fit(X, y)
        wall = time.perf_counter() - start
        files = [os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(SUFFIX)]
        path = max(files, key=os.path.getsize)
        value = read_file(path)
        stored, total = trainings_of(value, search)

        def write():
            data = dumps(value)
            hashlib.sha256(data).hexdigest()
        return {"file_bytes": os.path.getsize(path), "trainings_in_file": stored,
                "write_s": _median_time(write), "read_s": _median_time(lambda: read_file(path)),
                "pickle_dumps_s": _median_time(lambda: pickle.dumps(value, protocol=5)),
                "training_s_in_file": wall / total * stored, "search_wall_s": wall}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    rows = {}
    fused = FusedRandomizedSearchCV(TabularMLPClassifier(depth=2, width=128, max_epochs=10),
                                    {"lr": loguniform(1e-4, 1e-1)}, n_iter=16, cv=3,
                                    random_state=0, refit=False)
    rows["fused-random group file"] = _costs(fused, X, y,
                                             lambda value, s: (len(value), 16 * 3))
    hpm = PopulationMutationSearch(TabularMLPClassifier(max_epochs=1, dropout=0.2),
                                   {"lr": loguniform(1e-4, 3e-2), "dropout": (0.0, 0.5)},
                                   population_size=20, n_steps=3, random_state=0)
    rows["hpm population state"] = _costs(hpm, X, y, lambda value, s: (20, 20 * 3))
    for name, row in rows.items():
        row["write_share_of_training"] = row["write_s"] / row["training_s_in_file"]
        print(f"{name}: {row['file_bytes'] / 1e6:.2f} MB for {row['trainings_in_file']} "
              f"trainings ({row['training_s_in_file']:.2f} s of training): write "
              f"{row['write_s'] * 1e3:.1f} ms ({row['write_share_of_training']:.2%}), read "
              f"{row['read_s'] * 1e3:.1f} ms; pickle.dumps {row['pickle_dumps_s'] * 1e3:.1f} ms",
              flush=True)
    write_json(args.out, rows)
    return rows


if __name__ == "__main__":
    main()
