"""The fused engine (skhpo.fused): many nets trained as one stacked model, handed back as
ordinary fitted nets that equal the nets' own fits; the plan, the layouts, the batched
optimisers and the size limits."""

import re

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skhpo import TabularMLPClassifier, TabularMLPRegressor
from skhpo.fused import FusedTask, FusedTrainer, unfusible
from skhpo.fused._adam import BatchedAdam
from skhpo.fused._sgd import BatchedSGD
from skhpo.nets import trial_params


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16).astype(np.float32)[:600], y[:600]


def _net(**kw):
    return TabularMLPClassifier(**{"depth": 2, "width": 16, "max_epochs": 2, "batch_size": 64,
                                   **kw})


def _alone(estimator, task, X, y):
    rows = slice(None) if task.rows is None else task.rows
    est = clone(estimator).set_params(**task.params, **trial_params(estimator, seed=task.seed))
    return est.fit(X[rows], y[rows])


def _weights(est):
    net = est[-1] if hasattr(est, "steps") else est
    return {k: v.detach().clone() for k, v in net.module_.named_parameters()}


def _max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


TASKS = [
    FusedTask({"lr": 1e-3}, seed=1),
    FusedTask({"lr": 3e-3, "optimizer__weight_decay": 1e-4, "dropout": 0.2}, seed=2,
              rows=np.arange(0, 600, 2)),                            # a fold of 300 rows
    FusedTask({"lr": 1e-2, "dropout": [0.3, 0.0], "l2": [1e-3, 0.0, 1e-4], "l1": 1e-4,
               "max_epochs": 3}, seed=3, rows=np.arange(0, 430)),    # a fold of 430 rows
    FusedTask({"lr": 5e-4, "optimizer__betas": (0.8, 0.99), "optimizer__eps": 1e-6,
               "max_epochs": 1}, seed=4),
]


def test_a_fused_model_equals_its_own_fit(digits):
    """Per model: lr, weight decay, betas, eps, dropout (one or per layer), l2/l1 per layer,
    epochs, seed and training rows of unequal size -- to float32 rounding."""
    X, y = digits
    results = FusedTrainer(_net(), engine="fused").fit(TASKS, X, y)
    assert [r.group for r in results] == [0, 0, 0, 0] and not any(r.error for r in results)
    for task, result in zip(TASKS, results):
        alone = _alone(_net(), task, X, y)
        assert _max_diff(_weights(result.estimator), _weights(alone)) < 2e-6
        np.testing.assert_allclose(result.estimator.history[:, "train_loss"],
                                   alone.history[:, "train_loss"], rtol=1e-5)
        np.testing.assert_allclose(result.estimator.predict_proba(X), alone.predict_proba(X),
                                   atol=2e-6)
        assert result.estimator.max_epochs == alone.max_epochs
        fused_state = result.estimator.optimizer_.state_dict()["state"]
        alone_state = alone.optimizer_.state_dict()["state"]
        for key in alone_state:  # Adam's moments and step count come back too
            assert float(fused_state[key]["step"]) == float(alone_state[key]["step"])
            torch.testing.assert_close(fused_state[key]["exp_avg"], alone_state[key]["exp_avg"],
                                       rtol=1e-3, atol=1e-6)
        assert result.estimator.get_params()["lr"] == task.params["lr"]


def test_a_result_does_not_depend_on_its_group(digits):
    X, y = digits
    together = FusedTrainer(_net(), engine="fused").fit(TASKS, X, y)
    for i, task in enumerate(TASKS):
        (alone,) = FusedTrainer(_net(), engine="fused").fit([task], X, y)
        a, b = _weights(together[i].estimator), _weights(alone.estimator)
        assert all(torch.equal(a[k], b[k]) for k in a), f"task {i} changed with its group"


def test_a_diverging_model_is_retired_alone(digits):
    X, y = digits
    bad = FusedTask({"lr": 1e30, "max_epochs": 2}, seed=9)
    with_bad = FusedTrainer(_net(), engine="fused").fit([TASKS[0], bad, TASKS[1]], X, y)
    without = FusedTrainer(_net(), engine="fused").fit([TASKS[0], TASKS[1]], X, y)
    assert with_bad[1].estimator is None and with_bad[1].error.startswith("diverged: ")
    with pytest.raises(FloatingPointError):  # the same task diverges alone
        _alone(_net(), bad, X, y)
    for i, j in ((0, 0), (2, 1)):
        a, b = _weights(with_bad[i].estimator), _weights(without[j].estimator)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_pipelines_regressors_and_the_reasons_to_train_alone(digits):
    X, y = digits
    pipe = make_pipeline(StandardScaler(), _net())
    tasks = [FusedTask({"tabularmlpclassifier__lr": lr}, seed=s, rows=np.arange(100, 600))
             for lr, s in ((1e-3, 1), (1e-2, 2))]
    for task, result in zip(tasks, FusedTrainer(pipe).fit(tasks, X, y)):
        assert result.group == 0
        assert _max_diff(_weights(result.estimator), _weights(_alone(pipe, task, X, y))) < 2e-6
    reg = TabularMLPRegressor(depth=1, width=8, max_epochs=2)
    target = X[:, :2] @ np.array([1.0, -2.0], dtype=np.float32)
    tasks = [FusedTask({"lr": 1e-2}, seed=1), FusedTask({"lr": 3e-3}, seed=2)]
    for task, result in zip(tasks, FusedTrainer(reg).fit(tasks, X, target)):
        assert result.group == 0
        assert _max_diff(_weights(result.estimator), _weights(_alone(reg, task, X, target))) < 2e-6
    # what cannot fuse trains alone, with its reason
    plan = FusedTrainer(_net()).plan([FusedTask({"optimizer": torch.optim.LBFGS}),
                                      FusedTask({"width": 32}), FusedTask({}), FusedTask({}),
                                      FusedTask({"optimizer": torch.optim.SGD})])
    assert plan.groups == [[2, 3]]
    assert "optimizer LBFGS" in plan.alone[0] and "only task" in plan.alone[1]
    assert "only task" in plan.alone[4]  # SGD fuses, with SGD tasks only
    on_gpu = FusedTrainer(_net(device="cuda")).plan([FusedTask(), FusedTask()])
    assert on_gpu.groups == [] and "CPU only" in on_gpu.alone[0]  # auto: not on an unmeasured GPU
    with pytest.raises(ValueError, match="task 0 cannot be fused: optimizer LBFGS"):
        FusedTrainer(_net(), engine="fused").plan([FusedTask({"optimizer": torch.optim.LBFGS})])
    with pytest.raises(ValueError, match="engine must be one of"):
        FusedTrainer(_net(), engine="fast")


