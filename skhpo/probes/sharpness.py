"""FGHPO's sharpness lower bound, read off a trained skorch net.

For a mini-batch b with penultimate activations A_b (the input of the final ``nn.Linear``,
``B_b x h``), output probabilities P_b (softmax of the final layer's output, sigmoid for a
single output) and final weight matrix W (bias unused):

* ``penultimate``: s_b = ||A_b||_F / ||W||_F  (the code behind the paper's results);
* ``output``:      s_b = ||P_b||_F / ||W||_F  (the paper's Theorem 1 as printed);
* ``product``:     s_b = ||A_b||_F ||P_b||_F / ||W||_F  (the authors' later code).

``batch_norm="rms"`` replaces every Frobenius norm by a root-mean-square (norm divided by the
square root of the number of entries), which removes the sqrt(B_b) growth of the Frobenius
version. The batches walk the data in stored order, unshuffled, in slices of the training
batch size, the last smaller slice included; the statistic aggregates them (``max`` by
default), skipping non-finite batches.
"""

import math
from itertools import chain

import numpy as np
import torch
from torch import nn

from ..nets import ArrayBatchIterator, batch_size_of, module_mode

VARIANTS = ("penultimate", "output", "product")
BATCH_NORMS = ("frobenius", "rms")
AGGREGATES = ("max", "min", "mean")


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def iter_batches(net, X, batch_size):
    """The inputs of ``net`` for ``X`` in stored order, unshuffled, in slices of
    ``batch_size`` (the last, smaller slice included)."""
    dataset = net.get_dataset(X)
    for Xb, _ in ArrayBatchIterator(dataset, batch_size=batch_size, shuffle=False):
        yield Xb


def final_linear(net, X_batch):
    """The ``nn.Linear`` whose output is the network's output, found by a forward pass.

    Every ``nn.Linear`` of ``net.module_`` is hooked; the last one to fire is the final layer.
    Its output must have as many entries as the module's output (an element-wise activation
    such as softmax may follow it). Anything else raises a ``ValueError``.
    """
    order = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: order.append((mod, _first(out))))
             for m in net.module_.modules() if isinstance(m, nn.Linear)]
    try:
        with module_mode(net.module_), torch.no_grad():
            out = _first(net.infer(X_batch))
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise ValueError(f"{type(net.module_).__name__} has no nn.Linear layer; the sharpness "
                         "bound needs a network whose last layer is an nn.Linear.")
    layer, layer_out = order[-1]
    if layer_out.numel() != out.numel():
        raise ValueError(
            f"the last nn.Linear of {type(net.module_).__name__} ({layer}) does not produce the "
            f"network's output (shape {tuple(layer_out.shape)} vs {tuple(out.shape)}); the "
            "sharpness bound needs the output layer to be an nn.Linear, optionally followed by "
            "an element-wise activation.")
    return layer


def _norm(t, batch_norm):
    value = torch.linalg.vector_norm(t.double())
    return value / math.sqrt(t.numel()) if batch_norm == "rms" else value


def batch_sharpness(net, X, *, batch_size=None, variant="penultimate", batch_norm="frobenius"):
    """Per-batch sharpness values ``s_b`` (a float array, one entry per batch, in data order).

    ``X`` is what the net itself receives (already transformed by any Pipeline steps).
    ``batch_size`` defaults to the net's training batch size.
    """
    if variant not in VARIANTS:
        raise ValueError(f"sharpness: got {variant!r}; accepted: {VARIANTS}")
    if batch_norm not in BATCH_NORMS:
        raise ValueError(f"batch_norm: got {batch_norm!r}; accepted: {BATCH_NORMS}")
    n = len(net.get_dataset(X))
    batch_size = batch_size or batch_size_of(net, n)
    batches = iter_batches(net, X, batch_size)
    first = next(batches)
    head = final_linear(net, first)
    weight_norm = _norm(head.weight.detach(), batch_norm)
    captured = {}
    hook = head.register_forward_hook(
        lambda mod, inp, out: captured.update(a=inp[0], z=out))
    values = []
    try:
        with module_mode(net.module_), torch.no_grad():
            for Xb in chain([first], batches):
                net.infer(Xb)
                a, z = captured["a"], captured["z"]
                if variant == "penultimate":
                    s = _norm(a, batch_norm)
                else:
                    p = torch.softmax(z, dim=-1) if z.shape[-1] > 1 else torch.sigmoid(z)
                    s = _norm(p, batch_norm)
                    if variant == "product":
                        s = s * _norm(a, batch_norm)
                values.append(float(s / weight_norm))
    finally:
        hook.remove()
    return np.asarray(values, dtype=float)


def aggregate(values, how="max"):
    """Aggregate per-batch values, skipping non-finite ones; ``-inf`` if none is finite."""
    if how not in AGGREGATES:
        raise ValueError(f"aggregate: got {how!r}; accepted: {AGGREGATES}")
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return -math.inf
    return float({"max": np.max, "min": np.min, "mean": np.mean}[how](finite))


def sharpness_bound(net, X, *, batch_size=None, variant="penultimate", batch_norm="frobenius",
                    aggregate_by="max"):
    """FGHPO's statistic S(h) of a trained net: ``(S, per_batch_values)``."""
    values = batch_sharpness(net, X, batch_size=batch_size, variant=variant,
                             batch_norm=batch_norm)
    return aggregate(values, aggregate_by), values
