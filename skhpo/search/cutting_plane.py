"""CuttingPlaneTuner: CPMLHO (Yang et al., "CPMLHO: Hyperparameter Tuning via Cutting Plane
and Mixed-Level Optimization", arXiv 2212.06150), on top of Delta-STN (Bae & Grosse 2020).

One training run tunes the net's dropout rates (and optionally input noise and cutout). Every
``nn.Linear`` / ``nn.Conv2d`` of the user's module becomes a self-tuning layer whose weight is
``W_e + diag(s_w(h)) W_h2`` (:mod:`skhpo.hyper.layers`); the hyper-parameters lambda = box(u)
carry a Gaussian perturbation of learned scale sigma. The loop (spec cpmlho.md §1.4, §2, §3):

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
import time
from numbers import Integral, Real

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import clone
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted
from torch.func import jvp

from ..hyper import as_box
from ..hyper.layers import (HyperLayer, convert_module, cutout, dropout_layers, entropy,
                            general_state_dict)
from ..nets import TrainingDivergedError, batch_size_of, find_net, seed_everything
from ._base import HoldoutSearch, history_columns, plain_net_params

__all__ = ["CuttingPlaneTuner", "cut_penalty"]

DEFAULT_BOX, DEFAULT_INIT = (0.0, 0.95), 0.05
#: hyper-parameters that act on the training inputs (dropout rates act in the module)
AUGMENTATIONS = ("input_noise", "cutout_holes", "cutout_length")
#: the discrete ones, applied as floor(value)
DISCRETE = ("cutout_holes", "cutout_length")


def cut_penalty(pairs, signs, mu, eps2, mode="hinge"):
    """mu * sum over layers and elements of pen(S * (W_e - W_h2) - eps2).

    ``pairs``: ``[(W_e, W_h2), ...]`` (W_e is treated as a constant); ``signs``: per layer a
    tensor of +-1/0 (``cut_memory="last"``) or a pair ``(seen_plus, seen_minus)`` of boolean
    masks (``"all"``: the maximum over the cuts seen so far). ``mode``: ``"hinge"``
    (pen = max(0, .)) or ``"linear"`` (pen = identity, the literal Eq. 12).
    """
    total = 0.0
    for (w_e, w_h2), s in zip(pairs, signs):
        d = w_e.detach() - w_h2
        if isinstance(s, tuple):
            plus, minus = s
            z = torch.maximum(torch.where(plus, d - eps2, -math.inf),
                              torch.where(minus, -d - eps2, -math.inf))
            z = torch.where(plus | minus, z, torch.zeros_like(z))
        else:
            z = torch.where(s != 0, s * d - eps2, torch.zeros_like(d))
        total = total + (F.relu(z) if mode == "hinge" else z).sum()
    return mu * total


def _estimator_has(attr):
    def check(self):
        getattr(getattr(self, "best_estimator_", self.estimator), attr)
        return True
    return check


class _HyperParams(torch.nn.Module):
    """u (unconstrained values) and rho (sigma = softplus(rho)) of the tuned hyper-parameters."""

    def __init__(self, boxes, inits, scale=1.0):
        super().__init__()
        self.boxes = boxes
        self.u = torch.nn.Parameter(torch.tensor([float(b.inverse(v)) for b, v in zip(boxes, inits)]))
        self.rho = torch.nn.Parameter(torch.full((len(boxes),), math.log(math.expm1(scale))))

    def sigma(self):
        return F.softplus(self.rho)

    def values(self, u=None):
        """lambda = box(u) for u of shape (..., n)."""
        u = self.u if u is None else u
        return torch.stack([b.forward(u[..., i]) for i, b in enumerate(self.boxes)], dim=-1)


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
        ``name -> (low, high)`` or ``(low, high, init)``. Names: ``dropout[path]`` for the
        dropout layer at ``path`` of ``module_.named_modules()`` (with the Pipeline prefix,
        e.g. ``net__dropout[layers.2]``), ``input_noise`` (Gaussian noise of this standard
        deviation added to the inputs in training), and ``cutout_holes`` with
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
    refit : bool, default=False
        False: ``best_estimator_`` is the user's plain net carrying the general weights (what
        the self-tuning net predicts with at the final hyper-parameters) and the final rates.
        True: the user's net retrained on all of X with the final rates fixed.
    random_state : int, RandomState or None, default=None
        Seeds the split, the weights, dropout masks and perturbations.
    verbose : int, default=0
        One line per epoch when > 0.

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
    """

    _parameter_constraints: dict = {
        "hyperparams": [dict, None],
        "warmup_epochs": [Interval(Integral, 0, None, closed="left")],
        "train_steps": [Interval(Integral, 1, None, closed="left")],
        "valid_steps": [Interval(Integral, 1, None, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
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
        "scoring": [str, callable, None],
        "refit": ["boolean"],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(self, estimator, hyperparams=None, *, warmup_epochs=5, train_steps=5,
                 valid_steps=1, validation_fraction=0.15, mu=1e-3, eps2=1e-8,
                 cut_mode="hinge", cut_memory="last", theta=1.0, entropy_weight=1e-3,
                 tune_scales=True, linearize=True, hyper_lr=1e-2, image_shape=None, scoring=None,
                 refit=False, random_state=None, verbose=0):
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
        self.random_state = random_state
        self.verbose = verbose

    # -- fit ------------------------------------------------------------------------------

    def fit(self, X, y=None, **fit_params):
        """Split off the validation part and run the self-tuning training.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
        **fit_params : dict
            Not supported (a ``TypeError`` names them).

        Returns
        -------
        self : object
        """
        self._validate_params()
        rng = check_random_state(self.random_state)
        split_seed, torch_seed = rng.randint(2**31 - 1, size=2)
        data = self._holdout(X, y, fit_params, int(split_seed))
        seed_everything(int(torch_seed))
        plain, y_enc, yv_enc = self._initialised_net(data)
        names, boxes, inits, paths, extra = self._hyperparams(plain, data.prefix, data.Xt)
        if self.refit and extra:
            raise ValueError(f"refit=True cannot retrain with {', '.join(extra)}: a plain net "
                             "has no such parameter; use refit=False")

        module = copy.deepcopy(plain.module_)
        context = convert_module(module, paths, len(names))
        hp = _HyperParams(boxes, inits)
        start = time.perf_counter()
        self._train(plain, module, context, hp, names, extra,
                    torch.as_tensor(data.Xt), y_enc, torch.as_tensor(data.Xv), yv_enc)
        self.search_time_ = time.perf_counter() - start
        with torch.no_grad():
            final = [float(v) for v in hp.values()]
        self.applied_params_ = dict(zip(names, final))
        for name in DISCRETE:
            if name in extra:
                self.applied_params_[names[extra[name]]] = math.floor(final[extra[name]])
        self.hyperparams_ = hp
        self.module_ = module
        self._finish(plain, module, dict(zip(names, final)), paths, data, X, y)
        return self

    def _hyperparams(self, plain, prefix, X):
        """(names, boxes, inits, dropout paths, ``{augmentation: index}``), checked; the
        dropout rates come first (index i of ``paths`` is hyper-parameter i)."""
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
            bare = name[len(prefix):] if name.startswith(prefix) else None
            if not (isinstance(value, (tuple, list)) and len(value) in (2, 3)):
                raise ValueError(f"hyperparams[{name!r}]: expected (low, high) or (low, high, "
                                 f"init); got {value!r}")
            box = as_box(name, tuple(value[:2]), where="hyperparams")
            if bare in AUGMENTATIONS:
                if box.lo < 0:
                    raise ValueError(f"hyperparams[{name!r}]: {bare} must be >= 0; got the box "
                                     f"({box.lo}, {box.hi})")
                init = value[2] if len(value) == 3 else 0.5 * (box.lo + box.hi)
                augment[bare] = (name, box, init)
                continue
            if not (bare is not None and bare.startswith("dropout[") and bare.endswith("]")):
                raise ValueError(f"hyperparams: {name!r} is not tunable here; accepted: "
                                 f"{prefix}dropout[<path of a dropout layer>] (the module's "
                                 f"are {sorted(layers)}), " + ", ".join(
                                     prefix + a for a in AUGMENTATIONS))
            path = bare[len("dropout["):-1]
            if path not in layers:
                raise ValueError(f"hyperparams[{name!r}]: the module has no dropout layer "
                                 f"{path!r}; its dropout layers are {sorted(layers)}")
            if box.lo < 0 or box.hi >= 1:
                raise ValueError(f"hyperparams[{name!r}]: a dropout rate's box must lie in "
                                 f"[0, 1); got ({box.lo}, {box.hi})")
            init = value[2] if len(value) == 3 else min(max(
                float(getattr(layers[path], "p", DEFAULT_INIT)), box.lo), box.hi)
            rates.append((path, name, box, init))
        if ("cutout_holes" in augment) != ("cutout_length" in augment):
            raise ValueError("hyperparams: cutout needs both cutout_holes and cutout_length")
        if "cutout_holes" in augment:
            self.image_shape_ = self._image_shape(plain, X)
        entries = [(n, b, i) for _, n, b, i in rates] + [augment[a] for a in AUGMENTATIONS
                                                          if a in augment]
        for name, box, init in entries:
            if not box.lo <= init <= box.hi:
                raise ValueError(f"hyperparams[{name!r}]: init {init} is outside the box "
                                 f"({box.lo}, {box.hi})")
        names = [n for n, _, _ in entries]
        extra = {a: names.index(augment[a][0]) for a in augment}
        return (names, [b for _, b, _ in entries], [b.clip(i) for _, b, i in entries],
                [p for p, _, _, _ in rates], extra)

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

    # -- the Delta-STN / CPMLHO loop ------------------------------------------------------------

    def _train(self, plain, module, context, hp, names, extra, Xt, yt, Xv, yv):
        device = torch.device(plain.device)
        module.to(device)
        hp.to(device)
        hyper_layers = [m for m in module.modules() if isinstance(m, HyperLayer)]
        response_ids = {id(p) for m in hyper_layers for p in (*m.response.parameters(), m.h1)}
        general = [p for p in module.parameters() if id(p) not in response_ids]
        response = [p for p in module.parameters() if id(p) in response_ids]
        opt_kwargs = {"lr": plain.lr, **plain.get_params_for("optimizer")}
        opt_general = plain.optimizer(general, **opt_kwargs)
        opt_response = plain.optimizer(response, **opt_kwargs)
        opt_u = torch.optim.RMSprop([hp.u], lr=self.hyper_lr)
        opt_rho = torch.optim.RMSprop([hp.rho], lr=self.hyper_lr)
        loss_fn = lambda y_pred, y: plain.get_loss(y_pred, y, training=False)  # noqa: E731
        n_rates = len(names) - len(extra)
        batch = batch_size_of(plain, len(yt))
        pairs = [(m.base.weight, m.response.weight) for m in hyper_layers]
        state = {"signs": None, "step": 0, "hyper_steps": 0}
        rows, hyper_rows = [], []
        max_epochs = int(find_net(self.estimator)[0].max_epochs)
        train_iter = _batches(len(yt), batch)  # the theta term's own training batches
        val_iter = _batches(len(yv), batch)

        def inputs(x, lam):
            """The training inputs under the augmentations at ``lam`` (one row, or one per
            example)."""
            if "input_noise" in extra:
                scale = lam[..., extra["input_noise"]].reshape(-1, *([1] * (x.dim() - 1)))
                x = x + scale * torch.randn_like(x)
            if "cutout_holes" in extra:
                x = cutout(x, lam[..., extra["cutout_holes"]], lam[..., extra["cutout_length"]],
                           self.image_shape_)
            return x

        def check(loss, epoch, where):
            if not torch.isfinite(loss):
                raise TrainingDivergedError(f"CuttingPlaneTuner: the {where} loss became "
                                            f"{loss.item()} at epoch {epoch + 1}")

        def hyper_term(x, y):
            n = x.shape[0]
            if self.tune_scales:
                u_tilde = hp.u + hp.sigma() * torch.randn(n, len(names), device=device)
            else:
                u_tilde = hp.u.expand(n, -1)
            context.h_net = u_tilde - hp.u.detach()
            return loss_fn(module(x), y)

        for epoch in range(max_epochs):
            for idx in torch.randperm(len(yt)).split(batch):
                x, y = Xt[idx].to(device), yt[idx].to(device)
                with torch.no_grad():
                    lam = hp.values()
                    sigma = hp.sigma()
                # (a) general sub-step at the current lambda, hyper term off [Eq. 13]
                module.train()
                context.h_net = None
                context.rates = lam[:n_rates]
                loss = loss_fn(module(inputs(x, lam)), y)
                check(loss, epoch, "training")
                opt_general.zero_grad()
                loss.backward()
                opt_general.step()
                # (b) response sub-step at per-example perturbed lambdas + cut [Eq. 14]
                delta = sigma * torch.randn(len(idx), len(names), device=device)
                lam_t = hp.values(hp.u.detach() + delta)
                context.rates = lam_t[:, :n_rates]
                x_in = inputs(x, lam_t)
                if self.linearize:
                    def f(h):
                        context.h_net = h
                        return module(x_in)
                    out, tangent = jvp(f, (torch.zeros_like(delta),), (delta,))
                    pred = out + tangent
                else:
                    context.h_net = delta
                    pred = module(x_in)
                loss = loss_fn(pred, y)
                if self.mu > 0 and state["signs"] is not None:
                    loss = loss + cut_penalty(pairs, state["signs"], self.mu, self.eps2,
                                              self.cut_mode)
                check(loss, epoch, "response")
                opt_response.zero_grad()
                loss.backward()
                opt_response.step()
                state["step"] += 1
                # hyper steps: mixed-level objective [Eq. 15/16]
                if epoch >= self.warmup_epochs and state["step"] % self.train_steps == 0:
                    module.eval()
                    context.rates = None
                    for _ in range(self.valid_steps):
                        vi = next(val_iter)
                        h_loss = hyper_term(Xv[vi].to(device), yv[vi].to(device))
                        if self.theta is not None:
                            ti = next(train_iter)
                            h_loss = hyper_term(Xt[ti].to(device), yt[ti].to(device)) \
                                + self.theta * h_loss
                        if self.tune_scales:
                            h_loss = h_loss - self.entropy_weight * entropy(hp.sigma())
                        check(h_loss, epoch, "hyper")
                        opt_u.zero_grad()
                        opt_rho.zero_grad()
                        h_loss.backward()
                        opt_u.step()
                        if self.tune_scales:
                            opt_rho.step()
                        state["hyper_steps"] += 1
                        with torch.no_grad():
                            hyper_rows.append({"epoch": epoch + 1, **dict(zip(
                                names, (float(v) for v in hp.values())))})
            # epoch end: evaluate, rebuild the cut
            context.h_net, context.rates = None, None
            with torch.no_grad():
                row = {"epoch": epoch + 1, **dict(zip(names, (float(v) for v in hp.values())))}
            row.update(_evaluate(module, loss_fn, Xt, yt, batch, device, "train"))
            row.update(_evaluate(module, loss_fn, Xv, yv, batch, device, "valid"))
            with torch.no_grad():
                gaps = torch.cat([(a - b).abs().reshape(-1) for a, b in pairs])
                row.update(gap=float(gaps.mean()), mu=self.mu,
                           sigma=[float(s) for s in hp.sigma()],
                           hyper_steps=state["hyper_steps"])
                state["signs"] = _cut(pairs, state["signs"], self.cut_memory)
            if not math.isfinite(row["train_loss"]):
                raise TrainingDivergedError(f"CuttingPlaneTuner: the training loss became "
                                            f"{row['train_loss']} at epoch {epoch + 1}")
            rows.append(row)
            if self.verbose:
                print(f"[CPMLHO] epoch {epoch + 1}/{max_epochs} train {row['train_loss']:.4f} "
                      f"valid {row['valid_loss']:.4f} gap {row['gap']:.4f} " + " ".join(
                          f"{n}={row[n]:.4f}" for n in names), flush=True)
        self.history_ = history_columns(rows)
        self.hyper_history_ = history_columns(hyper_rows)
        self.n_epochs_ = max_epochs

    # -- results --------------------------------------------------------------------------------

    def _finish(self, plain, module, final, paths, data, X, y):
        """best_estimator_ (the plain net with the general weights, or a refit) and
        cv_results_."""
        plain.module_.load_state_dict(general_state_dict(module.cpu()))
        layers = dropout_layers(plain.module_)
        for path, rate in zip(paths, final.values()):
            layers[path].p = rate
        plain.module_.eval()
        plain.set_params(max_epochs=data.net.max_epochs, train_split=data.net.train_split)
        model = self._with_preprocessing(data, plain)
        t0 = time.perf_counter()
        score = self.scorer_(model, data.X_val, data.y_val)
        self._one_split_results([final], [score], [self.search_time_],
                                [time.perf_counter() - t0], [self.history_["valid_loss"][-1]], 0)
        self.refit_time_ = 0.0
        if not self.refit:
            self.best_estimator_ = model
            return
        t0 = time.perf_counter()
        epochs = int(data.net.max_epochs)
        params = plain_net_params(self.estimator, data.prefix, self.best_params_, epochs, {})
        self.best_estimator_ = clone(self.estimator).set_params(**params).fit(X, y)
        self.refit_time_ = time.perf_counter() - t0
        self.n_epochs_ += epochs

    # best_estimator_ exists with refit=False too (the general weights): delegate to it
    # rather than to BaseSearchCV's methods, which require refit

    def predict(self, X):
        """``best_estimator_.predict(X)``."""
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.predict(X)

    @available_if(_estimator_has("predict_proba"))
    def predict_proba(self, X):
        """``best_estimator_.predict_proba(X)``."""
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.predict_proba(X)

    def score(self, X, y=None, **params):
        """``scoring`` (``scorer_``) of ``best_estimator_`` on ``(X, y)``."""
        check_is_fitted(self, "best_estimator_")
        return self.scorer_(self.best_estimator_, X, y, **params)



def _batches(n, batch):
    """An endless iterator of index batches (reshuffled at every pass)."""
    while True:
        yield from torch.randperm(n).split(batch)


def _evaluate(module, loss_fn, X, y, batch, device, name):
    module.eval()
    losses, correct = [], 0
    with torch.no_grad():
        for idx in torch.arange(len(y)).split(max(batch, 512)):
            out = module(X[idx].to(device))
            target = y[idx].to(device)
            losses.append(float(loss_fn(out, target)) * len(idx))
            if out.dim() == 2 and out.shape[1] > 1 and not torch.is_floating_point(target):
                correct += int((out.argmax(dim=1) == target).sum())
    out = {f"{name}_loss": sum(losses) / len(y)}
    if not torch.is_floating_point(y):
        out[f"{name}_acc"] = correct / len(y)
    return out


def _cut(pairs, previous, memory):
    """The cut at the current weights: S = sign(W_e - W_h2) per layer (``"last"``), or the
    signs seen so far as two masks (``"all"``)."""
    signs = [torch.sign(a - b).detach() for a, b in pairs]
    if memory == "last":
        return signs
    if previous is None:
        return [(s > 0, s < 0) for s in signs]
    return [(p | (s > 0), m | (s < 0)) for (p, m), s in zip(previous, signs)]
