"""The 1-D line search of the LP hyper local search (step 7 of the method).

``phi(t)`` is minimised over t >= 0: a bounding phase from t = 0 with increment ``step``
(doubling while phi keeps falling) brackets a minimum, then a golden-section search shrinks the
bracket to ``tol``; the better end of the final bracket is the step. A non-finite phi counts as
+inf (a diverged trial never wins). The net and the linear-model paths of
:class:`~skhpo.HyperLocalRefiner` both use :func:`line_search`.
"""

import math

__all__ = ["bounding_phase", "golden_section", "line_search"]

_INV_PHI = (math.sqrt(5) - 1) / 2  # 1 / golden ratio


def _safe(phi):
    def f(t):
        v = float(phi(t))
        return v if math.isfinite(v) else math.inf
    return f


def bounding_phase(phi, step=0.1, max_doublings=60):
    """A bracket ``(lo, hi)`` around a minimum of ``phi`` on t >= 0: a = 0, b = step; while
    phi(b) < phi(a), move a to b and double; the bracket is [0, step] if phi rose at once,
    [0, 2 step] after one move, else [2^(i-2) step, 2^i step]."""
    if not step > 0:
        raise ValueError(f"the bounding-phase step must be > 0, got {step}")
    f = _safe(phi)
    a, b, i = 0.0, step, 0
    fa, fb = f(a), f(b)
    while fb < fa and i < max_doublings:
        i += 1
        a, fa = b, fb
        b = 2 ** i * step
        fb = f(b)
    if i == 0:
        return 0.0, step
    if i == 1:
        return 0.0, 2 * step
    return 2 ** (i - 2) * step, 2 ** i * step


def golden_section(phi, lo, hi, tol=1e-5):
    """Shrink ``[lo, hi]`` around a minimum of a unimodal ``phi`` until its width is <= tol;
    returns the final interval."""
    if not tol > 0:
        raise ValueError(f"the golden-section tolerance must be > 0, got {tol}")
    f = _safe(phi)
    c, d = hi - _INV_PHI * (hi - lo), lo + _INV_PHI * (hi - lo)
    fc, fd = f(c), f(d)
    while hi - lo > tol:
        if fc <= fd:
            hi, d, fd = d, c, fc
            c = hi - _INV_PHI * (hi - lo)
            fc = f(c)
        else:
            lo, c, fc = c, d, fd
            d = lo + _INV_PHI * (hi - lo)
            fd = f(d)
    return lo, hi


def line_search(phi, step=0.1, tol=1e-5):
    """``(t*, trials)``: t* is the better end of the golden-section interval inside the
    bounding-phase bracket (the lower end on a tie: the authors' rule, so the step taken is
    one whose loss was evaluated); ``trials`` lists every ``(t, phi(t))`` evaluated, in
    order."""
    trials = []

    def recorded(t):
        value = float(phi(t))
        trials.append((t, value))
        return value

    lo, hi = bounding_phase(recorded, step)
    lo, hi = golden_section(recorded, lo, hi, tol)
    f = _safe(recorded)
    return (lo if f(lo) <= f(hi) else hi), trials
