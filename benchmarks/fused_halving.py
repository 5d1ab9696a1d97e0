"""FusedHalvingRandomSearchCV against scikit-learn's HalvingRandomSearchCV, same seeded fits.

    python benchmarks/fused_halving.py                  # digits, resource="max_epochs"
    python benchmarks/fused_halving.py --resource n_samples

digits (1797 x 64), ``TabularMLPClassifier(depth=2, width=128, batch_size=64)`` with a
``TaskSeed(0)`` callback (both searches then train the same seeded fits), the learning rate
and weight decay log-uniform, ``n_candidates=27, factor=3, cv=3``; ``max_epochs`` from 2 to
18 (rungs of 27, 9 and 3 candidates at 2, 6 and 18 epochs), or ``n_samples`` from 1/9 of the
rows. One torch thread; both searches run once on a tiny task first, outside the timings.
Prints both wall times and their ratio, and whether the rungs (``n_resources_``,
``n_candidates_``, ``cv_results_["iter"]``), the survivors and ``best_params_`` are the same,
with the largest difference of the mean test scores; the epochs each rung's survivors
continued from (``candidate_starts_``). ``--restarts`` also times the drop-in with its
survivors trained again from the start at every rung (as scikit-learn's halving trains them:
the continuation turned off for this breakdown only) and checks its scores are the
continuing run's, bitwise.
"""

import argparse
import json
import time
import warnings

import numpy as np
import torch
from scipy.stats import loguniform
from sklearn.datasets import load_digits
from sklearn.experimental import enable_halving_search_cv  # noqa: F401
from sklearn.model_selection import HalvingRandomSearchCV

from skhpo import FusedHalvingRandomSearchCV, TabularMLPClassifier
from skhpo.bench.core import write_json
from skhpo.nets import TaskSeed

SPACE = {"lr": loguniform(1e-4, 1e-1), "optimizer__weight_decay": loguniform(1e-6, 1e-3)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resource", choices=["max_epochs", "n_samples"], default="max_epochs")
    p.add_argument("--restarts", action="store_true",
                   help="also time the drop-in with its survivors restarted at every rung")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)

    def net(**kw):
        return TabularMLPClassifier(depth=2, width=128, batch_size=64,
                                    callbacks=[("seed", TaskSeed(0))], **kw)
    if args.resource == "max_epochs":
        make, kw = net, dict(resource="max_epochs", min_resources=2, max_resources=18)
    else:
        make, kw = (lambda: net(max_epochs=10)), dict(resource="n_samples",
                                                      min_resources=len(y) // 9)
    kw.update(n_candidates=27, factor=3, cv=3, random_state=0)
    for cls in (FusedHalvingRandomSearchCV, HalvingRandomSearchCV):  # warm-up
        cls(net(max_epochs=1), SPACE, n_candidates=3, cv=2, resource="n_samples",
            min_resources=200, random_state=0).fit(X[:400], y[:400])
    times, fitted = {}, {}
    for label, cls in (("fused", FusedHalvingRandomSearchCV), ("sklearn", HalvingRandomSearchCV)):
        start = time.perf_counter()
        fitted[label] = cls(make(), SPACE, **kw).fit(X, y)
        times[label] = time.perf_counter() - start
    if args.restarts:  # the same drop-in, every survivor trained again from the start
        original = FusedHalvingRandomSearchCV._start_of
        FusedHalvingRandomSearchCV._start_of = lambda self, folds, rows: (None, "")
        start = time.perf_counter()
        try:
            fitted["restarts"] = FusedHalvingRandomSearchCV(make(), SPACE, **kw).fit(X, y)
        finally:
            FusedHalvingRandomSearchCV._start_of = original
        times["restarts"] = time.perf_counter() - start
    a, b = fitted["fused"], fitted["sklearn"]
    row = {"resource": args.resource, "fused_s": round(times["fused"], 2),
           "sklearn_s": round(times["sklearn"], 2),
           "ratio": round(times["fused"] / times["sklearn"], 3),
           "n_resources": a.n_resources_, "n_candidates": a.n_candidates_,
           "same_rungs": a.n_resources_ == b.n_resources_ and a.n_candidates_ == b.n_candidates_
           and list(a.cv_results_["iter"]) == list(b.cv_results_["iter"]),
           "same_candidates": list(a.cv_results_["params"]) == list(b.cv_results_["params"]),
           "same_best": a.best_params_ == b.best_params_,
           "max_abs_d_mean_test": float(np.max(np.abs(a.cv_results_["mean_test_score"]
                                                       - b.cv_results_["mean_test_score"]))),
           "engine": a.engine_, "candidate_starts": sorted(set(a.candidate_starts_)),
           "restart_reasons": sorted(set(a.restart_reasons_) - {""})}
    if args.restarts:
        r = fitted["restarts"]
        row.update(restarts_s=round(times["restarts"], 2),
                   restarts_ratio=round(times["restarts"] / times["sklearn"], 3),
                   restarts_same_scores=list(r.cv_results_["mean_test_score"]) ==
                   list(a.cv_results_["mean_test_score"]))
    print(json.dumps(row), flush=True)
    write_json(args.out, row)
    return row


if __name__ == "__main__":
    main()
