"""FusedRandomizedSearchCV and FusedGridSearchCV (skhpo.search.fused_search): scikit-learn's
searches, their fits trained in fused groups."""

import sys

import numpy as np
import pytest
from sklearn.datasets import load_digits

from skhpo import TabularMLPClassifier


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16).astype(np.float32)[:600], y[:600]


def _net(**kw):
    return TabularMLPClassifier(**{"depth": 2, "width": 16, "max_epochs": 2, "batch_size": 64,
                                   **kw})


# -- the drop-ins ----------------------------------------------------------------------------

def test_fused_random_search_is_randomized_search_cv_with_fused_fits(digits, loaded):
    from scipy.stats import loguniform
    from sklearn.model_selection import RandomizedSearchCV

    from skhpo import FusedRandomizedSearchCV

    X, y = digits
    space = {"lr": loguniform(1e-3, 3e-2), "dropout": [0.0, 0.3]}
    ours = FusedRandomizedSearchCV(_net(), space, n_iter=4, cv=3, random_state=0).fit(X, y)
    assert loaded == [True] * 12  # every CV fit loaded its fused fold
    theirs = RandomizedSearchCV(_net(), space, n_iter=4, cv=3, random_state=0).fit(X, y)
    assert ours.cv_results_["params"] == theirs.cv_results_["params"]  # the same candidates
    assert set(ours.cv_results_) == set(theirs.cv_results_)
    for key, value in theirs.cv_results_.items():
        assert type(ours.cv_results_[key]) is type(value)
        assert np.asarray(ours.cv_results_[key]).dtype == np.asarray(value).dtype, key
    assert ours.best_params_ == ours.cv_results_["params"][ours.best_index_]
    # reproducible, and n_jobs does not change it
    again = FusedRandomizedSearchCV(_net(), space, n_iter=4, cv=3, random_state=0,
                                    n_jobs=2).fit(X, y)
    np.testing.assert_array_equal(again.cv_results_["mean_test_score"],
                                  ours.cv_results_["mean_test_score"])
    assert 0 <= ours.score(X, y) <= 1 and ours.predict(X[:3]).shape == (3,)


def test_other_estimators_get_scikit_learns_search(digits):
    from scipy.stats import loguniform
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, RandomizedSearchCV

    from skhpo import FusedGridSearchCV, FusedRandomizedSearchCV

    X, y = digits
    lr = LogisticRegression(max_iter=300)
    a = FusedRandomizedSearchCV(lr, {"C": loguniform(1e-2, 1e2)}, n_iter=3, cv=3,
                                random_state=0).fit(X, y)
    b = RandomizedSearchCV(lr, {"C": loguniform(1e-2, 1e2)}, n_iter=3, cv=3,
                           random_state=0).fit(X, y)
    np.testing.assert_array_equal(a.cv_results_["mean_test_score"],
                                  b.cv_results_["mean_test_score"])
    c = FusedGridSearchCV(lr, {"C": [0.1, 1.0]}, cv=3).fit(X, y)
    d = GridSearchCV(lr, {"C": [0.1, 1.0]}, cv=3).fit(X, y)
    np.testing.assert_array_equal(c.cv_results_["mean_test_score"],
                                  d.cv_results_["mean_test_score"])
    with pytest.raises(ValueError, match="cannot be fused: LogisticRegression"):
        FusedGridSearchCV(lr, {"C": [0.1, 1.0]}, cv=3, engine="fused").fit(X, y)


@pytest.mark.slow
@pytest.mark.parametrize("make", [
    lambda: __import__("skhpo").FusedRandomizedSearchCV(_net(max_epochs=10, batch_size=32),
                                                        {"lr": [1e-2, 3e-2]}, n_iter=2, cv=2,
                                                        random_state=0),
    lambda: __import__("skhpo").FusedGridSearchCV(_net(max_epochs=10, batch_size=32),
                                                  {"lr": [1e-2, 3e-2]}, cv=2, random_state=0),
], ids=["random", "grid"])
def test_drop_ins_pass_the_estimator_checks(make):
    from sklearn.utils.estimator_checks import check_estimator

    failed = [r["check_name"] for r in check_estimator(make(), on_fail=None)
              if r["status"] == "failed"]
    assert not failed


