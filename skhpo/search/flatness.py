"""FlatnessSearchCV: flatness-guided hyper-parameter optimisation (FGHPO).

The paper's Algorithm 1, step by step:

1. draw ``n_candidates`` configurations at random (``ParameterSampler``);
2. train each one for ``screen_epochs`` (one) epoch and read its sharpness bound S(h) off the
   trained net (:mod:`skhpo.probes.sharpness`); discard S that is not finite or not positive;
3. keep the ``n_finalists`` flattest (lowest S);
4. cross-validate those with the estimator's full budget and pick the best by CV score.
"""

import math
from functools import partial
from numbers import Integral
from typing import NamedTuple

import numpy as np
from sklearn.model_selection import ParameterSampler
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions

from ..fused import FusedTask
from ..hyper.space import check_space
from ..log import report
from ..nets import find_net, net_input
from ..probes.sharpness import AGGREGATES, BATCH_NORMS, VARIANTS, sharpness_bound
from ._cv import NetSearchCV
from ._progress import Phase
from ._trials import history_columns

__all__ = ["FlatnessSearchCV"]


class _Candidates(NamedTuple):
    """What the screening draws before any training: the candidates and their seeds."""

    candidates: list
    seeds: list


def _read_sharpness(fitted, X, **kwargs):
    """``(S(h), number of batches)`` of a fitted estimator (runs in the screening worker)."""
    net, _ = find_net(fitted)
    value, per_batch = sharpness_bound(net, net_input(fitted, X), **kwargs)
    return value, len(per_batch)


