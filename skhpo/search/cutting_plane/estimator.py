"""CuttingPlaneTuner: CPMLHO (Yang et al., "CPMLHO: Hyperparameter Tuning via Cutting Plane
and Mixed-Level Optimization", arXiv 2212.06150), on top of Delta-STN (Bae & Grosse 2020).

One training run tunes the net's dropout rates (and optionally input noise and cutout). Every
``nn.Linear`` / ``nn.Conv2d`` of the user's module becomes a self-tuning layer whose weight is
``W_e + diag(s_w(h)) W_h2`` (:mod:`skhpo.hyper.stn`); the hyper-parameters lambda = box(u)
carry a Gaussian perturbation of learned scale sigma. The loop (the paper's Algorithm 1,
:mod:`.trainer`; docs/cutting_plane.md):

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

import copy
import math
import os
import time
from numbers import Integral, Real

import torch
from sklearn.utils._param_validation import Interval, StrOptions

from ...hyper.layers import convert_module, dropout_layers, general_state_dict, set_dropout_rate
from ...nets import batch_size_of, draw_seed, find_net, seed_everything
from .._holdout import HoldoutResult, HoldoutSearch, plain_net_params
from .._trials import history_columns
from .space import read_space
from .trainer import DeltaSTNTrainer, HyperParams, STNSettings

__all__ = ["CuttingPlaneTuner"]

#: ``engine_reason_``: why CPMLHO always trains alone
ONE_NETWORK = "one self-tuning network trains (nothing to stack)"
#: the discrete ones, applied as floor(value)
DISCRETE = ("cutout_holes", "cutout_length")


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
    param_bounds : dict or None, default=None
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
    refit : {"trained", True, False}, default="trained"
        ``"trained"``: ``best_estimator_`` is the user's plain net carrying the general
        weights (what the self-tuning net predicts with at the final hyper-parameters) and
        the final rates. True: the user's net retrained on all of X with the final rates
        fixed. False: no ``best_estimator_`` (as in ``GridSearchCV``).
    validation_fraction : float, default=0.15
        Held out (shuffled, stratified for classifiers) for the hyper steps and scoring.
    checkpoint : str, path or None, default=None
        A folder in which the self-tuning network's whole state (weights, hyper-parameters,
        optimisers, cut, generators, history) is written after every epoch, atomically.
        Calling ``fit`` again with the same search, data and folder continues after the last
        completed epoch, with results identical to an uninterrupted run (timings aside); a
        folder written by another search is refused before any training. Needs an int
        ``random_state``.
    random_state : int, RandomState or None, default=None
        Seeds the split, the weights, dropout masks and perturbations.
    verbose : int, default=0
        Log one line per epoch when > 0 (the ``skhpo.cutting_plane`` logger).

    There is no ``n_jobs`` and no ``engine``: CPMLHO trains one self-tuning network (and,
    with ``refit=True``, one plain net), so there is nothing to run in parallel or to train
    together (``engine_`` says so).

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
        "param_bounds": [dict, None],
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
        "checkpoint": [str, os.PathLike, None],
    }

    def __init__(self, estimator, param_bounds=None, *, warmup_epochs=5, train_steps=5,
                 valid_steps=1, mu=1e-3, eps2=1e-8, cut_mode="hinge", cut_memory="last",
                 theta=1.0, entropy_weight=1e-3, tune_scales=True, linearize=True,
                 hyper_lr=1e-2, image_shape=None, scoring=None, refit="trained",
                 validation_fraction=0.15, checkpoint=None, random_state=None, verbose=0):
        self.estimator = estimator
        self.param_bounds = param_bounds
        self.warmup_epochs = warmup_epochs
        self.train_steps = train_steps
        self.valid_steps = valid_steps
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
        self.validation_fraction = validation_fraction
        self.checkpoint = checkpoint
        self.random_state = random_state
        self.verbose = verbose

    # -- the method (HoldoutSearch.fit calls these) -----------------------------------------

    def _draw_seeds(self, rng):
        split_seed, torch_seed = draw_seed(rng, size=2)
        return split_seed, torch_seed

    def _search(self, run):
        data = run.data
        seed_everything(run.seeds)
        plain, y_enc, yv_enc = self._initialised_net(data)
        space = read_space(self.param_bounds, plain, data.prefix, data.Xt, self.image_shape)
        if self.refit is True and space.augment:
            raise ValueError(f"refit=True cannot retrain with {', '.join(space.augment)}: a "
                             "plain net has no such parameter; use refit='trained'")
        module = copy.deepcopy(plain.module_)
        context = convert_module(module, space.paths, len(space.names))
        hp = HyperParams(space.boxes, space.inits)
        start = time.perf_counter()
        trainer = DeltaSTNTrainer(self._settings(), plain, module, context, hp, space.names,
                                  len(space.paths), space.augment, space.image_shape)
        max_epochs = int(find_net(self.estimator)[0].max_epochs)
        resume, done, epochs = self._resume(run, "stn", "epochs", max_epochs, "epoch")

        def on_epoch(epoch):
            epochs.done(epoch, "epoch")
            if run.checkpoint is not None:
                run.checkpoint.save("stn", "state", trainer.state(epoch))

        with epochs:
            trainer.run((torch.as_tensor(data.Xt), y_enc, torch.as_tensor(data.Xv), yv_enc),
                        batch_size_of(plain, len(y_enc)), max_epochs, on_epoch=on_epoch,
                        resume=resume)
        fit_time = time.perf_counter() - start
        final = trainer.current()
        model = self._tuned_model(plain, module, final, space.paths, data)
        t0 = time.perf_counter()
        score = self.scorer_(model, data.X_val, data.y_val)
        return HoldoutResult(
            params=[final], scores=[score], best=0, model=model, history=trainer.rows,
            epochs=max_epochs, trainings=1, fit_times=[fit_time],
            score_times=[time.perf_counter() - t0],
            val_losses=[trainer.rows[-1]["valid_loss"]],
            refit_params=plain_net_params(self.estimator, final, int(data.net.max_epochs), {}),
            refit_epochs=int(data.net.max_epochs),
            attributes=self._attributes(space, final, trainer, hp, module, done))

    def _attributes(self, space, final, trainer, hp, module, done):
        """The tuner's own fitted attributes (see the class)."""
        applied = dict(final)
        for name, index in space.augment.items():
            if name in DISCRETE:
                applied[space.names[index]] = math.floor(final[space.names[index]])
        out = {"engine_": "sequential", "engine_reason_": ONE_NETWORK,
               "hyper_history_": history_columns(trainer.hyper_rows),
               "applied_params_": applied, "hyperparams_": hp, "module_": module,
               "n_resumed_": done}
        if space.image_shape is not None:
            out["image_shape_"] = space.image_shape
        return out

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
