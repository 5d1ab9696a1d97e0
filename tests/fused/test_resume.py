"""A fused training that continues an earlier, shorter one of the same task
(skhpo.fused._resume): the model, history and generator of training from the start."""

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback, EarlyStopping, LRScheduler, PassthroughScoring

from skhpo import TabularMLPClassifier
from skhpo.fused import FusedTask, FusedTrainer
from skhpo.nets import find_net, net_state

LRS = [1e-3, 3e-3, 1e-2, 3e-2]


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    return (X / 16).astype(np.float32)[:900], y[:900]


def _tasks(epochs, starts=None):
    return [FusedTask({"lr": lr, "max_epochs": epochs}, seed=i, rows=np.arange(600),
                      start=None if starts is None else starts[i])
            for i, lr in enumerate(LRS)]


def _start(result):
    return {**net_state(find_net(result.estimator)[0]), **result.carry}


def _history(net):
    return [{k: v for k, v in row.items() if k != "dur" and k != "batches"} for row in net.history]


def _continued_and_from_the_start(estimator, X, y, keep=3):
    trainer = FusedTrainer(estimator)
    short = trainer.fit(_tasks(3), X, y)
    starts = [_start(r) for r in short]
    continued = trainer.fit(_tasks(7, starts)[:keep], X, y)  # the survivors only
    return continued, trainer.fit(_tasks(7), X, y)[:keep]


@pytest.mark.parametrize("params", [
    {},
    {"dropout": 0.3},
    {"optimizer": torch.optim.SGD, "optimizer__momentum": 0.9, "dropout": 0.2},
    {"optimizer": torch.optim.RMSprop},
    # a scheduler that steps every epoch (a decay at epoch 2, 4, 6: one at the resumed
    # training's first epoch's end), one that steps every batch, one on a plateau
    {"callbacks": [LRScheduler("StepLR", step_size=2, gamma=0.5)]},
    {"callbacks": [LRScheduler("CosineAnnealingLR", T_max=40, step_every="batch")]},
    {"callbacks": [LRScheduler("ReduceLROnPlateau", monitor="train_loss", patience=0,
                               factor=0.5)]},
], ids=["adam", "adam-dropout", "sgd-momentum", "rmsprop", "step-lr", "cosine-per-batch",
        "plateau"])
def test_a_continued_training_is_the_training_from_the_start_bitwise(digits, params):
    X, y = digits
    net = TabularMLPClassifier(depth=1, width=32, batch_size=64, **params)
    continued, whole = _continued_and_from_the_start(net, X, y)
    for a, b in zip(continued, whole):
        assert a.start == 3 and a.restart == "" and a.group >= 0
        na, nb = find_net(a.estimator)[0], find_net(b.estimator)[0]
        for key, value in na.module_.state_dict().items():
            assert torch.equal(value, nb.module_.state_dict()[key]), key
        assert _history(na) == _history(nb) and len(na.history) == 7
        assert na.optimizer_.param_groups[0]["lr"] == nb.optimizer_.param_groups[0]["lr"]
        assert torch.equal(a.carry["generator"], b.carry["generator"])
        # the optimiser goes on from its state: the same moments and step counts
        sa, sb = na.optimizer_.state_dict()["state"], nb.optimizer_.state_dict()["state"]
        for p in sa:
            for k in sa[p]:
                assert torch.equal(torch.as_tensor(sa[p][k]), torch.as_tensor(sb[p][k])), k


def test_early_stopping_continues_and_a_stopped_training_stays_stopped(digits):
    X, y = digits
    # train_loss must halve within two epochs, or the training stops
    net = TabularMLPClassifier(depth=1, width=32, batch_size=64, callbacks=[
        EarlyStopping(monitor="train_loss", patience=1, threshold=0.5)])
    continued, whole = _continued_and_from_the_start(net, X, y, keep=4)
    lengths = []
    for a, b in zip(continued, whole):
        na, nb = find_net(a.estimator)[0], find_net(b.estimator)[0]
        assert _history(na) == _history(nb)
        lengths.append(len(na.history))
    assert min(lengths) < 3 and max(lengths) > 3  # stopped in the first training; after it


class Counting(Callback):
    """A user's callback with state of its own (epochs seen): not known to continue."""

    def initialize(self):
        self.seen_ = 0
        return self

    def on_epoch_end(self, net, **kwargs):
        self.seen_ += 1


