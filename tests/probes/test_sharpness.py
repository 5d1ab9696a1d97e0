import math

import numpy as np
import pytest
import torch
from skorch import NeuralNetClassifier
from torch import nn

from skhpo.probes.sharpness import aggregate, batch_sharpness, final_linear, sharpness_bound


class TwoLayer(nn.Module):
    def __init__(self, softmax=False):
        super().__init__()
        self.hidden = nn.Linear(3, 4)
        self.out = nn.Linear(4, 2)
        self.softmax = softmax

    def forward(self, X):
        z = self.out(torch.relu(self.hidden(X)))
        return torch.softmax(z, -1) if self.softmax else z


def known_net(softmax=False, batch_size=64, **kwargs):
    net = NeuralNetClassifier(TwoLayer, module__softmax=softmax, batch_size=batch_size,
                              criterion=nn.CrossEntropyLoss, verbose=0, **kwargs).initialize()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.module_.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return net


def manual(net, X, batch, variant):
    W1 = net.module_.hidden.weight.detach().double().numpy()
    b1 = net.module_.hidden.bias.detach().double().numpy()
    W2 = net.module_.out.weight.detach().double().numpy()
    b2 = net.module_.out.bias.detach().double().numpy()
    out = []
    for i in range(0, len(X), batch):
        A = np.maximum(X[i:i + batch] @ W1.T + b1, 0)
        Z = A @ W2.T + b2
        P = np.exp(Z - Z.max(1, keepdims=True))
        P /= P.sum(1, keepdims=True)
        nA, nP, nW = np.linalg.norm(A), np.linalg.norm(P), np.linalg.norm(W2)
        out.append({"penultimate": nA / nW, "output": nP / nW, "product": nA * nP / nW}[variant])
    return np.array(out)


@pytest.mark.parametrize("variant", ["penultimate", "output", "product"])
@pytest.mark.parametrize("softmax", [False, True])
def test_matches_hand_forward_pass_and_batch_walk(variant, softmax):
    X = np.random.default_rng(0).normal(size=(130, 3)).astype(np.float32)
    net = known_net(softmax=softmax, batch_size=64)
    values = batch_sharpness(net, X, variant=variant)
    expected = manual(net, X.astype(np.float64), 64, variant)
    assert len(values) == 3  # 64, 64 and the last partial batch of 2, in data order
    np.testing.assert_allclose(values, expected, rtol=1e-5)
    S, per_batch = sharpness_bound(net, X, variant=variant)
    assert S == pytest.approx(expected.max(), rel=1e-5)


def test_weight_norm_is_the_final_layer_only():
    X = np.random.default_rng(1).normal(size=(10, 3)).astype(np.float32)
    net = known_net()
    before = batch_sharpness(net, X)
    with torch.no_grad():
        net.module_.out.weight.mul_(2.0)
        net.module_.out.bias.zero_()
    np.testing.assert_allclose(batch_sharpness(net, X), before / 2, rtol=1e-5)


def test_frobenius_grows_with_batch_size_rms_does_not():
    # identical rows: every batch has the same per-row activations
    X = np.tile(np.array([[0.5, -1.0, 2.0]], dtype=np.float32), (64, 1))
    net = known_net()
    s16 = batch_sharpness(net, X, batch_size=16).max()
    s64 = batch_sharpness(net, X, batch_size=64).max()
    assert s64 / s16 == pytest.approx(2.0, rel=1e-5)  # sqrt(64 / 16)
    r16 = batch_sharpness(net, X, batch_size=16, batch_norm="rms").max()
    r64 = batch_sharpness(net, X, batch_size=64, batch_norm="rms").max()
    assert r16 == pytest.approx(r64, rel=1e-5)


def test_uses_the_nets_training_batch_size():
    X = np.random.default_rng(2).normal(size=(50, 3)).astype(np.float32)
    assert len(batch_sharpness(known_net(batch_size=20), X)) == 3
    assert len(batch_sharpness(known_net(batch_size=20, iterator_train__batch_size=7), X)) == 8


def test_aggregate_skips_non_finite():
    assert aggregate([1.0, math.nan, 3.0, math.inf]) == 3.0
    assert aggregate([1.0, math.nan, 3.0], "min") == 1.0
    assert aggregate([1.0, 3.0], "mean") == 2.0
    assert aggregate([math.nan, -math.inf]) == -math.inf
    with pytest.raises(ValueError, match="aggregate"):
        aggregate([1.0], "median")


class NoLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 3)

    def forward(self, X):
        return self.conv(X.unsqueeze(1)).mean(-1)


class LinearThenPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 8)

    def forward(self, X):
        return self.lin(X).reshape(len(X), 2, 4).mean(-1)


@pytest.mark.parametrize("module, match", [(NoLinear, "has no nn.Linear"),
                                           (LinearThenPool, "does not produce")])
def test_final_linear_errors(module, match):
    net = NeuralNetClassifier(module, criterion=nn.CrossEntropyLoss).initialize()
    X = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=match):
        final_linear(net, X)


def test_final_linear_is_found_by_execution_order():
    class Reordered(nn.Module):  # head registered first, used last
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(5, 2)
            self.body = nn.Linear(3, 5)

        def forward(self, X):
            return self.head(self.body(X))

    net = NeuralNetClassifier(Reordered, criterion=nn.CrossEntropyLoss).initialize()
    assert final_linear(net, torch.zeros(2, 3)) is net.module_.head
