"""``FusedHalvingRandomSearchCV`` and ``FusedHalvingGridSearchCV``: scikit-learn's successive
halving searches, each rung's fits trained in fused groups.

scikit-learn's halving runs ``evaluate_candidates`` once per rung (its candidates with the
rung's resource: ``max_epochs`` set in each, or ``n_samples`` through a subsampling splitter).
The drop-ins hand it the same rungs, with each rung's (candidate, fold) trainings done first in
fused groups (:class:`~._fused_cv.FusedCVMixin`), each candidate's fits seeded from
``random_state`` with the same seed at every rung; the rungs, the survivors and every attribute
are scikit-learn's own (``n_resources_``, ``n_candidates_``, ``cv_results_["iter"]`` ...).
For any other estimator, or with ``engine="sequential"``, the class is scikit-learn's search.

With ``resource="max_epochs"`` (``"net__max_epochs"`` for a Pipeline's net ``net``) a
survivor is not trained again from the start at its next rung, as scikit-learn's halving
trains it: each of its folds continues in a fused group from the state it reached at the rung
before (weights, optimiser state and step counts, its generator's state, history, the guard's
reference loss, its learning-rate schedulers: :mod:`skhpo.fused._resume`), which gives,
bitwise, the model that training from the start for the new budget gives in the engine (a
model's arithmetic does not depend on its group). Where that would not be exact (callbacks
that keep state a continued training cannot restore, such as a user's own or
``EarlyStopping(load_best=True)``; a fold that trained alone;
``resource="n_samples"``, whose rungs train on other rows) the fold trains from the start,
and ``restart_reasons_`` says why, per candidate.
"""

import numpy as np
from sklearn.base import _fit_context
from sklearn.experimental import enable_halving_search_cv  # noqa: F401
from sklearn.model_selection import HalvingGridSearchCV, HalvingRandomSearchCV
from sklearn.model_selection._search_successive_halving import BaseSuccessiveHalving
from sklearn.utils import check_random_state
from sklearn.utils.validation import _num_samples

from ..fused import choose_engine
from ..fused.eligibility import data_reason
from ..nets import find_net
from ._drop_in import _FusedDropIn, with_engine
from ._fused_cv import Rung
from ._state import FitState, sklearn_fit

__all__ = ["FusedHalvingGridSearchCV", "FusedHalvingRandomSearchCV"]


class _FusedHalving(_FusedDropIn):
    """What both halving drop-ins add to scikit-learn's search."""

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None, **params):
        """As scikit-learn's ``fit``; each rung's fits of a fusible estimator train in fused
        groups first (see the class)."""
        fit = FitState(X, y, {k: v for k, v in params.items() if k != "groups"},
                       params.get("groups"))
        self._n_samples_orig = _num_samples(X)  # as BaseSuccessiveHalving.fit
        with self._fitting(fit), self._jobs_in_trainer(fit):
            sklearn_fit(self, X, y, **params)
        self.best_score_ = self.cv_results_["mean_test_score"][self.best_index_]
        return self

    def _run_search(self, evaluate_candidates, *, callback_ctx=None):
        """scikit-learn's halving, each rung through :meth:`_evaluate` (fused where the
        estimator fuses, or where a checkpoint keeps the fits)."""
        fit = self._fit
        decision = choose_engine(self.estimator, self.engine, also=data_reason(fit.X),
                                 what=f"{type(self).__name__}'s estimator")
        fit.n_splits = self.n_splits_
        rng = check_random_state(self.random_state)
        seeds, last = {}, {}  # per candidate: its seed; its folds at its latest rung

        def rung(candidate_params, cv=None, more_results=None, callback_ctx=None):
            candidates = list(candidate_params)
            if decision.engine == "sequential" and fit.checkpoint is None:
                fit.evaluated([[decision.reason] * self.n_splits_] * len(candidates))
                why = f"it trains alone ({decision.reason})" if fit.continued else ""
                fit.continued += [(0, why)] * len(candidates)
                return evaluate_candidates(candidates, cv, more_results=more_results,
                                           callback_ctx=callback_ctx)
            keys = [self._candidate_key(c) for c in candidates]
            new = [k for k in keys if k not in seeds]
            if new:  # the first rung holds every candidate: one seed each, kept after
                seeds.update(zip(new, fit.spawn_seeds(rng, len(new))))
            results = self._evaluate(
                evaluate_candidates, candidates, [seeds[k] for k in keys],
                more_results=more_results, callback_ctx=callback_ctx, rung=Rung(
                    cv, lambda c, rows: self._start_of(last.get(keys[c]), rows)))
            n = len(fit.records) // max(1, len(candidates))
            for c, key in enumerate(keys):
                last[key] = fit.records[c * n:(c + 1) * n]
                folds = [record for _, record in last[key]]
                reasons = dict.fromkeys(r["restart"] for r in folds if r["restart"])
                fit.continued.append((min(r["start"] for r in folds), "; ".join(reasons)))
            return results

        out = BaseSuccessiveHalving._run_search(self, rung, callback_ctx=callback_ctx)
        self.candidate_starts_ = [start for start, _ in fit.continued]
        self.restart_reasons_ = [why for _, why in fit.continued]
        restarted = [why for why in self.restart_reasons_ if why]
        if self.verbose >= 1 and restarted:
            print(f"[{type(self).__name__}] {len(restarted)} survivor(s) trained again from "
                  f"the start: {max(set(restarted), key=restarted.count)}")
        return out

    def _start_of(self, folds, rows):
        """``(start, why)`` for a candidate's fold at its next rung: the state its training
        reached at the rung before (``folds``: that rung's ``(rows, record)``), to continue
        (:attr:`skhpo.fused.FusedTask.start`), or None and why it trains from the start
        ("" at its first rung)."""
        if folds is None:
            return None, ""
        epochs = f"{find_net(self.estimator)[1]}max_epochs"  # the net's, in a Pipeline too
        if self.resource != epochs:
            return None, (f"resource={self.resource!r}: each rung trains on other data "
                          f"(only resource={epochs!r} continues)")
        for before, record in folds:
            if len(before) == len(rows) and np.array_equal(before, rows):
                if record["error"]:
                    return None, f"its previous rung failed ({record['error']})"
                if record["reason"]:
                    return None, f"its previous rung trained alone ({record['reason']})"
                if record.get("carry") is None:
                    return None, ("its previous rung's training, loaded from the checkpoint, "
                                  "lacks what continuing needs")
                return {**record["state"], **record["carry"]}, ""
        return None, "its fold's rows differ from its previous rung's (a reshuffling cv)"

    def _candidate_key(self, candidate):
        """A candidate without the rung's resource, as a key that is the same at every rung."""
        return repr(sorted((k, repr(v)) for k, v in candidate.items() if k != self.resource))


