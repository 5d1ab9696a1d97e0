"""Framework overhead of one training trial: plain PyTorch loop vs skorch vs skhpo.

The same 64-128-10 MLP (Adam, lr 1e-3) is trained on sklearn's digits for 20 epochs with
batch 64 and shuffling, on one CPU thread:

* ``plain``: a hand-written PyTorch loop over a shuffled index permutation;
* ``skorch default``: ``NeuralNetClassifier`` with its defaults (DataLoader, ValidSplit(5),
  per-epoch validation accuracy), as a user writes it today;
* ``skorch, no valid split``: the same with ``train_split=None`` (isolates the batching cost);
* ``skhpo``: :class:`skhpo.models.TabularMLPClassifier` (whole-tensor slicing, loss guard,
  input validation), i.e. one trial of a skhpo search.

Run: ``python benchmarks/overhead.py [--repeats 15]``. Prints the median and the minimum wall time
of each and their ratios to the plain loop (the minimum is the least noisy estimate of the
intrinsic cost on a shared machine).
"""

import argparse
import statistics
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from skorch import NeuralNetClassifier
from torch import nn

from skhpo.models import MLPModule, TabularMLPClassifier

EPOCHS, BATCH, LR = 20, 64, 1e-3


def _data():
    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y.astype(np.int64)


class _Softmax(nn.Module):
    """skorch's default classifier criterion (NLLLoss) expects probabilities."""

    def __init__(self):
        super().__init__()
        self.mlp = MLPModule(64, 10, depth=1, width=128)

    def forward(self, X):
        return torch.softmax(self.mlp(X), dim=-1)


def plain(X, y):
    torch.manual_seed(0)
    model = MLPModule(64, 10, depth=1, width=128)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(EPOCHS):
        perm = torch.randperm(len(Xt))
        for i in range(0, len(Xt), BATCH):
            idx = perm[i:i + BATCH]
            opt.zero_grad()
            loss = loss_fn(model(Xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    return model


def skorch_default(X, y):
    torch.manual_seed(0)
    return NeuralNetClassifier(_Softmax, max_epochs=EPOCHS, batch_size=BATCH, lr=LR,
                               optimizer=torch.optim.Adam, iterator_train__shuffle=True,
                               verbose=0).fit(X, y)


def skorch_no_split(X, y):
    torch.manual_seed(0)
    return NeuralNetClassifier(_Softmax, max_epochs=EPOCHS, batch_size=BATCH, lr=LR,
                               optimizer=torch.optim.Adam, iterator_train__shuffle=True,
                               train_split=None, verbose=0).fit(X, y)


def skhpo_trial(X, y):
    return TabularMLPClassifier(depth=1, width=128, max_epochs=EPOCHS, batch_size=BATCH, lr=LR,
                                random_state=0).fit(X, y)


RUNNERS = {"plain PyTorch loop": plain, "skorch default": skorch_default,
           "skorch, train_split=None": skorch_no_split, "skhpo TabularMLPClassifier": skhpo_trial}


def measure(repeats=7):
    """(median, min) seconds per runner (one warm-up run each, then ``repeats`` timed runs,
    interleaved so that drift of the machine hits all runners alike)."""
    torch.set_num_threads(1)
    X, y = _data()
    times = {name: [] for name in RUNNERS}
    for fn in RUNNERS.values():
        fn(X, y)
    for _ in range(repeats):
        for name, fn in RUNNERS.items():
            start = time.perf_counter()
            fn(X, y)
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(ts), min(ts)) for name, ts in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    results = measure(args.repeats)
    base_med, base_min = results["plain PyTorch loop"]
    print(f"digits 1797x64, MLP 64-128-10, {EPOCHS} epochs, batch {BATCH}, 1 thread, "
          f"{args.repeats} interleaved repeats")
    print(f"  {'runner':28s} {'median':>8s} {'ratio':>6s} {'min':>8s} {'ratio':>6s}")
    for name, (med, low) in results.items():
        print(f"  {name:28s} {med:7.3f}s {med / base_med:5.2f}x "
              f"{low:7.3f}s {low / base_min:5.2f}x")


if __name__ == "__main__":
    main()
