"""What fuses, and the one engine decision every search makes.

:func:`choose_engine` is where skhpo decides whether an estimator trains in fused groups or
alone, for every search: the drop-ins ask it once for their estimator, the population once
for its students, and :meth:`skhpo.fused.FusedTrainer.plan` once per training task. It reads
the net's settings (:func:`unfusible`), the fit parameters, the device and the net's size,
and either says why a task trains alone or, with ``engine="fused"``, raises before any
training. :func:`fusion_key` says which fusible tasks may share a group.

What fuses: skorch nets (alone or as a Pipeline's last step) with any torch optimiser (but
LBFGS), any callbacks (run per model, :mod:`._replay`), any validation split whose parts are
arrays, skhpo's ``ArrayBatchIterator`` or torch's ``DataLoader``. skhpo's
``TabularMLPClassifier`` / ``TabularMLPRegressor`` stack as batched products, its
``SmallCNNClassifier`` with per-model convolutions, any other module through ``torch.func``
(which refuses, with the reason, the layers it cannot replay). A net that overrides a method
the group bypasses (``infer``, ``train_step``, ...) trains alone.
"""

from dataclasses import dataclass

import numpy as np
import torch
from skorch import NeuralNet, NeuralNetBinaryClassifier, NeuralNetClassifier
from torch.utils.data import DataLoader

from ..models import (
    MLPModule,
    SmallCNNClassifier,
    SmallCNNModule,
    TabularMLPClassifier,
    TabularMLPRegressor,
    _SkhpoNetMixin,
)
from ..nets import ArrayBatchIterator, find_net, input_dict
from ._layouts import stateful_layer
from .cost import max_weights

__all__ = ["BATCHED", "CPU_ONLY", "ENGINES", "Decision", "batched_reason", "choose_engine",
           "cross_entropy", "data_reason", "fusion_key",
           "is_family", "known_loss", "too_big", "unfusible"]

#: the values of every search's ``engine``
ENGINES = ("auto", "fused", "sequential")
#: why ``engine="auto"`` trains nets on a GPU alone
CPU_ONLY = ("engine='auto' fuses on the CPU only until the GPU path has been measured; "
            "engine='fused' trains GPU groups")

#: the settings of torch's Adam and SGD the batched twins replay (others: the model's own
#: optimiser steps)
BATCHED = {torch.optim.Adam: {"lr": None, "betas": None, "eps": None, "weight_decay": None,
                               "amsgrad": False, "maximize": False, "foreach": None,
                               "capturable": False, "differentiable": False, "fused": None,
                               "decoupled_weight_decay": False},
            torch.optim.SGD: {"lr": None, "momentum": None, "dampening": None,
                              "weight_decay": None, "nesterov": None, "maximize": False,
                              "foreach": None, "differentiable": False, "fused": None}}
_CE = torch.nn.CrossEntropyLoss


_MODULES = {TabularMLPClassifier: MLPModule, TabularMLPRegressor: MLPModule,
            SmallCNNClassifier: SmallCNNModule}


_CRITERIA = {TabularMLPClassifier: torch.nn.CrossEntropyLoss,
             SmallCNNClassifier: torch.nn.CrossEntropyLoss,
             TabularMLPRegressor: torch.nn.MSELoss}


@dataclass(frozen=True)
class Decision:
    """How an estimator trains: ``engine`` (``"fused"`` or ``"sequential"``) and ``reason``,
    why it trains alone ("" when fused)."""

    engine: str
    reason: str = ""


