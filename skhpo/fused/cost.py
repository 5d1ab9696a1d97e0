"""Does fusing pay on this machine? Measure it, and set ``engine="auto"``'s threshold from it.

On a CPU a fused step of a big net is bound by its arithmetic, not by per-step overhead, so
above some size training K nets together is no faster than one after the other. Where that
size lies depends on the machine (cores, cache, vector units), the torch build and the number
of threads. :func:`calibrate` measures it here: for MLPs of growing width it times K real
skorch fits one after the other against the same K tasks in one fused group (K as the engine
would group them: :func:`group_size`)
(:class:`~skhpo.fused.FusedTrainer`, ``engine="fused"``), on random data of the given shape,
and :func:`recommend` reads off the largest net that still gains. ``skhpo calibrate`` prints
both; ``SKHPO_MAX_WEIGHTS=<n>`` in the environment then sets the threshold that
``engine="auto"`` uses everywhere (:func:`max_weights`) instead of the one measured on the
machine that built skhpo (:data:`~skhpo.fused.trainer.MAX_WEIGHTS`).

A threshold, not a timing at fit time: the engine a task trains with must not depend on how
busy the machine was at that moment, or the same ``random_state`` could give different
results (a fused model equals its own fit only to float32 rounding).
"""

from __future__ import annotations

import os
import time

import numpy as np
from sklearn.base import clone

__all__ = ["ENV", "GROUP_ENV", "MAX_GROUP_WEIGHTS", "calibrate", "group_size", "max_weights",
           "max_group_weights", "measure", "recommend"]

#: the environment variable that sets ``engine="auto"``'s threshold (a number of weights)
ENV = "SKHPO_MAX_WEIGHTS"
#: the environment variable that sets the weights one fused group holds at most
GROUP_ENV = "SKHPO_MAX_GROUP_WEIGHTS"
#: measured on the machine that built skhpo (one thread, docs/fused.md): the gain per model
#: peaks while a group holds up to about 1.4 million weights (85k-weight nets: 1.53x at 8
#: models, 1.47x at 16, 1.22x at 32; 177k: 1.20x at 8, 0.92x at 16, 0.69x at 32)
MAX_GROUP_WEIGHTS = 1_500_000


def _env_int(name, default, minimum):
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        n = int(value)
    except ValueError:
        n = minimum - 1
    if n < minimum:
        raise ValueError(f"{name} must be a whole number of weights >= {minimum} (as "
                         f"`skhpo calibrate` prints it); got {value!r}")
    return n


def max_weights():
    """The largest net (in weights) that ``engine="auto"`` fuses: ``$SKHPO_MAX_WEIGHTS`` if set,
    else :data:`~skhpo.fused.trainer.MAX_WEIGHTS`. A bad value is a ``ValueError``."""
    from .trainer import MAX_WEIGHTS

    return _env_int(ENV, MAX_WEIGHTS, 0)


def max_group_weights():
    """The weights one fused group holds at most: ``$SKHPO_MAX_GROUP_WEIGHTS`` if set, else
    :data:`MAX_GROUP_WEIGHTS`."""
    return _env_int(GROUP_ENV, MAX_GROUP_WEIGHTS, 1)


def group_size(n_weights, max_group=64):
    """Models per fused group for a net of ``n_weights``: as many as
    :func:`max_group_weights` allows, at least 2, at most ``max_group``."""
    return int(max(2, min(max_group, max_group_weights() // max(1, n_weights))))


def measure(width, depth=2, *, k=None, batch_size=64, n_features=64, n_classes=10,
            n_batches=20, device="cpu"):
    """Seconds per model of one epoch of ``n_batches`` minibatches for a ``depth`` x ``width``
    MLP classifier: ``k`` ordinary fits one after the other (``alone_s``) and the same ``k``
    tasks in one fused group (``fused_s``), after one untimed warm-up of each; their ratio is
    ``speedup``. ``k=None``: the group size the engine would use (:func:`group_size`). Random
    data; each task its own learning rate and seed."""
    from ..models import TabularMLPClassifier
    from .trainer import FusedTask, FusedTrainer

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


def calibrate(widths=(64, 128, 256, 384, 512, 768), depth=2, *, k=None, batch_size=64,
              n_features=64, n_batches=20, device="cpu", progress=None):
    """:func:`measure` for each width (smallest first); ``progress(row)`` after each."""
    rows = []
    for width in sorted(widths):
        row = measure(width, depth, k=k, batch_size=batch_size, n_features=n_features,
                      n_batches=n_batches, device=device)
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

