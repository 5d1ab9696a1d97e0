"""Statistics across seeds: median and IQR, pairwise Mann-Whitney U tests with
Benjamini-Hochberg correction, and wins / ties / losses (the protocol of the FGHPO
paper).

A method *wins* against another on a task when the corrected test rejects equality at level
``alpha`` and its median is better; it *loses* when the test rejects and its median is worse;
otherwise the pair is a *tie*.
"""

from itertools import combinations

import numpy as np
from scipy.stats import mannwhitneyu

__all__ = ["benjamini_hochberg", "describe", "pairwise_tests", "wins_ties_losses"]


def describe(values):
    """``{"median", "iqr", "mean", "n"}`` of a sample."""
    values = np.asarray(values, dtype=float)
    q1, q3 = np.percentile(values, [25, 75])
    return {"median": float(np.median(values)), "iqr": float(q3 - q1),
            "mean": float(np.mean(values)), "n": int(values.size)}


def benjamini_hochberg(p_values):
    """Benjamini-Hochberg adjusted p-values (step-up, monotone, capped at 1)."""
    p = np.asarray(p_values, dtype=float)
    if p.size == 0:
        return p
    order = np.argsort(p)
    ranked = p[order] * p.size / np.arange(1, p.size + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty_like(p)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def pairwise_tests(scores, higher_is_better=True, alpha=0.05):
    """Two-sided Mann-Whitney U test for every pair of methods, BH-corrected over the pairs.

    ``scores`` maps method -> sample of scores (one per seed). Returns one dict per pair with
    the raw and adjusted p-value, whether equality is rejected, and the better method by median
    (``None`` for a tie).
    """
    pairs = list(combinations(sorted(scores), 2))
    raw = []
    for a, b in pairs:
        x, y = np.asarray(scores[a], float), np.asarray(scores[b], float)
        if np.array_equal(np.sort(x), np.sort(y)) or np.ptp(np.r_[x, y]) == 0:
            raw.append(1.0)
        else:
            raw.append(float(mannwhitneyu(x, y, alternative="two-sided").pvalue))
    adjusted = benjamini_hochberg(raw)
    out = []
    for (a, b), p, q in zip(pairs, raw, adjusted):
        ma, mb = np.median(scores[a]), np.median(scores[b])
        better = None
        if q < alpha and ma != mb:
            better = a if (ma > mb) == higher_is_better else b
        out.append({"a": a, "b": b, "p": p, "p_adjusted": float(q), "reject": bool(q < alpha),
                    "better": better})
    return out


def wins_ties_losses(tests, methods=None):
    """Count, per method, the pairs it wins, ties and loses in ``pairwise_tests`` output
    (pooled over tasks if the tests of several tasks are concatenated)."""
    methods = sorted(methods or {t["a"] for t in tests} | {t["b"] for t in tests})
    table = {m: {"wins": 0, "ties": 0, "losses": 0} for m in methods}
    for t in tests:
        if t["better"] is None:
            table[t["a"]]["ties"] += 1
            table[t["b"]]["ties"] += 1
        else:
            loser = t["b"] if t["better"] == t["a"] else t["a"]
            table[t["better"]]["wins"] += 1
            table[loser]["losses"] += 1
    return table