def choose_engine(estimator, engine, *, n_weights=None, fit_params=None, also="",
                  what="the estimator"):
    """Whether ``estimator`` (its parameters set) trains fused under ``engine``.

    Parameters
    ----------
    estimator : skorch net or Pipeline ending in one
        With the task's parameters set.
    engine : {"auto", "fused", "sequential"}
        The search's ``engine``.
    n_weights : int or None, default=None
        The net's weights, when known: ``engine="auto"`` trains bigger nets than
        :func:`~skhpo.fused.cost.max_weights` alone.
    fit_params : dict or None, default=None
        Fit parameters: a fused group cannot pass them to its nets.
    also : str, default=""
        A reason of the caller's own why the estimator cannot fuse ("" if none).
    what : str, default="the estimator"
        How the error of ``engine="fused"`` names the estimator (e.g. ``"task 3"``).

    Returns
    -------
    Decision
        ``Decision("fused")``, or ``Decision("sequential", reason)``.

    Raises
    ------
    ValueError
        With ``engine="fused"``, when the estimator cannot fuse (naming why), before any
        training; for an unknown ``engine``.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    if engine == "sequential":
        return Decision("sequential", "engine='sequential'")
    reason = (f"fit parameters {sorted(fit_params)} (a group cannot pass them to its nets; "
              "without them it fuses)" if fit_params else "") or \
        unfusible(estimator) or also
    if reason and engine == "fused":
        raise ValueError(f"engine='fused': {what} cannot be fused: {reason}; use "
                         "engine='auto' (it fuses what it can) or 'sequential'")
    if not reason and engine == "auto":
        net, _ = find_net(estimator)
        reason = ("" if str(net.device).startswith("cpu") else CPU_ONLY) or too_big(n_weights)
    return Decision("sequential", reason) if reason else Decision("fused")


def data_reason(X):
    """Why training on ``X`` cannot fuse ("" if it can): a dict of inputs (skorch's
    ``SliceDict``) fuses when each of its values is an array (or tensor) of the same rows."""
    if input_dict(X):
        lengths = {len(v) if hasattr(v, "__len__") else None for v in X.values()}
        if not X or None in lengths or len(lengths) != 1 or not all(
                isinstance(v, (np.ndarray, torch.Tensor)) for v in X.values()):
            return ("X is a dict of inputs whose values are not arrays of the same rows (the "
                    "fused engine stacks arrays)")
    return ""


def too_big(n_weights):
    """Why ``engine="auto"`` trains a net of ``n_weights`` alone, or "" (None: unknown)."""
    limit = max_weights()
    if n_weights is None or n_weights <= limit:
        return ""
    return (f"{n_weights} weights > max_weights={limit} (a bigger net gains little on a CPU; "
            "$SKHPO_MAX_WEIGHTS or engine='fused' fuses it)")


def batched_reason(net):
    """Why ``net``'s optimiser has no batched twin (``BatchedAdam`` / ``BatchedSGD``), or "":
    torch's plain Adam or SGD with settings the twin replays."""
    kind = net.optimizer
    if kind not in BATCHED:
        return (f"optimizer {getattr(kind, '__name__', kind)} (the batched step replays "
                "torch's Adam and SGD)")
    extra = set(net.get_params_for("optimizer")) - {
        key for key, fixed in BATCHED[kind].items() if fixed is None}
    return f"optimizer arguments {sorted(extra)}" if extra else ""


def cross_entropy(net):
    """Whether ``net`` is a skhpo classifier whose batched loss is the cross-entropy."""
    return _CRITERIA.get(type(net)) is _CE


def is_family(net):
    """Whether ``net`` is one of skhpo's models with its own module (a batched layout)."""
    kind = type(net)
    return kind in _MODULES and net.module is _MODULES[kind]


#: NeuralNet methods a group does not call (it computes the forward, loss and step itself):
#: a net that overrides one trains alone
_BYPASSED = ("infer", "train_step", "train_step_single", "validation_step", "fit_loop",
             "run_single_epoch", "get_iterator", "_step_optimizer", "_zero_grad_optimizer")
#: overrides of those the group replays (``NeuralNetBinaryClassifier`` flattens its output)
_REPLAYED = (NeuralNetBinaryClassifier.infer,)
#: iterator arguments a group replays
_ITERATOR_ARGS = {"shuffle", "batch_size"}


