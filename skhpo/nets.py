"""The skorch helpers every search shares.

* finding the net inside an estimator or a ``Pipeline`` (:func:`find_net`) and what it
  receives (:func:`net_input`, :func:`net_X`, :func:`net_y`);
* checks before training (:func:`check_module_output`, :func:`check_param_names`);
* one training task's parameters: seed, divergence guard, device (:func:`trial_params`);
* seeds (:func:`spawn_seeds`, :func:`draw_seed`, :func:`seed_everything`);
* the one divergence rule (:func:`divergence`, :class:`FiniteLossGuard`);
* fast batching of arrays (:class:`ArrayBatchIterator`) and freeing finished models.

The layers that train nets their own way (the fused engine, HPM's students, the self-tuning
network) import skorch too; what they share with the searches is here.
"""

import inspect
import math
import random
from contextlib import contextmanager

import numpy as np
import torch
from scipy import sparse
from sklearn.base import clone
from sklearn.pipeline import Pipeline
from sklearn.utils import _safe_indexing, check_random_state
from sklearn.utils.validation import _num_samples
from skorch import NeuralNet, NeuralNetClassifier
from skorch.callbacks import Callback
from skorch.dataset import Dataset as SkorchDataset
from skorch.history import History
from torch.utils.data import DataLoader, Subset

__all__ = [
    "ArrayBatchIterator",
    "FiniteLossGuard",
    "MAX_LOSS_RATIO",
    "TaskSeed",
    "TrainingDivergedError",
    "array_data",
    "batch_size_of",
    "check_max_ratio",
    "check_module_output",
    "check_param_names",
    "divergence",
    "draw_seed",
    "drawing_from",
    "find_net",
    "free_estimator",
    "input_dict",
    "guard_ratio",
    "module_mode",
    "load_net_state",
    "net_X",
    "net_input",
    "net_seed",
    "net_state",
    "net_y",
    "seed_everything",
    "seed_torch",
    "seeds_itself",
    "spawn_seeds",
    "task_device",
    "trial_params",
    "user_callbacks",
]

#: parameters that skorch routes to one of its components by prefix
_ROUTED_PREFIXES = ("module", "criterion", "optimizer", "iterator_train", "iterator_valid",
                    "dataset", "callbacks")


class TrainingDivergedError(FloatingPointError):
    """Raised inside ``fit`` when the training loss stops being finite."""


# --------------------------------------------------------------------------------------------
# finding the net
# --------------------------------------------------------------------------------------------

def find_net(estimator):
    """Return ``(net, prefix)``: the skorch net in ``estimator`` and its parameter prefix.

    ``estimator`` is a skorch :class:`~skorch.NeuralNet` (prefix ``""``) or a
    :class:`~sklearn.pipeline.Pipeline` whose last step is one (prefix ``"<step name>__"``).
    Anything else raises a :class:`TypeError` that says what is supported.
    """
    if isinstance(estimator, NeuralNet):
        return estimator, ""
    if isinstance(estimator, Pipeline):
        name, last = estimator.steps[-1]
        if isinstance(last, NeuralNet):
            return last, f"{name}__"
        raise TypeError(
            f"estimator: the last step of the Pipeline ({name!r}) is a "
            f"{type(last).__name__}; skhpo searches need a skorch NeuralNet (for example "
            "skorch.NeuralNetClassifier or skhpo.models.TabularMLPClassifier) as the last step.")
    raise TypeError(
        f"estimator: got a {type(estimator).__name__}; skhpo searches take a skorch NeuralNet "
        "(NeuralNetClassifier, NeuralNetRegressor, a skhpo.models estimator) or a sklearn "
        "Pipeline whose last step is one.")


def net_input(fitted_estimator, X):
    """What the fitted net itself receives for ``X``: ``X`` transformed through the steps
    before the net, then through the net's own input validation (skhpo models) or cast to
    the dtype of its parameters (a floating numpy array for a plain skorch net)."""
    if isinstance(fitted_estimator, Pipeline) and len(fitted_estimator.steps) > 1:
        X = fitted_estimator[:-1].transform(X)
    net, _ = find_net(fitted_estimator)
    if hasattr(net, "_check_X"):
        return net._check_X(X, reset=False)
    if isinstance(X, np.ndarray) and X.dtype.kind == "f" and hasattr(net, "module_"):
        param = next(net.module_.parameters(), None)
        if param is not None and param.dtype.is_floating_point:
            X = X.astype(str(param.dtype).replace("torch.", ""), copy=False)
    return X


