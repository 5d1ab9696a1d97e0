"""What the searches share below their templates: checks of the data a fit gets, one
training run in a worker (:func:`run_trial`), and the tables the user reads
(:func:`results_table` for ``cv_results_``, :func:`history_columns` for ``history_``).
"""

import os
import sys
import time
import warnings

import numpy as np
from scipy.stats import rankdata
from sklearn.base import clone
from sklearn.utils.validation import _num_samples

from ..nets import TrainingDivergedError, free_estimator

__all__ = ["check_finite_input", "check_fit_data", "history_columns", "results_table",
           "run_trial", "warn"]

#: the folders whose frames a warning skips to point at the user's line
_INTERNAL = tuple(os.path.dirname(m.__file__) + os.sep for m in (
    sys.modules["skhpo"], sys.modules["sklearn"], sys.modules["joblib"]))

def check_finite_input(X, where="X"):
    """Raise a ``ValueError`` if a numeric array ``X`` holds NaN or infinity."""
    try:
        arr = np.asarray(X)
    except Exception:  # dicts, datasets: the net's own loader validates them
        return
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        n_bad = int((~np.isfinite(arr)).sum())
        raise ValueError(f"{where} contains {n_bad} NaN or infinite values; the net cannot "
                         "train on them (impute or drop them, e.g. with a SimpleImputer step "
                         "in a Pipeline)")


def check_fit_data(X, y, bare_net):
    """Raise a ``ValueError`` for data no net can train on: no samples, X and y of different
    lengths, or (``bare_net``: no Pipeline step in front) NaN or infinity in X."""
    n_x = _length(X)
    if n_x == 0:
        raise ValueError("X has 0 samples; at least one is required")
    n_y = None if y is None else _length(y)
    if n_x is not None and n_y is not None and n_x != n_y:
        raise ValueError(f"X and y have inconsistent numbers of samples: {n_x} and {n_y}")
    if bare_net:
        check_finite_input(X)


def _length(a):
    try:
        return _num_samples(a)
    except TypeError:
        return None


def run_trial(estimator, candidate, task_params, data, error_score, probe=None):
    """Fit one candidate (in a worker) and optionally read something off it.

    Parameters
    ----------
    estimator : estimator
        Cloned, then given ``candidate`` (cloned too: an estimator in the space is never
        fitted itself) and ``task_params`` (:func:`skhpo.nets.trial_params`).
    candidate, task_params : dict
    data : tuple
        ``(X, y, fit_params)``.
    error_score : "raise" or number
        ``"raise"``: every error propagates; else it is recorded.
    probe : callable or None, default=None
        ``probe(fitted_estimator, X)``: what to read off the fitted model.

    Returns
    -------
    dict
        ``value`` (what ``probe`` returned, else None), ``error`` ("" on success, else the
        reason, starting "diverged:" for a non-finite loss) and ``time``. The model is
        freed before returning.
    """
    X, y, fit_params = data
    start = time.perf_counter()
    est = clone(estimator).set_params(**clone(candidate, safe=False), **task_params)
    value, error = None, ""
    try:
        est.fit(X, y, **fit_params)
        value = probe(est, X) if probe is not None else None
    except Exception as exc:
        if error_score == "raise":
            raise
        diverged = isinstance(exc, TrainingDivergedError)
        error = f"diverged: {exc}" if diverged else f"{type(exc).__name__}: {exc}"
    finally:
        free_estimator(est)  # tolerates a net that never initialised
    return {"value": value, "error": error, "time": time.perf_counter() - start}


def results_table(params, scores, fit_times=None, score_times=None):
    """``cv_results_`` in GridSearchCV's schema for rows scored once (one split), for the
    methods that do not cross-validate: ``params`` (list of dicts), their ``scores`` (NaN for
    a failed row, ranked last as scikit-learn does) and optional per-row times."""
    n = len(params)
    res = {}
    for name, times in (("fit", fit_times), ("score", score_times)):
        res[f"mean_{name}_time"] = np.zeros(n) if times is None else np.asarray(times, float)
        res[f"std_{name}_time"] = np.zeros(n)
    for k in sorted({k for p in params for k in p}):
        col = np.ma.MaskedArray(np.empty(n, dtype=object), mask=[k not in p for p in params])
        for i, p in enumerate(params):
            if k in p:
                col[i] = p[k]
        res[f"param_{k}"] = col
    scores = np.asarray(scores, dtype=float)
    if np.isnan(scores).all():
        rank = np.ones(n, dtype=np.int32)
    else:
        filled = np.where(np.isnan(scores), np.nanmin(scores) - 1, scores)
        rank = rankdata(-filled, method="min").astype(np.int32)
    res.update({"params": list(params), "split0_test_score": scores,
                "mean_test_score": scores.copy(), "std_test_score": np.zeros(n),
                "rank_test_score": rank})
    return res


def history_columns(rows):
    """A list of row dicts -> a dict of equal-length lists (``pd.DataFrame``-ready)."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return {k: [row.get(k) for row in rows] for k in keys}


def warn(message, category):
    """``warnings.warn`` pointing at the line of the user's code that called into skhpo
    (the first frame outside skhpo, scikit-learn and joblib)."""
    frame, level = sys._getframe(1), 2  # stacklevel 2: the caller of this function
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
