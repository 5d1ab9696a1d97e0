import numpy as np
import pytest
import torch
from torch import nn

from skhpo.probes.stable_rank import (
    evbmf,
    knowledge_gain,
    layer_matrices,
    tau_bar,
    unfold,
    z_of_epoch,
)


def diagonal(L, M, values):
    Y = np.zeros((L, M))
    Y[range(len(values)), range(len(values))] = values
    return Y


# reference cases: (L, M, singular values) -> K, sigma^2, threshold, d
VECTORS = [
    (5, 20, [10, 5, 1, 0.9, 0.8], 2, 0.04925, 1.6325, [9.8766, 4.7517]),
    (5, 20, [3, 1.2, 1.1, 1.0, 0.9], 1, 0.06012, 1.8035, [2.4829]),
    (10, 40, [20, 8, 3, 2.1, 2.0, 1.9, 1.8, 1.7, 1.6, 1.5], 2, 0.10683, 3.4002,
     [19.7323, 7.3226]),
]


@pytest.mark.parametrize("L, M, values, rank, sigma2, threshold, d", VECTORS)
def test_evbmf_reproduces_the_spec_vectors(L, M, values, rank, sigma2, threshold, d):
    res = evbmf(diagonal(L, M, values))
    assert res.rank == rank
    assert res.sigma2 == pytest.approx(sigma2, rel=0.01)
    assert res.threshold == pytest.approx(threshold, rel=0.01)
    np.testing.assert_allclose(res.d, d, rtol=0.01)


@pytest.mark.parametrize("L, M, values, rank, sigma2, threshold, d", VECTORS)
def test_evbmf_is_invariant_to_scale_and_transposition(L, M, values, rank, sigma2, threshold,
                                                       d):
    Y = diagonal(L, M, values)
    for c in (1e-3, 7.0, 1e3):
        res = evbmf(c * Y.T)
        assert res.rank == rank
        assert res.sigma2 == pytest.approx(c * c * sigma2, rel=0.01)


def test_noise_has_rank_zero_and_its_variance_is_recovered():
    rng = np.random.default_rng(0)
    for shape in ((64, 576), (128, 1152)):
        res = evbmf(rng.uniform(-0.05, 0.05, shape))
        assert res.rank == 0
        assert res.sigma2 == pytest.approx(0.1 ** 2 / 12, rel=0.05)


def test_fresh_layers_have_rank_zero_and_rank_rises_with_signal():
    torch.manual_seed(0)
    for layer in (nn.Conv2d(64, 128, 3), nn.Linear(784, 1200), nn.Linear(64, 128)):
        assert [evbmf(Y).rank for _, Y in unfold(layer.weight)] == [0] * len(
            unfold(layer.weight))
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 0.1, (64, 576))
    U, _ = np.linalg.qr(rng.normal(size=(64, 3)))
    V, _ = np.linalg.qr(rng.normal(size=(576, 3)))
    ranks = [evbmf(noise + U @ np.diag(s) @ V.T).rank
             for s in ([1, 1, 1], [6, 5, 1], [8, 7, 6])]
    assert ranks == [0, 2, 3]


def test_edge_cases():
    assert evbmf(np.zeros((4, 6))).rank == 0
    with pytest.raises(FloatingPointError):
        evbmf(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="needs a matrix"):
        evbmf(np.zeros(3))
    assert evbmf(np.ones((1, 5))).rank in (0, 1)  # min(L, M) = 1 works
    # the exact tau_bar is the approximation's root to within the stated ratios
    assert tau_bar(1.0, exact=True) == pytest.approx(tau_bar(1.0), rel=1e-3)
    assert tau_bar(0.1, exact=True) / tau_bar(0.1) == pytest.approx(1.035, abs=2e-3)


def test_unfolding_shapes():
    (m3, Y3), (m4, Y4) = unfold(nn.Conv2d(3, 16, 5).weight)
    assert (m3, tuple(Y3.shape), m4, tuple(Y4.shape)) == ("mode3", (3, 400), "mode4", (16, 75))
    assert [tuple(Y.shape) for _, Y in unfold(nn.Linear(10, 4).weight)] == [(4, 10)]
    with pytest.raises(ValueError, match="only conv kernels"):
        unfold(torch.zeros(3))


def test_layer_selection():
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                        nn.Linear(16, 3))
    names = [n for n, _, _ in layer_matrices(mlp, exclude=("4",))]
    assert names == ["0", "2"]
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 36, 10))
    assert [(n, m) for n, m, _ in layer_matrices(cnn, exclude=("2",))] == [("0", "mode3"),
                                                                           ("0", "mode4")]
    assert len(layer_matrices(cnn, include_linear=True)) == 3
    with pytest.raises(ValueError, match="no layer the stable-rank metric can read"):
        layer_matrices(nn.Sequential(nn.Linear(4, 3)), exclude=("0",))


def test_z_counts_empty_layers_and_reuses_the_last_rank_on_failure():
    rng = np.random.default_rng(0)
    U, _ = np.linalg.qr(rng.normal(size=(32, 2)))
    V, _ = np.linalg.qr(rng.normal(size=(64, 2)))
    structured = torch.tensor(rng.normal(0, 0.01, (32, 64)) + U @ np.diag([5, 4]) @ V.T)
    noise = torch.tensor(rng.normal(0, 0.01, (32, 64)))
    z, records = z_of_epoch([("a", "linear", structured), ("b", "linear", noise)])
    assert z == 0.5 and [r["rank"] for r in records] == [2, 0]
    assert records[0]["gain"] == pytest.approx(knowledge_gain(evbmf(structured), 32))
    broken = structured.clone()
    broken[0, 0] = float("nan")
    z2, again = z_of_epoch([("a", "linear", broken), ("b", "linear", noise)], records)
    assert z2 == 0.5 and again[0]["rank"] == 2  # last epoch's rank reused
    z3, _ = z_of_epoch([("a", "linear", broken), ("b", "linear", noise)])
    assert z3 == 1.0  # no previous epoch: counts as empty
