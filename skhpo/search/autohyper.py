"""AutoHyperSearchCV: autoHyper's trust-region walk on a stable-rank response surface.

The paper's Algorithm 1 (Tuli, Hosseini and Plataniotis, 2021), with the constants of the
authors' code (listed in docs/autohyper.md):

1. around the current point, form the 3^d neighbours lambda_i * alpha_i^p, p in {-1, 0, +1}
   (0 * alpha^{+1} becomes ``zero_step``);
2. train every neighbour not yet cached for ``epochs_per_trial`` epochs on the training data
   only and read Z (:mod:`skhpo.probes.stable_rank`): the fraction of layers with no low-rank
   structure, averaged over the epochs;
3. *start phase* (while every neighbour has Z < ``start_threshold``, i.e. even the smallest
   already learns): move to the neighbour with the largest Z (first in row-major order; all
   minus if that is the centre). *Descent* (from then on): move to the neighbour with the
   smallest Z (last in row-major order; all plus if that is the centre) and append that Z to
   the history;
4. when cumprod(history)^``power`` falls below ``plateau``, shrink each factor
   alpha <- 1 + (alpha - 1) * ``shrink``; a hyper-parameter stops once its factor is within
   ``stop_tol`` of 1, the walk when all have. The result is the final point.

No validation data is used by the walk; the final point is then cross-validated (for an honest
``best_score_``) and refitted with the estimator's own ``max_epochs``.
"""

import itertools
import math
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from typing import NamedTuple

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from torch import nn

from ..fused import FusedTask
from ..hyper.space import parse_name, read_dimension
from ..log import report
from ..nets import find_net
from ..probes.stable_rank import StableRankRecorder, layer_matrices
from ._cv import NetSearchCV
from ._progress import Phase
from ._trials import history_columns, warn

__all__ = ["AutoHyperSearchCV", "HyperParameter", "WalkSettings", "parse_params",
           "trust_region_walk"]

#: the default factor shrink, exp(-2.5)
SHRINK = math.exp(-2.5)
#: defaults of the authors' code by the kind of parameter: (start, factor, minimum, low, high)
_DEFAULTS = {"lr": (1e-4, 1.45, 1e-6, 1e-7, 10.0),
             "weight_decay": (0.0, 2.0, 0.0, 0.0, 1.0)}


class HyperParameter:
    """One tuned hyper-parameter: ``start`` value, step ``factor`` (> 1), ``minimum`` (the
    start phase ends below it) and hard bounds ``low``/``high`` that proposals are clipped to.
    """

    def __init__(self, name, start, factor, minimum=0.0, low=0.0, high=math.inf):
        self.name, self.start, self.factor = name, start, factor
        self.minimum, self.low, self.high = minimum, low, high

    def __repr__(self):
        return (f"HyperParameter({self.name!r}, start={self.start}, factor={self.factor}, "
                f"minimum={self.minimum}, low={self.low}, high={self.high})")


def _kind(name):
    last = name.rsplit("__", 1)[-1]
    return "lr" if last == "lr" else "weight_decay" if last == "weight_decay" else None


def parse_params(param_bounds, prefix=""):
    """``param_bounds`` of :class:`AutoHyperSearchCV` -> a list of :class:`HyperParameter`.

    Each name (the estimator's ``get_params`` key) maps to ``None`` (the defaults of its
    kind: names ending in ``lr`` or ``weight_decay``), to the shared grammar of
    :func:`skhpo.hyper.space.read_dimension` (a ``uniform`` / ``loguniform`` distribution or
    a ``(low, high[, start])`` tuple: the walk's bounds, starting at ``start``, else at the
    kind's default start clipped into them, else at ``low``; a one-value list ``[start]`` or
    a number: the start), or to a dict of the walk's own settings with any of ``start``,
    ``factor``, ``minimum``, ``low``, ``high``. A list of names means defaults for all.
    Errors name the parameter and what is accepted.
    """
    if isinstance(param_bounds, str) or not isinstance(param_bounds, (Mapping, Sequence)):
        raise ValueError("param_bounds must be a dict {name: spec} or a list of names, got "
                         f"{type(param_bounds).__name__}")
    items = param_bounds.items() if isinstance(param_bounds, Mapping) else \
        [(name, None) for name in param_bounds]
    out = [_hyperparameter(name, spec, prefix) for name, spec in items]
    if not out:
        raise ValueError("param_bounds is empty: name at least one hyper-parameter to tune")
    return out