@pytest.mark.parametrize("shapes", [[(4, 5), (1, 5)], [(3000,)]], ids=["batched", "per-model"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_batched_sgd_is_torch_sgd_per_model(nesterov, shapes):
    """float64: each slice follows torch.optim.SGD to 1e-13 (rows of at least PER_MODEL_MIN
    values: torch's fused kernel per model, bitwise), with per-model learning rate, weight
    decay, momentum (one model without) and dampening, and a frozen model."""
    from skhpo.fused._adam import PER_MODEL_MIN

    g = torch.Generator().manual_seed(0)
    K = 4
    params = [torch.randn(K, *s, dtype=torch.float64, generator=g) for s in shapes]
    coefs = [dict(lr=1e-2, weight_decay=0.0, momentum=0.9, dampening=0.0),
             dict(lr=3e-2, weight_decay=1e-2, momentum=0.5, dampening=0.0 if nesterov else 0.1),
             dict(lr=1e-1, weight_decay=1e-3, momentum=0.3 if nesterov else 0.0, dampening=0.0),
             dict(lr=5e-3, weight_decay=0.0, momentum=0.99, dampening=0.0)]
    batched = BatchedSGD(params, *([c[k] for c in coefs]
                                   for k in ("lr", "weight_decay", "momentum", "dampening")),
                         nesterov=nesterov)
    alone = [[p[k].clone().requires_grad_(True) for p in params] for k in range(K)]
    opts = [torch.optim.SGD(ps, nesterov=nesterov, **c) for ps, c in zip(alone, coefs)]
    for step in range(6):
        grads = [torch.randn(K, *s, dtype=torch.float64, generator=g) for s in shapes]
        active = torch.tensor([True, step not in (0, 3), True, step != 5])
        batched.step(grads, active)
        for k in range(K):
            if active[k]:
                for p, gr in zip(alone[k], grads):
                    p.grad = gr[k].clone()
                opts[k].step()
    assert batched._per_model() == (shapes[0][0] >= PER_MODEL_MIN)
    exact = batched._per_model()
    for k in range(K):
        for i, (p, q) in enumerate(zip(batched.params, alone[k])):
            torch.testing.assert_close(p[k], q.detach(), rtol=1e-13, atol=1e-13)
            assert torch.equal(p[k], q.detach()) or not exact
            state = batched.state_of(k)[i]
            assert state.keys() == opts[k].state[q].keys()
            if state:
                torch.testing.assert_close(state["momentum_buffer"],
                                           opts[k].state[q]["momentum_buffer"], rtol=1e-13,
                                           atol=1e-13)


def test_sgd_models_equal_their_own_fit(digits):
    X, y = digits
    net = _net(optimizer=torch.optim.SGD, lr=0.05, optimizer__momentum=0.9)
    tasks = [FusedTask({"lr": 0.05}, seed=1),
             FusedTask({"optimizer__momentum": 0.5, "optimizer__dampening": 0.1,
                        "optimizer__weight_decay": 1e-3, "dropout": 0.2}, seed=2,
                       rows=np.arange(0, 430)),
             FusedTask({"optimizer__momentum": 0.0, "lr": 0.1}, seed=3)]
    results = FusedTrainer(net, engine="fused").fit(tasks, X, y)
    assert [r.group for r in results] == [0, 0, 0]
    for task, result in zip(tasks, results):
        alone = _alone(net, task, X, y)
        assert _max_diff(_weights(result.estimator), _weights(alone)) < 2e-6
        fused_state = result.estimator.optimizer_.state_dict()["state"]
        alone_state = alone.optimizer_.state_dict()["state"]
        assert fused_state.keys() == alone_state.keys()
        for key in alone_state:
            torch.testing.assert_close(fused_state[key]["momentum_buffer"],
                                       alone_state[key]["momentum_buffer"], rtol=1e-3, atol=1e-6)
    plan = FusedTrainer(net).plan([FusedTask({"optimizer__nesterov": True}), FusedTask({}),
                                   FusedTask({})])
    assert plan.groups == [[1, 2]] and "only task" in plan.alone[0]  # Nesterov or not: apart


@pytest.mark.parametrize("shapes", [[(4, 5), (1, 5)], [(40, 40), (32, 40)]],
                         ids=["batched passes", "fused kernel per model"])
@pytest.mark.parametrize("kw", [dict(), dict(weight_decay=1e-2, betas=(0.8, 0.95), eps=1e-6)])
def test_batched_adam_is_torch_adam_per_model(kw, shapes):
    """float64: each slice of the batched optimiser follows torch.optim.Adam to 1e-14, with
    per-model coefficients and a frozen model in some steps; small rows through batched
    elementwise passes, large ones (PER_MODEL_MIN) through torch's fused kernel per model."""
    from skhpo.fused._adam import PER_MODEL_MIN

    g = torch.Generator().manual_seed(0)
    K = 3
    per_model = min(a * b for a, b in shapes) >= PER_MODEL_MIN
    params = [torch.randn(K, *s, dtype=torch.float64, generator=g) for s in shapes]
    lrs = [1e-3, 1e-2, 3e-2]
    batched = BatchedAdam(params, lrs, [kw.get("weight_decay", 0.0)] * K,
                          [kw.get("betas", (0.9, 0.999))] * K, [kw.get("eps", 1e-8)] * K)
    assert batched._per_model() == per_model == (shapes[0][0] == 40)
    alone = [[p[k].clone().requires_grad_(True) for p in params] for k in range(K)]
    opts = [torch.optim.Adam(ps, lr=lr, **kw) for ps, lr in zip(alone, lrs)]
    for step in range(5):
        grads = [torch.randn(K, *s, dtype=torch.float64, generator=g) for s in shapes]
        active = torch.tensor([True, step != 2, True])
        batched.step(grads, active)
        for k in range(K):
            if not active[k]:
                continue
            for p, gr in zip(alone[k], grads):
                p.grad = gr[k].clone()
            opts[k].step()
    for k in range(K):
        for p, q in zip(batched.params, alone[k]):
            torch.testing.assert_close(p[k], q.detach(), rtol=1e-14, atol=1e-14)


def test_flatness_screening_fused_and_sequential_agree(digits):
    """The screening's sharpness values agree to float32 rounding; the same finalists and
    the same best candidate; every screened candidate says where it trained."""
    from scipy.stats import loguniform

    from skhpo import FlatnessSearchCV

    X, y = digits
    space = {"lr": loguniform(1e-3, 3e-2), "width": [16, 32]}
    kw = dict(n_candidates=8, n_finalists=2, cv=2, random_state=0)
    fused = FlatnessSearchCV(_net(), space, engine="fused", **kw).fit(X, y)
    alone = FlatnessSearchCV(_net(), space, engine="sequential", **kw).fit(X, y)
    np.testing.assert_allclose(fused.history_["sharpness"], alone.history_["sharpness"],
                               rtol=1e-4)
    assert fused.best_params_ == alone.best_params_
    assert fused.history_["status"] == alone.history_["status"]
    assert set(fused.history_["fused_group"]) == {0, 1}  # one group per width
    assert set(alone.history_["fused_group"]) == {-1}
    assert set(alone.history_["engine_reason"]) == {"engine='sequential'"}
    assert fused.engine_ == "fused" and fused.engine_reason_ == ""
    assert alone.engine_ == "sequential" and alone.candidate_engines_ == \
        ["sequential"] * len(alone.cv_results_["params"])


def test_engine_fused_names_what_cannot_fuse_before_training(digits):
    from skorch import NeuralNetClassifier
    from torch import nn

    from skhpo import FlatnessSearchCV

    X, y = digits
    net = NeuralNetClassifier(nn.Sequential(nn.Linear(64, 10), nn.BatchNorm1d(10, momentum=None),
                                            nn.Softmax(dim=-1)), max_epochs=1, train_split=None)
    search = FlatnessSearchCV(net, {"lr": [1e-2, 1e-3]}, n_candidates=2, n_finalists=1,
                              engine="fused")
    reason = "layer '1' (BatchNorm1d) has momentum=None"
    with pytest.raises(ValueError, match=f"cannot be fused: {re.escape(reason)}"):
        search.fit(X, y)
    assert not hasattr(search, "history_")
    auto = FlatnessSearchCV(net, {"lr": [1e-2, 1e-3]}, n_candidates=2, n_finalists=1, cv=2,
                            random_state=0).fit(X, y)
    assert all(reason in r for r in auto.history_["engine_reason"])


def test_cross_validation_loads_the_fused_folds(digits, loaded):
    """With engine="fused" every finalist's CV fit loads its fold from the fused group (no
    epoch trained by scikit-learn's fit), and cv_results_ agrees with sequential training."""
    from skhpo import FlatnessSearchCV

    X, y = digits
    space = {"lr": [1e-3, 3e-3, 1e-2, 3e-2], "dropout": [0.0, 0.2]}
    kw = dict(n_candidates=6, n_finalists=3, cv=3, random_state=0)
    fused = FlatnessSearchCV(_net(), space, engine="fused", **kw).fit(X, y)
    assert loaded == [True] * 9  # 3 finalists x 3 folds; the refit trains normally
    alone = FlatnessSearchCV(_net(), space, engine="sequential", **kw).fit(X, y)
    assert fused.cv_results_["params"] == alone.cv_results_["params"]
    np.testing.assert_allclose(fused.cv_results_["mean_test_score"],
                               alone.cv_results_["mean_test_score"], atol=0.01)
    assert fused.best_params_ == alone.best_params_
    assert "callbacks" not in fused.best_params_
    assert (fused.cv_results_["mean_fit_time"] > 0).all()


def test_autohyper_walks_the_same_with_fused_trials(digits):
    """The trials of a step train as one group, Z read from each model's weights at every
    epoch end (the recorder only reads the net): the same Z, walk and result."""
    from skhpo import AutoHyperSearchCV

    X, y = digits
    kw = dict(epochs_per_trial=2, cv=2, random_state=0, max_trials=12)
    runs = {engine: AutoHyperSearchCV(_net(width=32), {"lr": None}, engine=engine,
                                      **kw).fit(X, y)
            for engine in ("fused", "sequential")}
    fused, alone = runs["fused"], runs["sequential"]
    np.testing.assert_allclose(fused.history_["z"], alone.history_["z"], atol=1e-6)
    assert fused.best_params_ == alone.best_params_ and fused.n_trials_ == alone.n_trials_
    assert fused.best_score_ == pytest.approx(alone.best_score_, abs=0.01)
    assert max(fused.history_["fused_group"]) >= 0 and set(alone.history_["fused_group"]) == {-1}
    assert fused.engine_ in ("fused", "mixed") and alone.engine_ == "sequential"

def test_groups_in_parallel_give_the_same_models(digits):
    X, y = digits
    tasks = TASKS + [FusedTask({"width": 32, "lr": 1e-2}, seed=5),
                     FusedTask({"width": 32, "lr": 1e-3}, seed=6)]
    one = FusedTrainer(_net(), engine="fused").fit(tasks, X, y)
    two = FusedTrainer(_net(), engine="fused", n_jobs=2).fit(tasks, X, y)
    assert [r.group for r in one] == [0, 0, 0, 0, 1, 1]
    # two processes: the architecture of four split in two (every second task), so both
    # end together
    assert [r.group for r in two] == [0, 1, 0, 1, 2, 2]
    for a, b in zip(one, two):
        wa, wb = _weights(a.estimator), _weights(b.estimator)
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_groups_split_evenly_over_the_processes():
    from skhpo.fused.trainer import _pieces

    assert _pieces(list(range(96)), 64, 1) == [list(range(48)), list(range(48, 96))]
    # with processes: every n-th task, so that what makes tasks slower is spread evenly
    assert _pieces(list(range(96)), 64, 2) == [list(range(0, 96, 2)), list(range(1, 96, 2))]
    assert [len(p) for p in _pieces(list(range(48)), 64, 2)] == [24, 24]
    assert [len(p) for p in _pieces(list(range(130)), 64, 2)] == [33, 33, 32, 32]
    assert [len(p) for p in _pieces(list(range(5)), 64, 4)] == [3, 2]  # none of one task
    assert _pieces([7, 3, 5], 64, 2) == [[7, 3, 5]]


@pytest.mark.parametrize("n_jobs", [0, 1.5, "2", True])
def test_n_jobs_is_checked_before_any_training(n_jobs):
    with pytest.raises(ValueError, match="n_jobs must be None or a non-zero int"):
        FusedTrainer(_net(), n_jobs=n_jobs)


def test_a_group_too_big_for_its_memory_is_split_before_training(digits, monkeypatch):
    from skhpo.fused import GroupSplitWarning
    from skhpo.fused.cost import model_bytes

    X, y = digits
    tasks = TASKS[:4]
    whole = FusedTrainer(_net(), engine="fused").fit(tasks, X, y)
    # room for two models of this net (16 weights ... 10 classes, 600 rows, batch 64)
    net = whole[0].estimator
    n_weights = sum(p.numel() for p in net.module_.parameters())
    units = sum(p.shape[0] for p in net.module_.parameters() if p.dim() >= 2)
    per_model = model_bytes(n_weights, len(y), net.batch_size, X.shape[1], units)
    monkeypatch.setenv("SKHPO_GROUP_MEMORY", str(2 * per_model + 1))
    with pytest.warns(GroupSplitWarning, match="a fused group of 4 models .* trains as "
                                               "groups of 2"):
        split = FusedTrainer(_net(), engine="fused").fit(tasks, X, y)
    for a, b in zip(whole, split):
        wa, wb = _weights(a.estimator), _weights(b.estimator)
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    monkeypatch.setenv("SKHPO_GROUP_MEMORY", "lots")
    with pytest.raises(ValueError, match="SKHPO_GROUP_MEMORY must be a whole number of "
                                         "bytes"):
        FusedTrainer(_net(), engine="fused").fit(tasks, X, y)


def test_forked_workers_only_under_joblibs_default_backend():
    import joblib

    from skhpo.fused import _workers

    assert _workers._forks(on_cpu=True) and not _workers._forks(on_cpu=False)
    with joblib.parallel_config(backend="threading"):  # the user's choice is kept
        assert not _workers._forks(on_cpu=True)
        assert [i for i, _ in _workers.run_jobs([lambda: 1, lambda: 2], 2)] == [0, 1]
    assert not _workers._noise.IN_WORKER  # threads of this process leave its spare core on
    # inside a joblib worker (a search run by joblib.Parallel): the jobs run in that worker
    pids = joblib.Parallel(n_jobs=2)(joblib.delayed(_worker_pids)() for _ in range(2))
    assert all(len(set(p)) == 1 for p in pids)


def _worker_pids():
    import os

    from skhpo.fused import _workers

    return [pid for _, pid in _workers.run_jobs([os.getpid, os.getpid], 2)]


def test_a_worker_draws_no_noise_ahead(monkeypatch):
    from skhpo.fused import _noise

    monkeypatch.setattr(_noise, "IN_WORKER", True)
    assert not _noise.spare_core()

def test_the_iterator_batch_size_and_a_failing_initialisation(digits):
    X, y = digits
    tasks = [FusedTask({"iterator_train__batch_size": 32, "lr": 1e-2}, seed=1),
             FusedTask({"iterator_train__batch_size": 32, "lr": 3e-3}, seed=2),
             FusedTask({"iterator_train__batch_size": 32, "l2": [1.0, 2.0]}, seed=3)]
    results = FusedTrainer(_net()).fit(tasks, X, y)
    for task, result in zip(tasks[:2], results):
        assert result.group == 0
        assert _max_diff(_weights(result.estimator), _weights(_alone(_net(), task, X, y))) < 2e-6
    # l2 with two coefficients for three linear layers: its own fit fails, so does this task
    assert results[2].estimator is None and "ValueError" in results[2].error
    assert "initialisation failed" in results[2].reason

def test_a_finite_explosion_is_divergence_in_a_group_as_alone():
    """Unscaled breast_cancer: Adam at lr=3 takes the loss from 1.2 to about 1e8 while every
    value stays finite; the guard's rule (max_ratio x the first batch's loss) retires it in
    its group in the same epoch as its own fit fails, and leaves the others untouched."""
    from sklearn.datasets import load_breast_cancer

    from skhpo import TrainingDivergedError

    X, y = load_breast_cancer(return_X_y=True)
    X = X.astype(np.float32)
    net = _net(depth=1, width=128, max_epochs=3)
    good = [FusedTask({"lr": 1e-3}, seed=1), FusedTask({"lr": 2e-3}, seed=2)]
    boom = FusedTask({"lr": 3.0}, seed=3)
    with_bad = FusedTrainer(net, engine="fused").fit([good[0], boom, good[1]], X, y)
    without = FusedTrainer(net, engine="fused").fit(good, X, y)
    assert with_bad[1].estimator is None
    assert "more than max_ratio=10000 times its first batch's" in with_bad[1].error
    with pytest.raises(TrainingDivergedError, match="max_ratio") as alone:
        _alone(net, boom, X, y)
    epoch = with_bad[1].error.split(" in epoch ")[1].split(";")[0]
    assert f"in epoch {epoch};" in str(alone.value)
    for i, j in ((0, 0), (2, 1)):
        a, b = _weights(with_bad[i].estimator), _weights(without[j].estimator)
        assert all(torch.equal(a[k], b[k]) for k in a)
    # the rule is the net's guard's: max_ratio=None checks non-finite losses only
    free = _net(depth=1, width=128, max_epochs=3, callbacks__finite_loss__max_ratio=None)
    (kept,) = FusedTrainer(free, engine="fused").fit([FusedTask({"lr": 3.0}, seed=3)], X, y)
    assert kept.error == "" and kept.estimator is not None


# -- the cost model: thresholds measured on the user's machine (skhpo.fused.cost) ---------------

def test_groups_split_by_weights_give_the_same_models(digits, monkeypatch):
    """A group holds at most $SKHPO_MAX_GROUP_WEIGHTS weights; splitting it changes no
    model (every model's arithmetic is its own)."""
    from skhpo.fused import group_size

    X, y = digits
    whole = FusedTrainer(_net(), engine="fused").fit(TASKS, X, y)
    n = sum(p.numel() for p in whole[0].estimator.module_.parameters())
    monkeypatch.setenv("SKHPO_MAX_GROUP_WEIGHTS", str(2 * n))
    assert group_size(n) == 2 and group_size(n, max_group=1) == 2
    split = FusedTrainer(_net(), engine="fused").fit(TASKS, X, y)
    for a, b in zip(whole, split):
        wa, wb = _weights(a.estimator), _weights(b.estimator)
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_max_weights_from_the_environment(digits, monkeypatch):
    from skhpo.fused.cost import MAX_WEIGHTS, max_weights

    X, y = digits
    assert max_weights() == MAX_WEIGHTS
    monkeypatch.setenv("SKHPO_MAX_WEIGHTS", "100")
    assert max_weights() == 100
    results = FusedTrainer(_net(), engine="auto").fit(TASKS[:2], X, y)
    assert [r.group for r in results] == [-1, -1]
    assert all("weights > max_weights=100" in r.reason for r in results)
    for bad in ("-5", "lots"):
        monkeypatch.setenv("SKHPO_MAX_WEIGHTS", bad)
        with pytest.raises(ValueError, match="SKHPO_MAX_WEIGHTS must be a whole number"):
            FusedTrainer(_net(), engine="auto").plan(TASKS)
    monkeypatch.setenv("SKHPO_MAX_GROUP_WEIGHTS", "0")
    with pytest.raises(ValueError, match="SKHPO_MAX_GROUP_WEIGHTS must be a whole number"):
        from skhpo.fused.cost import max_group_weights
        max_group_weights()


def test_recommend_reads_the_largest_net_that_gains():
    from skhpo.bench.calibrate import recommend

    rows = [{"weights": w, "speedup": s} for w, s in
            ((9_000, 2.8), (26_000, 2.3), (85_000, 1.15), (177_000, 0.76), (301_000, 1.2))]
    assert recommend(rows) == 85_000            # stops at the first net that does not gain
    assert recommend(rows, min_speedup=2.0) == 26_000
    assert recommend(rows, min_speedup=3.0) == 0


def test_measure_times_real_fits_and_a_fused_group():
    from skhpo.bench.calibrate import Data, measure
    from skhpo.fused import group_size

    row = measure(8, depth=1, data=Data(batch_size=16, n_features=5, n_classes=3, n_batches=2))
    assert row["weights"] == 5 * 8 + 8 + 8 * 3 + 3
    assert row["k"] == group_size(row["weights"])
    assert row["alone_s"] > 0 and row["fused_s"] > 0
    assert row["speedup"] == pytest.approx(row["alone_s"] / row["fused_s"])


def test_calibrate_command(capsys):
    from skhpo.bench.commands import main

    assert main(["calibrate", "--widths", "8", "--depth", "1", "--k", "2", "--batches", "2",
                 "--features", "5"]) == 0
    out = capsys.readouterr().out
    assert "export SKHPO_MAX_WEIGHTS=" in out and "speedup" in out
    assert main(["calibrate", "--threads", "0"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err


# -- skhpo's small CNNs: grouped convolutions -----------------------------------------------------

def test_small_cnns_equal_their_own_fit(digits):
    """SmallCNNClassifier: the K models' convolutions as one grouped convolution, the dense
    head batched; per-model lr, weight decay, dropout, l2, epochs, seed and rows."""
    from skhpo import SmallCNNClassifier

    X, y = digits
    images = X.reshape(-1, 1, 8, 8)
    net = SmallCNNClassifier(n_filters=4, width=16, max_epochs=2)
    tasks = [FusedTask({"lr": 3e-3}, seed=1),
             FusedTask({"lr": 1e-2, "optimizer__weight_decay": 1e-4, "dropout": 0.3,
                        "l2": [1e-3, 0.0], "max_epochs": 3}, seed=2, rows=np.arange(0, 430)),
             FusedTask({"lr": 1e-3, "dropout": 0.1}, seed=3, rows=np.arange(100, 600))]
    results = FusedTrainer(net, engine="fused").fit(tasks, images, y)
    assert [r.group for r in results] == [0, 0, 0] and not any(r.error for r in results)
    for task, result in zip(tasks, results):
        alone = _alone(net, task, images, y)
        assert _max_diff(_weights(result.estimator), _weights(alone)) < 2e-6
        np.testing.assert_allclose(result.estimator.predict_proba(images),
                                   alone.predict_proba(images), atol=2e-6)
        fused_state = result.estimator.optimizer_.state_dict()["state"]
        alone_state = alone.optimizer_.state_dict()["state"]
        for key in alone_state:
            assert float(fused_state[key]["step"]) == float(alone_state[key]["step"])
            torch.testing.assert_close(fused_state[key]["exp_avg_sq"],
                                       alone_state[key]["exp_avg_sq"], rtol=1e-3, atol=1e-9)
    # alone in a group of one: bitwise the same model
    (single,) = FusedTrainer(net, engine="fused").fit([tasks[1]], images, y)
    a, b = _weights(results[1].estimator), _weights(single.estimator)
    assert all(torch.equal(a[k], b[k]) for k in a)
    plan = FusedTrainer(net).plan([FusedTask({}), FusedTask({}), FusedTask({"n_filters": 8})])
    assert plan.groups == [[0, 1]] and "only task" in plan.alone[2]


# -- any module through torch.func (the generic path) --------------------------------------------

class _Residual(torch.nn.Module):
    """A user's module: a residual block, dropout in two places, called in another order
    than registered, softmax output (skorch's NLLLoss path)."""

    def __init__(self, hidden=16, p=0.2):
        super().__init__()
        self.late = torch.nn.Dropout(p)
        self.inp = torch.nn.Linear(64, hidden)
        self.block = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.Tanh())
        self.early = torch.nn.Dropout(p / 2)
        self.out = torch.nn.Linear(hidden, 10)

    def forward(self, X):
        h = self.early(torch.relu(self.inp(X)))
        h = self.late(h + self.block(h))
        return torch.softmax(self.out(h), dim=-1)


class _Noisy(_Residual):
    def forward(self, X):  # randomness the engine cannot replay
        return super().forward(torch.nn.functional.dropout(X, 0.1, self.training))


class _Branchy(_Residual):
    def forward(self, X):  # control flow on the data: vmap cannot batch it
        return super().forward(X if X.mean() > 0 else -X)


@pytest.mark.parametrize("shuffle", [True, False])
def test_a_user_module_fuses_through_torch_func(digits, shuffle):
    from skorch import NeuralNetClassifier

    X, y = digits
    net = NeuralNetClassifier(_Residual, max_epochs=2, batch_size=50, train_split=None,
                              iterator_train__shuffle=shuffle, optimizer=torch.optim.Adam)
    tasks = [FusedTask({"lr": 3e-3, "module__p": 0.3}, seed=1),
             FusedTask({"lr": 1e-2, "module__p": 0.3, "optimizer__weight_decay": 1e-3},
                       seed=2, rows=np.arange(0, 430)),
             FusedTask({"lr": 1e-3, "module__p": 0.3, "max_epochs": 3}, seed=3)]
    results = FusedTrainer(net, engine="fused").fit(tasks, X, y)
    assert [r.group for r in results] == [0, 0, 0] and not any(r.error for r in results)
    for task, result in zip(tasks, results):
        alone = _alone(net, task, X, y)
        assert _max_diff(_weights(result.estimator), _weights(alone)) < 2e-6
        np.testing.assert_allclose(result.estimator.predict_proba(X), alone.predict_proba(X),
                                   atol=2e-6)
    (single,) = FusedTrainer(net, engine="fused").fit([tasks[1]], X, y)
    a, b = _weights(results[1].estimator), _weights(single.estimator)
    assert all(torch.equal(a[k], b[k]) for k in a)  # its group does not change it
    # different module arguments: one planned group, split by what the modules built
    three = [FusedTask({"module__hidden": 8}, seed=0), FusedTask({}, seed=1),
             FusedTask({}, seed=2)]
    assert FusedTrainer(net).plan(three).groups == [[0, 1, 2]]
    results = FusedTrainer(net).fit(three, X, y)
    assert [r.group for r in results] == [-1, 0, 0]
    assert "the only task of its shapes after preprocessing" in results[0].reason


def test_what_torch_func_cannot_replay_trains_alone_with_the_reason(digits):
    from skorch import NeuralNetClassifier

    X, y = digits
    net = NeuralNetClassifier(_Noisy, max_epochs=1, train_split=None)
    tasks = [FusedTask({"lr": 1e-2}, seed=1), FusedTask({"lr": 1e-3}, seed=2)]
    results = FusedTrainer(net).fit(tasks, X, y)
    assert [r.group for r in results] == [-1, -1] and not any(r.error for r in results)
    assert all("does not run under torch.func.vmap" in r.reason and "random" in r.reason
               for r in results)
    with pytest.raises(ValueError, match="task 0 cannot be fused: its module cannot be fused"):
        FusedTrainer(net, engine="fused").fit(tasks, X, y)
    gru = NeuralNetClassifier(torch.nn.GRU, module__input_size=64, module__hidden_size=4,
                              train_split=None)
    assert "layer '' (GRU): recurrent layers are not fused" in unfusible(gru)
    branchy = NeuralNetClassifier(_Branchy, max_epochs=1, train_split=None)
    (result, _) = FusedTrainer(branchy).fit(tasks, X, y)
    assert result.group == -1 and "does not run under torch.func.vmap" in result.reason
    assert result.estimator is not None  # trained alone, by its own fit


def test_groups_and_lone_tasks_take_device_slots_round_robin(digits, monkeypatch):
    """Several GPUs: each group gets its own slot (cuda:<slot mod k> through
    skhpo.nets.task_device), then each task that trains alone."""
    import skhpo.nets

    X, y = digits
    seen = []

    def record(device, task_index):
        seen.append(task_index)
        return device
    monkeypatch.setattr(skhpo.nets, "task_device", record)
    tasks = [FusedTask({"width": 16}, seed=1), FusedTask({"width": 32}, seed=2),
             FusedTask({"width": 16}, seed=3), FusedTask({"width": 32}, seed=4),
             FusedTask({"width": 8}, seed=5)]
    trainer = FusedTrainer(_net(max_epochs=1))
    plan = trainer.plan(tasks)
    groups, alone = plan.groups, plan.alone
    assert groups == [[0, 2], [1, 3]] and list(alone) == [4]
    seen.clear()
    trainer.fit(tasks, X, y)
    assert sorted(set(seen)) == [0, 1, 2]  # group 0, group 1, the lone task
    assert seen.count(0) >= 2 and seen.count(1) >= 2 and seen[-1] == 2


def test_dropout_masks_from_uniforms_are_the_bernoulli_masks(digits, monkeypatch):
    """The masks drawn as double uniforms compared with 1 - p (checked once per process) are
    bitwise those of bernoulli_: the models trained either way are identical."""
    from skhpo.fused import _noise

    X, y = digits
    tasks = [FusedTask({"dropout": 0.3}, seed=1), FusedTask({"dropout": [0.5, 0.0]}, seed=2),
             FusedTask({"dropout": 0.0}, seed=3)]
    assert _noise.uniform_is_bernoulli()  # this CPU build: the fast path
    fast = FusedTrainer(_net(), engine="fused").fit(tasks, X, y)
    monkeypatch.setattr(_noise, "uniform_is_bernoulli", lambda: False)
    slow = FusedTrainer(_net(), engine="fused").fit(tasks, X, y)
    for a, b in zip(fast, slow):
        wa, wb = _weights(a.estimator), _weights(b.estimator)
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("make", [lambda: _net(max_epochs=1),
                                  lambda: make_pipeline(StandardScaler(), _net(max_epochs=1)),
                                  lambda: TabularMLPRegressor(width=8, max_epochs=1)])
def test_the_engine_hands_back_the_fingerprint_of_the_data_each_net_saw(digits, make):
    """The key a CV fit looks its fold up by, from the group's own data: the same as computed
    from X and y through the fitted preprocessing (no second transform per fold)."""
    from dataclasses import replace

    from skhpo.nets import find_net
    from skhpo.search._fused_cv import _fold_key

    X, y = digits
    est = make()
    target = X[:, 0] if isinstance(find_net(est)[0], TabularMLPRegressor) else y
    prefix = find_net(est)[1]
    tasks = [FusedTask({prefix + "lr": lr}, seed=s, rows=rows) for lr, s, rows in
             ((1e-3, 1, np.arange(0, 400)), (1e-2, 2, np.arange(200, 600)))]
    for task, result in zip(tasks, FusedTrainer(est, engine="fused").fit(tasks, X, target)):
        assert result.group == 0 and result.data_key
        assert result.data_key == _fold_key(replace(result, data_key=""), X, target, task.rows)


def test_a_pipelines_preprocessing_is_fitted_once_per_fold_and_copied(digits, monkeypatch):
    X, y = digits
    fits = []
    original = StandardScaler.fit_transform

    def counted(self, *args, **kwargs):
        fits.append(len(args[0]))
        return original(self, *args, **kwargs)
    monkeypatch.setattr(StandardScaler, "fit_transform", counted)
    pipe = make_pipeline(StandardScaler(), _net(max_epochs=1))
    folds = [np.arange(0, 400), np.arange(200, 600)]
    tasks = [FusedTask({"tabularmlpclassifier__lr": lr}, seed=i, rows=folds[i % 2])
             for i, lr in enumerate((1e-3, 3e-3, 1e-2, 3e-2))]
    results = FusedTrainer(pipe, engine="fused").fit(tasks, X, y)
    assert fits == [400, 400]  # one fit per fold, not per task
    scalers = [r.estimator[0] for r in results]
    assert len({id(s) for s in scalers}) == 4  # each task its own fitted copy
    np.testing.assert_array_equal(scalers[0].mean_, scalers[2].mean_)
    for task, result in zip(tasks, results):  # and each still equals its own fit
        assert _max_diff(_weights(result.estimator), _weights(_alone(pipe, task, X, y))) < 2e-6


@pytest.mark.parametrize("classes", [2, 10, 32, 33, 100])
def test_the_batched_loss_is_each_models_cross_entropy(classes):
    """Few classes: the loss runs across the batch's rows (a faster kernel), many: per row;
    either way each model's loss and gradient are its own cross-entropy's (to rounding) and
    do not depend on the other models (bitwise)."""
    import torch.nn.functional as F

    from skhpo.fused._group import CLASSES_ACROSS, batched_loss

    gen = torch.Generator().manual_seed(classes)
    out = torch.randn(6, 17, classes, generator=gen, dtype=torch.float64).requires_grad_()
    y = torch.randint(0, classes, (6, 17), generator=gen)
    loss = batched_loss(out, y, classifier=True)
    grad, = torch.autograd.grad(loss.sum(), out)
    for k in range(6):
        alone = out[k].detach().requires_grad_()
        own = F.cross_entropy(alone, y[k])
        own_grad, = torch.autograd.grad(own, alone)
        torch.testing.assert_close(loss[k], own, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(grad[k], own_grad, rtol=1e-12, atol=1e-15)
    one = out[2:3].detach().requires_grad_()
    loss_one = batched_loss(one, y[2:3], classifier=True)
    assert torch.equal(loss_one[0], loss[2])
    assert torch.equal(torch.autograd.grad(loss_one.sum(), one)[0][0], grad[2])
    assert (classes <= CLASSES_ACROSS) == (classes in (2, 10, 32))


def test_seed_torch_is_torch_manual_seed():
    from skhpo.nets import seed_torch

    seed_torch(123)
    a = torch.rand(5), torch.randperm(9)
    torch.manual_seed(123)
    b = torch.rand(5), torch.randperm(9)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_chunks_do_not_change_the_family_models(digits, monkeypatch):
    import skhpo.fused._group as group

    X, y = digits
    whole = FusedTrainer(_net(), engine="fused").fit(TASKS, X, y)
    monkeypatch.setattr(group, "CHUNK_BYTES", 1)
    chunked = FusedTrainer(_net(), engine="fused").fit(TASKS, X, y)
    for a, b in zip(whole, chunked):
        wa, wb = _weights(a.estimator), _weights(b.estimator)
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_noise_drawn_ahead_on_a_second_core_is_the_same_noise(digits, monkeypatch):
    """The next step's dropout noise is drawn in a worker thread during the current step
    (where no callback draws): the models are bitwise those drawn in step."""
    from skhpo.fused import _group

    X, y = digits
    tasks = [FusedTask({"dropout": 0.3, "max_epochs": 3}, seed=1, rows=np.arange(500)),
             FusedTask({"dropout": [0.5, 0.0], "max_epochs": 3}, seed=2),
             FusedTask({"dropout": 0.2, "max_epochs": 2}, seed=3, rows=np.arange(37, 600))]
    monkeypatch.setattr(_group, "spare_core", lambda: True)
    ahead = FusedTrainer(_net(batch_size=32), engine="fused").fit(tasks, X, y)
    monkeypatch.setattr(_group, "spare_core", lambda: False)
    in_step = FusedTrainer(_net(batch_size=32), engine="fused").fit(tasks, X, y)
    for a, b in zip(ahead, in_step):
        wa, wb = _weights(a.estimator), _weights(b.estimator)
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
