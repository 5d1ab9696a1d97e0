"""Nets written as skorch users write them, trained in fused groups (skhpo.fused._replay,
_group, _stacked, the chain and torch.func layouts): each handed-back net equals its own fit
-- weights, history (validation scores, ``*_best`` flags, batch entries), optimiser and
scheduler state -- its callbacks run on it as in its own fit, and what cannot follow trains
alone with its reason."""

import importlib.util
import pathlib

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import make_classification
from skorch import NeuralNet, NeuralNetBinaryClassifier, NeuralNetClassifier, NeuralNetRegressor
from skorch.callbacks import (
    BatchScoring,
    Callback,
    EarlyStopping,
    EpochScoring,
    GradientNormClipping,
    LRScheduler,
)
from torch import nn

from skhpo.fused import FusedTask, FusedTrainer
from skhpo.fused._layouts import ChainLayout, FuncLayout
from skhpo.fused._stacked import StackedOptimizer
from skhpo.nets import seed_everything, trial_params


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(300, 10, n_informative=6, random_state=0)
    return X.astype(np.float32), y.astype(np.int64)


def _zoo():
    """benchmarks/zoo.py, whose modules are written as skorch's docs write them."""
    spec = importlib.util.spec_from_file_location(
        "zoo", pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "zoo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ZOO = _zoo()
#: skorch's README module: softmax output, dropout, a non-linearity as an argument
ReadmeModule = ZOO.ClassifierModule


class Logits(nn.Module):
    """A logit MLP; ``norm`` puts a BatchNorm1d (its linear layer without bias, as usual
    before a batch norm) or a LayerNorm after the hidden layer."""

    def __init__(self, hidden=16, norm=None, out=2):
        super().__init__()
        layers = [nn.Linear(10, hidden, bias=norm != "batch")]
        layers += [nn.BatchNorm1d(hidden)] if norm == "batch" else \
            [nn.LayerNorm(hidden)] if norm == "layer" else []
        self.seq = nn.Sequential(*layers, nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, out))

    def forward(self, X):
        return self.seq(X)


class Conv(nn.Module):
    """A 1-d convolution, a batch norm and a feature dropout (Dropout1d)."""

    def __init__(self, channels=3):
        super().__init__()
        self.conv = nn.Conv1d(1, channels, 3, bias=False)
        self.bn = nn.BatchNorm1d(channels)
        self.drop = nn.Dropout1d(0.3)
        self.out = nn.Linear(channels * 8, 2)

    def forward(self, X):
        return self.out(self.drop(torch.relu(self.bn(self.conv(X[:, None, :])))).flatten(1))


def _readme(module=ReadmeModule, **kw):
    return NeuralNetClassifier(module, **{"max_epochs": 4, "lr": 0.1, "verbose": 0,
                                                "module__n_in": 10,
                                                "iterator_train__shuffle": True, **kw})


def _logits(module=Logits, **kw):
    return NeuralNetClassifier(module, **{"max_epochs": 4, "lr": 0.01, "verbose": 0,
                                          "criterion": nn.CrossEntropyLoss,
                                          "optimizer": torch.optim.Adam,
                                          "iterator_train__shuffle": True, **kw})


TASKS = [FusedTask({"lr": 0.05}, seed=0), FusedTask({"lr": 0.1}, seed=1, rows=np.arange(240)),
         FusedTask({"lr": 0.2}, seed=2, rows=np.arange(30, 300))]


def _alone(net, task, X, y):
    rows = slice(None) if task.rows is None else task.rows
    if net.callbacks == "disable":  # no TaskSeed: the engine seeds such a task itself
        seed_everything(task.seed)
    return clone(net).set_params(**task.params, **trial_params(net, seed=task.seed)).fit(
        X[rows], y[rows])


def _fused(net, tasks, X, y):
    results = FusedTrainer(net, engine="fused").fit(tasks, X, y)
    assert not any(r.error or r.reason for r in results), [r.error or r.reason for r in results]
    assert len({r.group for r in results}) == 1  # one group
    return [r.estimator for r in results]