def unfusible(estimator):
    """Why ``estimator`` (parameters set) cannot train in a fused group, or ""."""
    try:
        net, _ = find_net(estimator)
    except TypeError:
        return (f"{type(estimator).__name__} is not a skorch net (the fused engine trains "
                "skorch nets)")
    kind = type(net)
    family = is_family(net)
    bypassed = [name for name in _BYPASSED
                if getattr(kind, name, None) is not getattr(NeuralNet, name, None)
                and getattr(kind, name, None) not in _REPLAYED]
    train_it, valid_it = net.get_params_for("iterator_train"), \
        net.get_params_for("iterator_valid")
    optimizer = net.optimizer
    checks = [
        (bool(bypassed), f"{kind.__name__} overrides {bypassed[0] if bypassed else ''} (a "
         "fused group computes the forward, the loss and the step itself; an override of "
         "get_loss fuses: a group calls it per model)"),
        (family and bool(net.get_params_for("module")),
         "module__ arguments (skhpo's models take their architecture as net parameters)"),
        (not (isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer)),
         f"optimizer {getattr(optimizer, '__name__', optimizer)} (not a torch optimiser "
         "class)"),
        (isinstance(optimizer, type) and issubclass(optimizer, torch.optim.LBFGS),
         "optimizer LBFGS (its step re-evaluates the loss: a closure per model; any other "
         "torch optimiser fuses)"),
        (family and (net.criterion is not _CRITERIA[kind] or
                     bool(net.get_params_for("criterion"))),
         "a criterion other than the model's default"),
        (bool(getattr(net, "compile", False)), "compile=True (compile=False fuses)"),
        (net.iterator_train not in (ArrayBatchIterator, DataLoader) or
         bool(set(train_it) - _ITERATOR_ARGS),
         "a training iterator other than ArrayBatchIterator or DataLoader with no arguments "
         "but shuffle and batch_size (those fuse)"),
        (net.iterator_valid not in (ArrayBatchIterator, DataLoader) or
         bool(set(valid_it) - _ITERATOR_ARGS) or bool(valid_it.get("shuffle", False)),
         "a validation iterator other than an unshuffled ArrayBatchIterator or DataLoader "
         "with no arguments but batch_size (those fuse)"),
        (int(net.max_epochs) < 1, "max_epochs < 1"),
    ]
    for failed, reason in checks:
        if failed:
            return reason
    if not family:  # the torch.func path: a layer whose state or randomness it cannot keep
        return _layer_reason(net)
    return ""


_LAYER_REASONS = {}


def _layer_reason(net):
    """:func:`~._layouts.stateful_layer` of ``net``'s module: read off a module instance,
    else built once per module class and arguments (a plan asks for every task); "" when
    the module is sized from the data (skhpo's models: checked before training)."""
    if isinstance(net.module, torch.nn.Module):
        return stateful_layer(net.module)
    kwargs = net.get_params_for("module")
    key = (net.module, repr(sorted(kwargs.items())))
    if key not in _LAYER_REASONS:
        try:
            with torch.random.fork_rng(devices=[]):
                _LAYER_REASONS[key] = stateful_layer(net.module(**kwargs))
        except Exception:
            return ""
    return _LAYER_REASONS[key]


def known_loss(kind):
    """The ``get_loss`` of skorch or skhpo that ``kind`` uses, or None if it has its own."""
    known = {NeuralNet.get_loss, NeuralNetClassifier.get_loss, _SkhpoNetMixin.get_loss}
    return kind.get_loss if kind.get_loss in known else None


def fusion_key(estimator):
    """What tasks must share to train together (model class, its architecture, batch size,
    optimiser class and Nesterov or not, device; the device last): ``estimator`` with the
    task's parameters set. For a module on the ``torch.func`` path: the module class, the
    criterion and the training iterator (what the module's arguments built, its layers and
    shapes, is compared once the nets are initialised)."""
    net, _ = find_net(estimator)
    p = net.get_params(deep=False)
    batch = net.get_params_for("iterator_train").get("batch_size", net.batch_size)
    nesterov = bool(net.get_params_for("optimizer").get("nesterov", False))
    if is_family(net):
        shape = tuple(p[k] for k in ("n_blocks", "n_filters", "kernel_size", "image_shape",
                                     "width", "activation")) \
            if isinstance(net, SmallCNNClassifier) else \
            (p["depth"], p.get("input_dropout") is None, p["width"], p["activation"])
    else:
        # the module's arguments are compared once the nets are built, by what they built
        # (:func:`~._layouts.module_signature`): a grid over dropout rates shares a group
        module = net.module if isinstance(net.module, type) else type(net.module)
        shape = (f"{module.__module__}.{module.__qualname__}",
                 repr(net.criterion), repr(sorted(net.get_params_for("criterion").items())),
                 net.iterator_train.__name__)
    return (type(net).__name__, *shape, batch, net.optimizer.__name__, nesterov,
            str(net.device))