def input_dict(X):
    """Whether ``X`` is a dict of inputs (skorch's ``SliceDict``), not a sparse matrix that
    happens to be a dict (scipy's ``dok_array``)."""
    return isinstance(X, dict) and not sparse.issparse(X)


def net_X(net, X):
    """``X`` as the net's training sees it: skhpo's models validate it (float32), a plain
    skorch net receives it as an array (a dict of inputs, skorch's ``SliceDict``: a dict of
    arrays)."""
    if hasattr(net, "_check_X"):
        return net._check_X(X, reset=False)
    if input_dict(X):
        return {k: np.asarray(v) for k, v in X.items()}
    return np.asarray(X)


def net_y(net, y):
    """``y`` as the net's loss takes it: skhpo's classifiers encode class indices, a plain
    skorch net receives it as an array."""
    return net._check_y(y, reset=False) if hasattr(net, "_check_y") else np.asarray(y)


def check_module_output(estimator, X, y, n_rows=64):
    """Diagnose, before any training, the two classifier set-ups whose first batch is NaN or
    an index error, from one forward pass of an initialised, untrained copy (no optimiser
    step; the user's objects are not touched):

    * a module that returns raw logits (negative values, or rows that do not sum to 1)
      under ``NLLLoss``, the criterion of skorch's ``NeuralNetClassifier``, which takes the
      log of the module's output;
    * class targets outside the module's outputs (more classes in ``y`` than outputs, or
      integer labels beyond them, e.g. 1..3 for 3 outputs under a plain skorch net, which
      passes labels to the loss unchanged).

    Raises ``ValueError`` naming the cause and the fixes; returns None when nothing is
    wrong or the estimator is not a skorch classifier this can read."""
    net, prefix = find_net(estimator)
    if y is None or not isinstance(net, NeuralNetClassifier):
        return
    est = clone(estimator).set_params(**{f"{prefix}max_epochs": 0,
                                         f"{prefix}callbacks": "disable",
                                         f"{prefix}train_split": None})
    state = np.random.get_state()
    try:  # torch's and numpy's generators come out as they went in
        with torch.random.fork_rng(devices=[]):
            est.fit(X, y)
            fitted, _ = find_net(est)
            rows = net_input(est, _safe_indexing(X, np.arange(min(n_rows, _num_samples(X)))))
            with torch.no_grad(), module_mode(fitted.module_):
                out = fitted.forward(rows, training=False)
    except Exception:  # a set-up this cannot read: the training reports its own error
        return
    finally:
        np.random.set_state(state)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or not out.is_floating_point():
        return
    n_classes = len(getattr(fitted, "classes_", ()))
    if n_classes > out.shape[1]:
        raise ValueError(
            f"y has {n_classes} classes but the module returns {out.shape[1]} outputs per "
            "row: the loss would index outputs that do not exist. Give the module one "
            "output per class (e.g. module__n_outputs or the last layer's size).")
    # the targets as the loss takes them (skorch passes a plain net's labels unchanged)
    targets = np.asarray(fitted._check_y(y, reset=False) if hasattr(fitted, "_check_y")
                         else y)
    if targets.dtype.kind in "iu" and targets.size and \
            (targets.min() < 0 or targets.max() >= out.shape[1]):
        raise ValueError(
            f"y holds class indices {targets.min()}..{targets.max()}, but the module returns "
            f"{out.shape[1]} outputs per row (indices 0..{out.shape[1] - 1}): the loss would "
            "index outputs that do not exist. Encode the labels as 0..n_classes-1 (e.g. "
            "sklearn.preprocessing.LabelEncoder), or give the module one output per label.")
    if isinstance(fitted.criterion_, torch.nn.NLLLoss):
        sums = out.sum(dim=1)
        if bool((out < 0).any()) or not bool(torch.allclose(sums, torch.ones_like(sums),
                                                            atol=1e-3)):
            raise ValueError(
                f"the module returns raw scores, not probabilities (min {float(out.min()):.3g}"
                f", rows summing to {float(sums.min()):.3g}..{float(sums.max()):.3g}), but "
                f"the criterion is NLLLoss, which skorch's {type(net).__name__} applies to "
                "the log of the output: training would be NaN from the first batch (this is "
                "not a learning-rate problem). Either end the module with a softmax "
                "(torch.nn.Softmax(dim=-1)), or keep the logits and set "
                "criterion=torch.nn.CrossEntropyLoss.")


