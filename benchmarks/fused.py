"""Fused training against one skhpo trial at a time, on CPU or GPU.

    python benchmarks/fused.py                      # K = 8 32 64, 1 CPU thread
    python benchmarks/fused.py --k 1 32 256 1024 --device cuda --sequential-max 64
    python benchmarks/fused.py --k 2 8 --depth 2 --width 512 --epochs 5   # a bigger net
    python benchmarks/fused.py --model cnn --k 8 32 --epochs 10           # SmallCNNClassifier
    python benchmarks/fused.py --model torch-func --k 8 32 --epochs 10    # a user's module

digits (1797 x 64), TabularMLPClassifier 64-128-10 (depth 1), Adam with each model's own
learning rate (log-uniform 3e-4..3e-2), weight decay (log-uniform 1e-6..1e-3) and seed, batch
64, 20 epochs. ``sequential``: K ordinary fits, one after the other (what every skhpo search
does today); ``fused``: :class:`skhpo.fused.FusedTrainer` with ``engine="fused"`` (one group).
Prints wall seconds per model, the ratio, how often the two predict the same class (float32
runs of 560 Adam steps differ in their last bits, which some learning rates amplify), the
median over models of the largest difference of their predicted probabilities, and the
process's peak RSS (and, on a GPU, the fused group's peak GPU memory,
``fused_peak_gpu_mb`` in ``--out``). Both ways train once on a tiny task first, outside the
timings. ``--model cnn``: ``SmallCNNClassifier`` (2 blocks of 16 and 32 filters, dense 64)
on the 8 x 8 images.
``--model torch-func``: a plain skorch ``NeuralNetClassifier`` around a user's module (a
residual block of width 128 with two dropout layers and a softmax output, skorch's DataLoader
with shuffling, NLLLoss), fused through ``torch.func``.
"""

import argparse
import resource
import time

import numpy as np
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits

from skhpo import SmallCNNClassifier, TabularMLPClassifier
from skhpo.bench.core import write_json
from skhpo.fused import FusedTask, FusedTrainer
from skhpo.nets import trial_params


class Residual(torch.nn.Module):
    """A user's module: a residual block, two dropout layers, softmax output."""

    def __init__(self, hidden=128, p=0.2):
        super().__init__()
        self.inp = torch.nn.Linear(64, hidden)
        self.block = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.Tanh())
        self.early, self.late = torch.nn.Dropout(p / 2), torch.nn.Dropout(p)
        self.out = torch.nn.Linear(hidden, 10)

    def forward(self, X):
        h = self.early(torch.relu(self.inp(X)))
        h = self.late(h + self.block(h))
        return torch.softmax(self.out(h), dim=-1)


def tasks(K, seed=0):
    rng = np.random.default_rng(seed)
    return [FusedTask({"lr": float(10 ** rng.uniform(np.log10(3e-4), np.log10(3e-2))),
                       "optimizer__weight_decay": float(10 ** rng.uniform(-6, -3))},
                      seed=int(rng.integers(2**31 - 1))) for _ in range(K)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, nargs="+", default=[8, 32, 64])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--depth", type=int, default=1, help="hidden layers")
    p.add_argument("--width", type=int, default=128, help="units per hidden layer")
    p.add_argument("--model", choices=["mlp", "cnn", "torch-func"], default="mlp")
    p.add_argument("--sequential-max", type=int, default=64,
                   help="largest K also run one model at a time")
    p.add_argument("--out", default=None, help="JSON file for the rows")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    if args.model == "cnn":
        X = X.reshape(-1, 1, 8, 8)
        net = SmallCNNClassifier(batch_size=64, max_epochs=args.epochs, device=args.device)
    elif args.model == "torch-func":
        from skorch import NeuralNetClassifier

        net = NeuralNetClassifier(Residual, batch_size=64, max_epochs=args.epochs,
                                  train_split=None, iterator_train__shuffle=True,
                                  optimizer=torch.optim.Adam, device=args.device, verbose=0)
    else:
        net = TabularMLPClassifier(depth=args.depth, width=args.width, batch_size=64,
                                   max_epochs=args.epochs, device=args.device)
    rows = []
    # warm-up: one-off costs of the process (imports, first kernels) stay out of the timings
    FusedTrainer(net.set_params(max_epochs=1), engine="fused").fit(tasks(2), X, y)
    clone(net).fit(X, y)
    net.set_params(max_epochs=args.epochs)
    print(f"{'K':>5s} {'sequential s/model':>18s} {'fused s/model':>13s} {'ratio':>6s} "
          f"{'same class':>10s} {'median max|dp|':>14s} {'peak RSS MB':>11s}")
    cuda = args.device.startswith("cuda")
    for K in args.k:
        ts = tasks(K)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        fused = FusedTrainer(net, engine="fused", max_group=max(args.k)).fit(ts, X, y)
        if cuda:
            torch.cuda.synchronize()
        t_fused = (time.perf_counter() - start) / K
        gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
        seq, dp, same = float("nan"), float("nan"), float("nan")
        if K <= args.sequential_max:
            start = time.perf_counter()
            alone = [clone(net).set_params(**t.params, **trial_params(net, seed=t.seed)).fit(X, y)
                     for t in ts]
            seq = (time.perf_counter() - start) / K
            pa = [a.predict_proba(X) for a in alone]
            pf = [f.estimator.predict_proba(X) for f in fused]
            dp = float(np.median([np.abs(a - b).max() for a, b in zip(pa, pf)]))
            same = float(np.mean([np.mean(a.argmax(1) == b.argmax(1)) for a, b in zip(pa, pf)]))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append({"K": K, "model": args.model, "device": args.device,
                     "threads": args.threads,
                     "sequential_s_per_model": seq, "fused_s_per_model": t_fused,
                     "ratio": seq / t_fused, "same_class": same, "median_max_abs_proba_diff": dp,
                     "peak_rss_mb": rss, "fused_peak_gpu_mb": gpu_mb})
        print(f"{K:5d} {seq:18.3f} {t_fused:13.3f} {seq / t_fused:6.2f} {100 * same:9.2f}% "
              f"{dp:14.1e} {rss:11.0f}", flush=True)
    write_json(args.out, rows)


if __name__ == "__main__":
    main()
