"""PopulationMutationSearch: the scikit-learn estimator around HPM (:func:`~.hpm.run_hpm`),
its students skorch nets (:mod:`.students`) trained one by one or as one stacked model.
"""

import os
import time
from numbers import Integral, Real
from typing import NamedTuple

import numpy as np
import torch
from sklearn.base import clone
from sklearn.utils._param_validation import Interval, StrOptions

from ...fused import ENGINES, choose_engine
from ...fused.eligibility import batched_reason
from ...hyper.hypergrad import resolve_hyperparam
from ...hyper.layers import replace_dropout
from ...hyper.space import parse_name, read_dimension
from ...log import report
from ...models import TabularMLPClassifier, TabularMLPRegressor
from ...nets import check_param_names, free_estimator, net_seed, spawn_seeds
from .._holdout import HoldoutResult, HoldoutSearch, plain_net_params
from .hpm import HPMSettings, run_hpm
from .students import FusedNetPopulation, NetPopulation, PopulationSettings

__all__ = ["PopulationMutationSearch"]


class PopulationMutationSearch(HoldoutSearch):
    """Hyper-parameter schedules by a population trained with hypergradients (HPM).

    A population of ``population_size`` copies of the net trains side by side; each student's
    continuous hyper-parameters (learning rate, weight decay, ``l2``/``l1`` penalties, dropout
    rates) follow their one-step look-ahead hypergradient on a held-out validation part while
    it trains. After every step the worst students copy the weights of the best ones, and a
    small attention network, the *teacher*, learns by how much to scale the copied
    hyper-parameters (the mutation).

    Parameters
    ----------
    estimator : skorch NeuralNet or Pipeline ending in one
        The net to tune. Its dropout layers (``nn.Dropout``) become concrete-dropout layers in
        the students, so that their rates have a gradient.
    param_bounds : dict
        ``name -> (low, high)`` or ``scipy.stats.loguniform(low, high)`` (log scale). Names
        (with the Pipeline prefix, e.g. ``net__lr``): ``lr``, ``optimizer__weight_decay``,
        ``l2``, ``l1`` (skhpo models; ``l2[i]``/``l1[i]`` for the i-th linear layer alone),
        ``dropout`` or ``module__dropout`` (every dropout layer) and ``dropout[path]`` (the
        layer at ``path`` in ``module_.named_modules()``, e.g. ``dropout[layers.2]``).
        Dropout boxes must lie in [0, 1), the others in [0, inf).
    population_size : int, default=20
        Number of students K (>= 2).
    truncation : float, default=0.2
        Fraction rho in (0, 0.5]: the worst ceil(rho K) students copy one of the best
        ceil(rho K) after every step.
    n_steps : int, default=10
        Number of train steps (exploit/explore happens between steps).
    step : "epoch" or int, default="epoch"
        One step is one epoch over the training part, or this many minibatches.
    hyper_lr : float, default=3e-3
        Adam learning rate of the hyper-parameters, in the unconstrained coordinates of their
        boxes (STN's default).
    hyper_every : int, default=2
        One hyper-parameter step every this many training minibatches.
    mutation : {"teacher", "random"}, default="teacher"
        ``"random"`` mutates by alpha ~ U[0.8, 1.2] (HPM without teacher).
    teacher_keys : int, default=64
        Number of keys M of the teacher's attention.
    teacher_lr : float, default=1e-2
        SGD learning rate of the teacher.
    teacher_input : {"normalized", "raw"}, default="normalized"
        Feed the teacher the hyper-parameters' position in their boxes (in [0, 1]) or their
        raw values (the paper's text).
    teacher_max_batches : int or None, default=None
        Cap on the validation minibatches of one teacher call (None: one validation epoch).
    scoring : str, callable or None, default=None
        Score of ``cv_results_`` and ``best_score_`` (None: the estimator's ``score``).
    refit : {"trained", True, False}, default="trained"
        ``"trained"``: ``best_estimator_`` is the best student itself (trained on the
        training part, with its hyper-parameter schedule). ``True``: the estimator retrained
        on all of ``X`` with the best student's final hyper-parameters held fixed, for as many
        epochs as a student trained. ``False``: no ``best_estimator_``.
    validation_fraction : float, default=0.2
        Part of ``X`` held out (stratified for classifiers) for the hypergradients, the
        ranking and ``cv_results_``.
    n_jobs : int or None, default=None
        Students trained in parallel (joblib) when they train one by one
        (``engine_ == "sequential"``).
    engine : {"auto", "fused", "sequential"}, default="auto"
        How the students train, as in every skhpo search (docs/architecture.md).
        ``"fused"``: all of them as one stacked model (one batched forward, backward and
        optimiser step per minibatch, one batched look-ahead hypergradient per hyper step),
        each drawing its shuffling and dropout noise from its own generator as its skorch
        ``partial_fit`` would, so the run follows the sequential one to float32 rounding
        (docs/fused.md); for skhpo's ``TabularMLPClassifier`` / ``TabularMLPRegressor`` with
        Adam or SGD, else a ``ValueError`` naming why, before any training.
        ``"sequential"``: every student is a skorch net trained by its own ``partial_fit``.
        ``"auto"``: fused where the family allows, on the CPU, for nets of at most 150,000
        weights (or ``$SKHPO_MAX_WEIGHTS``, see ``skhpo calibrate``); else sequential, with the
        reason in ``engine_reason_``.
    checkpoint : str, path or None, default=None
        A folder in which the whole run (students, teacher, generators, history) is written
        after every completed step, atomically. Calling ``fit`` again with the same search,
        data and folder continues after the last completed step, with results identical to
        an uninterrupted run (timings aside); a folder written by another search is refused
        before any training. Needs an int ``random_state``.
    random_state : int, RandomState or None, default=None
        Seeds the split, the initial hyper-parameters, the students and the teacher.
    verbose : int, default=0
        Log one line per step when > 0 (the ``skhpo.population`` logger).

    Attributes
    ----------
    best_params_ : dict
        The best student's final hyper-parameters.
    best_index_ : int
        Its row in ``cv_results_`` (the student with the lowest validation loss).
    best_score_ : float
        Its score on the validation part. The hyper-parameters followed that part's gradient,
        so this is optimistic, like GridSearchCV's ``best_score_``.
    best_estimator_ : estimator
        See ``refit``.
    cv_results_ : dict
        One row per final student in GridSearchCV's schema (one split: the validation part),
        plus ``val_loss``.
    history_ : dict of lists
        One row per student per step: ``step``, ``student``, the hyper-parameters after the
        step's training, ``val_loss``, ``diverged``, ``exploited_from`` (-1 or the top
        student it copied after this step) and ``alpha`` (the mutation factors, or None).
    teacher_ : Teacher or None
        The trained teacher (``mutation="teacher"``).
    n_resumed_ : int
        Student-steps loaded from ``checkpoint`` (completed steps x ``population_size``).
    n_epochs_ : float
        Training epochs spent by all students (plus the refit's).
    engine_ : {"fused", "sequential"}
        How the students trained.
    engine_reason_ : str
        Why they trained one by one ("" when fused).

    Notes
    -----
    Deviations from the paper (see docs/population.md): the hypergradient is the one-step look-
    ahead of :mod:`skhpo.hyper.hypergrad` (the paper's benchmark hypergradient is not in the
    text we could read; probably STN best responses); dropout uses the concrete relaxation (tau
    = 0.1) in the students' training; hyper-parameters step in logit/log coordinates and
    mutations are clipped to the box; the teacher sees box-normalised input by default; the
    teacher is trained by autograd on Eq. 10 (the printed Eq. 12 has two slips); the teacher
    updates after it produced the mutation.

    References
    ----------
    Tao, Li, Ding, Zhang, Zhou, Fu. Learning to Mutate with Hypergradient Guided Population.
    NeurIPS 2020.

    Examples
    --------
    >>> from scipy.stats import uniform
    >>> from sklearn.datasets import load_iris
    >>> from skhpo import PopulationMutationSearch, TabularMLPClassifier
    >>> X, y = load_iris(return_X_y=True)
    >>> net = TabularMLPClassifier(dropout=0.2, max_epochs=2)
    >>> search = PopulationMutationSearch(net, {"dropout": uniform(0, 0.5)}, population_size=2,
    ...                                   n_steps=2, random_state=0).fit(X, y)
    >>> len(search.cv_results_["params"]), search.n_trainings_  # one row per student
    (2, 2)
    >>> 0 <= search.best_params_["dropout"] <= 0.5
    True
    """

    _parameter_constraints: dict = {
        **HoldoutSearch._parameter_constraints,
        "param_bounds": [dict],
        "population_size": [Interval(Integral, 2, None, closed="left")],
        "truncation": [Interval(Real, 0, 0.5, closed="right")],
        "n_steps": [Interval(Integral, 1, None, closed="left")],
        "step": [StrOptions({"epoch"}), Interval(Integral, 1, None, closed="left")],
        "hyper_lr": [Interval(Real, 0, None, closed="left")],
        "hyper_every": [Interval(Integral, 1, None, closed="left")],
        "mutation": [StrOptions({"teacher", "random"})],
        "teacher_keys": [Interval(Integral, 1, None, closed="left")],
        "teacher_lr": [Interval(Real, 0, None, closed="left")],
        "teacher_input": [StrOptions({"normalized", "raw"})],
        "teacher_max_batches": [Interval(Integral, 1, None, closed="left"), None],
        "n_jobs": [Integral, None],
        "engine": [StrOptions(set(ENGINES))],
        "checkpoint": [str, os.PathLike, None],
    }

    def __init__(self, estimator, param_bounds, *, population_size=20, truncation=0.2,
                 n_steps=10, step="epoch", hyper_lr=3e-3, hyper_every=2, mutation="teacher",
                 teacher_keys=64, teacher_lr=1e-2, teacher_input="normalized",
                 teacher_max_batches=None, scoring=None, refit="trained",
                 validation_fraction=0.2, n_jobs=None, engine="auto", checkpoint=None,
                 random_state=None, verbose=0):
        self.estimator = estimator
        self.param_bounds = param_bounds
        self.population_size = population_size
        self.truncation = truncation
        self.n_steps = n_steps
        self.step = step
        self.hyper_lr = hyper_lr
        self.hyper_every = hyper_every
        self.mutation = mutation
        self.teacher_keys = teacher_keys
        self.teacher_lr = teacher_lr
        self.teacher_input = teacher_input
        self.teacher_max_batches = teacher_max_batches
        self.scoring = scoring
        self.refit = refit
        self.validation_fraction = validation_fraction
        self.n_jobs = n_jobs
        self.engine = engine
        self.checkpoint = checkpoint
        self.random_state = random_state
        self.verbose = verbose

    # -- the method (HoldoutSearch.fit calls these) -----------------------------------------

    def _draw_seeds(self, rng):
        seeds = spawn_seeds(rng, self.population_size + 2)
        return net_seed(seeds[-1]), seeds[:self.population_size]

    def _search(self, run):
        data = run.data
        template = self._template(data, self._dimensions(data.prefix))
        decision = self._choose_engine(data.net, template.n_weights)
        population = FusedNetPopulation if decision.engine == "fused" else NetPopulation
        problem = population(self._student_settings(), clone(data.net), template.hypers,
                             data.Xt, data.y_tr, template.y_enc, torch.as_tensor(data.Xv),
                             template.yv_enc, run.seeds, template.classes)
        resume, done, progress = self._resume(run, "population", "steps", self.n_steps, "step")

        def on_step(step, rows):
            progress.done(step, "step")
            if self.verbose:
                self._report(step, rows)

        def save(state):
            run.checkpoint.save("population", "state", {**state, "done": state["step"] + 1})

        with progress:
            students, losses, teacher, rows = run_hpm(
                problem, HPMSettings(self.population_size, self.truncation, self.n_steps,
                                     self.mutation, self.teacher_keys, self.teacher_lr,
                                     self.teacher_input),
                run.rng, on_step=on_step, resume=resume,
                save=None if run.checkpoint is None else save)
        epochs_per_step = 1.0 if self.step == "epoch" else min(
            1.0, self.step * problem.batch_size / len(data.Xt))
        finals = [dict(zip(problem.names, (float(v) for v in problem.values(s))))
                  for s in students]
        students = problem.nets(students)
        scores, score_times = [], []
        for s, loss in zip(students, losses):
            t0 = time.perf_counter()
            scores.append(self.scorer_(s, data.Xv, data.y_val) if np.isfinite(loss) else np.nan)
            score_times.append(time.perf_counter() - t0)
        best = int(np.nanargmin(np.where(np.isfinite(losses), losses, np.nan)))
        for k, s in enumerate(students):
            if k != best:
                free_estimator(s)
        # the user's training settings again (the hyper-parameters stay at their final
        # values: without validation data the student's HyperStep does nothing)
        model = students[best].set_params(max_epochs=data.net.max_epochs,
                                          warm_start=data.net.warm_start,
                                          train_split=data.net.train_split)
        refit_epochs = max(1, round(self.n_steps * epochs_per_step))
        return HoldoutResult(
            params=finals, scores=scores, best=best, model=self._with_preprocessing(data, model),
            history=rows, epochs=epochs_per_step * len(rows), trainings=self.population_size,
            fit_times=problem.fit_time, score_times=score_times, val_losses=losses,
            refit_params=plain_net_params(self.estimator, finals[best], refit_epochs,
                                          template.coefs),
            refit_epochs=refit_epochs,
            attributes={"engine_": decision.engine, "engine_reason_": decision.reason,
                        "teacher_": teacher, "n_resumed_": done * self.population_size})

    def _student_settings(self):
        return PopulationSettings(self.hyper_lr, self.hyper_every, self.step, self.n_jobs,
                                  self.teacher_max_batches)

    def _dimensions(self, prefix):
        """``param_bounds`` read by the shared vocabulary: every entry needs a box."""
        if not self.param_bounds:
            raise ValueError("param_bounds is empty: give at least one hyper-parameter box")
        dims = [read_dimension("param_bounds", parse_name(name, prefix, "param_bounds"), spec)
                for name, spec in self.param_bounds.items()]
        for dim in dims:
            if dim.box is None:
                raise ValueError(f"param_bounds[{dim.name.name!r}]: the students draw their "
                                 "start values from a range; give loguniform(low, high), "
                                 "uniform(low, width) or (low, high)")
        return dims

    def _template(self, data, dims):
        """What every student starts from, read off an initialised (untrained) copy of the
        net: the tuned hyper-parameters, the encoded targets, the classes every student must
        know, the net's penalty coefficients and its size. No training happens here."""
        plain = [d.name.name for d in dims if not d.name.per_layer]
        if plain:
            check_param_names(self.estimator, plain, where="param_bounds")
        net, y_enc, yv_enc = self._initialised_net(data)
        replace_dropout(net.module_)
        hypers = [resolve_hyperparam(net, d.name, d.box) for d in dims]
        coefs = net.penalty_coefficients() if hasattr(net, "penalty_coefficients") else {}
        classes = None
        if data.net.get_params(deep=False).get("classes", "absent") is None:
            classes = getattr(net, "classes_", None)
        n_weights = sum(p.numel() for p in net.module_.parameters())
        free_estimator(net)
        return _Template(hypers, y_enc, yv_enc, classes, coefs, n_weights)

    def _choose_engine(self, net, n_weights):
        """How the students train (:func:`skhpo.fused.choose_engine`): one stacked model for
        skhpo's tabular MLPs where ``engine`` and the net allow, else one by one."""
        family = "" if isinstance(net, (TabularMLPClassifier, TabularMLPRegressor)) else \
            f"{type(net).__name__} (the fused population trains skhpo's tabular MLPs)"
        family = family or batched_reason(net)
        student = clone(net).set_params(max_epochs=1, train_split=None, warm_start=False)
        return choose_engine(student, self.engine, n_weights=n_weights, also=family,
                             what="the students")

    def _report(self, step, rows):
        losses = [r["val_loss"] for r in rows]
        report("population", self.verbose,
               f"step {step + 1}/{self.n_steps}: best val loss {np.nanmin(losses):.4f}, "
               f"{sum(r['exploited_from'] >= 0 for r in rows)} exploited, "
               f"{sum(r['diverged'] for r in rows)} diverged")


class _Template(NamedTuple):
    """What :meth:`PopulationMutationSearch._template` reads off the untrained net."""

    hypers: list
    y_enc: torch.Tensor
    yv_enc: torch.Tensor
    classes: object
    coefs: dict
    n_weights: int
