"""Each model of a fused group, seen by its own skorch code.

A net trained in a group never runs its own ``fit`` loop: the group computes every model's
forward, loss and backward in one batched pass. What the net's own loop would do around that
arithmetic is replayed per model, at skorch's hook points and in skorch's order
(``NeuralNet.fit_loop``, ``run_single_epoch``, ``train_step``):

* its history, as its own fit records it: ``new_epoch`` and ``epoch``, per batch
  ``train_loss`` / ``valid_loss`` and their batch sizes, ``*_batch_count``, then what its
  callbacks record at the epoch's end (``train_loss``, ``valid_loss``, ``valid_acc``, the
  ``*_best`` flags, ...); ``dur`` is the model's share of its group's epoch;
* its callbacks: ``on_train_begin``, ``on_epoch_begin``, ``on_batch_begin``,
  ``on_grad_computed`` (with the model's gradients, which a ``GradientNormClipping`` clips in
  place), ``on_batch_end`` and ``on_epoch_end``, then ``on_train_end``; the net's own ``on_*``
  methods first, as ``NeuralNet.notify`` calls them. A ``KeyboardInterrupt`` (how
  ``EarlyStopping`` stops a fit) ends that model's training, as ``partial_fit`` ends it; any
  other exception fails that model's fit;
* torch's global generator, in the model's own state while its code runs, so a callback that
  draws (a scoring ``predict``, an initialiser) draws what it would draw in the net's own fit.

Per-batch hooks are called only for the callbacks that override them (a callback's no-op is
skipped). ``PrintLog`` and ``ProgressBar`` are silent in a group (K models printing one table
each, interleaved, would be unreadable); ``EpochTimer`` is the group's clock.
"""

import functools
from contextlib import contextmanager

import numpy as np
from sklearn.metrics import accuracy_score
from skorch import NeuralNet
from skorch.callbacks import (
    BatchScoring,
    Callback,
    EarlyStopping,
    EpochScoring,
    EpochTimer,
    GradientNormClipping,
    Initializer,
    LoadInitState,
    LRScheduler,
    PassthroughScoring,
    PrintLog,
    ProgressBar,
    TrainEndCheckpoint,
)
from skorch.dataset import get_len
from skorch.utils import TeeGenerator

from ..nets import FiniteLossGuard, TaskSeed, TrainingDivergedError, drawing_from

__all__ = ["INERT", "Replay"]

#: callbacks a group does not run: silent (printing) or the engine's own (its divergence rule,
#: its seeding, its clock)
_SILENT = (PrintLog, ProgressBar)
_ENGINE = (FiniteLossGuard, TaskSeed, EpochTimer)
#: callbacks that neither change a model's optimiser settings nor read its optimiser state
#: while it trains: a group of models whose callbacks are all of these keeps the batched
#: Adam / SGD (the others step each model's own torch optimiser)
INERT = (PassthroughScoring, EpochScoring, BatchScoring, EarlyStopping, GradientNormClipping,
         TrainEndCheckpoint, Initializer)
#: callbacks that change a model's optimiser settings (its ``param_groups``), or its state
#: when training begins only (``LoadInitState``), and read nothing of it while it trains:
#: the models' optimiser class over the group's rows replays them (:mod:`._stacked`)
_SETTINGS = (LRScheduler, LoadInitState)
#: callbacks whose batch hooks draw nothing from torch's generator
_DRAWLESS = INERT + (LRScheduler,)
_BATCH_HOOKS = ("on_batch_begin", "on_grad_computed", "on_batch_end")
_HOOKS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end") + _BATCH_HOOKS


def _overrides(obj, name, base):
    return getattr(type(obj), name) is not getattr(base, name)