def test_callbacks_that_keep_other_state_train_from_the_start(digits):
    X, y = digits
    net = TabularMLPClassifier(depth=1, width=32, batch_size=64, callbacks=[Counting()])
    continued, whole = _continued_and_from_the_start(net, X, y)
    for a, b in zip(continued, whole):
        assert a.start == 0 and "Counting" in a.restart
        assert _history(find_net(a.estimator)[0]) == _history(find_net(b.estimator)[0])


class CountingScoring(PassthroughScoring):
    """A subclass of a continuable callback, with state of its own: not continued."""

    def on_epoch_end(self, net, **kwargs):
        self.seen_ = getattr(self, "seen_", 0) + 1
        super().on_epoch_end(net, **kwargs)


def test_a_subclass_of_a_continuable_callback_trains_from_the_start(digits):
    X, y = digits
    counted = CountingScoring("train_loss", on_train=True)
    net = TabularMLPClassifier(depth=1, width=32, batch_size=64,
                               callbacks=[("counted", counted)])
    continued, _ = _continued_and_from_the_start(net, X, y, keep=1)
    assert continued[0].start == 0 and "CountingScoring" in continued[0].restart


def test_a_start_without_its_schedulers_state_trains_from_the_start(digits):
    X, y = digits
    net = TabularMLPClassifier(depth=1, width=32, batch_size=64,
                               callbacks=[("decay", LRScheduler("StepLR", step_size=2))])
    trainer = FusedTrainer(net)
    short = trainer.fit(_tasks(3), X, y)
    starts = [{**_start(r), "schedulers": {}} for r in short]  # (an older record)
    (again,) = trainer.fit(_tasks(7, starts)[:1], X, y)
    assert again.start == 0 and "decay" in again.restart


def test_one_continued_task_goes_on_in_a_group_of_its_own(digits):
    X, y = digits
    trainer = FusedTrainer(TabularMLPClassifier(depth=1, width=32, batch_size=64))
    short = trainer.fit(_tasks(2), X, y)
    alone = trainer.fit(_tasks(4, [_start(r) for r in short])[:1], X, y)[0]
    assert alone.start == 2 and alone.group == 0 and alone.reason == ""


def _zoo():
    import importlib.util
    import pathlib
    import sys

    path = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "zoo.py"
    spec = importlib.util.spec_from_file_location("zoo", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["zoo"] = module
    spec.loader.exec_module(module)
    return module


def _grid_tasks(params, epochs, n, rows, starts=None):
    return [FusedTask({**p, epochs: n}, seed=i, rows=rows,
                      start=None if starts is None else starts[i])
            for i, p in enumerate(params)]


@pytest.mark.slow
def test_every_zoo_net_that_fuses_continues_bitwise():
    """The real-world skorch usages of benchmarks/zoo.py (their modules, optimisers,
    callbacks, schedulers, BatchNorm, CNN, dict inputs, a get_loss override, a Pipeline):
    each task of its grid trained 2 epochs, then continued to 5, equals the task trained 5
    epochs from the start, bitwise (or trains from the start, saying why)."""
    from sklearn.model_selection import ParameterGrid

    zoo = _zoo()
    continued_configs = []
    for name, (make, grid, data) in zoo.ZOO.items():
        X, y = data()
        est = zoo._seeded(make())
        prefix = find_net(est)[1]
        epochs = f"{prefix}max_epochs"
        params = [{k: v for k, v in p.items() if k != epochs}
                  for p in list(ParameterGrid(grid))[:6]]
        rows = np.arange(int(len(y) * 0.7))
        trainer = FusedTrainer(est)

        short = trainer.fit(_grid_tasks(params, epochs, 2, rows), X, y)
        starts = [None if r.carry is None else _start(r) for r in short]
        for s, a, b in zip(starts, trainer.fit(_grid_tasks(params, epochs, 5, rows, starts), X, y),
                           trainer.fit(_grid_tasks(params, epochs, 5, rows), X, y)):
            na, nb = find_net(a.estimator)[0], find_net(b.estimator)[0]
            state = nb.module_.state_dict()
            assert all(torch.equal(v, state[k]) for k, v in na.module_.state_dict().items()), \
                name
            assert _history(na) == _history(nb), name
            if s is not None:
                assert a.start == 2 or a.restart, name
                if a.start == 2:
                    continued_configs.append(name)
    assert len(set(continued_configs)) >= 30, sorted(set(continued_configs))  # of 31