def _hyperparameter(name, spec, prefix):
    """One entry of ``param_bounds`` (see :func:`parse_params`)."""
    start, factor, minimum, low, high = _DEFAULTS.get(_kind(name),
                                                      (None, None, 0.0, 0.0, math.inf))
    if isinstance(spec, Mapping):  # the walk's own settings
        unknown = set(spec) - {"start", "factor", "minimum", "low", "high"}
        if unknown:
            raise ValueError(f"param_bounds[{name!r}]: unknown keys {sorted(unknown)}; "
                             "accepted: start, factor, minimum, low, high")
        start, factor, minimum = (spec.get(k, v) for k, v in
                                  (("start", start), ("factor", factor), ("minimum", minimum)))
        low, high = spec.get("low", low), spec.get("high", high)
    elif spec is not None:  # the shared grammar: a range and / or a start value
        own = prefix if isinstance(name, str) and name.startswith(prefix) else ""
        dim = read_dimension("param_bounds", parse_name(name, own, "param_bounds"), spec)
        if dim.box is not None:
            low, high = dim.box.lo, dim.box.hi
            start = low if start is None else min(max(start, low), high)
        start = dim.init if dim.init is not None else start
    _check_walk_settings(name, start, factor, minimum, (low, high))
    return HyperParameter(name, float(start), float(factor), float(minimum), float(low),
                          float(high))


def _check_walk_settings(name, start, factor, minimum, bounds):
    if start is None or factor is None:
        raise ValueError(f"param_bounds[{name!r}]: no default start value and step factor "
                         "for this parameter (defaults exist for names ending in 'lr' and "
                         "'weight_decay'); give {'start': ..., 'factor': ...}")
    for label, value in (("start", start), ("factor", factor), ("minimum", minimum)):
        if not isinstance(value, Real) or not math.isfinite(value):
            raise ValueError(f"param_bounds[{name!r}]: {label} must be a finite number, got "
                             f"{value!r}")
    if factor <= 1:
        raise ValueError(f"param_bounds[{name!r}]: the step factor must be > 1 (the walk "
                         f"multiplies and divides by it), got {factor}")
    if start < 0 or (start == 0 and minimum > 0):
        raise ValueError(f"param_bounds[{name!r}]: the scale is multiplicative, so start must "
                         f"be > 0 (or 0 with minimum 0, which steps up to 1e-7), got {start}")
    low, high = bounds
    if not low <= start <= high:
        raise ValueError(f"param_bounds[{name!r}]: start {start} is outside [{low}, {high}]")


def _key(point):
    """Cache key of a point: its log-values to 1e-9 (lattice values such as 1e-4 * 1.45^k
    have short decimal expansions, so rounding decimals would split equal points)."""
    return tuple(round(math.log(v) * 1e9) if v > 0 else None for v in point)


def _move(point, factors, powers, hparams, zero_step):
    out = []
    for value, alpha, p, h in zip(point, factors, powers, hparams):
        new = zero_step if (value == 0 and p == 1) else value * alpha ** p
        out.append(min(max(new, h.low), h.high))
    return tuple(out)


class WalkSettings(NamedTuple):
    """The constants of the walk (the authors' code; :class:`AutoHyperSearchCV` documents
    each)."""

    start_threshold: float = 0.85
    power: float = 0.8
    plateau: float = 5e-3
    shrink: float = SHRINK
    stop_tol: float = 5e-3
    max_trials: int = 200
    zero_step: float = 1e-7


