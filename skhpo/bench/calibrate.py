"""Does fusing pay on this machine? Measure it, and set ``engine="auto"``'s threshold from it.

Where fusing stops paying depends on the machine (cores, cache, vector units), the torch build
and the number of threads. :func:`calibrate` measures it here: for MLPs of growing width it
times K real skorch fits one after the other against the same K tasks in one fused group (K
as the engine would group them: :func:`~skhpo.fused.cost.group_size`), on random data of the
given shape, and :func:`recommend` reads off the largest net that still gains. ``skhpo
calibrate`` prints both; ``SKHPO_MAX_WEIGHTS=<n>`` in the environment then sets the threshold
that ``engine="auto"`` uses everywhere (:func:`~skhpo.fused.cost.max_weights`).
"""

import time
from typing import NamedTuple

import numpy as np
from sklearn.base import clone

from ..fused import FusedTask, FusedTrainer
from ..fused.cost import group_size
from ..models import TabularMLPClassifier

__all__ = ["Data", "calibrate", "measure", "recommend"]


class Data(NamedTuple):
    """The random data of a measurement: its batch size, features, classes and batches."""

    batch_size: int = 64
    n_features: int = 64
    n_classes: int = 10
    n_batches: int = 20


def measure(width, depth=2, *, k=None, data=None, device="cpu"):
    """Seconds per model of one epoch of ``data.n_batches`` minibatches for a ``depth`` x
    ``width`` MLP classifier: ``k`` ordinary fits one after the other (``alone_s``) and the
    same ``k`` tasks in one fused group (``fused_s``), after one untimed warm-up of each; their
    ratio is ``speedup``. ``k=None``: the group size the engine would use
    (:func:`~skhpo.fused.cost.group_size`). Random data (:class:`Data`); each task its own
    learning rate and seed (``data=None``: the defaults of :class:`Data`)."""
    batch_size, n_features, n_classes, n_batches = data or Data()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(batch_size * n_batches, n_features)).astype(np.float32)
    y = np.arange(len(X)) % n_classes
    net = TabularMLPClassifier(depth=depth, width=width, batch_size=batch_size, max_epochs=1,
                               device=device)
    weights = sum(p.numel() for p in clone(net).fit(X[:batch_size], y[:batch_size])
                  .module_.parameters())
    k = group_size(weights) if k is None else k
    tasks = [FusedTask({"lr": float(lr)}, seed=i)
             for i, lr in enumerate(np.geomspace(1e-4, 1e-2, k))]
    trainer = FusedTrainer(net, engine="fused", max_group=k)
    trainer.fit(tasks[:2], X, y)  # warm-up: first kernels and allocations, untimed
    clone(net).fit(X, y)
    start = time.perf_counter()
    for task in tasks:
        clone(net).set_params(lr=task.params["lr"], random_state=task.seed).fit(X, y)
    alone = (time.perf_counter() - start) / k
    start = time.perf_counter()
    trainer.fit(tasks, X, y)
    fused = (time.perf_counter() - start) / k
    return {"width": width, "depth": depth, "k": k, "weights": int(weights),
            "alone_s": alone, "fused_s": fused, "speedup": alone / fused}


def calibrate(widths=(64, 128, 256, 384, 512, 768), depth=2, *, k=None, data=None,
              device="cpu", progress=None):
    """:func:`measure` for each width (smallest first); ``progress(row)`` after each."""
    rows = []
    for width in sorted(widths):
        row = measure(width, depth, k=k, data=data, device=device)
        rows.append(row)
        if progress is not None:
            progress(row)
    return rows


def recommend(rows, min_speedup=1.1):
    """The largest ``weights`` of ``rows`` up to which every measured net gained at least
    ``min_speedup`` from fusing (0: fusing did not pay even for the smallest)."""
    best = 0
    for row in sorted(rows, key=lambda r: r["weights"]):
        if row["speedup"] < min_speedup:
            break
        best = row["weights"]
    return best

