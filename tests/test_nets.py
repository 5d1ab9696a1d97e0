import copy

import numpy as np
import pytest
import torch
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from skorch import NeuralNetClassifier
from skorch.callbacks import EarlyStopping
from skorch.dataset import Dataset
from torch.utils.data import Subset

from skhpo.models import MLPModule, TabularMLPClassifier
from skhpo.nets import (
    ArrayBatchIterator,
    FiniteLossGuard,
    TaskSeed,
    TrainingDivergedError,
    batch_size_of,
    check_param_names,
    find_net,
    net_input,
    spawn_seeds,
    trial_params,
)


def plain_net(**kw):
    return NeuralNetClassifier(MLPModule, module__n_features=4, module__n_outputs=3,
                               criterion=torch.nn.CrossEntropyLoss, max_epochs=2, verbose=0,
                               train_split=None, **kw)


def test_find_net_bare_and_pipeline():
    net = plain_net()
    assert find_net(net) == (net, "")
    pipe = make_pipeline(StandardScaler(), net)
    found, prefix = find_net(pipe)
    assert found is net and prefix == "neuralnetclassifier__"


@pytest.mark.parametrize("bad", [RandomForestClassifier(),
                                 make_pipeline(StandardScaler(), RandomForestClassifier())])
def test_find_net_rejects_non_skorch(bad):
    with pytest.raises(TypeError, match="skorch NeuralNet"):
        find_net(bad)


def test_net_input_transforms_through_pipeline(iris):
    X, y = iris
    pipe = make_pipeline(StandardScaler(), TabularMLPClassifier(max_epochs=1)).fit(X * 10 + 3, y)
    Xt = net_input(pipe, X * 10 + 3)
    assert Xt.dtype == np.float32
    np.testing.assert_allclose(Xt.mean(0), 0, atol=1e-5)


def test_array_iterator_walks_in_order_with_partial_batch():
    X = np.arange(130, dtype=np.float32).reshape(130, 1)
    y = np.arange(130)
    batches = list(ArrayBatchIterator(Dataset(X, y), batch_size=64))
    assert [len(b[0]) for b in batches] == [64, 64, 2]
    np.testing.assert_array_equal(torch.cat([b[0] for b in batches]).numpy(), X)
    np.testing.assert_array_equal(torch.cat([b[1] for b in batches]).numpy(), y)
    assert len(ArrayBatchIterator(Dataset(X, y), batch_size=64)) == 3
    assert len(ArrayBatchIterator(Dataset(X, y), batch_size=64, drop_last=True)) == 2


def test_array_iterator_shuffle_is_a_seeded_permutation():
    X = np.arange(50, dtype=np.float32).reshape(50, 1)
    y = np.arange(50)

    def epoch():
        return torch.cat([b[1] for b in ArrayBatchIterator(Dataset(X, y), 16, shuffle=True)])

    torch.manual_seed(3)
    a = epoch()
    torch.manual_seed(3)
    b = epoch()
    assert torch.equal(a, b) and not torch.equal(a, torch.arange(50))
    assert sorted(a.tolist()) == list(range(50))


def test_array_iterator_subset_and_fallback():
    X = np.arange(20, dtype=np.float32).reshape(20, 1)
    sub = Subset(Dataset(X, np.arange(20)), [3, 5, 7])
    (xb, yb), = list(ArrayBatchIterator(sub, batch_size=8))
    assert yb.tolist() == [3, 5, 7]
    # a dict input is not an array dataset: falls back to a DataLoader, same batches
    ds = Dataset({"a": X}, np.arange(20))
    sizes = [len(b[1]) for b in ArrayBatchIterator(ds, batch_size=8)]
    assert sizes == [8, 8, 4]


def test_finite_loss_guard_turns_divergence_into_an_error(iris):
    X, y = iris
    net = plain_net(optimizer=torch.optim.SGD, lr=1e8, callbacks=[FiniteLossGuard()])
    with pytest.raises(TrainingDivergedError, match="diverged"):
        net.fit(X, y)