def assert_same_fit(fused, alone, atol=1e-5):
    """Weights and buffers, every history entry (floats to rounding, the rest equal), the
    batch entries, the optimiser's settings and state."""
    a, b = fused.module_.state_dict(), alone.module_.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol,
                                   msg=lambda m, key=key: f"{key}: {m}")
    assert len(fused.history) == len(alone.history)
    for row_f, row_a in zip(fused.history, alone.history):
        assert set(row_f) == set(row_a)
        for key in set(row_a) - {"dur", "batches"}:
            if isinstance(row_a[key], float):
                assert row_f[key] == pytest.approx(row_a[key], abs=atol), key
            else:
                assert row_f[key] == row_a[key], key
        assert len(row_f["batches"]) == len(row_a["batches"])
        for bf, ba in zip(row_f["batches"], row_a["batches"]):
            assert set(bf) == set(ba)
            assert {k: v for k, v in bf.items() if "size" in k} == \
                {k: v for k, v in ba.items() if "size" in k}
    sf, sa = fused.optimizer_.state_dict(), alone.optimizer_.state_dict()
    assert [{k: v for k, v in g.items() if k != "params"} for g in sf["param_groups"]] == \
        [{k: v for k, v in g.items() if k != "params"} for g in sa["param_groups"]]
    assert sf["state"].keys() == sa["state"].keys()
    for i in sa["state"]:
        for key, value in sa["state"][i].items():
            torch.testing.assert_close(sf["state"][i][key], value, rtol=1e-4, atol=atol)


def _check(net, tasks, X, y, atol=1e-5):
    fused = _fused(net, tasks, X, y)
    for est, task in zip(fused, tasks):
        assert_same_fit(est, _alone(net, task, X, y), atol)
    return fused


# -- validation split, heads, layers ---------------------------------------------------------

def test_the_readme_net_with_its_default_validation_split(data):
    """skorch's README net as written (ValidSplit(5), softmax output, NLLLoss, DataLoader
    with shuffling): history with valid_loss, valid_acc and the *_best flags."""
    X, y = data
    fused = _check(_readme(), TASKS, X, y)
    assert {"valid_loss", "valid_acc", "valid_acc_best"} <= set(fused[0].history[-1])


@pytest.mark.parametrize("split", [False, None], ids=["train_split=False", "None"])
def test_no_validation_split(data, split):
    X, y = data
    fused = _check(_readme(train_split=split), TASKS, X, y)
    assert "valid_loss" not in fused[0].history[-1]


def test_a_predefined_and_a_callable_split(data):
    from skorch.dataset import ValidSplit
    from skorch.helper import predefined_split

    X, y = data
    from skorch.dataset import Dataset
    _check(_readme(train_split=predefined_split(Dataset(X[:50], y[:50]))), TASKS[:2], X, y)
    _check(_readme(train_split=ValidSplit(4, stratified=False)), TASKS[:2], X, y)
    _check(_readme(train_split=ValidSplit(0.3, random_state=0)), TASKS[:2], X, y)


def test_regressors_multi_output_and_float_targets(data):
    X, _ = data
    y = np.stack([X[:, 0] - X[:, 1], X[:, 2]], 1).astype(np.float32)
    net = NeuralNetRegressor(Logits, module__out=2, max_epochs=3, lr=0.01, verbose=0)
    tasks = [FusedTask({"lr": lr}, seed=t.seed, rows=t.rows)
             for lr, t in zip([0.002, 0.005, 0.01], TASKS)]
    _check(net, tasks, X, y)
    _check(net.set_params(module__out=1), tasks[:2], X, y[:, :1])  # y as (n, 1)


def test_binary_classifier_and_criterion_instances(data):
    X, y = data
    net = NeuralNetBinaryClassifier(Logits, module__out=1, max_epochs=3, lr=0.05, verbose=0)
    _check(net, TASKS, X, y.astype(np.float32))
    weighted = _logits(criterion=nn.CrossEntropyLoss(weight=torch.tensor([1.0, 3.0]),
                                                      label_smoothing=0.1))
    _check(weighted, TASKS, X, y)
    _check(_logits(criterion__label_smoothing=0.2, criterion__reduction="mean"), TASKS, X, y)


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_batch_and_layer_norm(data, norm):
    """BatchNorm1d keeps per-model running statistics (compared in the state_dict)."""
    X, y = data
    _check(_logits(module__norm=norm), TASKS, X, y)