_HALVING_ATTRIBUTES = """    Attributes
    ----------
    cv_results_, best_params_, best_index_, best_score_, best_estimator_, refit_time_, \
scorer_, n_splits_, multimetric_, n_resources_, n_candidates_, n_remaining_candidates_, \
max_resources_, min_resources_, n_iterations_, n_possible_iterations_, \
n_required_iterations_
        As in scikit-learn's halving search (``cv_results_`` with ``iter`` and
        ``n_resources``).
    engine_ : {"fused", "sequential", "mixed"}
        How the search's trainings ran: all in fused groups, all alone, or some of each.
    engine_reason_ : str
        What kept trainings from fusing, most frequent first, each with how many trainings
        it kept alone ("" when every training fused).
    candidate_engines_, candidate_reasons_ : list of str
        The same per row of ``cv_results_`` (a candidate at one rung).
    n_resumed_ : int
        Fits loaded from ``checkpoint`` (0 without one).
    candidate_starts_ : list of int
        Per row of ``cv_results_``: the epochs its folds continued from (its previous rung's
        ``max_epochs``), 0 where they trained from the start.
    restart_reasons_ : list of str
        Per row of ``cv_results_``: why a survivor's folds trained from the start instead of
        continuing ("" where they continued, and at a candidate's first rung).
"""

_ENGINE_PARAMETERS = """    engine : {"auto", "fused", "sequential"}, default="auto"
        ``"auto"``: fuse where the engine can, else scikit-learn's fits; ``"fused"``: a
        ``ValueError`` before any training if the estimator cannot fuse; ``"sequential"``:
        exactly scikit-learn's search.
    checkpoint : str, path or None, default=None
        A folder that keeps every finished fit of every rung, so that an interrupted ``fit``
        resumes without retraining it (docs/core.md). Needs an int ``random_state``.
"""