def test_task_seed_makes_initialisation_reproducible(iris):
    X, y = iris
    a = plain_net(callbacks=[TaskSeed(7)]).fit(X, y).predict_proba(X)
    torch.manual_seed(123)  # the global state must not matter
    b = plain_net(callbacks=[TaskSeed(7)]).fit(X, y).predict_proba(X)
    c = plain_net(callbacks=[TaskSeed(8)]).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_trial_params_keep_user_callbacks_and_do_not_mutate():
    stopper = EarlyStopping(patience=3)
    net = plain_net(callbacks=[stopper])
    before = copy.deepcopy(net.get_params(deep=False))
    params = trial_params(make_pipeline(StandardScaler(), net), seed=5, max_epochs=1)
    cbs = params["neuralnetclassifier__callbacks"]
    # the user's callback is kept as a copy: a task never trains the user's own object
    assert isinstance(cbs[0], EarlyStopping) and cbs[0] is not stopper
    assert cbs[0].patience == 3
    assert [name for name, _ in cbs[1:]] == ["skhpo_finite_loss", "skhpo_seed"]
    assert params["neuralnetclassifier__max_epochs"] == 1
    assert net.callbacks == [stopper] and net.max_epochs == before["max_epochs"]


def test_trial_params_respect_own_random_state_and_guard():
    params = trial_params(TabularMLPClassifier(random_state=0), seed=5)
    assert "callbacks" not in params  # the model has a guard and its own seed


def test_spawn_seeds_deterministic_and_distinct():
    assert spawn_seeds(0, 5) == spawn_seeds(0, 5)
    assert len(set(spawn_seeds(0, 50))) == 50
    assert spawn_seeds(0, 3) != spawn_seeds(1, 3)


def test_batch_size_of():
    assert batch_size_of(plain_net(batch_size=32)) == 32
    assert batch_size_of(plain_net(batch_size=32, iterator_train__batch_size=8)) == 8
    assert batch_size_of(plain_net(batch_size=-1), n_samples=77) == 77


def test_check_param_names():
    net = plain_net()
    check_param_names(net, ["lr", "module__width", "optimizer__momentum", "batch_size"])
    with pytest.raises(ValueError, match="unknown hyper-parameter 'lrr'"):
        check_param_names(net, ["lrr"])
    with pytest.raises(ValueError, match="module__widht"):
        check_param_names(net, ["module__widht"])
    with pytest.raises(ValueError, match="optimizer__nope"):
        check_param_names(net, ["optimizer__nope"])
    pipe = make_pipeline(StandardScaler(), TabularMLPClassifier())
    check_param_names(pipe, ["tabularmlpclassifier__width", "standardscaler__with_mean"])
    with pytest.raises(ValueError, match="'width'"):
        check_param_names(pipe, ["width"])


def test_round_robin_device_placement(monkeypatch):
    from skhpo import nets
    assert nets.task_device("cpu", 3) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert [nets.task_device("cuda", i) for i in range(5)] == [
        "cuda:0", "cuda:1", "cuda:2", "cuda:0", "cuda:1"]
    assert nets.task_device("cuda:1", 4) == "cuda:1"  # an explicit device is kept
    params = trial_params(plain_net(device="cuda"), seed=1, task_index=4)
    assert params["device"] == "cuda:1"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert "device" not in trial_params(plain_net(device="cuda"), seed=1, task_index=4)


def test_the_guard_stops_a_finite_explosion_and_is_configurable():
    """Adam at lr=3 on unscaled breast_cancer: no loss is ever NaN, but the first epoch's
    losses reach about 1e8 from 1.2 at initialisation; the net then sits near chance."""
    from sklearn.datasets import load_breast_cancer

    from skhpo import TabularMLPClassifier, TrainingDivergedError

    X, y = load_breast_cancer(return_X_y=True)
    X = X.astype(np.float32)
    net = TabularMLPClassifier(lr=3.0, max_epochs=3, random_state=0)
    with pytest.raises(TrainingDivergedError, match=r"more than max_ratio=10000 times its "
                       r"first batch's 1\.24\d* in epoch 1; the candidate diverged"):
        net.fit(X, y)
    free = TabularMLPClassifier(lr=3.0, max_epochs=3, random_state=0,
                                callbacks__finite_loss__max_ratio=None).fit(X, y)
    assert np.isfinite(free.history[:, "train_loss"]).all()
    assert max(free.history[0, "batches", :, "train_loss"]) > 1e4 * 1.24
    # an ordinary training never comes near the bound (here: at most about 12x)
    ok = TabularMLPClassifier(lr=1e-3, max_epochs=3, random_state=0).fit(X, y)
    assert len(ok.history) == 3
    for bad in (1, 0.5, "big", True, float("nan")):
        net = TabularMLPClassifier(max_epochs=1, callbacks__finite_loss__max_ratio=bad)
        with pytest.raises(ValueError, match="max_ratio must be None or a number > 1"):
            net.fit(X, y)
        assert not hasattr(net, "module_")  # raised while initialising: nothing trained