def test_convolution_batch_norm_and_feature_dropout(data):
    X, y = data
    _check(_logits(module=Conv), TASKS, X, y)


def test_a_net_that_overrides_get_loss(data):
    """skorch's docs example: an L1 penalty added in get_loss, called per model."""
    X, y = data
    net = ZOO.L1Net(Logits, criterion=nn.CrossEntropyLoss, max_epochs=3, lr=0.05, verbose=0)
    _check(net, [FusedTask({"lambda1": lam}, seed=i) for i, lam in enumerate([0, 1e-3, 1e-2])],
           X, y)


# -- callbacks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("load_best", [False, True])
def test_early_stopping_retires_each_model_at_its_own_epoch(data, load_best):
    X, y = data
    net = _readme(max_epochs=25, callbacks=[EarlyStopping(patience=2, threshold=0.05,
                                                          load_best=load_best)])
    fused = _check(net, TASKS, X, y)
    assert min(len(f.history) for f in fused) < 25  # some stopped early


SCHEDULERS = {
    "step": dict(policy=torch.optim.lr_scheduler.StepLR, step_size=2, gamma=0.5),
    "cosine": dict(policy=torch.optim.lr_scheduler.CosineAnnealingLR, T_max=4),
    "plateau": dict(policy=torch.optim.lr_scheduler.ReduceLROnPlateau, monitor="valid_loss",
                    patience=0, factor=0.5),
    "onecycle-batch": dict(policy=torch.optim.lr_scheduler.OneCycleLR, max_lr=0.2,
                           total_steps=40, step_every="batch"),
    "warm-restart": dict(policy="WarmRestartLR"),
}


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_lr_schedulers_act_on_each_model(data, scheduler):
    X, y = data
    for optimizer in (torch.optim.SGD, torch.optim.Adam):
        net = _readme(optimizer=optimizer, lr=0.05 if optimizer is torch.optim.SGD else 0.01,
                      callbacks=[("sched", LRScheduler(**SCHEDULERS[scheduler]))])
        fused = _check(net, TASKS, X, y)
        alone = _alone(net, TASKS[0], X, y)
        assert fused[0].optimizer_.param_groups[0]["lr"] == \
            alone.optimizer_.param_groups[0]["lr"]
        ours, theirs = (dict(n.callbacks_)["sched"].lr_scheduler_.state_dict()
                        for n in (fused[0], alone))
        assert ours.keys() == theirs.keys()
        for key, value in theirs.items():  # a plateau's best: its score, to rounding
            numbers = isinstance(value, float) or (isinstance(value, list) and all(
                isinstance(v, float) for v in value))
            assert ours[key] == (pytest.approx(value) if numbers else value), key


def test_clipping_and_scoring_callbacks(data):
    X, y = data
    net = _readme(callbacks=[GradientNormClipping(0.05),
                             EpochScoring("roc_auc", lower_is_better=False),
                             EpochScoring("f1", on_train=True, name="train_f1"),
                             BatchScoring("accuracy", name="batch_acc")])
    fused = _check(net, TASKS, X, y)
    assert {"roc_auc", "train_f1", "batch_acc"} <= set(fused[0].history[-1])


def test_callback_parameters_in_the_grid(data):
    X, y = data
    net = _readme(max_epochs=20, callbacks=[("es", EarlyStopping(patience=5))])
    tasks = [FusedTask({"callbacks__es__patience": p, "lr": 0.1}, seed=i)
             for i, p in enumerate([1, 2, 4])]
    _check(net, tasks, X, y)


# -- optimisers ----------------------------------------------------------------------------------

OPTIMIZERS = {
    "AdamW": (torch.optim.AdamW, {"optimizer__weight_decay": 0.05}),
    "RMSprop-momentum": (torch.optim.RMSprop, {"optimizer__momentum": 0.9}),
    "Adamax": (torch.optim.Adamax, {}),
    "Adadelta": (torch.optim.Adadelta, {}),
    "Adagrad": (torch.optim.Adagrad, {}),
    "NAdam": (torch.optim.NAdam, {}),
    "RAdam": (torch.optim.RAdam, {}),
    "SGD-nesterov": (torch.optim.SGD, {"optimizer__momentum": 0.9,
                                       "optimizer__nesterov": True}),
    "Adam-amsgrad": (torch.optim.Adam, {"optimizer__amsgrad": True}),
}


