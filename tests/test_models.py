import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_diabetes, load_digits, load_iris
from sklearn.utils.estimator_checks import parametrize_with_checks
from torch import nn

from skhpo.models import (
    SmallCNNClassifier,
    SmallCNNModule,
    TabularMLPClassifier,
    TabularMLPRegressor,
)


@pytest.mark.slow
@parametrize_with_checks([TabularMLPClassifier(), TabularMLPRegressor(), SmallCNNClassifier()])
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_any_label_type_and_float32(iris):
    X, y = iris
    labels = np.array(["setosa", "versicolor", "virginica"])[y]
    clf = TabularMLPClassifier(max_epochs=30, random_state=0).fit(X.astype(np.float64), labels)
    assert list(clf.classes_) == ["setosa", "versicolor", "virginica"]
    assert clf.n_features_in_ == 4
    assert set(clf.predict(X)) <= set(labels)
    assert clf.score(X, labels) > 0.9
    proba = clf.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-5)


def test_random_state_reproducible(iris):
    X, y = iris
    a = TabularMLPClassifier(max_epochs=3, random_state=1).fit(X, y).predict_proba(X)
    b = TabularMLPClassifier(max_epochs=3, random_state=1).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)


def test_unseen_label_in_partial_fit(iris):
    X, y = iris
    clf = TabularMLPClassifier(max_epochs=1).fit(X[y < 2], y[y < 2])
    with pytest.raises(ValueError, match="not in classes_"):
        clf.partial_fit(X, y)


def test_module_parameters_are_plain_parameters(iris):
    X, y = iris
    clf = TabularMLPClassifier(depth=3, width=8, dropout=0.1, activation="tanh", max_epochs=1)
    clf.fit(X, y)
    linears = [m for m in clf.module_.modules() if m.__class__.__name__ == "Linear"]
    assert [m.out_features for m in linears] == [8, 8, 8, 3]
    assert clone(clf).get_params()["width"] == 8
    with pytest.raises(ValueError, match="activation"):
        TabularMLPClassifier(activation="swishy", max_epochs=1).fit(X, y)


def test_cnn_reads_digits_as_images():
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    clf = SmallCNNClassifier(max_epochs=8, random_state=0).fit(X[:1200], y[:1200])
    assert clf.image_shape_ == (1, 8, 8)
    assert isinstance(clf.module_, SmallCNNModule)
    assert clf.score(X[1200:], y[1200:]) > 0.85
    # (n, 8, 8) images give the same shape
    clf2 = SmallCNNClassifier(max_epochs=1).fit(X[:100].reshape(-1, 8, 8), y[:100])
    assert clf2.image_shape_ == (1, 8, 8)
    with pytest.raises(ValueError, match="image_shape"):
        SmallCNNClassifier(image_shape=(1, 4, 4), max_epochs=1).fit(X[:50], y[:50])


def test_regressor_1d_and_2d_targets():
    X, y = load_diabetes(return_X_y=True)
    y = (y - y.mean()) / y.std()
    reg = TabularMLPRegressor(max_epochs=60, random_state=0).fit(X, y)
    assert reg.predict(X).shape == (len(X),)
    assert reg.score(X, y) > 0.4
    Y = np.c_[y, -y]
    reg2 = TabularMLPRegressor(max_epochs=2, random_state=0).fit(X, Y)
    assert reg2.predict(X).shape == (len(X), 2)
    assert not hasattr(reg2, "predict_proba")


# -- explicit l2 / l1 penalties (the objective the LP hyper local search differentiates) ------

def test_penalty_is_in_the_training_loss_only_and_its_gradient_is_exact():
    X, y = load_iris(return_X_y=True)
    X = X.astype(np.float32)
    net = TabularMLPClassifier(depth=1, width=8, max_epochs=1, l2=[0.3, 0.1], l1=[0.0, 0.05],
                               random_state=0).fit(X, y)
    first, out = net.penalized_layers()
    Xt, yt = torch.as_tensor(X[:16]), torch.as_tensor(np.searchsorted(net.classes_, y[:16]))
    logits = net.infer(Xt)
    ce = nn.functional.cross_entropy(logits, yt)
    manual = 0.3 * first.weight.pow(2).sum() + 0.1 * out.weight.pow(2).sum() + \
        0.05 * out.weight.abs().sum()
    train = net.get_loss(logits, yt, training=True)
    assert float(train) == pytest.approx(float(ce + manual), rel=1e-6)
    assert float(net.get_loss(logits, yt, training=False)) == pytest.approx(float(ce), rel=1e-6)
    # d/dW of the penalty: 2 l2 W + l1 sign(W); biases untouched
    net.module_.zero_grad()
    net.penalty().backward()
    torch.testing.assert_close(first.weight.grad, 2 * 0.3 * first.weight.detach())
    torch.testing.assert_close(out.weight.grad, 2 * 0.1 * out.weight.detach()
                               + 0.05 * torch.sign(out.weight.detach()))
    assert first.bias.grad is None or torch.all(first.bias.grad == 0)


def test_l2_shrinks_the_trained_weights():
    X, y = load_iris(return_X_y=True)
    X = X.astype(np.float32)

    def norm(**kw):
        net = TabularMLPClassifier(max_epochs=40, random_state=0, **kw).fit(X, y)
        return sum(float(layer.weight.detach().pow(2).sum()) for layer in net.penalized_layers())
    assert norm(l2=0.05) < 0.5 * norm()


def test_cnn_penalises_dense_layers_only():
    X, y = load_digits(return_X_y=True)
    net = SmallCNNClassifier(n_blocks=1, n_filters=4, max_epochs=1, l2=0.1).fit(X[:64], y[:64])
    assert [type(m) for m in net.penalized_layers()] == [nn.Linear, nn.Linear]


@pytest.mark.parametrize("kw, match", [
    ({"l2": [0.1, 0.2]}, "l2 has 2 coefficients but the module has 3 linear layers"),
    ({"l1": -0.1}, "l1 must be finite and >= 0"),
    ({"l2": float("nan")}, "l2 must be finite and >= 0"),
])
def test_bad_penalties_fail_before_training(kw, match):
    X, y = load_iris(return_X_y=True)
    net = TabularMLPClassifier(max_epochs=5, **kw)
    with pytest.raises(ValueError, match=match):
        net.fit(X, y)
    assert not net.history_  # no epoch ran