@contextmanager
def drawing_from(generator):
    """Run the block with torch's (CPU) global generator in ``generator``'s state, and keep
    the state it leaves in ``generator``: code that draws from the global generator (skorch's
    iterators, dropout, a callback) draws from ``generator`` instead."""
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(generator.get_state())
        yield
        generator.set_state(torch.get_rng_state())


@contextmanager
def module_mode(module, training=False):
    """Run the block with ``module`` in evaluation (or training) mode; restore its mode after,
    whatever happens in the block."""
    was_training = module.training
    module.train(training)
    try:
        yield module
    finally:
        module.train(was_training)


def batch_size_of(net, n_samples=None):
    """The training batch size of ``net`` (``iterator_train__batch_size`` wins over
    ``batch_size``; ``-1`` means the whole data set)."""
    size = net.get_params_for("iterator_train").get("batch_size", net.batch_size)
    if size == -1 and n_samples is not None:
        return int(n_samples)
    return int(size)


def check_param_names(estimator, names, *, where="param_distributions"):
    """Raise a ``ValueError`` for a hyper-parameter name the estimator does not accept.

    Names are the estimator's own ``get_params`` keys; for the net, skorch's routed
    prefixes (``module__``, ``optimizer__``, ``criterion__``, ``iterator_train__``, ...) are
    accepted when the component's constructor takes that argument.
    """
    valid = set(estimator.get_params(deep=True))
    net, prefix = find_net(estimator)
    for name in names:
        if name in valid:
            continue
        if name.startswith(prefix):
            local = name[len(prefix):]
            head, sep, arg = local.partition("__")
            if sep and head in _ROUTED_PREFIXES and _component_accepts(net, head, arg):
                continue
        hint = sorted(k for k in valid if "__" not in k[len(prefix):] and k.startswith(prefix))
        raise ValueError(
            f"{where}: unknown hyper-parameter {name!r} for {type(estimator).__name__}. Use the "
            f"estimator's get_params() keys (e.g. {', '.join(hint[:8])}) or skorch's routed "
            f"names such as {prefix}module__<arg>, {prefix}optimizer__<arg>.")


def _component_accepts(net, head, arg):
    if head in ("iterator_train", "iterator_valid", "dataset", "callbacks"):
        return True
    component = getattr(net, head, None)
    if not inspect.isclass(component):
        return True  # an instance or factory: we cannot tell, let skorch decide
    try:
        params = inspect.signature(component.__init__).parameters
    except (TypeError, ValueError):
        return True
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return True
    return arg in params or (head == "module" and arg in _model_module_args(net))


def _model_module_args(net):
    # skhpo.models estimators expose module arguments as plain parameters too
    return set(getattr(net, "_module_params", ()))


# --------------------------------------------------------------------------------------------
# seeds, devices, task parameters
# --------------------------------------------------------------------------------------------

def spawn_seeds(random_state, n):
    """``n`` independent integer seeds derived from ``random_state`` (int, RandomState, None)."""
    rng = check_random_state(random_state)
    entropy = int(rng.randint(np.iinfo(np.int32).max))
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(entropy).spawn(n)]


def draw_seed(rng, size=None):
    """One integer seed (or ``size`` of them) drawn from the ``RandomState`` ``rng``, in
    [0, 2^31 - 1): the draw every method uses where a single seed is taken from its stream
    (:func:`spawn_seeds` where several independent ones are needed)."""
    if size is None:
        return int(rng.randint(2**31 - 1))
    return [int(v) for v in rng.randint(2**31 - 1, size=size)]


