"""A model's input as the group handles it: one tensor, or a dict of tensors (skorch's
``SliceDict``: a forward that takes several inputs, ``module(**X)``), every row-wise operation
applied to each part alike."""

import numpy as np
import torch

__all__ = ["apply", "as_tensors", "fingerprint_parts", "leaf", "shapes", "stack"]


def apply(fn, X, *others):
    """``fn`` on ``X`` (and ``others`` alongside), part by part for a dict."""
    if isinstance(X, dict):
        return {k: fn(v, *(o[k] for o in others)) for k, v in X.items()}
    return fn(X, *others)


def leaf(X):
    """One tensor of ``X`` (for its number of rows and its device)."""
    return next(iter(X.values())) if isinstance(X, dict) else X


def as_tensors(X):
    """Numpy data (an array, or a dict of arrays) as tensors, without a copy where possible."""
    return apply(lambda a: torch.as_tensor(np.ascontiguousarray(a)), X)


def stack(parts):
    """``torch.stack`` of a list of inputs."""
    if isinstance(parts[0], dict):
        return {k: torch.stack([p[k] for p in parts]) for k in parts[0]}
    return torch.stack(parts)


def shapes(X):
    """The shape of one row of each part (what models must share to be stacked)."""
    if isinstance(X, dict):
        return tuple(sorted((k, tuple(v.shape[1:]), str(v.dtype)) for k, v in X.items()))
    return tuple(X.shape[1:])


def fingerprint_parts(X):
    """``X`` as a list of arrays in a fixed order, for a digest."""
    if isinstance(X, dict):
        return [np.asarray(X[k]) for k in sorted(X)]
    return [np.asarray(X)]
