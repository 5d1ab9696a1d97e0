import numpy as np
import pytest
import torch
from torch import nn

from skhpo.search.hyperlocal.curvature import (
    flat_gradient,
    flat_params,
    hessian_rows,
    objective,
    trainable,
    unflatten,
)


def tiny():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Dropout(0.5), nn.Linear(4, 2))
    X = torch.randn(20, 3)
    y = torch.randint(0, 2, (20,))
    return net, X, y


def l2(params):
    return 0.3 * params["0.weight"].pow(2).sum() + 0.1 * params["3.weight"].pow(2).sum()


def test_hvp_rows_equal_rows_of_the_exact_hessian():
    net, X, y = tiny()
    f = objective(net, nn.functional.cross_entropy, X, y, penalty=l2)
    w = flat_params(net)
    net.eval()
    H = torch.autograd.functional.hessian(f, w)
    rows = [0, 5, 11, 17, 25, w.numel() - 1]
    R = hessian_rows(net, nn.functional.cross_entropy, X, y, rows, penalty=l2, chunk=4)
    torch.testing.assert_close(R, H[rows], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(H, H.T, rtol=1e-5, atol=1e-6)  # rows = columns


def test_gradient_in_eval_mode_and_penalty_hessian():
    net, X, y = tiny()
    net.train()  # dropout must be off inside, and the mode restored after
    g = flat_gradient(net, nn.functional.cross_entropy, X, y)
    assert net.training
    net.eval()
    loss = nn.functional.cross_entropy(net(X), y)
    loss.backward()
    manual = torch.cat([p.grad.reshape(-1) for _, p in trainable(net)])
    torch.testing.assert_close(g, manual)
    # the L2 term adds 2 * coefficient on the diagonal of its layer's weights
    w = flat_params(net)
    plain = hessian_rows(net, nn.functional.cross_entropy, X, y, [0])
    pen = hessian_rows(net, nn.functional.cross_entropy, X, y, [0], penalty=l2)
    expected = plain.clone()
    expected[0, 0] += 2 * 0.3
    torch.testing.assert_close(pen, expected)
    assert w.numel() == 3 * 4 + 4 + 4 * 2 + 2


def test_unflatten_round_trip_and_errors():
    net, _, _ = tiny()
    w = flat_params(net)
    parts = unflatten(net, w)
    assert [tuple(v.shape) for v in parts.values()] == [(4, 3), (4,), (2, 4), (2,)]
    with pytest.raises(ValueError, match="flat vector of 3 entries"):
        unflatten(net, torch.zeros(3))
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable weights"):
        flat_params(frozen)


def test_sr1_snapshots_pair_weights_with_their_gradients():
    """Full-batch SGD on a quadratic: each recorded pair satisfies y = H s exactly."""
    from skorch import NeuralNetRegressor

    from skhpo.search.hyperlocal.curvature import SR1Snapshots
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3)).astype(np.float32)
    y = (X @ np.array([1.0, -1.0, 2.0]) + 0.1 * rng.normal(size=50)).astype(np.float32)
    snaps = SR1Snapshots(window=5)
    torch.manual_seed(0)
    net = NeuralNetRegressor(nn.Linear(3, 1), criterion=nn.MSELoss, optimizer=torch.optim.SGD,
                             lr=0.05, batch_size=-1, max_epochs=8, train_split=None, verbose=0,
                             callbacks=[("sr1", snaps)])
    net.fit(X, y[:, None])
    assert len(snaps.weights_) == 5  # the last `window` epochs
    H = hessian_rows(net.module_, nn.functional.mse_loss, torch.as_tensor(X),
                     torch.as_tensor(y[:, None]), range(4))  # MSE: reverse-over-reverse
    for k in range(1, 5):
        s, g = snaps.weights_[k] - snaps.weights_[k - 1], \
            snaps.gradients_[k] - snaps.gradients_[k - 1]
        torch.testing.assert_close(g, H @ s, rtol=1e-3, atol=1e-5)


def test_sr1_recovers_a_hessian_from_independent_steps():
    from skhpo.search.hyperlocal.curvature import sr1_rows
    rng = np.random.default_rng(1)
    A = rng.normal(size=(5, 5))
    H = torch.as_tensor(A @ A.T + np.eye(5))
    W = [torch.zeros(5, dtype=torch.float64)]
    for _ in range(6):
        W.append(W[-1] + torch.as_tensor(rng.normal(size=5)))
    G = [H @ w for w in W]  # gradients of 1/2 w'Hw
    torch.testing.assert_close(sr1_rows(W, G, range(5)), H)
    torch.testing.assert_close(sr1_rows(W, G, [1, 3]), H[[1, 3]])
    with pytest.raises(ValueError, match="at least 2 epochs"):
        sr1_rows(W[:1], G[:1], [0])
    with pytest.raises(ValueError, match="use hessian='hvp'"):
        sr1_rows(W, G, [0], max_weights=3)
