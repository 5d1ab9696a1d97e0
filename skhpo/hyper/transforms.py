"""Box <-> unconstrained transforms for hyper-parameters that follow gradients.

A gradient method steps in an unconstrained coordinate ``u`` and reads the hyper-parameter
``h = Box.forward(u)``, which always lies strictly inside its box:

* a linear box ``[lo, hi]``: ``h = lo + (hi - lo) * sigmoid(u)`` (the logit transform);
* a log box (``loguniform(lo, hi)``, ``0 < lo``): the same in ``log h``;
* a positive scale with no upper bound (``hi = inf``): ``h = lo + exp(u)`` (the log transform);

Everything is written with torch operations, so gradients flow from ``h`` back to ``u``.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Box", "logit"]


def logit(p):
    """The inverse of the sigmoid, for a tensor in (0, 1)."""
    return torch.log(p) - torch.log1p(-p)


@dataclass(frozen=True)
class Box:
    """The range of one hyper-parameter and its transform to an unconstrained coordinate.

    Parameters
    ----------
    lo, hi : float
        The range; ``hi`` may be ``inf`` for a positive scale (then ``log`` is implied).
    log : bool
        Step in ``log h`` (learning rates, decays: ``loguniform(lo, hi)``).
    """

    lo: float
    hi: float
    log: bool = False

    @property
    def eps(self):
        """The margin kept from the box ends after a mutation (HPM)."""
        if math.isinf(self.hi):
            return 1e-6 * max(abs(self.lo), 1e-12)
        return 1e-6 * (self.hi - self.lo)

    def forward(self, u):
        """``u`` (tensor, any real) -> ``h`` inside the box."""
        if math.isinf(self.hi):
            return self.lo + torch.exp(u)
        if self.log:
            a, b = math.log(self.lo), math.log(self.hi)
            return torch.exp(a + (b - a) * torch.sigmoid(u))
        return self.lo + (self.hi - self.lo) * torch.sigmoid(u)

    def inverse(self, h):
        """``h`` (tensor strictly inside the box) -> ``u``."""
        h = torch.as_tensor(h, dtype=torch.float64)
        if math.isinf(self.hi):
            return torch.log(h - self.lo)
        if self.log:
            a, b = math.log(self.lo), math.log(self.hi)
            return logit((torch.log(h) - a) / (b - a))
        return logit((h - self.lo) / (self.hi - self.lo))

    def clip(self, h):
        """``h`` clipped to ``[lo + eps, hi - eps]``."""
        return float(np.clip(h, self.lo + self.eps, self.hi - self.eps))

    def normalize(self, h):
        """Position in the box in [0, 1] (in log space for a log box): the teacher's input."""
        if math.isinf(self.hi):
            return math.log1p(h - self.lo)
        if self.log:
            return (math.log(h) - math.log(self.lo)) / (math.log(self.hi) - math.log(self.lo))
        return (h - self.lo) / (self.hi - self.lo)

    def sample(self, rng):
        """A uniform (log-uniform for a log box) draw from the box, clipped inside it."""
        if math.isinf(self.hi):
            return self.clip(self.lo + rng.exponential(1.0))
        if self.log:
            return self.clip(math.exp(rng.uniform(math.log(self.lo), math.log(self.hi))))
        return self.clip(rng.uniform(self.lo, self.hi))