def trust_region_walk(evaluate, hparams, settings=None):
    """autoHyper's walk over ``hparams`` with ``evaluate(points) -> [Z, ...]`` (a batch: the
    new neighbours of one step, which may be evaluated in parallel), under ``settings``
    (:class:`WalkSettings`; None: the defaults).

    Returns ``(point, steps, trials, stop_reason)``: the final point, one record per step
    (centre, Z of the centre if known, phase, move, factors) and the cache of evaluated points
    in evaluation order (point -> (Z, step)). ``stop_reason`` is ``"converged"`` or
    ``"max_trials"``.
    """
    start_threshold, power, plateau, shrink, stop_tol, max_trials, zero_step = \
        settings or WalkSettings()
    d = len(hparams)
    point = tuple(h.start for h in hparams)
    factors = [h.factor for h in hparams]
    stopped = [False] * d
    establish = True
    history = []  # minima of the descent phase
    cache, steps = {}, []
    powers = list(itertools.product((-1, 0, 1), repeat=d))
    centre = (0,) * d
    while True:
        neighbours = [_move(point, factors, p, hparams, zero_step) for p in powers]
        new = list(dict.fromkeys(n for n in neighbours if _key(n) not in cache))
        if len(cache) + len(new) > max_trials:
            return point, steps, cache, "max_trials"
        for n, z in zip(new, evaluate(new)):
            cache[_key(n)] = (n, float(z), len(steps))
        B = [cache[_key(n)][1] for n in neighbours]
        start_move = None
        if establish and max(B) < start_threshold and all(
                v >= h.minimum for v, h in zip(point, hparams)):
            best = powers[int(np.argmax(B))]  # first maximum
            start_move = tuple([-1] * d) if best == centre else best
            if _move(point, factors, start_move, hparams, zero_step) == point:
                start_move = None  # held at the bounds: the start phase cannot go on
        if start_move is not None:
            phase, move = "start", start_move
        else:
            establish = False
            phase = "descent"
            best = powers[len(B) - 1 - int(np.argmin(B[::-1]))]  # last minimum
            history.append(min(B))
            move = tuple([1] * d) if best == centre else best
        steps.append({"step": len(steps), "point": point, "z": B[powers.index(centre)],
                      "phase": phase, "move": move, "factors": tuple(factors)})
        point = _move(point, factors, move, hparams, zero_step)
        if establish:
            continue
        if np.prod(history) ** power < plateau:
            for i in range(d):
                if math.isclose(factors[i], 1.0, rel_tol=1e-5, abs_tol=stop_tol):
                    stopped[i] = True
                factors[i] = 1 + (factors[i] - 1) * shrink
        if all(stopped):
            return point, steps, cache, "converged"