@pytest.fixture
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_any_torch_optimiser_with_optimizer_arguments(data, name, float64):
    """The learning rate given the optimiser's way (optimizer__lr) too; state handed back.
    In float64 the fused arithmetic is the model's own to 1e-10 (in float32 an optimiser
    that divides by a running RMS, at lr 0.03, can grow a rounding difference to 1e-4)."""
    X, y = data
    kind, extra = OPTIMIZERS[name]
    net = _readme(optimizer=kind, **extra)
    tasks = [FusedTask({"optimizer__lr": lr}, seed=i, rows=None if i else np.arange(200))
             for i, lr in enumerate([0.003, 0.01, 0.03])]
    _check(net, tasks, X.astype(np.float64), y, atol=1e-10)


def test_a_grid_over_optimiser_classes_groups_each_class(data):
    X, y = data
    tasks = [FusedTask({"optimizer": kind, "lr": lr}, seed=0)
             for kind in (torch.optim.SGD, torch.optim.RMSprop) for lr in (0.01, 0.05)]
    results = FusedTrainer(_readme(), engine="fused").fit(tasks, X, y)
    assert results[0].group == results[1].group != results[2].group == results[3].group
    for task, result in zip(tasks, results):
        assert_same_fit(result.estimator, _alone(_readme(), task, X, y))


@pytest.mark.parametrize("kind", [torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop,
                                  torch.optim.Adamax, torch.optim.Adadelta, torch.optim.Adagrad,
                                  torch.optim.SGD, torch.optim.Rprop, torch.optim.NAdam,
                                  torch.optim.RAdam, torch.optim.ASGD])
def test_the_stacked_optimiser_is_each_models_own_bitwise(kind):
    """One optimiser of the class over K rows == K optimisers over each model's parameter
    tensors, bitwise; settings per row (a scheduler's) and frozen rows respected."""

    class Layout:  # rows of (4, 3) weights then 4 biases
        @staticmethod
        def _tensors(row):
            return [row[:12].view(4, 3), row[12:]]

    torch.manual_seed(0)
    K, flat = 3, torch.randn(3, 16)

    class Net:
        def __init__(self, lr):
            self.params = [torch.nn.Parameter(t.clone()) for t in Layout._tensors(flat[0])]
            self.optimizer_ = kind(self.params, lr=lr)

    nets = [Net(lr) for lr in (0.1, 0.01, 0.1)]
    for net, row in zip(nets, flat):
        for p, t in zip(net.params, Layout._tensors(row)):
            p.data.copy_(t)
    nets_own = [Net(lr) for lr in (0.1, 0.01, 0.1)]
    for net, row in zip(nets_own, flat):
        for p, t in zip(net.params, Layout._tensors(row)):
            p.data.copy_(t)
    for net in nets:
        net.module_ = torch.nn.ParameterList(net.params)
    stacked = StackedOptimizer(flat.clone(), nets, Layout)
    for step in range(4):
        grads = torch.randn(K, 16)
        active = torch.tensor([True, step != 2, True])
        nets[0].optimizer_.param_groups[0]["lr"] *= 0.5  # a scheduler on model 0
        stacked.step([grads], active)
        for k, net in enumerate(nets_own):
            net.optimizer_.param_groups[0]["lr"] = nets[k].optimizer_.param_groups[0]["lr"]
            if bool(active[k]):
                for p, g in zip(net.params, Layout._tensors(grads[k])):
                    p.grad = g.clone()
                net.optimizer_.step()
    for k, net in enumerate(nets_own):
        assert torch.equal(stacked.params[0][k], torch.cat([p.detach().reshape(-1)
                                                            for p in net.params]))


# -- group independence, layouts -------------------------------------------------------------

@pytest.mark.parametrize("make", [_readme, lambda: _logits(module__norm="batch")],
                         ids=["chain", "torch.func"])
