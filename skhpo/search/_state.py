"""What one ``fit`` of a cross-validating search carries between its phases.

scikit-learn's ``BaseSearchCV.fit`` keeps its state in locals and hands the search only
``evaluate_candidates``; skhpo's searches need more in ``_run_search`` and
``_format_results`` (the data, the folds, the checkpoint, the progress context, their own
task parameters). All of it lives in one :class:`FitState`, which the search holds as
``_fit`` for the duration of the fit only (:meth:`~._fused_cv.FusedCVMixin._fitting`).
"""

from dataclasses import dataclass, field

from sklearn.model_selection._search import BaseSearchCV

from ..nets import spawn_seeds

__all__ = ["FitState", "sklearn_fit"]


@dataclass
class FitState:
    """The state of one ``fit``.

    Attributes
    ----------
    X, y : array-like
        The data ``fit`` got.
    fit_params : dict
        Its fit parameters for the estimator (``groups`` left out).
    groups : array-like or None
        The splitter's groups.
    n_splits : int
        Folds of the cross-validation.
    setup : object
        What the method drew before any training (its candidates and seeds, ...).
    checkpoint : skhpo.checkpoint.Checkpoint or None
        Where finished trainings are kept.
    ctx : object
        The progress context of the ``search`` phase (None without scikit-learn's
        callbacks).
    task_keys : set
        The parameters skhpo adds to each candidate (seed, guard, ...), removed again from
        everything the user sees.
    fit_times : list of list of float
        Per candidate and fold, the seconds of its fused training (0 where it trained in
        scikit-learn's own fit), in the order scikit-learn evaluated the candidates.
    timed : int
        How many of scikit-learn's fold results (in its order) have that added already.
    continued : list of tuple
        Per candidate scikit-learn cross-validated (a halving search's, ``cv_results_``
        order): the epochs its folds continued from (0: from the start) and why they did not
        continue ("" where they did, or had nothing to continue).
    records : list of tuple
        ``(train rows, record)`` of every fold the latest fused cross-validation call
        trained or loaded, candidate-major (:func:`~._fused_cv._fold_record`).
    refit_seed : int or None
        The seed of the refit of the best candidate.
    trainings : list of str
        Why each training of the search trained alone ("" where it trained in a fused
        group): the method's own trainings, then the cross-validation's folds.
    candidates : list of list of str
        The same, per candidate scikit-learn cross-validated (``cv_results_`` order), one
        entry per fold.
    trainer_jobs : int or None
        Set where the search's ``n_jobs`` goes to the fused engine's processes, which then
        train every fold (fused or alone), scikit-learn's cross-validation only loading and
        scoring them in this process; None where scikit-learn's own ``n_jobs`` applies.
    """

    X: object
    y: object
    fit_params: dict
    groups: object = None
    n_splits: int = 0
    setup: object = None
    checkpoint: object = None
    ctx: object = None
    task_keys: set = field(default_factory=set)
    fit_times: list = field(default_factory=list)
    refit_seed: int | None = None
    trainings: list = field(default_factory=list)
    candidates: list = field(default_factory=list)
    trainer_jobs: int | None = None
    timed: int = 0
    records: list = field(default_factory=list)
    continued: list = field(default_factory=list)

    @property
    def data(self):
        """``(X, y, fit_params)``."""
        return self.X, self.y, self.fit_params

    def spawn_seeds(self, rng, n):
        """``n`` task seeds from ``rng``, and one more kept for the refit."""
        seeds = spawn_seeds(rng, n + 1)
        self.refit_seed = seeds[-1]
        return seeds[:-1]


    def evaluated(self, folds):
        """Record the cross-validation of candidates: ``folds``, per candidate, why each of
        its folds trained alone ("" where fused)."""
        folds = [list(f) for f in folds]
        self.candidates += folds
        self.trainings += [r for f in folds for r in f]

    def engine_attributes(self):
        """The search's ``engine_`` (``"fused"``: every training fused, ``"sequential"``:
        none, ``"mixed"``), ``engine_reason_`` (what kept trainings from fusing, with how many,
        "" if nothing did), ``candidate_engines_`` and ``candidate_reasons_`` (the same per
        cross-validated candidate)."""
        engines = [_engine(f) for f in self.candidates]
        return {"engine_": _engine(self.trainings), "engine_reason_": _reasons(self.trainings),
                "candidate_engines_": engines,
                "candidate_reasons_": [_reasons(f) for f in self.candidates]}


def _engine(reasons):
    alone = sum(1 for r in reasons if r)
    return "sequential" if reasons and alone == len(reasons) else "mixed" if alone else "fused"


def _reasons(reasons):
    """``"reason (n of N trainings); ..."``, most frequent first, or ""."""
    counts = {}
    for r in reasons:
        if r:
            counts[r] = counts.get(r, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    return "; ".join(f"{r} ({n} of {len(reasons)} trainings)" for r, n in ranked)


def sklearn_fit(search, X, y=None, **params):
    """scikit-learn's ``BaseSearchCV.fit`` without its own parameter validation: the caller's
    ``fit`` carries ``_fit_context`` (validation, then scikit-learn's callback management)
    and has validated already, before its checks."""
    return BaseSearchCV.fit.__wrapped__(search, X, y, **params)