class AutoHyperSearchCV(NetSearchCV):
    """autoHyper: tune the learning rate (and weight decay, or any multiplicative
    hyper-parameter) from how much low-rank structure the layers gain in a few epochs.

    Each trial trains the net from a fresh initialisation for ``epochs_per_trial`` epochs on
    the training data and reads Z, the fraction of layers whose weights EVBMF finds to be pure
    noise (Z = 1: nothing learned; 0: every layer has structure). A trust-region walk
    multiplies and divides each hyper-parameter by its step factor, first down until "nothing
    learned" is within reach, then towards lower Z until the cumulative product of the minima
    plateaus; the factors then shrink until they are within ``stop_tol`` of 1. No validation
    data is used; the chosen point is cross-validated once for ``best_score_`` and refitted.

    Parameters
    ----------
    estimator : skorch NeuralNet or Pipeline ending in one
        Its module needs an ``nn.Conv2d`` or a hidden ``nn.Linear`` (see ``include_linear``).
    param_bounds : dict or list
        The hyper-parameters to tune, by the estimator's ``get_params`` names (``lr``,
        ``optimizer__weight_decay``, ``net__lr``), each mapped to:

        - ``None``: the defaults of its kind (the authors' code): names ending in ``lr``
          start at 1e-4, factor 1.45, minimum 1e-6, bounds [1e-7, 10]; names ending in
          ``weight_decay`` start at 0, factor 2.0, minimum 0, bounds [0, 1];
        - a range, as every skhpo search reads one: ``loguniform(low, high)``,
          ``uniform(low, width)`` or ``(low, high[, start])``: the walk's bounds, starting
          at ``start``, else at the kind's default clipped into them, else at ``low``;
        - a start value: ``[start]`` or a number;
        - the walk's own settings: a dict with any of ``start``, ``factor``, ``minimum``,
          ``low``, ``high``.

        Other names than learning rates and weight decays need a start and a factor. A list
        of names means defaults for all. Any number of hyper-parameters (3^d neighbours per
        step).
    epochs_per_trial : int, default=5
        Epochs of each trial (the paper's T).
    start_threshold : float, default=0.85
        The start phase walks down until some neighbour has Z >= this.
    power : float, default=0.8
        Exponent of the cumulative product of the descent minima.
    plateau : float, default=5e-3
        The factors shrink while cumprod^power is below this.
    shrink : float, default=exp(-2.5)
        alpha <- 1 + (alpha - 1) * shrink.
    stop_tol : float, default=5e-3
        A hyper-parameter stops when |alpha - 1| <= stop_tol; the walk when all have.
    max_trials : int, default=200
        Safeguard: the walk stops (with a warning) before it would exceed this many trials.
    zero_step : float, default=1e-7
        The value a hyper-parameter at exactly 0 steps up to.
    grey_stem : {"skip", "read"}, default="skip"
        A convolution that reads one input channel (the stem of a net on grey images) is not
        read when the net has other convolutions: its unfoldings (1 x k²·C_out and
        C_out x k²) show structure only at learning rates that are too high, so reading them
        held Z at a floor and drove the walk to lr 1e-2-4e-2 on digits images (test accuracy
        0.89-0.97, against 0.9867 with the stem skipped, 3 seeds; docs/autohyper.md).
        ``"read"`` reads every convolution (the paper's rule).
    include_linear : {"auto", True, False}, default="auto"
        Which layers Z reads: convolution kernels always (two unfoldings each); ``nn.Linear``
        layers other than the output layer when ``True``, or with ``"auto"`` when the net has
        no convolution (an MLP; our extension of the paper, which reads convolutions only).
        The output layer is read only if nothing else is left.
    scoring, refit, cv
        As in ``GridSearchCV`` (the final point's cross-validation and refit).
    n_jobs : int or None, default=None
        Trainings in parallel (joblib): each step's new neighbours, the fused groups and the
        cross-validation. Results do not depend on it.
    engine : {"auto", "fused", "sequential"}, default="auto"
        How the trainings run, as in every skhpo search (docs/architecture.md): ``"auto"``
        trains a step's new neighbours (and the final CV's folds) that can fuse as stacked
        groups, Z read from each model's weights at every epoch end, and the others alone;
        ``"fused"`` raises before any training if one cannot fuse; ``"sequential"``: one fit
        at a time.
    checkpoint : str, path or None, default=None
        A folder that keeps every finished training, so that an interrupted ``fit``
        resumes without retraining it (as in :class:`FlatnessSearchCV`; docs/core.md).
    random_state : int, RandomState or None, default=None
        Every trial starts from the same seeded initialisation and data order (as the authors'
        code does, so that Z changes only with the hyper-parameters); the CV and refit get
        derived seeds.
    verbose : int, default=0
        Log every trial when > 0 (the ``skhpo.autohyper`` logger).
    pre_dispatch, error_score
        As in ``GridSearchCV``.

    Attributes
    ----------
    best_params_ : dict
        The walk's final point.
    best_score_ : float
        Mean CV score of the final point (the walk itself never sees validation data).
    cv_results_ : dict
        ``GridSearchCV``'s keys for the cross-validated final point, plus ``stable_rank`` (its
        Z if the walk trained it, else NaN).
    best_estimator_, best_index_, refit_time_, scorer_, n_splits_, multimetric_
        As in ``GridSearchCV``.
    history_ : dict of lists
        One row per trial: ``trial``, ``params``, ``z``, ``z_epochs`` (Z_t per epoch),
        ``ranks`` (rank per layer/unfolding at the last epoch), ``status`` (``ok`` or
        ``diverged``, which counts as Z = 1), ``reason``, ``epochs``, ``time``,
        ``fused_group`` (-1: trained alone), ``engine_reason`` (why alone), ``step``,
        ``phase``.
    steps_ : dict of lists
        One row per step of the walk: ``step``, ``point``, ``z`` (of the centre), ``phase``,
        ``move`` (powers), ``factors``.
    stop_reason_ : str
        ``"converged"`` or ``"max_trials"``.
    n_trials_ : int
    n_epochs_ : int
        Trials x epochs_per_trial + the final CV + the refit.
    n_trainings_ : int
        Nets trained: the trials, the final point's CV fits and the refit.
    engine_ : {"fused", "sequential", "mixed"}
        How the search's trainings ran: all in fused groups, all alone, or some of each.
    engine_reason_ : str
        What kept trainings from fusing, most frequent first, each with how many trainings
        it kept alone ("" when every training fused); printed with ``engine="auto"`` and
        ``verbose >= 1``.
    candidate_engines_, candidate_reasons_ : list of str
        The same per candidate of ``cv_results_`` (over its cross-validation fits).

    References
    ----------
    M. Tuli, M. S. Hosseini, K. N. Plataniotis. Towards Robust and Automatic Hyper-Parameter
    Tuning. OPT 2021 workshop, arXiv:2111.14056.

    Examples
    --------
    >>> from scipy.stats import loguniform
    >>> from sklearn.datasets import load_iris
    >>> from skhpo import AutoHyperSearchCV, TabularMLPClassifier
    >>> X, y = load_iris(return_X_y=True)
    >>> net = TabularMLPClassifier(max_epochs=5, width=16)
    >>> search = AutoHyperSearchCV(net, {"lr": loguniform(1e-4, 1e-1)}, epochs_per_trial=2,
    ...                            max_trials=9, cv=2, random_state=0)
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")  # the walk stops at max_trials here
    ...     search = search.fit(X, y)
    >>> 1e-4 <= search.best_params_["lr"] <= 1e-1, search.n_trials_
    (True, 9)
    """

    _space_param = "param_bounds"

    _parameter_constraints: dict = {
        **NetSearchCV._parameter_constraints,
        "param_bounds": [dict, list],
        "epochs_per_trial": [Interval(Integral, 1, None, closed="left")],
        "start_threshold": [Interval(Real, 0, 1, closed="right")],
        "power": [Interval(Real, 0, None, closed="neither")],
        "plateau": [Interval(Real, 0, 1, closed="neither")],
        "shrink": [Interval(Real, 0, 1, closed="neither")],
        "stop_tol": [Interval(Real, 0, None, closed="neither")],
        "max_trials": [Interval(Integral, 1, None, closed="left")],
        "zero_step": [Interval(Real, 0, None, closed="neither")],
        "include_linear": ["boolean", StrOptions({"auto"})],
        "grey_stem": [StrOptions({"skip", "read"})],
    }

    def __init__(self, estimator, param_bounds, *, epochs_per_trial=5, start_threshold=0.85,
                 power=0.8, plateau=5e-3, shrink=SHRINK, stop_tol=5e-3, max_trials=200,
                 zero_step=1e-7, include_linear="auto", grey_stem="skip", scoring=None,
                 refit=True, cv=None, n_jobs=None, engine="auto", checkpoint=None,
                 random_state=None, verbose=0, pre_dispatch="2*n_jobs", error_score=np.nan):
        super().__init__(estimator=estimator, scoring=scoring, n_jobs=n_jobs, refit=refit,
                         cv=cv, verbose=verbose, pre_dispatch=pre_dispatch,
                         error_score=error_score, return_train_score=False)
        self.param_bounds = param_bounds
        self.epochs_per_trial = epochs_per_trial
        self.start_threshold = start_threshold
        self.power = power
        self.plateau = plateau
        self.shrink = shrink
        self.stop_tol = stop_tol
        self.max_trials = max_trials
        self.zero_step = zero_step
        self.include_linear = include_linear
        self.grey_stem = grey_stem
        self.engine = engine
        self.checkpoint = checkpoint
        self.random_state = random_state

    # -- before any training ----------------------------------------------------------------

    def _setup_search(self, fit):
        hparams = parse_params(self.param_bounds, prefix=find_net(self.estimator)[1])
        start = {h.name: h.start for h in hparams}
        self._check_candidate_names([start])
        trial_seed, cv_seed = fit.spawn_seeds(check_random_state(self.random_state), 2)
        return _Walk(hparams, trial_seed, cv_seed, self._readable_layers(fit, start))

    def _readable_layers(self, fit, start):
        """Build the net without training (0 epochs): find the output layer, check that Z
        has layers to read; return the layers Z leaves out."""
        net, output = self._untrained_net(fit, start)
        names = {m: n for n, m in net.module_.named_modules()}
        exclude = (names[output], *self._grey_stems(net.module_))
        try:
            layer_matrices(net.module_, self.include_linear, exclude)
        except ValueError:
            exclude = ()  # a single linear layer: read the output layer
            layer_matrices(net.module_, self.include_linear, exclude)
        return exclude

    def _grey_stems(self, module):
        """With ``grey_stem="skip"``: the convolutions that read one input channel, when the
        net has other convolutions to read."""
        convs = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Conv2d)]
        if self.grey_stem == "read" or len(convs) < 2:
            return ()
        stems = tuple(n for n, m in convs if m.in_channels == 1)
        return stems if len(stems) < len(convs) else ()

    # -- the method -------------------------------------------------------------------------

    def _run_search(self, evaluate_candidates, *, callback_ctx=None):
        fit = self._fit
        walk = fit.setup
        rows = []

        def evaluate(points):
            results = self._train(fit, points, len(rows), progress)
            rows.extend(results)
            return [r["z"] for r in results]

        with self._searching(callback_ctx), \
                Phase(self, fit.ctx, "walk") as progress:  # total unknown
            point, steps, cache, self.stop_reason_ = trust_region_walk(
                evaluate, walk.hparams, WalkSettings(
                    self.start_threshold, self.power, self.plateau, self.shrink,
                    self.stop_tol, self.max_trials, self.zero_step))
            progress.close()
            self._record(rows, steps, cache)
            best = {h.name: v for h, v in zip(walk.hparams, point)}
            cached = cache.get(_key(point))
            self.n_epochs_ = len(rows) * self.epochs_per_trial + \
                self._nominal_epochs(best) * fit.n_splits
            self.n_trainings_ = len(rows) + fit.n_splits
            self._evaluate(evaluate_candidates, [best], [walk.cv_seed],
                           more_results={"stable_rank": [cached[1] if cached else math.nan]},
                           callback_ctx=callback_ctx)

    def _record(self, rows, steps, cache):
        """``history_``, ``steps_`` and ``n_trials_`` of the walk; an error when every trial
        failed, a warning when it stopped at ``max_trials``."""
        failed = [r for r in rows if r["status"] != "ok"]
        if rows and len(failed) == len(rows):
            raise ValueError(
                f"All {len(rows)} trials of the walk failed ({len(failed)} "
                f"{'diverged' if all(r['status'] == 'diverged' for r in failed) else 'failed'})"
                f"; nothing left to cross-validate. First reason: {failed[0]['reason']}")
        if self.stop_reason_ == "max_trials":
            warn(f"AutoHyperSearchCV stopped after {len(rows)} trials (max_trials="
                 f"{self.max_trials}) before the walk converged; best_params_ is where it "
                 "stood", RuntimeWarning)
        for row in rows:
            row["step"] = cache[_key(tuple(row["params"].values()))][2]
            row["phase"] = steps[row["step"]]["phase"] if row["step"] < len(steps) else ""
        self.history_ = history_columns(rows)
        self.steps_ = history_columns(steps)
        self.n_trials_ = len(rows)

    def _train(self, fit, points, first_index, phase=None):
        """One trial per point (in fused groups where ``engine`` allows, else in parallel):
        ``epochs_per_trial`` epochs, Z read at each epoch's end; a diverged trial counts as
        Z = 1."""
        walk = fit.setup
        names = [h.name for h in walk.hparams]
        prefix = find_net(self.estimator)[1]
        overrides = {f"{prefix}max_epochs": self.epochs_per_trial,
                     f"{prefix}train_split": None, f"{prefix}verbose": 0}
        tasks = [FusedTask({**dict(zip(names, point)), **overrides}, seed=walk.trial_seed,
                           callbacks=(("skhpo_stable_rank", StableRankRecorder(
                               self.include_linear, walk.exclude)),))
                 for point in points]
        outs = self._train_candidates(fit, tasks, _read_recorder, first_index=first_index,
                                      phase=phase)
        self._warn_failures([o["error"] for o in outs if o["error"] and
                             not o["error"].startswith("diverged")], len(outs), "trial")
        return [self._trial_row(first_index + i, dict(zip(names, point)), out)
                for i, (point, out) in enumerate(zip(points, outs))]

    def _trial_row(self, trial, params, out):
        """One row of ``history_`` (and a log line) for a finished trial."""
        records = out["value"] or []
        ok = not out["error"]
        row = {"trial": trial, "params": params,
               "z": float(np.mean([r["z"] for r in records])) if ok else 1.0,
               "z_epochs": [r["z"] for r in records],
               "ranks": {f"{r['layer']}:{r['mode']}": r["rank"]
                         for r in (records[-1]["layers"] if records else [])},
               "status": "ok" if ok else "diverged" if out["error"].startswith("diverged")
               else "failed",
               "reason": out["error"], "epochs": self.epochs_per_trial, "time": out["time"],
               "fused_group": out["group"], "engine_reason": out["engine_reason"]}
        report("autohyper", self.verbose,
               f"trial {trial}: {params} Z={row['z']:.3f} {row['status']}")
        return row


class _Walk(NamedTuple):
    """What the walk draws and checks before any training: the hyper-parameters, the seed of
    every trial, the seed of the final point's cross-validation, and the layers Z skips."""

    hparams: list
    trial_seed: int
    cv_seed: int
    exclude: tuple


def _read_recorder(fitted, X):
    """The per-epoch Z records of a trained trial (runs in the worker)."""
    net, _ = find_net(fitted)
    return dict(net.callbacks_)["skhpo_stable_rank"].records
