"""CuttingPlaneTuner (CPMLHO / Delta-STN): hyper layers, the cut, the loop, the estimator."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from skorch import NeuralNetClassifier
from torch import nn

from skhpo import CuttingPlaneTuner, TabularMLPClassifier
from skhpo.hyper import Box
from skhpo.hyper.layers import convert_module, general_state_dict
from skhpo.hyper.stn import HyperDropout, HyperLayer, entropy
from skhpo.search.cutting_plane.trainer import HyperParams, cut_penalty

# -- layers and surgery ---------------------------------------------------------------------------

def _cnn():
    return nn.Sequential(nn.Dropout(0.1), nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                         nn.Dropout2d(0.2), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


class _ImageModule(nn.Module):
    """_cnn() on flat 64-feature rows."""

    def __init__(self):
        super().__init__()
        self.body = _cnn()

    def forward(self, X):
        return self.body(X.reshape(-1, 1, 8, 8))


def _image_net():
    return NeuralNetClassifier(_ImageModule, criterion=nn.CrossEntropyLoss, max_epochs=3,
                               lr=0.05, train_split=None, batch_size=64)


def test_hyper_layers_equal_plain_layers_when_the_hyper_term_is_zero():
    torch.manual_seed(0)
    module = _cnn()
    plain = copy.deepcopy(module).eval()
    context = convert_module(module, ["0", "3"], n_hyper=2)
    module.eval()
    x = torch.randn(6, 1, 8, 8)
    assert isinstance(module[1], HyperLayer) and isinstance(module[5], HyperLayer)
    assert isinstance(module[3], HyperDropout) and module[3].channel
    torch.testing.assert_close(module(x), plain(x))           # h_net = None
    context.h_net = torch.randn(6, 2)
    torch.testing.assert_close(module(x), plain(x))           # h1 = 0
    with torch.no_grad():
        for layer in (module[1], module[5]):
            layer.h1.normal_()
    context.h_net = torch.zeros(6, 2)
    torch.testing.assert_close(module(x), plain(x))           # h_net = 0
    context.h_net = torch.randn(6, 2)
    assert not torch.allclose(module(x), plain(x))            # a real response


def test_hyper_linear_is_the_per_example_weight_of_eq3():
    torch.manual_seed(1)
    lin = nn.Linear(3, 4)
    module = nn.Sequential(lin)
    context = convert_module(module, [], n_hyper=2)
    layer = module[0]
    with torch.no_grad():
        layer.h1.normal_()
    x, h = torch.randn(5, 3), torch.randn(5, 2)
    context.h_net = h
    out = module(x)
    s = h @ layer.h1.T
    for b in range(5):
        W = layer.base.weight + torch.diag(s[b, :4]) @ layer.response.weight
        bias = layer.base.bias + s[b, 4:] * layer.response.bias
        torch.testing.assert_close(out[b], W @ x[b] + bias)


def test_general_state_dict_loads_into_the_original_module():
    module = _cnn()
    plain = copy.deepcopy(module)
    convert_module(module, ["0"], 1)
    with torch.no_grad():
        module[5].base.weight.add_(1.0)
    plain.load_state_dict(general_state_dict(module))
    torch.testing.assert_close(plain[5].weight, module[5].base.weight)


def test_hyper_dropout_uses_per_example_rates():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(50, 50), nn.Dropout(0.5))
    context = convert_module(module, ["1"], 1)
    module.train()
    context.rates = torch.tensor([[0.0], [0.9]])
    out = module[1](torch.ones(2, 20000))
    assert torch.equal(out[0], torch.ones(20000))                  # rate 0 keeps everything
    assert float((out[1] == 0).float().mean()) == pytest.approx(0.9, abs=0.01)
    assert float(out[1].mean()) == pytest.approx(1.0, abs=0.05)    # rescaled by 1 / (1 - p)
    module.eval()
    assert torch.equal(module[1](torch.ones(2, 5)), torch.ones(2, 5))


def test_convert_rejects():
    with pytest.raises(ValueError, match="no nn.Linear or nn.Conv2d"):
        convert_module(nn.Sequential(nn.ReLU(), nn.Dropout()), ["1"], 1)
    with pytest.raises(ValueError, match="no dropout layer '0'"):
        convert_module(nn.Sequential(nn.Linear(2, 2), nn.Dropout()), ["0"], 1)


@pytest.mark.parametrize("box", [Box(0.0, 0.95), Box(2.0, 24.0), Box(0.0, 5.0)])
def test_transform_round_trip(box):
    hp = HyperParams([box], [box.lo + 0.3 * (box.hi - box.lo)])
    assert hp.values()[0].item() == pytest.approx(box.lo + 0.3 * (box.hi - box.lo), rel=1e-5)
    assert hp.sigma()[0].item() == pytest.approx(1.0)


# -- the cut --------------------------------------------------------------------------------------

def test_cut_value_and_gradient():
    w_e = torch.tensor([1.0, -1.0, 0.5, 0.2])
    w_h2 = torch.tensor([0.0, 0.0, 0.9, 0.2], requires_grad=True)
    signs = [torch.sign(w_e - w_h2.detach())]  # the cut at the anchor: [+1, -1, -1, 0]
    mu, eps2 = 0.1, 1e-8
    value = cut_penalty([(w_e, w_h2)], signs, mu, eps2)
    # phi = |D| - eps2 at the anchor, summed over the constrained elements
    assert value.item() == pytest.approx(mu * ((1 - eps2) + (1 - eps2) + (0.4 - eps2)), rel=1e-6)
    (grad,) = torch.autograd.grad(value, [w_h2])
    torch.testing.assert_close(grad, -mu * torch.tensor([1.0, -1.0, -1.0, 0.0]))
    # once an element is on the feasible side the hinge gives it no gradient
    moved = torch.tensor([1.5, -1.5, 0.4, 0.2], requires_grad=True)
    (grad,) = torch.autograd.grad(cut_penalty([(w_e, moved)], signs, mu, eps2), [moved])
    torch.testing.assert_close(grad, torch.tensor([0.0, 0.0, 0.0, 0.0]))
    (grad,) = torch.autograd.grad(cut_penalty([(w_e, moved)], signs, mu, eps2, "linear"), [moved])
    torch.testing.assert_close(grad, -mu * torch.tensor([1.0, -1.0, -1.0, 0.0]))


def test_cut_memory_all_is_an_l1_penalty_once_both_signs_were_seen():
    w_e = torch.tensor([1.0, -1.0])
    w_h2 = torch.tensor([0.5, 0.5], requires_grad=True)
    both = [(torch.tensor([True, True]), torch.tensor([True, True]))]
    value = cut_penalty([(w_e, w_h2)], both, 1.0, 0.0)
    assert value.item() == pytest.approx(0.5 + 1.5)


def test_entropy_grows_with_sigma():
    s = torch.tensor([1.0, 2.0], requires_grad=True)
    (grad,) = torch.autograd.grad(entropy(s), [s])
    torch.testing.assert_close(grad, 1 / s.detach())


# -- the estimator ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X.astype(np.float32), y


def _mlp(**kw):
    kw = {"width": 64, "input_dropout": 0.05, "dropout": 0.05, "lr": 1e-2, "max_epochs": 8, **kw}
    return make_pipeline(StandardScaler(), TabularMLPClassifier(**kw))


@pytest.fixture(scope="module")
def fitted(digits):
    X, y = digits
    return CuttingPlaneTuner(_mlp(), warmup_epochs=2, random_state=0).fit(X[:1200], y[:1200])


def test_digits_smoke_rates_in_box_and_accuracy(fitted, digits):
    X, y = digits
    t = fitted
    hist = pd.DataFrame(t.history_)
    names = ["tabularmlpclassifier__dropout[layers.0]", "tabularmlpclassifier__dropout[layers.3]",
             "tabularmlpclassifier__dropout[layers.6]"]
    assert list(t.best_params_) == names
    for n in names:
        assert ((hist[n] > 0) & (hist[n] < 0.95)).all()
    assert len(hist) == 8 and t.n_epochs_ == 8
    assert hist["valid_acc"].iloc[-1] > 0.9
    # general weights = estimator
    assert t.best_score_ == pytest.approx(hist["valid_acc"].iloc[-1])
    assert hist["hyper_steps"].iloc[1] == 0 and hist["hyper_steps"].iloc[-1] > 0
    moved = [abs(t.hyper_history_[n][-1] - 0.05) for n in names]
    assert max(moved) > 1e-3
    assert t.score(X[1200:], y[1200:]) > 0.85
    assert isinstance(t.best_estimator_[-1].module_.layers[0], nn.Dropout)
    assert t.best_estimator_[-1].module_.layers[0].p == pytest.approx(t.best_params_[names[0]])


def test_cv_results_schema(fitted, digits):
    X, y = digits
    grid = GridSearchCV(_mlp(max_epochs=1), {"tabularmlpclassifier__lr": [1e-2]},
                        cv=2).fit(X[:300], y[:300])
    structural = {k for k in grid.cv_results_ if not k.startswith("param") and "split1" not in k}
    assert structural <= set(fitted.cv_results_)
    assert fitted.cv_results_["rank_test_score"].tolist() == [1]


def test_cut_shrinks_the_gap(digits):
    X, y = digits
    kw = dict(warmup_epochs=1, theta=None, random_state=0)
    gaps = {}
    for mu in (0.0, 1e-1):
        t = CuttingPlaneTuner(_mlp(max_epochs=6), mu=mu, **kw).fit(X[:900], y[:900])
        gaps[mu] = t.history_["gap"][-1]
    assert gaps[1e-1] < 0.8 * gaps[0.0]


def test_theta_none_draws_no_training_term(digits, monkeypatch):
    """The hyper objective: theta=None -> L_val only (Delta-STN: no training batch is drawn
    for it); a number theta -> L_train + theta L_val, one training batch per validation
    batch."""
    X, y = digits
    calls = {}
    import skhpo.search.cutting_plane.trainer as cp

    class Counting(cp._Batches):
        def __init__(self, n, batch):
            super().__init__(n, batch)
            self.key = "train" if n > 400 else "valid"
            calls[self.key] = 0

        def __next__(self):
            calls[self.key] += 1
            return super().__next__()
    monkeypatch.setattr(cp, "_Batches", Counting)
    for theta in (None, 0.0, 1.0):
        calls.clear()
        CuttingPlaneTuner(_mlp(max_epochs=2), warmup_epochs=1, theta=theta,
                          random_state=0).fit(X[:600], y[:600])
        assert calls["valid"] > 0
        assert calls.get("train", 0) == (0 if theta is None else calls["valid"])


def test_mu_zero_and_theta_none_ignore_cut_settings(digits):
    """With mu = 0 the cut never enters: cut_mode and cut_memory change nothing."""
    X, y = digits
    kw = dict(warmup_epochs=1, theta=None, mu=0.0, random_state=3)
    a = CuttingPlaneTuner(_mlp(max_epochs=3), cut_mode="hinge", **kw).fit(X[:500], y[:500])
    b = CuttingPlaneTuner(_mlp(max_epochs=3), cut_mode="linear", cut_memory="all",
                          **kw).fit(X[:500], y[:500])
    assert a.best_params_ == b.best_params_
    assert a.history_["valid_loss"] == b.history_["valid_loss"]


def test_plain_skorch_cnn_and_refit(digits):
    X, y = digits
    net = _image_net()
    t = CuttingPlaneTuner(net, {"dropout[body.3]": (0.0, 0.9, 0.5),
                                "input_noise": (0.0, 0.5, 0.1)},
                          warmup_epochs=1, random_state=0).fit(X[:600] / 16, y[:600])
    assert list(t.best_params_) == ["dropout[body.3]", "input_noise"]
    assert 0 < t.best_params_["dropout[body.3]"] < 0.9
    assert t.best_estimator_.module_.body[3].p == pytest.approx(t.best_params_["dropout[body.3]"])
    assert not hasattr(net, "module_")
    with pytest.raises(ValueError, match="input_noise"):
        CuttingPlaneTuner(net, {"input_noise": (0.0, 0.5)}, warmup_epochs=1, refit=True,
                          random_state=0).fit(X[:300] / 16, y[:300])
    r = CuttingPlaneTuner(net, {"dropout[body.3]": (0.0, 0.9)}, warmup_epochs=1, refit=True,
                          random_state=0).fit(X[:300] / 16, y[:300])
    assert r.best_estimator_.module_.body[3].p == pytest.approx(r.best_params_["dropout[body.3]"])
    assert r.n_epochs_ == 6


def test_divergence_names_the_epoch(digits):
    X, y = digits
    net = _mlp(lr=1e6, max_epochs=3, optimizer=torch.optim.SGD)
    with pytest.raises(FloatingPointError, match="at epoch 1"):
        CuttingPlaneTuner(net, warmup_epochs=1, random_state=0).fit(X[:300], y[:300])


@pytest.mark.parametrize("space, kw, message", [
    ({"tabularmlpclassifier__dropout[layers.1]": (0, 0.5)}, {}, "no dropout layer 'layers.1'"),
    ({"tabularmlpclassifier__dropout[layers.0]": (0, 1.0)}, {}, r"\[0, 1\)"),
    ({"tabularmlpclassifier__dropout[layers.0]": (0.5, 0.1)}, {}, "empty or inverted"),
    ({"tabularmlpclassifier__dropout[layers.0]": (0.0, 0.5, 0.7)}, {}, "outside the box"),
    ({"tabularmlpclassifier__lr": (0.0, 0.5)}, {}, "not tunable"),
    ({}, {}, "param_bounds is empty"),
    (None, {"mu": -1.0}, "mu"),
    (None, {"theta": -0.5}, "theta"),
    (None, {"refit": "tuned"}, "refit"),
])
def test_bad_input(digits, space, kw, message):
    X, y = digits
    t = CuttingPlaneTuner(_mlp(), space, **kw)
    with pytest.raises(ValueError, match=message):
        t.fit(X[:100], y[:100])
    assert not hasattr(t, "history_")


def test_module_without_dropout_needs_names(digits):
    X, y = digits
    net = NeuralNetClassifier(nn.Sequential(nn.Linear(64, 10)), criterion=nn.CrossEntropyLoss,
                              max_epochs=1, train_split=None)
    with pytest.raises(ValueError, match="has none"):
        CuttingPlaneTuner(net).fit(X[:50], y[:50])


def test_one_network_so_no_engine_and_no_n_jobs(digits):
    """CPMLHO trains one self-tuning network: there is nothing to train together or in
    parallel, so the tuner takes neither ``engine`` nor ``n_jobs`` and says why it trained
    alone."""
    X, y = digits
    params = CuttingPlaneTuner(_mlp()).get_params()
    assert "engine" not in params and "n_jobs" not in params
    with pytest.raises(TypeError, match="engine"):
        CuttingPlaneTuner(_mlp(), engine="auto")
    run = CuttingPlaneTuner(_mlp(max_epochs=3), warmup_epochs=1,
                            random_state=0).fit(X[:300], y[:300])
    assert run.engine_ == "sequential" and "nothing to stack" in run.engine_reason_


def test_clone():
    t = CuttingPlaneTuner(_mlp(), theta=None, mu=0.0)
    assert clone(t).get_params()["theta"] is None


def test_pickle_round_trip(fitted, digits):
    import pickle
    X, _ = digits
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.predict(X[:20]), fitted.predict(X[:20]))


@pytest.mark.slow
@parametrize_with_checks([CuttingPlaneTuner(TabularMLPClassifier(max_epochs=10, width=16,
                                                                 dropout=0.1, lr=1e-2),
                                            warmup_epochs=1, train_steps=1, random_state=0)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_plot_schedules_draws_the_hyper_steps(fitted):
    import matplotlib
    matplotlib.use("Agg")
    from skhpo.plotting import plot_schedules

    fig = plot_schedules(fitted)
    assert len(fig.axes) == 3
    name = list(fitted.best_params_)[1]
    np.testing.assert_allclose(fig.axes[1].lines[0].get_ydata(), fitted.hyper_history_[name])


def test_cutout_zeroes_clipped_squares_per_example():
    from skhpo.hyper.stn import cutout
    torch.manual_seed(0)
    x = torch.ones(3, 64)
    out = cutout(x, torch.tensor([0.0, 1.0, 2.9]), torch.tensor([4.0, 4.7, 3.0]), (1, 8, 8))
    assert torch.equal(out[0], x[0])                      # no holes
    zeros = (out[1] == 0).reshape(8, 8)
    rows, cols = zeros.any(1).nonzero().flatten(), zeros.any(0).nonzero().flatten()
    assert len(rows) <= 4 and len(cols) <= 4               # one square of side floor(4.7) = 4
    assert int(zeros.sum()) == len(rows) * len(cols)        # a (clipped) rectangle
    assert 0 < int((out[2] == 0).sum()) <= 2 * 9            # two holes of side 3
    assert set(out.unique().tolist()) <= {0.0, 1.0}


def test_cutout_and_noise_tuned_on_images(digits):
    X, y = digits
    net = _image_net()
    spec = {"cutout_holes": (0.0, 3.0, 1.0), "cutout_length": (1.0, 6.0, 3.0),
            "dropout[body.3]": (0.0, 0.9)}
    with pytest.raises(ValueError, match="image_shape"):
        CuttingPlaneTuner(net, spec).fit(X[:100] / 16, y[:100])
    with pytest.raises(ValueError, match="both cutout_holes and cutout_length"):
        CuttingPlaneTuner(net, {"cutout_holes": (0.0, 3.0)},
                          image_shape=(1, 8, 8)).fit(X[:100], y[:100])
    with pytest.raises(ValueError, match="does not match"):
        CuttingPlaneTuner(net, spec, image_shape=(1, 4, 4)).fit(X[:100], y[:100])
    t = CuttingPlaneTuner(net, spec, image_shape=(8, 8), warmup_epochs=1, train_steps=2,
                          random_state=0).fit(X[:600] / 16, y[:600])
    assert list(t.best_params_) == ["dropout[body.3]", "cutout_holes", "cutout_length"]
    assert t.image_shape_ == (1, 8, 8)
    for name in ("cutout_holes", "cutout_length"):
        assert t.applied_params_[name] == int(np.floor(t.best_params_[name]))
        assert t.hyper_history_[name][-1] != spec[name][2]  # it moved
    assert t.applied_params_["dropout[body.3]"] == t.best_params_["dropout[body.3]"]
    assert t.best_score_ > 0.5


@pytest.mark.slow
def test_the_sensitivity_protocol_with_the_reference_weight_optimiser():
    """``skhpo cpmlho sensitivity --weights reference``: the weights train with the Delta-STN
    code's SGD (lr 0.01, momentum 0.9); dropout0 starts where asked and moves."""
    from skhpo.bench.cutting_plane_protocol import _tuner, run_sensitivity

    net = _tuner("mlp", "cpmlho", 0, 2, weights="reference").estimator[-1]
    assert net.optimizer is torch.optim.SGD and net.lr == 0.01
    assert net.get_params()["optimizer__momentum"] == 0.9
    (traj,) = run_sensitivity(starts=(0.5,), epochs=7, methods=("cpmlho",),
                              weights="reference").values()
    assert traj[0] == 0.5 and len(traj) > 2 and traj[-1] != 0.5
