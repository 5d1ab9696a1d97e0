"""How far ordinary training is from the divergence rule of ``FiniteLossGuard``.

    python benchmarks/divergence_rule.py                  # 5 bench tasks x 20 candidates
    python benchmarks/divergence_rule.py --n 40 --epochs 30

The guard calls a training diverged when a batch's loss is NaN or infinite, or more than
``max_ratio`` (default 1e4) times the loss of the fit's first batch. Here every candidate
trains with the rule switched off (``max_ratio=None``) and we record its largest ratio
max(batch loss) / first batch loss: for the bench's tasks (iris, wine, breast_cancer, digits,
diabetes; StandardScaler + skhpo MLP) and its space (batch size, lr 1e-4..3e-2, weight decay,
depth, width), the same the bench and the searches draw from; also with a 3x wider learning
rate range (up to 1e-1), and on unscaled features. Then the explosions the rule is for: Adam
at lr 1 and 3 and SGD at lr 0.1 and 10 on unscaled breast_cancer. Prints one row per setting:
candidates, the largest and median ratio, how many the rule would stop, and how many ended
non-finite.
"""

import argparse
import warnings

import numpy as np
import torch
from scipy.stats import loguniform
from sklearn.base import clone
from sklearn.model_selection import ParameterSampler
from sklearn.pipeline import Pipeline

from skhpo.bench.core import write_json
from skhpo.bench.runner import default_estimator, default_space, load_task
from skhpo.nets import MAX_LOSS_RATIO


def largest_ratio(est, X, y):
    """max(batch loss) / first batch loss of one fit with the rule off (inf if non-finite)."""
    est.set_params(net__callbacks__finite_loss__max_ratio=None)
    est.fit(X, y)
    losses = np.array([b["train_loss"] for epoch in est[-1].history[:, "batches"]
                       for b in epoch])
    if not np.isfinite(losses).all():
        return float("inf")
    return float(losses.max() / losses[0])


def row(name, ratios):
    ratios = np.asarray(ratios)
    finite = ratios[np.isfinite(ratios)]
    return {"setting": name, "candidates": len(ratios),
            "largest_ratio": float(finite.max()) if len(finite) else float("nan"),
            "median_ratio": float(np.median(finite)) if len(finite) else float("nan"),
            "stopped": int((ratios > MAX_LOSS_RATIO).sum()),
            "non_finite": int((~np.isfinite(ratios)).sum())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+",
                   default=["iris", "wine", "breast_cancer", "digits", "diabetes"])
    p.add_argument("--n", type=int, default=20, help="candidates per task and setting")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--out", default=None, help="JSON file for the rows")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    rows = []
    print(f"{'setting':40s} {'cands':>5s} {'largest':>9s} {'median':>7s} {'stopped':>7s} "
          f"{'non-finite':>10s}")

    def show(r):
        rows.append(r)
        print(f"{r['setting']:40s} {r['candidates']:5d} {r['largest_ratio']:9.3g} "
              f"{r['median_ratio']:7.3g} {r['stopped']:7d} {r['non_finite']:10d}", flush=True)

    for task in args.tasks:
        X, y, kind = load_task(task)
        base = default_estimator(kind, args.epochs)
        for label, space, unscaled in (
                ("bench space", default_space(kind), False),
                ("lr up to 1e-1", {**default_space(kind), "net__lr": loguniform(1e-4, 1e-1)},
                 False),
                ("bench space, unscaled", default_space(kind), True)):
            ratios = []
            for i, params in enumerate(ParameterSampler(space, args.n, random_state=0)):
                est = clone(base).set_params(**params, net__random_state=i)
                if unscaled:
                    est = Pipeline([("scale", "passthrough"), ("net", est[-1])])
                ratios.append(largest_ratio(est, X, y))
            show(row(f"{task}: {label}", ratios))
    X, y, kind = load_task("breast_cancer")
    for opt, lr in ((torch.optim.Adam, 1.0), (torch.optim.Adam, 3.0), (torch.optim.SGD, 0.1),
                    (torch.optim.SGD, 10.0)):
        est = Pipeline([("scale", "passthrough"),
                        ("net", clone(default_estimator(kind, args.epochs)[-1]))])
        ratios = [largest_ratio(clone(est).set_params(net__optimizer=opt, net__lr=lr,
                                                      net__random_state=i), X, y)
                  for i in range(5)]
        show(row(f"breast_cancer unscaled: {opt.__name__} lr={lr:g}", ratios))
    write_json(args.out, rows)


if __name__ == "__main__":
    main()