class Replay:
    """The skorch side of one member of a group (its ``net``, initialised)."""

    def __init__(self, member):
        self.member = member
        net = member.net
        everything = [cb for _, cb in net.callbacks_]
        self.callbacks = [cb for cb in everything if not isinstance(cb, _SILENT + _ENGINE)]
        self.timer = any(isinstance(cb, EpochTimer) for cb in everything)
        self.hooks = {name: [cb for cb in self.callbacks if _overrides(cb, name, Callback)]
                      for name in _BATCH_HOOKS}
        self.net_hooks = {name for name in _BATCH_HOOKS[1:] if _overrides(net, name, NeuralNet)}
        self.quiet = all(isinstance(cb, _DRAWLESS) for name in _BATCH_HOOKS
                         for cb in self.hooks[name]) and not self.net_hooks
        #: no code of the model's draws from its generator (its noise may be drawn ahead)
        self.draws_nothing = all(isinstance(cb, _DRAWLESS) for cb in self.callbacks) and \
            not any(_overrides(net, name, NeuralNet) for name in _HOOKS)
        self.inert = all(isinstance(cb, INERT) or getattr(cb, "reads_epochs", False)
                         for cb in self.callbacks)
        self.settings_only = all(isinstance(cb, INERT + _SETTINGS) or
                                 getattr(cb, "reads_epochs", False) for cb in self.callbacks)
        self.accuracy = [cb for cb in self.callbacks if isinstance(cb, EpochScoring)
                         and getattr(cb, "scoring_", None) == "accuracy"]

    @property
    def reads_grads(self):
        """Whether a hook reads (or changes) the model's gradients."""
        return bool(self.hooks["on_grad_computed"]) or "on_grad_computed" in self.net_hooks

    # -- calls --------------------------------------------------------------------------------

    def _notify(self, name, callbacks, own=True, **kwargs):
        """The net's own ``name`` method (if ``own``), then ``callbacks``'; a
        ``KeyboardInterrupt`` stops the model, an exception fails it. Returns whether the
        model goes on."""
        member, net = self.member, self.member.net
        try:
            if own:
                getattr(net, name)(net, **kwargs)
            for cb in callbacks:
                getattr(cb, name)(net, **kwargs)
        except KeyboardInterrupt:
            member.stopped = True
        except TrainingDivergedError as exc:
            member.error = f"diverged: {exc}"
        except Exception as exc:  # the model's own fit fails alike; error_score applies
            member.error = f"{type(exc).__name__}: {exc}"
        return not (member.stopped or member.error)

    def _drawing(self, quiet):
        """Torch's generator in the model's state, unless the code to run draws nothing."""
        return _Nothing() if quiet else drawing_from(self.member.generator)

    def train_begin(self):
        with self._drawing(False):
            return self._notify("on_train_begin", self.callbacks, **self.member.fit_kwargs)

    def train_end(self):
        with self._drawing(False):
            return self._notify("on_train_end", self.callbacks, **self.member.fit_kwargs)

    def epoch_begin(self):
        with self._drawing(False):
            return self._notify("on_epoch_begin", self.callbacks, **self.member.datasets)

    def epoch_end(self, seconds):
        net = self.member.net
        if self.timer:  # EpochTimer's record, first, as it is the first default callback
            net.history.record("dur", seconds)
        with self._drawing(False), _plain_accuracy(self.accuracy):
            return self._notify("on_epoch_end", self.callbacks, **self.member.datasets)

    def batch_begin(self, batch, training):
        with self._drawing(self.quiet):
            return self._notify("on_batch_begin", self.hooks["on_batch_begin"], batch=batch,
                                training=training)

    def grad_computed(self, batch):
        net = self.member.net
        with self._drawing(self.quiet):
            return self._notify("on_grad_computed", self.hooks["on_grad_computed"],
                                own="on_grad_computed" in self.net_hooks,
                                named_parameters=TeeGenerator(net.get_all_learnable_params()),
                                batch=batch, training=True)

    def batch_end(self, batch, training, loss, y_pred):
        """The batch's records, then ``on_batch_end``, as ``run_single_epoch`` does."""
        prefix = "train" if training else "valid"
        history = self.member.net.history
        history.record_batch(f"{prefix}_loss", loss.item())
        history.record_batch(f"{prefix}_batch_size", get_len(batch[0]))
        with self._drawing(self.quiet):
            return self._notify("on_batch_end", self.hooks["on_batch_end"],
                                own="on_batch_end" in self.net_hooks, batch=batch,
                                training=training, loss=loss, y_pred=y_pred)


@contextmanager
def _plain_accuracy(callbacks):
    """The block's ``EpochScoring("accuracy")`` callbacks (the classifiers' default
    ``valid_acc``) score integer labels with the expression scikit-learn's
    ``accuracy_score`` evaluates, ``float(np.average(y_true == y_pred))``, without its input
    checks, which cost more than the model's whole validation pass (about 1 ms a call); any
    other labels go through scikit-learn's scorer as in the net's own fit."""
    for cb in callbacks:
        cb._scoring = functools.partial(_accuracy, cb._scoring)
    try:
        yield
    finally:
        for cb in callbacks:
            del cb._scoring


def _accuracy(scoring, net, X_test, y_test):
    """``EpochScoring("accuracy")``'s score: scikit-learn's scorer (``net.predict``, then
    ``accuracy_score``), its input checks skipped for plain numeric class labels."""
    if not (isinstance(y_test, np.ndarray) and y_test.ndim == 1 and _labels(y_test)):
        return scoring(net, X_test, y_test)
    y_pred = net.predict(X_test)  # once: the cached forward is consumed
    if isinstance(y_pred, np.ndarray) and y_pred.shape == y_test.shape and _labels(y_pred):
        return float(np.average(y_test == y_pred))
    return float(accuracy_score(y_test, y_pred))


def _labels(a):
    """Whether ``a`` holds numeric class labels (integers, booleans or integral floats)."""
    return a.dtype.kind in "iub" or (a.dtype.kind == "f" and np.array_equal(a, np.round(a)))


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