def test_the_drop_in_keeps_scikit_learns_behaviours(digits, loaded):
    """Multi-metric scoring, train scores, groups, DataFrames and error_score work as in
    scikit-learn, with the fits loaded from their fused folds."""
    import pandas as pd
    from sklearn.model_selection import GroupKFold

    from skhpo import FusedRandomizedSearchCV

    X, y = digits
    net = _net(width=8)
    s = FusedRandomizedSearchCV(net, {"lr": [1e-3, 1e-2, 1e30]}, n_iter=3, cv=3,
                                scoring=["accuracy", "neg_log_loss"], refit="accuracy",
                                return_train_score=True, random_state=0).fit(X, y)
    assert {"mean_train_accuracy", "mean_test_neg_log_loss"} <= set(s.cv_results_)
    scores = s.cv_results_["mean_test_accuracy"]
    diverged = [p["lr"] == 1e30 for p in s.cv_results_["params"]]
    assert np.isnan(scores[diverged]).all() and np.isfinite(scores[~np.array(diverged)]).all()
    assert sum(loaded) == 6  # the two healthy candidates x 3 folds; the diverged one refails
    groups = np.arange(len(y)) % 5
    g = FusedRandomizedSearchCV(net, {"lr": [1e-3, 1e-2]}, n_iter=2, cv=GroupKFold(3),
                                random_state=0).fit(X, y, groups=groups)
    assert g.n_splits_ == 3 and np.isfinite(g.best_score_)
    frame = FusedRandomizedSearchCV(net, {"lr": [1e-3, 1e-2]}, n_iter=2, cv=3,
                                    random_state=0).fit(pd.DataFrame(X), pd.Series(y))
    plain = FusedRandomizedSearchCV(net, {"lr": [1e-3, 1e-2]}, n_iter=2, cv=3,
                                    random_state=0).fit(X, y)
    np.testing.assert_array_equal(frame.cv_results_["mean_test_score"],
                                  plain.cv_results_["mean_test_score"])
    with pytest.raises(FloatingPointError):
        FusedRandomizedSearchCV(net, {"lr": [1e30, 1e-2]}, n_iter=2, cv=2, error_score="raise",
                                random_state=0).fit(X, y)


# -- nets as skorch users write them -----------------------------------------------------------

@pytest.fixture(scope="module")
def zoo():
    """benchmarks/zoo.py, whose modules are written as skorch's docs write them."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "zoo.py"
    spec = importlib.util.spec_from_file_location("zoo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["zoo"] = module  # importable by name, as a user's own module is (pickling)
    return module


def test_the_skorch_readme_net_fuses_and_equals_grid_search_cv(zoo, loaded):
    """skorch's README net with its defaults (a validation split every epoch, softmax output,
    NLLLoss, a shuffled DataLoader), its fits seeded alike on both sides (a TaskSeed in its
    callbacks): the drop-in fuses every fit and its cv_results_ are GridSearchCV's."""
    from sklearn.model_selection import GridSearchCV
    from skorch import NeuralNetClassifier

    from skhpo import FusedGridSearchCV
    from skhpo.nets import TaskSeed

    X, y = zoo._clf()
    X, y = X[:450], y[:450]
    net = NeuralNetClassifier(zoo.ClassifierModule, max_epochs=5, lr=0.1, verbose=0,
                              iterator_train__shuffle=True, callbacks=[("seed", TaskSeed(3))])
    grid = {"lr": [0.05, 0.1], "module__num_units": [10, 20]}
    ours = FusedGridSearchCV(net, grid, cv=3).fit(X, y)
    assert loaded == [True] * 12 and ours.engine_ == "fused" and ours.engine_reason_ == ""
    assert ours.candidate_engines_ == ["fused"] * 4
    theirs = GridSearchCV(net, grid, cv=3).fit(X, y)
    assert ours.cv_results_["params"] == theirs.cv_results_["params"]
    for key, value in theirs.cv_results_.items():
        if "time" not in key and key != "params":
            np.testing.assert_array_equal(ours.cv_results_[key], value, err_msg=key)
    assert ours.best_params_ == theirs.best_params_
    np.testing.assert_array_equal(ours.predict_proba(X), theirs.predict_proba(X))