def test_a_model_does_not_depend_on_its_group(data, make):
    X, y = data
    net = make()
    mine = FusedTask({"lr": 0.05}, seed=7, rows=np.arange(250))
    others = [FusedTask({"lr": lr}, seed=s, rows=np.arange(n)) for lr, s, n in
              [(0.2, 1, 300), (0.01, 2, 200), (0.1, 3, 280)]]
    small = _fused(net, [mine, others[0]], X, y)[0]
    large = _fused(net, [others[1], mine, *others[1:]], X, y)[1]
    for key, value in small.module_.state_dict().items():
        assert torch.equal(value, large.module_.state_dict()[key]), key
    assert small.history[:, "valid_loss"] == large.history[:, "valid_loss"]


def test_the_chain_layout_reads_the_module_and_runs_as_torch_func(data):
    X, _ = data
    module = ReadmeModule(num_units=8, n_in=10)
    sample = torch.as_tensor(X[:4])
    chain = ChainLayout(module, sample)
    assert len(chain.dropouts(module)) == 1 and chain.n_linear == 3
    views = chain.views(torch.stack([chain.flat(module)] * 2))
    x = torch.stack([torch.as_tensor(X[:16])] * 2)
    out = chain.forward(views, x, lambda i, h: h)
    reference = FuncLayout(module, sample).forward(views, x, lambda i, h: h)
    torch.testing.assert_close(out, reference)
    with pytest.raises(ValueError, match="not a step of a chain"):
        ChainLayout(Logits(norm="layer"), sample)


# -- what cannot follow, and failures -----------------------------------------------------------

class Raising(Callback):
    def __init__(self, at=2):
        self.at = at

    def on_epoch_end(self, net, **kwargs):
        if net.lr == 0.1 and len(net.history) == self.at:
            raise RuntimeError("boom")


def test_a_raising_callback_fails_only_its_model(data):
    X, y = data
    net = _readme(callbacks=[Raising()])
    results = FusedTrainer(net, engine="fused").fit(TASKS, X, y)
    assert [bool(r.error) for r in results] == [False, True, False]
    assert "RuntimeError: boom" in results[1].error
    with pytest.raises(RuntimeError, match="boom"):
        _alone(net, TASKS[1], X, y)  # its own fit fails alike
    for i in (0, 2):
        assert_same_fit(results[i].estimator, _alone(net, TASKS[i], X, y))


class Rebuilds(Callback):
    def on_train_begin(self, net, **kwargs):
        net.set_params(module__num_units=12)  # a new module when training begins


def test_a_callback_that_replaces_the_module_trains_alone(data):
    X, y = data
    net = _readme(callbacks=[Rebuilds()])
    results = FusedTrainer(net, engine="auto").fit(TASKS, X, y)
    assert all("replaced its module" in r.reason for r in results)
    for task, result in zip(TASKS, results):
        assert_same_fit(result.estimator, _alone(net, task, X, y))


def test_printing_is_silent_in_a_group(data, capsys):
    X, y = data
    FusedTrainer(_readme(verbose=1), engine="fused").fit(TASKS[:2], X, y)
    assert capsys.readouterr().out == ""


def test_what_cannot_fuse_names_its_setting(data):
    X, y = data
    lbfgs = _readme(optimizer=torch.optim.LBFGS)
    with pytest.raises(ValueError, match="optimizer LBFGS"):
        FusedTrainer(lbfgs, engine="fused").fit(TASKS, X, y)
    with pytest.raises(ValueError, match="not arrays of the same rows"):
        FusedTrainer(NeuralNet(Logits, criterion=nn.CrossEntropyLoss),
                     engine="fused").fit(TASKS, {"X": X, "other": X[:10]}, y)


class WeightNorms(Callback):
    """A user's own callback: reads the module's weights at every epoch's end."""

    def on_epoch_end(self, net, **kwargs):
        net.history.record("w_norm", float(net.module_.dense0.weight.norm()))


