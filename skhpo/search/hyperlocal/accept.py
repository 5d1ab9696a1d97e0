"""The held-back check of :class:`~skhpo.HyperLocalRefiner`: a step chosen on one part of the
validation data is kept only if another part agrees.

The line search makes the choosing part's loss fall by construction, so that part cannot judge
the step. The held-back part judges it by the per-sample losses before and after: the step is
kept only if their mean paired change is below zero with one-sided ``confidence`` (the upper
confidence bound mean(d) + z sd(d) / sqrt(n) < 0, z the normal quantile; ``confidence=0.5``:
the mean merely falls), and the estimator's score on that part does not fall.
"""

import copy
import math

import numpy as np
import torch
from scipy.stats import norm

from ...nets import module_mode

__all__ = ["loss_falls", "sample_losses"]


def loss_falls(before, after, confidence):
    """``(kept, mean change, its standard error, upper bound)`` for per-sample losses
    ``before`` and ``after`` of the same samples."""
    d = np.asarray(after, float) - np.asarray(before, float)
    mean = float(d.mean())
    se = float(d.std(ddof=1)) / math.sqrt(len(d)) if len(d) > 1 else 0.0
    bound = mean + float(norm.ppf(confidence)) * se
    return bool(mean < 0 and bound < 0), mean, se, bound


def sample_losses(module, criterion, X, y):
    """The criterion of every sample at the module's current weights (eval mode, no
    gradients), as a NumPy array: the criterion with ``reduction="none"`` (averaged over a
    sample's outputs), or one call per sample for a criterion without ``reduction``."""
    with torch.no_grad(), module_mode(module):
        out = module(X)
        if hasattr(criterion, "reduction"):
            per = copy.copy(criterion)
            per.reduction = "none"
            losses = per(out, y).reshape(len(y), -1).mean(1)
        else:
            losses = torch.stack([criterion(out[i:i + 1], y[i:i + 1]) for i in range(len(y))])
    return losses.detach().cpu().double().numpy()