class FlatnessSearchCV(NetSearchCV):
    """Screen random candidates by a sharpness bound after one epoch; train only the flattest.

    FGHPO observes that configurations whose network is *flat* after a single epoch of
    training (a small norm of the penultimate activations relative to the output layer's
    weights) tend to generalise well. It samples ``n_candidates`` configurations, trains each
    for ``screen_epochs`` epoch, and spends the full training budget only on the
    ``n_finalists`` flattest, which are cross-validated like in ``RandomizedSearchCV``. The
    cost is ``n_candidates * screen_epochs`` cheap epochs plus ``n_finalists`` full
    cross-validations instead of ``n_candidates``.

    Parameters
    ----------
    estimator : skorch NeuralNet or Pipeline ending in one
        The net must end in an ``nn.Linear`` output layer (optionally followed by an
        element-wise activation such as softmax): the bound is read from it.
    param_distributions : dict or list of dicts
        As in ``RandomizedSearchCV``: parameter names (the estimator's ``get_params`` keys,
        e.g. ``lr``, ``module__width``, ``net__lr``) mapped to lists or scipy.stats
        distributions.
    n_candidates : int, default=50
        Configurations sampled and screened (the paper's N1). With only lists, at most the
        size of the grid.
    n_finalists : int, default=10
        Flattest configurations that are cross-validated (N2); ``<= n_candidates``.
    screen_epochs : int, default=1
        Training epochs before the sharpness is read (the paper: 1).
    sharpness : {"penultimate", "output", "product"}, default="penultimate"
        Which bound; see :mod:`skhpo.probes.sharpness`. ``penultimate`` is what produced the
        paper's results.
    batch_norm : {"frobenius", "rms"}, default="frobenius"
        Frobenius norms (faithful) or root-mean-square norms, which do not grow with the
        batch size (use ``"rms"`` when the batch size is searched).
    aggregate : {"max", "min", "mean"}, default="max"
        How per-batch values are combined (the paper: max).
    discard_nonpositive : bool, default=True
        Discard candidates whose bound is <= 0 ("no information"); non-finite bounds are always
        discarded.
    screen_params : dict or None, default=None
        Parameters set on every screening fit over the candidate's own, e.g.
        ``{"lr": 1e-3, "optimizer__weight_decay": 0.0}``: the screen then judges what is
        left (architecture, batch size) under one fixed optimiser, as the authors' Bayesmark
        code did (with ``aggregate="min"`` and ``discard_nonpositive=False``); the
        finalists' cross-validation always uses their own parameters. None: each candidate
        screens with its own parameters (the paper's Algorithm 1).
    scoring, refit, cv
        As in ``GridSearchCV`` (the finalists' cross-validation and the refit).
    n_jobs : int or None, default=None
        Trainings in parallel (joblib): the screening, the fused groups and the
        cross-validation. Results do not depend on it.
    engine : {"auto", "fused", "sequential"}, default="auto"
        How the trainings run, as in every skhpo search (docs/architecture.md): ``"auto"``
        trains candidates (and folds) that can fuse as stacked groups, each equal to its own
        fit to float32 rounding, and the others alone; ``"fused"`` raises before any training,
        naming the setting, if one cannot fuse; ``"sequential"`` trains every fit alone. The
        cross-validation's fits then load their fused folds, so scoring and ``cv_results_``
        stay scikit-learn's.
    checkpoint : str, path or None, default=None
        A folder in which every finished training is written as it finishes (atomically;
        see :mod:`skhpo.checkpoint`). Calling ``fit`` again with the same search, estimator,
        space, data and folder loads what it finds and trains only the rest, with results
        identical to an uninterrupted run (timings aside); a folder written by another
        search is refused before any training. Needs an int ``random_state``, a skorch net
        and no fit parameters. ``n_resumed_`` counts the trainings loaded.
    random_state : int, RandomState or None, default=None
        Controls the sampling and the seed of every training task (weights, shuffling), so
        results do not depend on ``n_jobs``. A net with its own ``random_state`` keeps it.
    verbose : int, default=0
        Log the screening when > 0 (the ``skhpo.flatness`` logger).
    pre_dispatch, error_score, return_train_score
        As in ``GridSearchCV``. ``error_score`` also applies to screening fits that raise
        (``"raise"`` re-raises).

    Attributes
    ----------
    cv_results_ : dict
        ``GridSearchCV``'s keys for the finalists (flattest first) plus ``sharpness``.
    best_params_, best_index_, best_score_, best_estimator_, refit_time_, scorer_,
    n_splits_, multimetric_
        As in ``GridSearchCV``; ``best_score_`` is the mean CV score of the best finalist.
    history_ : dict of lists
        One row per screened candidate: ``candidate``, ``params``, ``sharpness``, ``status``
        (``finalist``, ``screened_out``, ``discarded``, ``failed``), ``reason``,
        ``n_batches``, ``screen_time``, ``screen_epochs``, ``cv_epochs``, ``fused_group`` (the
        group it trained in, -1: alone) and ``engine_reason`` (why alone, "" if fused).
    finalists_ : list of dict
        Parameters of the finalists, flattest first (set by ``screen`` only).
    n_epochs_ : int
        Training epochs the search spent (screening + cross-validation + refit), counted
        from ``max_epochs`` (an upper bound if a callback stops training early).
    n_trainings_ : int
        Nets trained: the screened candidates, the finalists' CV fits and the refit.
    engine_ : {"fused", "sequential", "mixed"}
        How the search's trainings ran: all in fused groups, all alone, or some of each.
    engine_reason_ : str
        What kept trainings from fusing, most frequent first, each with how many trainings
        it kept alone ("" when every training fused); printed with ``engine="auto"`` and
        ``verbose >= 1``.
    candidate_engines_, candidate_reasons_ : list of str
        The same per candidate of ``cv_results_`` (over its cross-validation fits).

    Notes
    -----
    Deviations from the paper: the finalists are chosen by cross-validation rather than by a
    single validation split (the paper's code used the test split, a bug); the screening
    trains on the data passed to ``fit`` and never sees a score; ``alpha``-like parameters
    that the authors' Keras code ignored are applied when they are in the space. The default
    Frobenius bound grows like sqrt(batch size), which favours small batches when the batch
    size is searched; ``batch_norm="rms"`` removes that (not in the paper).

    References
    ----------
    Flatness-guided hyper-parameter optimization (FGHPO), anonymous submission; code by
    R. Yedida and T. Menzies.

    Examples
    --------
    >>> from scipy.stats import loguniform
    >>> from sklearn.datasets import load_iris
    >>> from skhpo import FlatnessSearchCV, TabularMLPClassifier
    >>> X, y = load_iris(return_X_y=True)
    >>> net = TabularMLPClassifier(max_epochs=5, width=16)
    >>> search = FlatnessSearchCV(net, {"lr": loguniform(1e-3, 1e-1)}, n_candidates=6,
    ...                           n_finalists=2, cv=2, random_state=0).fit(X, y)
    >>> sorted(search.best_params_), len(search.cv_results_["params"])
    (['lr'], 2)
    >>> search.n_trainings_  # 6 screens, 2 finalists x 2 folds, 1 refit
    11
    """

    _parameter_constraints: dict = {
        **NetSearchCV._parameter_constraints,
        "param_distributions": [dict, list],
        "n_candidates": [Interval(Integral, 1, None, closed="left")],
        "n_finalists": [Interval(Integral, 1, None, closed="left")],
        "screen_epochs": [Interval(Integral, 1, None, closed="left")],
        "sharpness": [StrOptions(set(VARIANTS))],
        "batch_norm": [StrOptions(set(BATCH_NORMS))],
        "aggregate": [StrOptions(set(AGGREGATES))],
        "discard_nonpositive": ["boolean"],
        "screen_params": [dict, None],
    }

    def __init__(self, estimator, param_distributions, *, n_candidates=50, n_finalists=10,
                 screen_epochs=1, sharpness="penultimate", batch_norm="frobenius",
                 aggregate="max", discard_nonpositive=True, screen_params=None, scoring=None,
                 refit=True, cv=None, n_jobs=None, engine="auto", checkpoint=None,
                 random_state=None, verbose=0, pre_dispatch="2*n_jobs", error_score=np.nan,
                 return_train_score=False):
        super().__init__(estimator=estimator, scoring=scoring, n_jobs=n_jobs, refit=refit,
                         cv=cv, verbose=verbose, pre_dispatch=pre_dispatch,
                         error_score=error_score, return_train_score=return_train_score)
        self.param_distributions = param_distributions
        self.n_candidates = n_candidates
        self.n_finalists = n_finalists
        self.screen_epochs = screen_epochs
        self.sharpness = sharpness
        self.batch_norm = batch_norm
        self.aggregate = aggregate
        self.discard_nonpositive = discard_nonpositive
        self.screen_params = screen_params
        self.engine = engine
        self.checkpoint = checkpoint
        self.random_state = random_state

    # -- before any training ----------------------------------------------------------------

    def _check_search_params(self):
        if self.n_finalists > self.n_candidates:
            raise ValueError(f"n_finalists={self.n_finalists} must be <= n_candidates="
                             f"{self.n_candidates}: only screened candidates can be finalists")

    def _setup_search(self, fit):
        """Sample the candidates and their seeds; build the first one's net without training
        to check that the bound can be read (a final ``nn.Linear``, finite inputs)."""
        check_space(self.param_distributions, prefix=find_net(self.estimator)[1])
        rng = check_random_state(self.random_state)
        candidates = list(ParameterSampler(self.param_distributions, self.n_candidates,
                                           random_state=rng))
        self._check_candidate_names(candidates)
        if self.screen_params:
            self._check_candidate_names([self.screen_params], where="screen_params")
        seeds = fit.spawn_seeds(rng, len(candidates))
        self._untrained_net(fit, candidates[0])
        return _Candidates(candidates, seeds)

    # -- the method -------------------------------------------------------------------------

    def screen(self, X, y=None, **params):
        """Steps 1-3 only: sample, train each candidate ``screen_epochs`` epoch(s), keep the
        ``n_finalists`` flattest; no cross-validation and no refit.

        Use it to rank configurations by flatness, or to hand the finalists to your own
        evaluation. The same checks as ``fit`` run first.

        Parameters
        ----------
        X, y, **params
            As in ``fit`` (``params`` go to the estimator's ``fit``).

        Returns
        -------
        self : object
            With ``finalists_`` (the finalists' parameters, flattest first) and ``history_``
            (one row per screened candidate; ``cv_epochs`` is 0).
        """
        self._validate_params()  # (fit validates through scikit-learn's _fit_context)
        with self._fitting(self._prepare(X, y, params)) as fit:
            screened = self._screen(fit)
        self.finalists_ = [fit.setup.candidates[i] for i in self._select(screened)]
        self.history_ = history_columns(screened)
        self.n_epochs_ = sum(row["screen_epochs"] for row in screened)
        self.n_trainings_ = len(screened)
        return self

    def _run_search(self, evaluate_candidates, *, callback_ctx=None):
        fit = self._fit
        with self._searching(callback_ctx):
            screened = self._screen(fit)
            finalists = self._select(screened)
            for i in finalists:
                screened[i]["cv_epochs"] = self._nominal_epochs(screened[i]["params"]) * \
                    fit.n_splits
            self.history_ = history_columns(screened)
            self.n_epochs_ = sum(row["screen_epochs"] + row["cv_epochs"] for row in screened)
            self.n_trainings_ = len(screened) + len(finalists) * fit.n_splits
            self._evaluate(evaluate_candidates,
                           [fit.setup.candidates[i] for i in finalists],
                           [fit.setup.seeds[i] for i in finalists],
                           more_results={"sharpness": [screened[i]["sharpness"]
                                                       for i in finalists]},
                           callback_ctx=callback_ctx)

    def _screen(self, fit):
        """Train every candidate ``screen_epochs`` epoch(s) and read S(h) (in parallel)."""
        candidates, seeds = fit.setup
        probe = partial(_read_sharpness, variant=self.sharpness, batch_norm=self.batch_norm,
                        aggregate_by=self.aggregate)
        report("flatness", self.verbose, f"screening {len(candidates)} candidates, "
               f"{self.screen_epochs} epoch(s) each")
        fixed = dict(self.screen_params or {})
        prefix = find_net(self.estimator)[1]
        overrides = {f"{prefix}max_epochs": self.screen_epochs,
                     f"{prefix}train_split": None, f"{prefix}verbose": 0}
        tasks = [FusedTask({**c, **fixed, **overrides}, seed=seed)
                 for c, seed in zip(candidates, seeds)]
        with Phase(self, fit.ctx, "screening", len(candidates)) as phase:
            outs = self._train_candidates(fit, tasks, probe, phase=phase)
        rows = []
        for i, (cand, out) in enumerate(zip(candidates, outs)):
            value, n_batches = out["value"] if out["value"] is not None else (math.nan, 0)
            rows.append({"candidate": i, "params": cand, "sharpness": value,
                         "status": "failed" if out["error"] else "", "reason": out["error"],
                         "n_batches": n_batches, "screen_time": out["time"],
                         "screen_epochs": self.screen_epochs, "cv_epochs": 0,
                         "fused_group": out["group"], "engine_reason": out["engine_reason"]})
        self._warn_failures([r["reason"] for r in rows if r["status"] == "failed"],
                            len(rows), "screening")
        return rows

    def _select(self, rows):
        """Discard uninformative bounds, keep the ``n_finalists`` flattest (lowest S)."""
        for row in rows:
            s = row["sharpness"]
            if row["status"] == "failed":
                continue
            if not math.isfinite(s):
                row["status"], row["reason"] = "discarded", f"sharpness is not finite ({s})"
            elif self.discard_nonpositive and s <= 0:
                row["status"], row["reason"] = "discarded", f"sharpness {s} <= 0 (no information)"
        valid = sorted((r for r in rows if not r["status"]), key=lambda r: r["sharpness"])
        if not valid:
            raise ValueError(self._nothing_left_message(rows))
        finalists = [r["candidate"] for r in valid[:self.n_finalists]]
        for r in valid:
            kept = r["candidate"] in finalists
            r["status"] = "finalist" if kept else "screened_out"
            if not kept:
                r["reason"] = f"not among the {self.n_finalists} flattest"
        return finalists

    def _nothing_left_message(self, rows):
        counts = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        first = next((r["reason"] for r in rows if r["reason"]), "")
        return (f"All {len(rows)} screened candidates were discarded or failed "
                f"({', '.join(f'{v} {k}' for k, v in counts.items())}); nothing left to "
                f"cross-validate. First reason: {first}")