class FusedHalvingRandomSearchCV(_FusedHalving, HalvingRandomSearchCV):
    __doc__ = f"""scikit-learn's ``HalvingRandomSearchCV`` with each rung's fits of skorch
    nets trained in fused groups.

    Same signature, rungs, survivors and attributes as ``HalvingRandomSearchCV``, plus
    ``engine`` and ``checkpoint``. With ``resource="max_epochs"`` (a skorch net's epochs) or
    ``"n_samples"``; every candidate's fits are seeded from ``random_state``, with the same
    seed at every rung, and equal the same seeded fits trained one by one to float32
    rounding. With ``resource="max_epochs"`` a survivor's folds continue from the epochs
    they reached at its previous rung instead of training again from the start (the same
    models; ``candidate_starts_``, ``restart_reasons_``).

    Parameters
    ----------
    estimator, param_distributions, n_candidates, factor, resource, max_resources, \
min_resources, aggressive_elimination, cv, scoring, refit, error_score, return_train_score, \
random_state, n_jobs, verbose
        As in ``HalvingRandomSearchCV``.
{_ENGINE_PARAMETERS}
{_HALVING_ATTRIBUTES}
    Examples
    --------
    >>> from scipy.stats import loguniform
    >>> from sklearn.datasets import load_iris
    >>> from skhpo import FusedHalvingRandomSearchCV, TabularMLPClassifier
    >>> X, y = load_iris(return_X_y=True)
    >>> search = FusedHalvingRandomSearchCV(
    ...     TabularMLPClassifier(), {{"lr": loguniform(1e-3, 1e-1)}}, n_candidates=6,
    ...     resource="max_epochs", min_resources=2, max_resources=6, cv=2,
    ...     random_state=0).fit(X, y)
    >>> search.n_resources_, search.n_candidates_
    ([2, 6], [6, 2])
    """

    _parameter_constraints: dict = with_engine(HalvingRandomSearchCV._parameter_constraints)

    def __init__(self, estimator, param_distributions, *, n_candidates="exhaust", factor=3,
                 resource="n_samples", max_resources="auto", min_resources="smallest",
                 aggressive_elimination=False, cv=5, scoring=None, refit=True,
                 error_score=np.nan, return_train_score=True, random_state=None, n_jobs=None,
                 verbose=0, engine="auto", checkpoint=None):
        super().__init__(estimator, param_distributions, n_candidates=n_candidates,
                         factor=factor, resource=resource, max_resources=max_resources,
                         min_resources=min_resources,
                         aggressive_elimination=aggressive_elimination, cv=cv,
                         scoring=scoring, refit=refit, error_score=error_score,
                         return_train_score=return_train_score, random_state=random_state,
                         n_jobs=n_jobs, verbose=verbose)
        self.engine = engine
        self.checkpoint = checkpoint


class FusedHalvingGridSearchCV(_FusedHalving, HalvingGridSearchCV):
    __doc__ = f"""scikit-learn's ``HalvingGridSearchCV`` with each rung's fits of skorch nets
    trained in fused groups.

    Same signature, rungs, survivors and attributes as ``HalvingGridSearchCV``, plus
    ``engine`` and ``checkpoint``; with ``resource="max_epochs"`` a survivor's folds continue
    from the epochs they reached at its previous rung (``candidate_starts_``,
    ``restart_reasons_``); ``random_state`` (scikit-learn's, for the subsampling of
    ``resource="n_samples"``) also seeds every candidate's fits, with the same seed at every
    rung (None: fresh seeds per ``fit``).

    Parameters
    ----------
    estimator, param_grid, factor, resource, max_resources, min_resources, \
aggressive_elimination, cv, scoring, refit, error_score, return_train_score, random_state, \
n_jobs, verbose
        As in ``HalvingGridSearchCV``.
{_ENGINE_PARAMETERS}
{_HALVING_ATTRIBUTES}
    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from skhpo import FusedHalvingGridSearchCV, TabularMLPClassifier
    >>> X, y = load_iris(return_X_y=True)
    >>> search = FusedHalvingGridSearchCV(
    ...     TabularMLPClassifier(), {{"lr": [1e-3, 1e-2, 3e-2, 1e-1]}},
    ...     resource="max_epochs", min_resources=2, max_resources=6, cv=2,
    ...     random_state=0).fit(X, y)
    >>> search.n_resources_, search.n_candidates_
    ([2, 6], [4, 2])
    """

    _parameter_constraints: dict = with_engine(HalvingGridSearchCV._parameter_constraints)

    def __init__(self, estimator, param_grid, *, factor=3, resource="n_samples",
                 max_resources="auto", min_resources="exhaust", aggressive_elimination=False,
                 cv=5, scoring=None, refit=True, error_score=np.nan, return_train_score=True,
                 random_state=None, n_jobs=None, verbose=0, engine="auto", checkpoint=None):
        super().__init__(estimator, param_grid, factor=factor, resource=resource,
                         max_resources=max_resources, min_resources=min_resources,
                         aggressive_elimination=aggressive_elimination, cv=cv,
                         scoring=scoring, refit=refit, error_score=error_score,
                         return_train_score=return_train_score, random_state=random_state,
                         n_jobs=n_jobs, verbose=verbose)
        self.engine = engine
        self.checkpoint = checkpoint


#: scikit-learn's halving searches and their drop-ins (:func:`~.fused_search.as_fused`)
HALVING_DROP_INS = {HalvingRandomSearchCV: FusedHalvingRandomSearchCV,
                    HalvingGridSearchCV: FusedHalvingGridSearchCV}
