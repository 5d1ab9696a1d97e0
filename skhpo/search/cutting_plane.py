"""CuttingPlaneTuner: CPMLHO (Yang et al., "CPMLHO: Hyperparameter Tuning via Cutting Plane
and Mixed-Level Optimization", arXiv 2212.06150), on top of Delta-STN (Bae & Grosse 2020).

One training run tunes the net's dropout rates (and optionally input noise and cutout). Every
``nn.Linear`` / ``nn.Conv2d`` of the user's module becomes a self-tuning layer whose weight is
``W_e + diag(s_w(h)) W_h2`` (:mod:`skhpo.hyper.layers`); the hyper-parameters lambda = box(u)
carry a Gaussian perturbation of learned scale sigma. The loop (the paper's
Algorithm 1; docs/cutting_plane.md):

1. ``warmup_epochs`` epochs of training steps only, then alternate ``train_steps`` training
   steps with ``valid_steps`` hyper steps until the net's ``max_epochs``;
2. a **training step** has two sub-steps on one training batch: the *general* weights W_e
   learn at the current lambda with the hyper term off (Eq. 13), then the *response* weights
   (W_h2, h1) learn at per-example perturbed lambdas, through the first-order expansion in the
   hyper term (``linearize``), plus the cutting-plane penalty (Eq. 14);
3. the **cut** is rebuilt at every epoch end: S = sign(W_e - W_h2) per layer, and the penalty
   is mu * sum pen(S * (W_e - W_h2) - eps2), pen = hinge or identity (``cut_mode``);
4. a **hyper step** moves u (and the scales) on the mixed-level objective
   L_train + theta * L_val (Eq. 15/16) through the response, minus ``entropy_weight`` times
   the perturbation's entropy; ``theta=None`` is plain Delta-STN (L_val only).

With ``theta=None`` and ``mu=0`` the tuner is Delta-STN itself.
"""

from __future__ import annotations

import copy
import math
import os
import time
from numbers import Integral, Real
from typing import NamedTuple

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions

from ..fused import ENGINES
from ..hyper import Box, parse_name, read_dimension, set_dropout_rate
from ..hyper.layers import convert_module, dropout_layers, general_state_dict
from ..hyper.space import AUGMENTATIONS
from ..nets import batch_size_of, draw_seed, find_net, seed_everything
from ._base import HoldoutResult, HoldoutSearch, history_columns
from ._delta_stn import DeltaSTNTrainer, STNSettings, cut_penalty
from ._delta_stn import HyperParams as _HyperParams
from ._progress import Phase

__all__ = ["CuttingPlaneTuner", "cut_penalty"]

DEFAULT_BOX, DEFAULT_INIT = (0.0, 0.95), 0.05
#: ``engine_reason_``: why CPMLHO always trains alone
ONE_NETWORK = "one self-tuning network trains (nothing to stack)"
#: the discrete ones, applied as floor(value)
DISCRETE = ("cutout_holes", "cutout_length")


class _Space(NamedTuple):
    """The tuned hyper-parameters, dropout rates first: ``names``, ``boxes``, ``inits``, the
    dropout ``paths`` (index i of ``paths`` is hyper-parameter i), ``augment`` (``{input_noise
    | cutout_holes | cutout_length: index}``) and the examples' ``image_shape`` for cutout."""

    names: list
    boxes: list
    inits: list
    paths: list
    augment: dict
    image_shape: tuple | None


