"""FusedHalvingRandomSearchCV and FusedHalvingGridSearchCV (skhpo.search.fused_halving):
scikit-learn's successive halving, each rung's fits trained in fused groups."""

import numpy as np
import pytest
from scipy.stats import loguniform
from sklearn.datasets import load_digits
from sklearn.experimental import enable_halving_search_cv  # noqa: F401
from sklearn.model_selection import HalvingGridSearchCV, HalvingRandomSearchCV

from skhpo import FusedHalvingGridSearchCV, FusedHalvingRandomSearchCV, TabularMLPClassifier
from skhpo.nets import TaskSeed


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16).astype(np.float32)[:600], y[:600]


def _net():  # seeded as a user seeds it: both searches then train the same fits
    return TabularMLPClassifier(depth=1, width=32, batch_size=64,
                                callbacks=[("seed", TaskSeed(0))])


SPACE = {"lr": loguniform(1e-4, 1e-1), "optimizer__weight_decay": loguniform(1e-6, 1e-3)}


def _same_search(ours, theirs, n_test):
    assert ours.n_resources_ == theirs.n_resources_
    assert ours.n_candidates_ == theirs.n_candidates_
    assert ours.n_iterations_ == theirs.n_iterations_
    assert ours.n_remaining_candidates_ == theirs.n_remaining_candidates_
    for key in ("iter", "n_resources", "params"):
        assert list(ours.cv_results_[key]) == list(theirs.cv_results_[key]), key
    assert ours.best_params_ == theirs.best_params_
    # float32 rounding may flip a prediction or two in a fold of a few hundred samples
    np.testing.assert_allclose(ours.cv_results_["mean_test_score"],
                               theirs.cv_results_["mean_test_score"], atol=2.5 / n_test)


def test_random_halving_over_epochs_is_scikit_learns_with_fused_rungs(digits, loaded):
    X, y = digits
    kw = dict(n_candidates=9, factor=3, resource="max_epochs", min_resources=1,
              max_resources=3, cv=3, random_state=0)
    ours = FusedHalvingRandomSearchCV(_net(), SPACE, **kw).fit(X, y)
    assert loaded == [True] * (9 + 3) * 3  # every fit of every rung loaded its fused fold
    theirs = HalvingRandomSearchCV(_net(), SPACE, **kw).fit(X, y)
    _same_search(ours, theirs, len(y) // 3)
    assert ours.n_resources_ == [1, 3] and ours.n_candidates_ == [9, 3]
    assert ours.engine_ == "fused" and len(ours.candidate_engines_) == 12
    assert ours.best_score_ == ours.cv_results_["mean_test_score"][ours.best_index_]
    assert ours.best_estimator_.max_epochs == 3
    # mean_fit_time: each fold's share of its group's time, counted once per rung
    assert np.all(ours.cv_results_["mean_fit_time"] > 0)
    assert np.all(ours.cv_results_["mean_fit_time"] < theirs.cv_results_["mean_fit_time"]
                  .max() * 10)


def test_grid_halving_over_samples_fuses_each_rung(digits):
    X, y = digits
    grid = {"lr": [1e-3, 3e-3, 1e-2, 3e-2]}
    kw = dict(factor=2, resource="n_samples", min_resources=150, cv=2, random_state=0)
    ours = FusedHalvingGridSearchCV(_net().set_params(max_epochs=2), grid, **kw).fit(X, y)
    theirs = HalvingGridSearchCV(_net().set_params(max_epochs=2), grid, **kw).fit(X, y)
    _same_search(ours, theirs, 150 // 2)
    assert ours.n_resources_ == [150, 300, 600] and ours.engine_ == "fused"


def test_n_jobs_and_repeated_fits_give_the_same_search(digits):
    X, y = digits
    kw = dict(n_candidates=6, factor=3, resource="max_epochs", min_resources=1,
              max_resources=3, cv=2, random_state=0)
    net = TabularMLPClassifier(depth=1, width=16, batch_size=64)  # seeded by random_state
    one = FusedHalvingRandomSearchCV(net, SPACE, **kw).fit(X, y)
    two = FusedHalvingRandomSearchCV(net, SPACE, n_jobs=2, **kw).fit(X, y)
    np.testing.assert_array_equal(one.cv_results_["mean_test_score"],
                                  two.cv_results_["mean_test_score"])
    assert one.best_params_ == two.best_params_ and two.n_jobs == 2


def test_bad_input_is_scikit_learns_error_before_training(digits, monkeypatch):
    from skorch import NeuralNet

    def no_training(*args, **kwargs):
        raise AssertionError("a net trained")
    monkeypatch.setattr(NeuralNet, "fit", no_training)
    X, y = digits
    with pytest.raises(ValueError, match="min_resources_=4 is greater than max_resources_=2"):
        FusedHalvingRandomSearchCV(_net(), SPACE, resource="max_epochs", min_resources=4,
                                   max_resources=2).fit(X, y)
    with pytest.raises(ValueError, match="Cannot use parameter max_epochs as the resource"):
        FusedHalvingGridSearchCV(_net(), {"max_epochs": [1, 2]}, resource="max_epochs",
                                 max_resources=4).fit(X, y)
    with pytest.raises(ValueError, match="Cannot use resource=nope"):
        FusedHalvingGridSearchCV(_net(), {"lr": [0.1]}, resource="nope").fit(X, y)


def test_other_estimators_get_scikit_learns_halving(digits):
    from sklearn.linear_model import LogisticRegression

    X, y = digits
    kw = dict(factor=2, cv=2, random_state=0)
    lr = LogisticRegression(max_iter=200)
    ours = FusedHalvingGridSearchCV(lr, {"C": [0.1, 1.0, 10.0]}, **kw).fit(X, y)
    theirs = HalvingGridSearchCV(lr, {"C": [0.1, 1.0, 10.0]}, **kw).fit(X, y)
    np.testing.assert_array_equal(ours.cv_results_["mean_test_score"],
                                  theirs.cv_results_["mean_test_score"])
    assert ours.engine_ == "sequential" and "not a skorch net" in ours.engine_reason_