def net_seed(seed):
    """``seed`` (any non-negative int) in [0, 2^31 - 1): what a net's ``random_state`` takes."""
    return int(seed % (2**31 - 1))


def seed_torch(seed):
    """``torch.manual_seed(seed)``, without its cost where there is no device: on a machine
    with no accelerator it would still queue, per call, a lazy seeding of each device type
    with the caller's stack (0.4 ms a call inside a search); the CPU generator is seeded."""
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    if accelerator is not None and not accelerator.is_available():
        torch.default_generator.manual_seed(int(seed))
    else:
        torch.manual_seed(int(seed))


def seed_everything(seed):
    """Seed torch, numpy and ``random`` in the current process (call it inside the worker)."""
    seed = int(seed)
    seed_torch(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def task_device(device, task_index):
    """Round-robin placement: ``"cuda"`` with k > 1 visible GPUs becomes ``cuda:<i mod k>``."""
    if device == "cuda" and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return f"cuda:{task_index % torch.cuda.device_count()}"
    return device


#: the default ``max_ratio`` of :class:`FiniteLossGuard`: a training loss above this multiple of
#: the fit's first training-batch loss is an explosion, not noise
MAX_LOSS_RATIO = 1e4


def divergence(loss, first, max_ratio=MAX_LOSS_RATIO):
    """Why a training ``loss`` means the training diverged, or "": it is NaN or infinite, or
    (``max_ratio`` not None, ``first`` > 0) above ``max_ratio`` times ``first``, the loss of the
    fit's first training batch. The one rule of every skhpo training loop."""
    if not math.isfinite(loss):
        return f"training loss became {loss}"
    if max_ratio is not None and first is not None and first > 0 and loss > max_ratio * first:
        return (f"training loss became {loss:.4g}, more than max_ratio={max_ratio:.7g} times its "
                f"first batch's {first:.4g}")
    return ""


def guard_ratio(net):
    """The ``max_ratio`` of ``net``'s :class:`FiniteLossGuard` (:data:`MAX_LOSS_RATIO` when it
    has none): for the training loops that run outside skorch's ``fit``."""
    for callbacks in (getattr(net, "callbacks_", None), net.callbacks):
        if callbacks in (None, "disable"):
            continue
        for cb in callbacks:
            cb = cb[1] if isinstance(cb, tuple) else cb
            if isinstance(cb, FiniteLossGuard):
                return cb.max_ratio
    return MAX_LOSS_RATIO


def check_max_ratio(max_ratio, name="max_ratio"):
    """``max_ratio`` is None (non-finite losses only) or a real number > 1."""
    if max_ratio is None:
        return
    if isinstance(max_ratio, bool) or not isinstance(max_ratio, (int, float, np.floating)) or \
            not max_ratio > 1:
        raise ValueError(f"{name} must be None or a number > 1 (a multiple of the first "
                         f"batch's loss); got {max_ratio!r}")


class FiniteLossGuard(Callback):
    """Stop a fit whose training diverges: its loss becomes NaN or infinite, or explodes.

    Raises :class:`TrainingDivergedError` inside ``fit``, so scikit-learn's ``error_score``
    applies to the candidate instead of the net silently scoring at chance level. A finite
    explosion counts too: a training batch whose loss is more than ``max_ratio`` times the
    loss of the fit's first training batch (the loss at initialisation). Ordinary training
    stays far below the default 1e4 (measured over the bench tasks and spaces:
    ``benchmarks/divergence_rule.py``, docs/core.md). The reference is kept across
    ``partial_fit`` calls and reset when the net is initialised again.

    Parameters
    ----------
    max_ratio : float > 1 or None, default=1e4
        The explosion threshold; None checks for non-finite losses only. On skhpo's models
        set it as ``callbacks__finite_loss__max_ratio``.

    Examples
    --------
    skhpo's models carry the guard; add it to any skorch net's callbacks:

    >>> import torch
    >>> from sklearn.datasets import load_iris
    >>> from skhpo import TabularMLPClassifier, TrainingDivergedError
    >>> X, y = load_iris(return_X_y=True)
    >>> net = TabularMLPClassifier(optimizer=torch.optim.SGD, lr=1e12, random_state=0)
    >>> try:
    ...     net.fit(X, y)
    ... except TrainingDivergedError as exc:
    ...     print(exc)
    training loss became 2.403e+34, more than max_ratio=10000 times its first batch's 1.062 in epoch 1; the candidate diverged (try a smaller learning rate)
    """  # noqa: E501

    def __init__(self, max_ratio=MAX_LOSS_RATIO):
        self.max_ratio = max_ratio

    def initialize(self):
        check_max_ratio(self.max_ratio, "FiniteLossGuard: max_ratio")
        self.first_loss_ = None
        return super().initialize()

    def on_batch_end(self, net, batch=None, training=None, loss=None, **kwargs):
        if not training or loss is None:
            return
        value = loss.item()
        if getattr(self, "first_loss_", None) is None and math.isfinite(value):
            self.first_loss_ = value
        reason = divergence(value, self.first_loss_, self.max_ratio)
        if reason:
            raise TrainingDivergedError(
                f"{reason} in epoch {len(net.history)}; the candidate diverged (try a smaller "
                "learning rate)")


class TaskSeed(Callback):
    """Seed torch/numpy when the net initialises, i.e. before its weights are drawn.

    skorch initialises callbacks before the module, so the weights, dropout masks and
    shuffling of one training task depend only on ``seed``, not on the worker that ran it.
    """

    def __init__(self, seed):
        self.seed = seed

    def initialize(self):
        seed_everything(self.seed)
        return super().initialize()


def _has_guard(net):
    callbacks = list(net.get_default_callbacks()) + list(_user_callbacks(net))
    return any(isinstance(cb[1] if isinstance(cb, tuple) else cb, FiniteLossGuard)
               for cb in callbacks)


def _user_callbacks(net):
    return net.callbacks if isinstance(net.callbacks, (list, tuple)) else []


def user_callbacks(net):
    """Fresh copies of the callbacks the user put on ``net`` (``(name, callback)`` pairs or
    callbacks), for a training task: the user's own objects are never trained, as
    scikit-learn's searches clone them too."""
    return [(cb[0], clone(cb[1], safe=False)) if isinstance(cb, tuple) else clone(cb, safe=False)
            for cb in _user_callbacks(net)]


def seeds_itself(net):
    """Whether ``net`` seeds its own fits: a ``random_state`` of its own, or a
    :class:`TaskSeed` among the user's callbacks (a task then keeps the user's seed)."""
    return getattr(net, "random_state", None) is not None or any(
        isinstance(cb[1] if isinstance(cb, tuple) else cb, TaskSeed)
        for cb in _user_callbacks(net))


def trial_params(estimator, *, seed=None, task_index=0, extra_callbacks=(), **net_overrides):
    """Parameters that turn ``estimator`` into one guarded, seeded training task.

    Returns a ``set_params`` dict (with the Pipeline prefix) that appends a
    :class:`FiniteLossGuard` and, unless the net seeds itself (:func:`seeds_itself`), a
    :class:`TaskSeed` to the net's callbacks, plus ``extra_callbacks`` (``(name, callback)``
    pairs a method reads the trained net with), places the task on a device round-robin, and
    applies ``net_overrides`` (e.g. ``max_epochs=1``). The user's callbacks are kept.
    """
    net, prefix = find_net(estimator)
    out = {f"{prefix}{k}": v for k, v in net_overrides.items()}
    if net.callbacks == "disable" and extra_callbacks:
        raise ValueError("the net's callbacks are disabled (callbacks='disable'), but this "
                         "method reads the network through a callback; enable callbacks")
    if net.callbacks != "disable":
        extra = list(extra_callbacks)
        if not _has_guard(net):
            extra.append(("skhpo_finite_loss", FiniteLossGuard()))
        if seed is not None and not seeds_itself(net):
            extra.append(("skhpo_seed", TaskSeed(seed)))
        if extra:
            out[f"{prefix}callbacks"] = user_callbacks(net) + extra
    device = task_device(net.device, task_index)
    if device != net.device:
        out[f"{prefix}device"] = device
    return out


def net_state(net):
    """A trained net's state as plain values: its module's weights (copies, on the CPU), its
    optimiser's state and its history (what :func:`load_net_state` gives a net back)."""
    return {"module": {k: v.detach().cpu().clone() for k, v in net.module_.state_dict().items()},
            "optimizer": net.optimizer_.state_dict(),
            "history": [dict(row) for row in net.history_]}


def load_net_state(net, state):
    """Give an initialised ``net`` the weights, optimiser state and history of
    :func:`net_state`'s ``state`` (its own copy of the history)."""
    net.module_.load_state_dict(state["module"])
    net.optimizer_.load_state_dict(state["optimizer"])
    net.history_ = History([dict(row) for row in state["history"]])


def free_estimator(estimator):
    """Drop the torch state of a finished model (and the CUDA cache when on a GPU)."""
    net, _ = find_net(estimator)
    on_cuda = str(net.device).startswith("cuda")
    for attr in ("module_", "optimizer_", "criterion_"):
        if hasattr(net, attr):
            delattr(net, attr)
    if on_cuda and torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# fast batching
# --------------------------------------------------------------------------------------------

def _as_tensor(a):
    if isinstance(a, torch.Tensor):
        return a
    if isinstance(a, np.ndarray) and a.dtype != object:
        return torch.from_numpy(np.ascontiguousarray(a))
    return None


def array_data(dataset):
    """``(X, y)`` as tensors if ``dataset`` is a skorch Dataset over arrays (or a Subset of
    one), else ``None``."""
    indices = None
    if isinstance(dataset, Subset):
        indices, dataset = torch.as_tensor(np.asarray(dataset.indices)), dataset.dataset
    if type(dataset) is not SkorchDataset:
        return None
    X = _as_tensor(dataset.X)
    y = None if dataset.y is None else _as_tensor(dataset.y)
    if X is None or (dataset.y is not None and y is None):
        return None
    if indices is not None:
        X = X[indices]
        y = None if y is None else y[indices]
    return X, y


class ArrayBatchIterator:
    """A ``DataLoader`` stand-in that yields batches as slices of whole tensors.

    skorch's default ``DataLoader`` fetches each sample with ``__getitem__`` and collates the
    batch; for in-memory arrays that dominates the cost of a small net. This iterator turns
    the data into tensors once (no copy for C-contiguous numpy arrays), permutes them once
    per epoch when ``shuffle=True`` (torch's RNG, so seeding applies) and yields slices.
    Data stays on the CPU; skorch moves each batch to the net's device. Any dataset that is
    not a skorch ``Dataset`` over arrays (dicts, DataFrames, custom datasets) falls back to a
    ``DataLoader`` with the same arguments.

    Use it as ``iterator_train=ArrayBatchIterator, iterator_valid=ArrayBatchIterator``.

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from skorch import NeuralNetClassifier
    >>> from skhpo import ArrayBatchIterator
    >>> X = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    >>> y = (X[:, 0] > 0).astype(np.int64)
    >>> net = NeuralNetClassifier(nn.Sequential(nn.Linear(4, 2), nn.Softmax(dim=-1)),
    ...                           max_epochs=2, train_split=None, verbose=0,
    ...                           iterator_train=ArrayBatchIterator,
    ...                           iterator_valid=ArrayBatchIterator).fit(X, y)
    >>> net.predict(X[:4]).shape
    (4,)
    """

    def __init__(self, dataset, batch_size=1, shuffle=False, drop_last=False, **kwargs):
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self._arrays = array_data(dataset)
        self._fallback = None
        if self._arrays is None:
            self._fallback = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                                        drop_last=drop_last, **kwargs)

    def __len__(self):
        if self._fallback is not None:
            return len(self._fallback)
        n = len(self._arrays[0])
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        if self._fallback is not None:
            yield from self._fallback
            return
        X, y = self._arrays
        n = len(X)
        if self.shuffle:
            order = torch.randperm(n)
            X = X[order]
            y = None if y is None else y[order]
        stop = n - n % self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            end = min(start + self.batch_size, n)
            yield X[start:end], (None if y is None else y[start:end])