class CuttingPlaneTuner(HoldoutSearch):
    """Dropout rates (and input noise, cutout) tuned within one training run: Delta-STN with a
    cutting-plane penalty and a mixed-level hyper objective (CPMLHO).

    Parameters
    ----------
    estimator : skorch NeuralNet or Pipeline ending in one
        Its module must contain ``nn.Linear`` and/or ``nn.Conv2d`` layers (converted into
        self-tuning layers in a copy; the user's module is untouched) and, to tune rates,
        ``nn.Dropout`` / ``nn.Dropout2d`` layers. Its ``optimizer``, ``lr``,
        ``optimizer__*``, ``batch_size`` and ``max_epochs`` (warm-up included) drive the
        training of the weights.
    hyperparams : dict or None, default=None
        The space, in scikit-learn's grammar: ``name ->`` a ``scipy.stats.uniform`` /
        ``loguniform`` distribution (the box), a one-value list ``[init]`` (a start value in
        the default box [0, 0.95]; rates only), or the shorthand ``(low, high)`` /
        ``(low, high, init)``. Names: ``dropout[path]`` for the
        dropout layer at ``path`` of ``module_.named_modules()`` (with the Pipeline prefix,
        e.g. ``net__dropout[layers.2]``), ``dropout`` or ``module__dropout`` (every dropout
        layer, each tuned on its own as ``dropout[path]``), ``input_noise`` (Gaussian noise
        of this standard deviation added to the inputs in training), and ``cutout_holes`` with
        ``cutout_length`` (cutout of the training images, both floored where applied; needs
        ``image_shape`` for flat inputs). Default init: the layer's rate, or the box's middle.
        None: every dropout layer in [0, 0.95] from 0.05 (the Delta-STN setting). Rates must
        lie in [0, 1), the others in [0, inf).
    warmup_epochs : int, default=5
        Epochs of weight training only, before the first hyper step.
    train_steps, valid_steps : int, default=5, 1
        Training steps, then hyper steps, alternately.
    validation_fraction : float, default=0.15
        Held out (shuffled, stratified for classifiers) for the hyper steps and scoring.
    mu : float, default=1e-3
        Weight of the cutting-plane penalty (>= 0; 0: no cut).
    eps2 : float, default=1e-8
        The cut's tolerance epsilon^2 (it shifts the value only).
    cut_mode : {"hinge", "linear"}, default="hinge"
        Penalise only violated elements (hinge) or the literal linear term.
    cut_memory : {"last", "all"}, default="last"
        Use the last epoch's cut, or the maximum over every cut so far (an L1 penalty on
        W_e - W_h2 once both signs were seen).
    theta : float or None, default=1.0
        Weight of the validation term in the hyper objective L_train + theta L_val (>= 0).
        None: L_val alone (Delta-STN).
    entropy_weight : float, default=1e-3
        Weight tau of the perturbation's entropy bonus in the hyper objective.
    tune_scales : bool, default=True
        Learn the perturbation scales sigma (else they stay at 1).
    linearize : bool, default=True
        Response sub-step through the first-order expansion in the hyper term (Delta-STN);
        False: through the hyper term directly.
    hyper_lr : float, default=1e-2
        RMSprop learning rate of u and of the scales.
    image_shape : tuple or None, default=None
        ``(C, H, W)`` (or ``(H, W)``) of one example, for cutout on flat rows; None: the net's
        ``image_shape_`` (SmallCNNClassifier) or the shape of ``X``'s examples.
    scoring : str, callable or None, default=None
        Score of ``cv_results_`` / ``best_score_`` on the held-out part.
    refit : {"tuned", True, False}, default="tuned"
        ``"tuned"``: ``best_estimator_`` is the user's plain net carrying the general weights
        (what the self-tuning net predicts with at the final hyper-parameters) and the final
        rates (before 0.2 this was ``refit=False``). True: the user's net retrained on all of X
        with the final rates fixed. False: no ``best_estimator_`` (as in ``GridSearchCV``).
    random_state : int, RandomState or None, default=None
        Seeds the split, the weights, dropout masks and perturbations.
    checkpoint : str, path or None, default=None
        A folder in which the self-tuning network's whole state (weights, hyper-parameters,
        optimisers, cut, generators, history) is written after every epoch, atomically.
        Calling ``fit`` again with the same search, data and folder continues after the last
        completed epoch, with results identical to an uninterrupted run (timings aside); a
        folder written by another search is refused before any training. Needs an int
        ``random_state``.
    verbose : int, default=0
        One line per epoch when > 0.
    engine : {"auto", "fused", "sequential"}, default="auto"
        The training engine, as in the other searches. CPMLHO trains one self-tuning network
        (and, with ``refit=True``, one plain net): there is nothing to train together, so
        ``"auto"`` and ``"sequential"`` run the same single training, and ``"fused"`` raises
        a ``ValueError`` saying so, before any training. Accepted so that code which sets
        ``engine`` on every skhpo search runs unchanged.

    Attributes
    ----------
    best_params_ : dict
        The final hyper-parameters (continuous values).
    applied_params_ : dict
        The same, with the discrete ones (cutout) as the integers applied to the data.
    best_score_ : float
        ``scoring`` on the held-out part (optimistic: the hyper-parameters followed it).
    best_estimator_ : estimator
        See ``refit``.
    best_index_ : int
        0 (one row).
    cv_results_ : dict
        One row in GridSearchCV's schema (the final hyper-parameters, one split), plus
        ``val_loss``.
    history_ : dict of lists
        Per epoch: ``epoch``, the hyper-parameters, ``train_loss``, ``valid_loss``,
        ``train_acc``, ``valid_acc`` (classifiers), ``gap`` (mean |W_e - W_h2|), ``mu``,
        ``sigma`` and ``hyper_steps``.
    hyper_history_ : dict of lists
        The hyper-parameters after every hyper step.
    n_epochs_ : int
        Epochs trained (and the refit's).
    n_resumed_ : int
        Epochs restored from ``checkpoint``.
    engine_ : "sequential"
        The engine that trained (always one network).
    engine_reason_ : str
        Why: one self-tuning network, nothing to stack.

    Notes
    -----
    Deviations (docs/cutting_plane.md): the split is shuffled (the reference splits by index,
    which fails on class-sorted data); the weights train with the net's own optimiser and lr
    (Delta-STN: SGD 0.01, momentum 0.9; set them on the net to reproduce it); mu is fixed (no
    dual update); ``input_noise`` is our addition for tabular data.

    References
    ----------
    Yang, Jiao, Dou, Zheng, Zhu. CPMLHO: Hyperparameter Tuning via Cutting Plane and
    Mixed-Level Optimization. arXiv 2212.06150. Bae, Grosse. Delta-STN: Efficient Bilevel
    Optimization for Neural Networks using Structured Response Jacobians. NeurIPS 2020.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from skhpo import CuttingPlaneTuner, TabularMLPClassifier
    >>> X, y = load_iris(return_X_y=True)
    >>> net = TabularMLPClassifier(dropout=0.1, max_epochs=3)
    >>> tuner = CuttingPlaneTuner(net, warmup_epochs=1, random_state=0).fit(X, y)
    >>> sorted(tuner.best_params_)  # every dropout layer of the module
    ['dropout[layers.2]', 'dropout[layers.5]']
    >>> tuner.n_epochs_, tuner.n_trainings_  # one training run
    (3, 1)
    """

    _parameter_constraints: dict = {
        **HoldoutSearch._parameter_constraints,
        "hyperparams": [dict, None],
        "warmup_epochs": [Interval(Integral, 0, None, closed="left")],
        "train_steps": [Interval(Integral, 1, None, closed="left")],
        "valid_steps": [Interval(Integral, 1, None, closed="left")],
        "mu": [Interval(Real, 0, None, closed="left")],
        "eps2": [Interval(Real, 0, None, closed="left")],
        "cut_mode": [StrOptions({"hinge", "linear"})],
        "cut_memory": [StrOptions({"last", "all"})],
        "theta": [Interval(Real, 0, None, closed="left"), None],
        "entropy_weight": [Interval(Real, 0, None, closed="left")],
        "tune_scales": ["boolean"],
        "linearize": ["boolean"],
        "hyper_lr": [Interval(Real, 0, None, closed="left")],
        "image_shape": [tuple, list, None],
        "refit": ["boolean", StrOptions({"tuned"})],
        "checkpoint": [str, os.PathLike, None],
        "engine": [StrOptions(set(ENGINES))],
    }

    def __init__(self, estimator, hyperparams=None, *, warmup_epochs=5, train_steps=5,
                 valid_steps=1, validation_fraction=0.15, mu=1e-3, eps2=1e-8,
                 cut_mode="hinge", cut_memory="last", theta=1.0, entropy_weight=1e-3,
                 tune_scales=True, linearize=True, hyper_lr=1e-2, image_shape=None, scoring=None,
                 refit="tuned", random_state=None, checkpoint=None, verbose=0, engine="auto"):
        self.estimator = estimator
        self.hyperparams = hyperparams
        self.warmup_epochs = warmup_epochs
        self.train_steps = train_steps
        self.valid_steps = valid_steps
        self.validation_fraction = validation_fraction
        self.mu = mu
        self.eps2 = eps2
        self.cut_mode = cut_mode
        self.cut_memory = cut_memory
        self.theta = theta
        self.entropy_weight = entropy_weight
        self.tune_scales = tune_scales
        self.linearize = linearize
        self.hyper_lr = hyper_lr
        self.image_shape = image_shape
        self.scoring = scoring
        self.refit = refit
        self.checkpoint = checkpoint
        self.random_state = random_state
        self.verbose = verbose
        self.engine = engine

    # -- the method (HoldoutSearch.fit calls these) -----------------------------------------

    def _check_search_params(self):
        if self.engine == "fused":
            raise ValueError("engine='fused': CuttingPlaneTuner trains one self-tuning "
                             "network, there is nothing to train together; use engine='auto' "
                             "or 'sequential' (the same single training)")

    def _draw_seeds(self, rng):
        split_seed, torch_seed = draw_seed(rng, size=2)
        return split_seed, torch_seed

    def _search(self, data, torch_seed, rng):
        self.engine_, self.engine_reason_ = "sequential", ONE_NETWORK
        seed_everything(torch_seed)
        plain, y_enc, yv_enc = self._initialised_net(data)
        space = self._space(plain, data.prefix, data.Xt)
        if self.refit is True and space.augment:
            raise ValueError(f"refit=True cannot retrain with {', '.join(space.augment)}: a "
                             "plain net has no such parameter; use refit='tuned'")
        if space.image_shape is not None:
            self.image_shape_ = space.image_shape
        module = copy.deepcopy(plain.module_)
        context = convert_module(module, space.paths, len(space.names))
        hp = _HyperParams(space.boxes, space.inits)
        start = time.perf_counter()
        trainer = DeltaSTNTrainer(self._settings(), plain, module, context, hp, space.names,
                                  len(space.paths), space.augment, space.image_shape)
        max_epochs = int(find_net(self.estimator)[0].max_epochs)
        ck = getattr(self, "_checkpoint", None)
        resume = None if ck is None else ck.load("stn", "state")
        self.n_resumed_ = 0 if resume is None else resume["epoch"] + 1

        def on_epoch(epoch):
            epochs.done(epoch, "epoch")
            if ck is not None:
                ck.save("stn", "state", trainer.state(epoch))

        with Phase(self, getattr(self, "_search_ctx", None), "epochs", max_epochs) as epochs:
            for epoch in range(self.n_resumed_):
                epochs.done(epoch, "epoch")  # restored from the checkpoint
            trainer.run(torch.as_tensor(data.Xt), y_enc, torch.as_tensor(data.Xv), yv_enc,
                        batch_size_of(plain, len(y_enc)), max_epochs, on_epoch=on_epoch,
                        resume=resume)
        fit_time = time.perf_counter() - start
        self.hyper_history_ = history_columns(trainer.hyper_rows)
        final = trainer.current()
        self.applied_params_ = dict(final)
        for name, index in space.augment.items():
            if name in DISCRETE:
                self.applied_params_[space.names[index]] = math.floor(final[space.names[index]])
        self.hyperparams_, self.module_ = hp, module
        model = self._tuned_model(plain, module, final, space.paths, data)
        t0 = time.perf_counter()
        score = self.scorer_(model, data.X_val, data.y_val)
        return HoldoutResult(params=[final], scores=[score], best=0, model=model,
                             history=trainer.rows, epochs=max_epochs, trainings=1,
                             fit_times=[fit_time], score_times=[time.perf_counter() - t0],
                             val_losses=[trainer.rows[-1]["valid_loss"]],
                             refit_epochs=int(data.net.max_epochs))

    def _settings(self):
        return STNSettings(self.warmup_epochs, self.train_steps, self.valid_steps, self.mu,
                           self.eps2, self.cut_mode, self.cut_memory, self.theta,
                           self.entropy_weight, self.tune_scales, self.linearize, self.hyper_lr,
                           self.verbose)

    def _tuned_model(self, plain, module, final, paths, data):
        """The user's plain net carrying the general weights and the final rates."""
        plain.module_.load_state_dict(general_state_dict(module.cpu()))
        layers = dropout_layers(plain.module_)
        for path, rate in zip(paths, final.values()):
            set_dropout_rate(layers[path], rate)
        plain.module_.eval()
        plain.set_params(max_epochs=data.net.max_epochs, train_split=data.net.train_split)
        return self._with_preprocessing(data, plain)

    def _space(self, plain, prefix, X):
        """``hyperparams`` read by the shared vocabulary and checked against the module."""
        layers = dropout_layers(plain.module_)
        spec = self.hyperparams
        if spec is None:
            if not layers:
                raise ValueError("hyperparams=None tunes every dropout layer, but the module "
                                 "has none; add nn.Dropout layers or name input_noise / "
                                 "cutout_holes and cutout_length")
            spec = {f"{prefix}dropout[{p}]": (*DEFAULT_BOX, DEFAULT_INIT) for p in layers}
        if not spec:
            raise ValueError("hyperparams is empty: name at least one dropout layer, "
                             "input_noise or cutout_holes and cutout_length")
        rates, augment = [], {}
        for name, value in spec.items():
            dim = read_dimension("hyperparams", parse_name(name, prefix, "hyperparams"), value)
            if dim.name.kind in AUGMENTATIONS:
                augment[dim.name.kind] = self._augmentation(dim)
            elif dim.name.kind == "dropout":
                rates += self._rates(dim, layers, prefix)
            else:
                raise ValueError(f"hyperparams: {name!r} is not tunable here; accepted: "
                                 f"{prefix}dropout[<path of a dropout layer>] (the module's "
                                 f"are {sorted(layers)}), {prefix}dropout (every dropout "
                                 "layer), " + ", ".join(prefix + a for a in AUGMENTATIONS))
        if ("cutout_holes" in augment) != ("cutout_length" in augment):
            raise ValueError("hyperparams: cutout needs both cutout_holes and cutout_length")
        shape = self._image_shape(plain, X) if "cutout_holes" in augment else None
        entries = rates + [augment[a] for a in AUGMENTATIONS if a in augment]
        names = [n for n, _, _, _ in entries]
        return _Space(names, [b for _, b, _, _ in entries], [b.clip(i) for _, b, i, _ in entries],
                      [p for _, _, _, p in rates],
                      {a: names.index(augment[a][0]) for a in augment}, shape)

    @staticmethod
    def _augmentation(dim):
        if dim.box is None:
            raise ValueError(f"hyperparams[{dim.name.name!r}]: {dim.name.kind} needs a range "
                             "(low, high[, init]) or a uniform / loguniform distribution")
        init = dim.init if dim.init is not None else 0.5 * (dim.box.lo + dim.box.hi)
        return dim.name.name, dim.box, init, None

    @staticmethod
    def _rates(dim, layers, prefix):
        """One entry per dropout layer that ``dim`` names (``dropout``: every one)."""
        if dim.name.path is None:
            if not layers:
                raise ValueError(f"hyperparams[{dim.name.name!r}]: the module has no dropout "
                                 "layer")
            names = {path: f"{prefix}dropout[{path}]" for path in layers}
        elif dim.name.path not in layers:
            raise ValueError(f"hyperparams[{dim.name.name!r}]: the module has no dropout layer "
                             f"{dim.name.path!r}; its dropout layers are {sorted(layers)}")
        else:
            names = {dim.name.path: dim.name.name}
        box = dim.box if dim.box is not None else Box(*DEFAULT_BOX)
        if dim.init is not None and not box.lo <= dim.init <= box.hi:
            raise ValueError(f"hyperparams[{dim.name.name!r}]: the start value {dim.init} is "
                             f"outside the box ({box.lo}, {box.hi})")
        return [(name, box, dim.init if dim.init is not None else min(max(
            float(getattr(layers[path], "p", DEFAULT_INIT)), box.lo), box.hi), path)
            for path, name in names.items()]

    def _image_shape(self, plain, X):
        """(C, H, W) of one example, for cutout: ``image_shape``, else the net's
        ``image_shape_`` (SmallCNNClassifier), else the shape of ``X``'s examples if 3-D/4-D."""
        shape = self.image_shape or getattr(plain, "image_shape_", None)
        if shape is None and np.ndim(X) in (3, 4):
            shape = np.shape(X)[1:]
        if shape is None:
            raise ValueError("cutout needs the images' shape: pass image_shape=(C, H, W) (the "
                             "inputs are flat rows)")
        shape = tuple(int(v) for v in shape)
        shape = (1, *shape) if len(shape) == 2 else shape
        if len(shape) != 3 or int(np.prod(shape)) != int(np.prod(np.shape(X)[1:])):
            raise ValueError(f"image_shape {shape} does not match the {np.shape(X)[1:]} "
                             "features of each example")
        return shape


