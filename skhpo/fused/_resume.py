"""Continue a training where an earlier one of the same task stopped, with the result of
training it from the start for the longer budget.

A task trained for ``E1`` epochs in a fused group and then trained again for ``E2 > E1`` (a
survivor of a successive-halving rung, ``resource="max_epochs"``) repeats, for its first
``E1`` epochs, exactly what it did before: same initialisation, same batch orders and dropout
masks (its own generator), same updates. So the engine can start it from the state it reached:
its module's weights and buffers, its optimiser's state (step counts included), its history,
its generator's state, its divergence guard's reference loss and its learning-rate
schedulers' states (:func:`carry` keeps what the net's state does not hold). Its callbacks
then see what ``partial_fit`` shows them: a second ``on_train_begin`` on a net with history.
That is exact only for callbacks whose state between epochs is what that call rebuilds, what
the history holds, or what :func:`carry` keeps (:data:`CONTINUABLE`, with :func:`restore`
rebuilding the best scores and ``EarlyStopping``'s patience from the history, and each
``LRScheduler``'s scheduler and its optimiser's rates from their saved states: skorch's own
``on_train_begin`` would step a scheduler once more); for any other, :func:`restart_reason`
says why the task trains from the start instead.
"""

import torch
from skorch import NeuralNet
from skorch.callbacks import (
    BatchScoring,
    EarlyStopping,
    EpochScoring,
    EpochTimer,
    GradientNormClipping,
    LRScheduler,
    PassthroughScoring,
    PrintLog,
    ProgressBar,
)

from ..nets import FiniteLossGuard, TaskSeed, load_net_state

__all__ = ["CONTINUABLE", "carry", "missing", "restart_reason", "restore", "resume"]

#: callbacks whose state between epochs is rebuilt by ``on_train_begin`` and the history
#: (:func:`restore`), or that keep none: a net with only these continues exactly
CONTINUABLE = (EpochTimer, PrintLog, ProgressBar, PassthroughScoring, EpochScoring,
               BatchScoring, GradientNormClipping, EarlyStopping, LRScheduler,
               FiniteLossGuard, TaskSeed)
#: the net's own hooks a second ``on_train_begin`` / ``on_train_end`` would run again
_NET_HOOKS = ("on_train_begin", "on_train_end")


def restart_reason(net):
    """"" if ``net`` (initialised) can continue an earlier training exactly, else why its
    training starts from the beginning."""
    others = sorted({type(cb).__name__ for _, cb in net.callbacks_  # (a subclass may keep
                     if type(cb) not in CONTINUABLE})                 # state of its own)
    if others:
        return (f"its callbacks {', '.join(others)} may keep state a continued training "
                "does not restore")
    stops = [cb for _, cb in net.callbacks_ if isinstance(cb, EarlyStopping) and cb.load_best]
    if stops:
        return "its EarlyStopping(load_best=True) restores weights when training ends"
    hooks = [name for name in _NET_HOOKS if getattr(type(net), name) is not
             getattr(NeuralNet, name)]
    if hooks:
        return f"its net overrides {', '.join(hooks)}"
    return ""


def carry(member):
    """What continuing ``member`` needs beyond its net's state: its generator's state, its
    guard's reference loss, the epochs it was given and its ``LRScheduler`` callbacks'
    scheduler states (by callback name)."""
    return {"generator": member.generator.get_state(), "first_loss": member.first_loss,
            "epochs": member.epochs, "schedulers": _schedulers(member.net)}


def _schedulers(net):
    return {name: cb.lr_scheduler_.state_dict() for name, cb in net.callbacks_
            if isinstance(cb, LRScheduler) and getattr(cb, "lr_scheduler_", None) is not None}


def missing(net, start):
    """"" if ``start`` carries what continuing ``net`` needs (each ``LRScheduler``'s state),
    else what it lacks."""
    names = sorted(name for name, cb in net.callbacks_ if isinstance(cb, LRScheduler))
    lost = [name for name in names if name not in start.get("schedulers", {})]
    return f"its earlier training did not keep the state of {', '.join(lost)}" if lost else ""


def resume(member, start):
    """Put ``member`` (initialised, not yet trained) where an earlier training of its task
    stopped: ``start`` holds that net's state (``module``, ``optimizer``, ``history``:
    :func:`skhpo.nets.net_state`) and :func:`carry`'s. Sets ``member.start`` (the
    epochs done) and, when that training had stopped before its epochs (early stopping),
    ``member.stopped``."""
    net = member.net
    load_net_state(net, start)
    member.generator.set_state(start["generator"].to(torch.uint8))
    member.first_loss = start["first_loss"]
    member.start = len(net.history_)
    member.stopped = member.start < start["epochs"]
    member.resumed = start  # for restore, after on_train_begin


def restore(member):
    """After the continued net's ``on_train_begin``: the state its callbacks kept between
    epochs, rebuilt from its history (``EpochScoring`` rebuilds its best score itself):
    ``PassthroughScoring``'s best score and ``EarlyStopping``'s misses, threshold and best
    epoch, as the epochs in the history left them; each ``LRScheduler``'s scheduler from its
    saved state, and the optimiser's rates as they were (the scheduler skorch just made took a
    step). Returns whether an ``EarlyStopping`` had stopped the training by then (it trains no
    further)."""
    net, start = member.net, member.resumed
    history, stopped = net.history_, False
    for name, cb in net.callbacks_:
        if isinstance(cb, PassthroughScoring):
            best = [row[cb.name] for row in history if row.get(f"{cb.name}_best")]
            if best:
                cb.best_score_ = best[-1]
        elif isinstance(cb, EarlyStopping):
            for row in history:
                score = row[cb.monitor]
                if cb._is_score_improved(score):
                    cb.misses_, cb.best_epoch_ = 0, row["epoch"]
                    cb.dynamic_threshold_ = cb._calc_new_threshold(score)
                else:
                    cb.misses_ += 1
            stopped = stopped or cb.misses_ >= cb.patience
        elif isinstance(cb, LRScheduler) and getattr(cb, "lr_scheduler_", None) is not None:
            cb.lr_scheduler_.load_state_dict(start["schedulers"][name])
    if start.get("schedulers"):  # the rates as they were (its state is loaded already)
        for group, saved in zip(net.optimizer_.param_groups,
                                start["optimizer"]["param_groups"]):
            group.update({k: v for k, v in saved.items() if k != "params"})
    return stopped