def test_engine_attributes_say_how_each_candidate_trained(zoo, capsys):
    import torch
    from sklearn.linear_model import LogisticRegression
    from skorch import NeuralNetClassifier

    from skhpo import FusedGridSearchCV

    X, y = zoo._clf()
    X, y = X[:300], y[:300]
    net = NeuralNetClassifier(zoo.ClassifierModule, max_epochs=2, lr=0.05, verbose=0)
    grid = {"optimizer": [torch.optim.SGD, torch.optim.LBFGS], "lr": [0.05, 0.1]}
    mixed = FusedGridSearchCV(net, grid, cv=2, verbose=1).fit(X, y)
    assert mixed.engine_ == "mixed"
    lbfgs = [p["optimizer"] is torch.optim.LBFGS for p in mixed.cv_results_["params"]]
    assert mixed.candidate_engines_ == ["sequential" if b else "fused" for b in lbfgs]
    assert all(("LBFGS" in r) == b for r, b in zip(mixed.candidate_reasons_, lbfgs))
    assert "optimizer LBFGS" in mixed.engine_reason_ and "(4 of 8 trainings)" in \
        mixed.engine_reason_
    assert "[FusedGridSearchCV] engine_='mixed'; trained alone: optimizer LBFGS" in \
        capsys.readouterr().out
    quiet = FusedGridSearchCV(net, {"lr": [0.05, 0.1]}, cv=2, engine="sequential").fit(X, y)
    assert quiet.engine_ == "sequential" and quiet.engine_reason_.startswith(
        "engine='sequential'")
    other = FusedGridSearchCV(LogisticRegression(), {"C": [0.1, 1.0]}, cv=2).fit(X, y)
    assert other.engine_ == "sequential" and "not a skorch net" in other.engine_reason_


def test_n_jobs_goes_to_the_engine_which_trains_every_fold(zoo, loaded):
    """With n_jobs=2 the engine's processes train every fold, fused or alone (LBFGS), and
    scikit-learn's cross-validation loads each one in this process: the same results as
    n_jobs=1, and the search's n_jobs as the user set it."""
    import torch
    from skorch import NeuralNetClassifier

    from skhpo import FusedGridSearchCV

    X, y = zoo._clf()
    X, y = X[:300], y[:300]
    net = NeuralNetClassifier(zoo.ClassifierModule, max_epochs=2, lr=0.05, verbose=0)
    grid = {"optimizer": [torch.optim.SGD, torch.optim.LBFGS], "lr": [0.05, 0.1, 0.2]}
    one = FusedGridSearchCV(net, grid, cv=2, random_state=0).fit(X, y)
    del loaded[:]
    two = FusedGridSearchCV(net, grid, cv=2, random_state=0, n_jobs=2).fit(X, y)
    assert two.n_jobs == 2 and two.engine_ == "mixed"
    assert loaded == [True] * 12  # the LBFGS folds too: trained by the engine's processes
    for key in ("mean_test_score", "std_test_score", "rank_test_score"):
        np.testing.assert_array_equal(one.cv_results_[key], two.cv_results_[key])
    np.testing.assert_array_equal(one.predict_proba(X), two.predict_proba(X))


def test_a_bad_n_jobs_fails_before_training(digits, monkeypatch):
    from skhpo import FusedRandomizedSearchCV
    from skhpo.fused import trainer

    def no_training(*args, **kwargs):
        raise AssertionError("trained")
    monkeypatch.setattr(trainer.FusedTrainer, "_fit_group", no_training)
    X, y = digits
    with pytest.raises(ValueError, match="n_jobs must be None or a non-zero int"):
        FusedRandomizedSearchCV(_net(), {"lr": [1e-3, 1e-2]}, n_iter=2, cv=2,
                                n_jobs=0).fit(X, y)
