"""Bayesmark's normalised score, computed in one pool of methods (Bayesmark's definition, as
the FGHPO paper uses it).

``evaluations[test_case][method]`` is an array of shape ``(n_trials, n_iterations)`` holding
the *visible* loss of each suggestion (lower is better; a failed evaluation is ``+inf``). For
each test case p:

* best-so-far S[n, t] = min over t' <= t of F[n, t'];
* opt_p = the smallest finite loss seen by any method in any trial, pushed down by 10^4 ulps of
  max(|opt_p|, smallest positive float) so that it lies strictly below every value;
* clip_p = the median of all random-search evaluations of p (pooled over iterations and trials);
* N[n, t] = clip((S[n, t] - opt_p) / (clip_p - opt_p), -1, 1).

A method's per-trial score at the last iteration T is 100 * (1 - mean over test cases of
N[n, T]); its leaderboard score is the mean of those over trials. Scores depend on the pool:
report the pool with every number.
"""

import numpy as np

__all__ = ["best_so_far", "pool_baselines", "normalized", "normalized_scores"]


def best_so_far(F):
    """Running minimum along the iterations (axis 1); NaN counts as a failure (+inf)."""
    F = np.where(np.isnan(F), np.inf, np.asarray(F, dtype=float))
    return np.minimum.accumulate(F, axis=1)


def pool_baselines(by_method, random_method="random"):
    """``(opt, clip)`` of one test case from the evaluations of every method in the pool."""
    if random_method not in by_method:
        raise ValueError(f"the pool has no {random_method!r} method: clip_p is the median of "
                         "random-search evaluations")
    values = np.concatenate([np.ravel(np.asarray(F, float)) for F in by_method.values()])
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ValueError("no finite evaluation in the pool")
    opt = float(finite.min())
    opt -= 1e4 * np.spacing(max(abs(opt), np.finfo(float).tiny))
    clip = float(np.median(np.asarray(by_method[random_method], float)))
    return opt, clip


def normalized(S, opt, clip):
    """Bayesmark's normalised loss of best-so-far values ``S``, clipped to [-1, 1]."""
    with np.errstate(invalid="ignore", divide="ignore"):
        N = (np.asarray(S, float) - opt) / (clip - opt)
    return np.clip(np.nan_to_num(N, nan=1.0, posinf=1.0), -1.0, 1.0)


def normalized_scores(evaluations, random_method="random"):
    """Per-trial scores ``{method: array (n_trials,)}`` at the last iteration.

    Every method must have the same number of trials in every test case.
    """
    cases = list(evaluations)
    methods = sorted({m for case in cases for m in evaluations[case]})
    per_case = {m: [] for m in methods}
    for case in cases:
        opt, clip = pool_baselines(evaluations[case], random_method)
        for m in methods:
            if m not in evaluations[case]:
                raise ValueError(f"method {m!r} has no evaluations for test case {case!r}")
            S = best_so_far(evaluations[case][m])
            per_case[m].append(normalized(S[:, -1], opt, clip))
    scores = {}
    for m in methods:
        lengths = {len(v) for v in per_case[m]}
        if len(lengths) != 1:
            raise ValueError(f"method {m!r} has different numbers of trials across test cases")
        scores[m] = 100.0 * (1.0 - np.mean(per_case[m], axis=0))
    return scores