def test_freezer_initializer_and_a_users_own_callback(data):
    from skorch.callbacks import Freezer, Initializer, Unfreezer

    X, y = data
    net = _readme(callbacks=[Initializer("dense*.weight", fn=nn.init.xavier_uniform_),
                             Freezer("dense0.*"), WeightNorms()])
    fused = _check(net, TASKS, X, y)
    assert len(set(fused[0].history[:, "w_norm"])) == 1  # frozen all along
    thaw = _readme(callbacks=[Freezer("dense0.*"), Unfreezer("dense0.*", at=3)])
    _check(thaw, TASKS, X, y)


def test_checkpoints_write_and_load_state_per_model(data, tmp_path):
    from skorch.callbacks import Checkpoint, LoadInitState, TrainEndCheckpoint

    X, y = data
    for i, task in enumerate(TASKS):
        ends = TrainEndCheckpoint(dirname=str(tmp_path / f"end{i}"))
        _check(_readme(callbacks=[ends]), [task, FusedTask({"lr": 0.3}, seed=9)], X, y)
        assert (tmp_path / f"end{i}" / "train_end_params.pt").exists()
    every = Checkpoint(dirname=str(tmp_path / "best"))
    _check(_readme(callbacks=[every]), TASKS, X, y)
    assert (tmp_path / "best" / "params.pt").exists()
    # resuming from a checkpoint: the module, optimiser state and history it wrote
    start = Checkpoint(dirname=str(tmp_path / "start"))
    _readme(optimizer=torch.optim.Adam, lr=0.01, callbacks=[start]).fit(X, y)
    resume = _readme(optimizer=torch.optim.Adam, lr=0.01,
                     callbacks=[LoadInitState(Checkpoint(dirname=str(tmp_path / "start")))])
    fused = _check(resume, TASKS, X, y)
    assert len(fused[0].history) > 4  # the history it loaded, then its own epochs


class BuildsItsModule(NeuralNetClassifier):
    """A net that builds its module in initialize_module, as skorch's docs show."""

    def initialize_module(self):
        super().initialize_module()
        self.module_ = nn.Sequential(nn.Linear(10, 12), nn.Tanh(), nn.Linear(12, 2),
                                     nn.Softmax(dim=-1))
        return self


def test_module_instances_built_modules_warm_start_and_disabled_callbacks(data):
    X, y = data
    _check(_readme(module=ReadmeModule(num_units=7, n_in=10)), TASKS, X, y)  # an instance
    _check(BuildsItsModule(ReadmeModule, module__n_in=10, max_epochs=3, lr=0.1, verbose=0),
           TASKS, X, y)
    _check(_readme(warm_start=True), TASKS, X, y)
    plain = NeuralNet(Logits, criterion=nn.CrossEntropyLoss, max_epochs=3, lr=0.05,
                      verbose=0, callbacks="disable")
    _check(plain, TASKS, X, y)


def test_two_inputs_through_a_slice_dict():
    """skorch's SliceDict: the module takes two inputs (numeric features and a code through an
    embedding); each input is stacked per model."""
    X, y = ZOO._two_inputs()
    X, y = X[:400], y[:400]
    net = NeuralNetClassifier(ZOO.TwoInputs, criterion=nn.CrossEntropyLoss, max_epochs=3,
                              lr=0.01, optimizer=torch.optim.Adam, verbose=0,
                              iterator_train__shuffle=True)
    tasks = [FusedTask({"lr": lr}, seed=i, rows=None if i else np.arange(300))
             for i, lr in enumerate([0.003, 0.01, 0.03])]
    _check(net, tasks, X, y)


@pytest.mark.parametrize("make", [_readme, _logits],
                         ids=["chain", "chain-logits"])
def test_chunks_of_a_group_do_not_change_its_models(data, make, monkeypatch):
    """On a CPU a group runs its forward and backward in chunks of models that keep the
    activations in the cache; the chunks change no model's numbers (bitwise)."""
    import skhpo.fused._group as group

    X, y = data
    whole = _fused(make(), TASKS, X, y)
    monkeypatch.setattr(group, "CHUNK_BYTES", 1)  # one model a chunk
    chunked = _fused(make(), TASKS, X, y)
    for a, b in zip(whole, chunked):
        for key, value in a.module_.state_dict().items():
            assert torch.equal(value, b.module_.state_dict()[key]), key
        assert a.history[:, "train_loss"] == b.history[:, "train_loss"]
