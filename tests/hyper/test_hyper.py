"""skhpo.hyper: transforms, concrete dropout and surgery, look-ahead hypergradients."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import loguniform
from torch import nn

from skhpo import TabularMLPClassifier
from skhpo.hyper import Box, DropoutRates, parse_name, read_dimension
from skhpo.hyper.concrete import ConcreteDropout
from skhpo.hyper.hypergrad import apply_hyperparams, lookahead_loss, resolve_hyperparam
from skhpo.hyper.layers import replace_dropout


@pytest.mark.parametrize("box", [Box(0.0, 0.75), Box(1e-5, 1e-1, log=True),
                                 Box(0.0, math.inf, True),
                                 Box(-5.0, 10.0)])
def test_box_round_trip_and_interior(box):
    rng = np.random.default_rng(0)
    for _ in range(20):
        h = box.sample(rng)
        assert box.lo < h < box.hi
        u = box.inverse(h)
        assert float(box.forward(u)) == pytest.approx(h, rel=1e-9, abs=1e-12)
    u = torch.linspace(-30, 30, 61, dtype=torch.float64)
    h = box.forward(u)
    assert (h >= box.lo).all() and (h <= box.hi).all()


def test_box_normalize_and_clip():
    box = Box(1e-4, 1e-1, log=True)
    assert box.normalize(1e-4) == pytest.approx(0.0)
    assert box.normalize(1e-1) == pytest.approx(1.0)
    assert box.normalize(math.sqrt(1e-5)) == pytest.approx(0.5)
    assert box.lo < box.clip(-1.0) < box.lo + 1e-6
    assert Box(0, 1).clip(2.0) == pytest.approx(1 - 1e-6)


@pytest.mark.parametrize("spec, message", [
    ((0.5, 0.1), "empty or inverted"), ((1, float("nan")), "empty or inverted"),
    ("0.1", "expected a"), ((0, "a"), "must be numbers"),
])
def test_a_bad_range_is_rejected(spec, message):
    with pytest.raises(ValueError, match=message):
        read_dimension("param_bounds", parse_name("x"), spec)


def test_a_loguniform_is_a_log_box():
    box = read_dimension("param_bounds", parse_name("lr"), loguniform(1e-4, 1e-1)).box
    assert box.log and box.lo == pytest.approx(1e-4) and box.hi == pytest.approx(1e-1)


def test_concrete_dropout_eval_identity_and_mean():
    layer = ConcreteDropout(0.3)
    x = torch.ones(200_000)
    layer.eval()
    assert torch.equal(layer(x), x)
    layer.train()
    out = layer(x)
    assert float(out.mean()) == pytest.approx(1.0, abs=0.01)  # unbiased like nn.Dropout
    # z > 1/2 (out < 0.5 / (1 - p)) exactly when v > 1 - p: a Bernoulli(p) drop
    frac_dropped = float((out < 0.5 / 0.7).float().mean())
    assert frac_dropped == pytest.approx(0.3, abs=0.03)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        ConcreteDropout(1.0)


def test_replace_dropout_keeps_rates_and_forward():
    module = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.2), nn.Sequential(nn.Dropout(0.4)))
    layers = replace_dropout(module)
    assert sorted(layers) == ["1", "2.0"]
    assert [float(m.p) for m in layers.values()] == pytest.approx([0.2, 0.4])
    assert replace_dropout(module).keys() == layers.keys()  # idempotent
    module.eval()
    x = torch.randn(5, 3)
    assert torch.equal(module(x), module[0](x))


def _mlp(dtype=torch.float64, **kw):
    X = np.random.default_rng(0).normal(size=(64, 5)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    net = TabularMLPClassifier(width=8, depth=2, dropout=0.2, max_epochs=2, lr=0.05,
                               random_state=0, **kw).fit(X, y)
    replace_dropout(net.module_)
    net.module_.to(dtype)
    Xt = torch.as_tensor(X, dtype=dtype)
    yt = torch.as_tensor(y)
    return net, (Xt[:32], yt[:32]), (Xt[32:], yt[32:])


def _loss_fn(net):
    return lambda y_pred, y: net.get_loss(y_pred, y, training=False)


def current_values(net, hypers):
    """``{name: float}``: the values the net trains with now (read back to check
    ``apply_hyperparams``)."""
    group = net.optimizer_.param_groups[0]
    out = {}
    for hp in hypers:
        if hp.kind == "lr":
            out[hp.name] = float(group["lr"])
        elif hp.kind == "weight_decay":
            out[hp.name] = float(group.get("weight_decay", 0.0))
        elif hp.kind in ("l2", "l1"):
            out[hp.name] = net.penalty_coefficients()[hp.kind][hp.layers[0]]
        else:
            out[hp.name] = float(net.module_.get_buffer(hp.targets[0]))
    return out


def hypergradient(module, loss_fn, hypers, values, train_batch, val_batch, *, lr,
                  weight_decay=0.0):
    """``{name: d L_val(theta+) / d h}`` at the float ``values`` (``{name: float}``)."""
    dtype = next(module.parameters()).dtype
    leaves = {k: torch.tensor(float(v), dtype=dtype, requires_grad=True)
              for k, v in values.items()}
    loss = lookahead_loss(module, loss_fn, hypers, leaves, (train_batch, val_batch), lr=lr,
                          weight_decay=weight_decay)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return {k: 0.0 if g is None else float(g) for k, g in zip(leaves, grads)}



@pytest.mark.parametrize("bare", ["lr", "optimizer__weight_decay", "l2", "l1[1]", "dropout",
                                  "dropout[layers.5]"])
def test_hypergradient_matches_central_differences(bare):
    net, tr, va = _mlp()
    box = Box(0.0, 0.9) if "dropout" in bare else Box(1e-6, 1.0, log=True)
    hp = resolve_hyperparam(net, parse_name(bare), box)
    values = {bare: 0.3 if hp.kind == "dropout" else 0.01}
    loss_fn = _loss_fn(net)

    def f(v):
        torch.manual_seed(7)  # the same concrete-dropout noise in every evaluation
        value = {bare: torch.tensor(v, dtype=torch.float64)}
        return lookahead_loss(net.module_, loss_fn, [hp], value, (tr, va), lr=0.1).item()
    torch.manual_seed(7)
    grad = hypergradient(net.module_, loss_fn, [hp], values, tr, va, lr=0.1)[bare]
    step = 1e-5
    fd = (f(values[bare] + step) - f(values[bare] - step)) / (2 * step)
    assert grad == pytest.approx(fd, rel=1e-5, abs=1e-9)
    assert abs(grad) > 1e-8  # a real dependence, not a zero on both sides


def test_lr_and_weight_decay_closed_forms():
    net, tr, va = _mlp()
    module, loss_fn = net.module_, _loss_fn(net)
    hps = [resolve_hyperparam(net, parse_name("lr"), Box(1e-4, 1, True)),
           resolve_hyperparam(net, parse_name("optimizer__weight_decay"),
                              Box(1e-6, 1, True))]
    eta, wd = 0.05, 1e-3
    module.eval()  # no dropout: the training gradient is deterministic
    for layer in module.modules():
        if isinstance(layer, ConcreteDropout):
            layer.p.fill_(0.0)
    grads = hypergradient(module, loss_fn, hps, {"lr": eta, "optimizer__weight_decay": wd}, tr, va,
                          lr=eta)
    params = dict(module.named_parameters())
    g = torch.autograd.grad(loss_fn(module(tr[0]), tr[1]), list(params.values()))
    stepped = {n: p.detach() - eta * (gi + wd * p.detach())
               for (n, p), gi in zip(params.items(), g)}
    stepped = {n: t.requires_grad_(True) for n, t in stepped.items()}
    val = loss_fn(torch.func.functional_call(module, stepped, (va[0],)), va[1])
    u = torch.autograd.grad(val, list(stepped.values()))
    d_eta = -sum(float((ui * (gi + wd * p.detach())).sum())
                 for ui, gi, p in zip(u, g, params.values()))
    d_wd = -eta * sum(float((ui * p.detach()).sum()) for ui, p in zip(u, params.values()))
    assert grads["lr"] == pytest.approx(d_eta, rel=1e-8)
    assert grads["optimizer__weight_decay"] == pytest.approx(d_wd, rel=1e-8)


def test_apply_and_read_values():
    net, _, _ = _mlp(dtype=torch.float32)
    hps = [resolve_hyperparam(net, parse_name(n), b) for n, b in [
        ("lr", Box(1e-4, 1, True)), ("optimizer__weight_decay", Box(1e-6, 1, True)),
        ("l2[0]", Box(1e-6, 1, True)), ("dropout[layers.2]", Box(0, 0.9))]]
    values = {"lr": 0.02, "optimizer__weight_decay": 1e-3, "l2[0]": 0.05,
              "dropout[layers.2]": 0.6}
    apply_hyperparams(net, hps, values)
    assert current_values(net, hps) == pytest.approx(values)
    assert net.penalty_coefficients()["l2"] == pytest.approx([0.05, 0.0, 0.0])
    assert float(net.module_.layers[5].p) == pytest.approx(0.2)  # the other layer is untouched


@pytest.mark.parametrize("bare, box, message", [
    ("dropout[layers.1]", Box(0, 0.5), "no dropout layer 'layers.1'"),
    ("dropout", Box(0.2, 1.0), r"\[0, 1\)"),
    ("l2[7]", Box(1e-6, 1, True), "3 linear"),
    ("module__width", Box(8, 64), "not a hyper-parameter"),
])
def test_resolve_rejects(bare, box, message):
    net, _, _ = _mlp(dtype=torch.float32)
    with pytest.raises(ValueError, match=message):
        resolve_hyperparam(net, parse_name(bare), box)


def test_dropout_rates_callback_sets_plain_layers():
    X = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    net = TabularMLPClassifier(width=8, dropout=0.1, max_epochs=1,
                               callbacks=[("rates", DropoutRates({"layers.5": 0.45}))]).fit(X, y)
    assert net.module_.layers[2].p == pytest.approx(0.1)
    assert net.module_.layers[5].p == pytest.approx(0.45)
