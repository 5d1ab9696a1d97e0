import copy
import pickle
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import loguniform
from sklearn.base import clone
from sklearn.datasets import load_diabetes
from sklearn.exceptions import FitFailedWarning
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils.estimator_checks import parametrize_with_checks
from skorch import NeuralNetClassifier
from skorch.callbacks import Callback
from torch import nn

from skhpo import FlatnessSearchCV, TabularMLPClassifier, TabularMLPRegressor
from skhpo.models import MLPModule

SPACE = {"lr": [3e-4, 1e-3, 3e-3, 1e-2], "width": [8, 32, 64], "depth": [1, 2]}


def small_clf(**kw):
    return TabularMLPClassifier(max_epochs=kw.pop("max_epochs", 5), batch_size=32, **kw)


def search(estimator=None, space=SPACE, **kw):
    kw = {"n_candidates": 6, "n_finalists": 2, "cv": 2, "random_state": 0, **kw}
    return FlatnessSearchCV(estimator if estimator is not None else small_clf(), space, **kw)


# -- the method ------------------------------------------------------------------------------

def test_the_flattest_candidates_are_the_ones_trained(iris):
    X, y = iris
    s = search(n_candidates=8, n_finalists=3).fit(X, y)
    h = s.history_
    assert len(h["candidate"]) == 8
    valid = [i for i, st in enumerate(h["status"]) if st in ("finalist", "screened_out")]
    flattest = sorted(valid, key=lambda i: h["sharpness"][i])[:3]
    assert [h["status"][i] for i in flattest] == ["finalist"] * 3
    assert sum(st == "finalist" for st in h["status"]) == 3
    # exactly the finalists were cross-validated, flattest first
    assert s.cv_results_["params"] == [h["params"][i] for i in flattest]
    np.testing.assert_allclose(s.cv_results_["sharpness"], [h["sharpness"][i] for i in flattest])
    assert np.all(np.diff(s.cv_results_["sharpness"]) >= 0)
    assert s.best_params_ in s.cv_results_["params"]
    assert s.best_score_ == max(s.cv_results_["mean_test_score"])
    assert s.score(X, y) > 0.8
    # epochs: 8 one-epoch screens + 3 finalists x 2 folds x 5 epochs + refit 5
    assert s.n_epochs_ == 8 + 3 * 2 * 5 + 5
    assert set(h["screen_epochs"]) == {1}


def test_screen_ranks_without_cross_validating(iris):
    X, y = iris
    fitted = search(n_candidates=8, n_finalists=3).fit(X, y)
    s = search(n_candidates=8, n_finalists=3).screen(X, y)
    # the same seeded screening as fit, but no CV, no refit
    np.testing.assert_allclose(s.history_["sharpness"], fitted.history_["sharpness"])
    assert s.finalists_ == fitted.cv_results_["params"]
    assert s.n_epochs_ == 8 and set(s.history_["cv_epochs"]) == {0}
    assert not hasattr(s, "best_estimator_") and not hasattr(s, "cv_results_")
    with pytest.raises(ValueError, match="n_finalists=9 must be <= n_candidates=8"):
        search(n_candidates=8, n_finalists=9).screen(X, y)


class ZeroHidden(nn.Module):
    """An MLP whose penultimate activations are all zero when ``dead`` is set."""

    def __init__(self, n_features=4, n_outputs=3, dead=False):
        super().__init__()
        self.mlp = MLPModule(n_features, n_outputs, depth=1, width=8)
        self.dead = dead

    def forward(self, X):
        h = self.mlp.layers[:-1](X)
        return self.mlp.layers[-1](h * 0 if self.dead else h)


def zero_net(**kw):
    return NeuralNetClassifier(ZeroHidden, criterion=nn.CrossEntropyLoss, max_epochs=3,
                               lr=0.05, verbose=0, train_split=None, **kw)


def test_screen_params_fix_the_screening_not_the_finalists(iris):
    """With the net seeded and every searched parameter fixed for the screen, all screening
    fits are the same fit; the finalists still cross-validate their own parameters."""
    X, y = iris
    space = {"lr": [1e-3, 1e-2, 3e-2, 1e-1]}
    own = search(small_clf(random_state=0), space, n_candidates=4).fit(X, y)
    fixed = search(small_clf(random_state=0), space, n_candidates=4,
                   screen_params={"lr": 3e-3}).fit(X, y)
    assert len(set(own.history_["sharpness"])) == 4
    assert len(set(fixed.history_["sharpness"])) == 1
    assert sorted(p["lr"] for p in fixed.history_["params"]) == space["lr"]
    assert all(p["lr"] in space["lr"] for p in fixed.cv_results_["params"])
    assert fixed.best_estimator_.lr == fixed.best_params_["lr"] != 3e-3


def test_discard_rule_zero_activations_and_divergence(iris):
    X, y = iris
    space = {"module__dead": [True, False], "lr": [0.05, 1e30], "optimizer": [torch.optim.SGD]}
    with pytest.warns(FitFailedWarning, match="screening fits failed"):
        s = search(zero_net(), space, n_candidates=4, n_finalists=4).fit(X, y)
    h = s.history_
    for params, status, reason, sharp in zip(h["params"], h["status"], h["reason"],
                                             h["sharpness"]):
        if params["lr"] == 1e30:  # NaN, or (output = bias only) a finite explosion
            assert status == "failed" and "diverged" in reason and np.isnan(sharp)
        elif params["module__dead"]:  # output = bias only: finite loss, zero activations
            assert status == "discarded" and sharp == 0 and "<= 0" in reason
        else:
            assert status == "finalist"
    assert s.cv_results_["params"] == [{"lr": 0.05, "module__dead": False,
                                        "optimizer": torch.optim.SGD}]


def test_every_candidate_discarded_is_one_clear_error(iris):
    X, y = iris
    with pytest.raises(ValueError, match="All 2 screened candidates were discarded"):
        search(zero_net(module__dead=True), {"lr": [0.01, 0.02]}, n_candidates=2,
               n_finalists=1).fit(X, y)


def test_error_score_raise_propagates_divergence(iris):
    X, y = iris
    with pytest.raises(FloatingPointError, match="diverged"):
        search(small_clf(optimizer=torch.optim.SGD), {"lr": [1e9]}, n_candidates=1,
               n_finalists=1, error_score="raise").fit(X, y)


def test_diverging_finalist_gets_error_score(iris):
    # screening survives one epoch, the full training diverges (to NaN: the explosion rule is
    # off here, else it would stop the candidate in the screening): error_score applies
    X, y = iris
    est = small_clf(optimizer=torch.optim.SGD, max_epochs=30,
                    callbacks__finite_loss__max_ratio=None)
    with pytest.warns(FitFailedWarning):
        s = search(est, {"lr": [0.05, 10.0]}, n_candidates=2, n_finalists=2,
                   discard_nonpositive=False).fit(X, y)
    scores = dict(zip([p["lr"] for p in s.cv_results_["params"]],
                      s.cv_results_["mean_test_score"]))
    assert np.isnan(scores[10.0]) and scores[0.05] > 0.8
    assert s.best_params_ == {"lr": 0.05}


def test_other_variants_and_options(iris):
    X, y = iris
    a = search(sharpness="output", batch_norm="rms", aggregate="mean").fit(X, y)
    b = search(sharpness="product").fit(X, y)
    assert not np.allclose(a.history_["sharpness"], b.history_["sharpness"])
    assert all(v > 0 for v in a.history_["sharpness"])


# -- scikit-learn citizenship ----------------------------------------------------------------

def test_cv_results_parity_with_gridsearchcv(iris):
    X, y = iris
    s = search(n_candidates=5, n_finalists=3, return_train_score=True).fit(X, y)
    grid = [{k: [v] for k, v in p.items()} for p in s.cv_results_["params"]]
    g = GridSearchCV(small_clf(random_state=0), grid, cv=2, return_train_score=True).fit(X, y)
    assert set(s.cv_results_) - set(g.cv_results_) == {"sharpness"}
    assert set(g.cv_results_) <= set(s.cv_results_)
    for key, value in g.cv_results_.items():
        ours = s.cv_results_[key]
        assert type(ours) is type(value), key
        if hasattr(value, "dtype"):
            assert ours.dtype == value.dtype, key
        assert len(ours) == len(value)


def test_pipeline_and_multimetric(iris):
    X, y = iris
    pipe = make_pipeline(StandardScaler(), small_clf())
    space = {"tabularmlpclassifier__lr": loguniform(1e-3, 3e-2),
             "tabularmlpclassifier__width": [16, 32]}
    s = search(pipe, space, scoring=["accuracy", "neg_log_loss"], refit="accuracy").fit(
        X * 5 + 2, y)
    assert {"mean_test_accuracy", "mean_test_neg_log_loss", "rank_test_accuracy"} <= set(
        s.cv_results_)
    assert s.multimetric_ and s.best_score_ == max(s.cv_results_["mean_test_accuracy"])
    assert all(k.startswith("tabularmlpclassifier__") for k in s.best_params_)
    assert s.score(X * 5 + 2, y) > 0.8


def test_nested_cross_val_score(iris):
    X, y = iris
    scores = cross_val_score(search(n_candidates=3, n_finalists=1, refit=True), X, y,
                             cv=StratifiedKFold(3, shuffle=True, random_state=0))
    assert scores.shape == (3,) and scores.min() > 0.7


def test_pickle_and_clone(iris):
    X, y = iris
    s = search(n_candidates=3, n_finalists=1).fit(X, y)
    s2 = pickle.loads(pickle.dumps(s))
    np.testing.assert_array_equal(s2.predict_proba(X), s.predict_proba(X))
    c = clone(s)
    assert not hasattr(c, "best_params_") and c.get_params()["n_candidates"] == 3


def test_n_jobs_does_not_change_results(iris):
    X, y = iris
    a = search(n_jobs=1).fit(X, y)
    b = search(n_jobs=2).fit(X, y)
    np.testing.assert_array_equal(a.history_["sharpness"], b.history_["sharpness"])
    assert a.cv_results_["params"] == b.cv_results_["params"]
    for key in a.cv_results_:
        if "time" not in key and key.startswith(("mean_test", "split", "std_test", "rank")):
            np.testing.assert_array_equal(a.cv_results_[key], b.cv_results_[key], err_msg=key)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


def test_regressor(iris):
    X, y = load_diabetes(return_X_y=True)
    y = (y - y.mean()) / y.std()
    s = search(TabularMLPRegressor(max_epochs=20), {"lr": [1e-3, 1e-2], "width": [16, 64]},
               n_candidates=4, n_finalists=2).fit(X, y)
    assert s.best_score_ > 0.2 and s.score(X, y) > 0.2


def test_nothing_passed_in_is_mutated(iris):
    X, y = iris
    est = small_clf(callbacks=[])
    space = {"lr": [1e-3, 1e-2], "width": [8, 16]}
    X0, y0, space0, params0 = X.copy(), y.copy(), copy.deepcopy(space), est.get_params()
    search(est, space, n_candidates=3, n_finalists=1).fit(X, y)
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, y0)
    assert space == space0
    assert est.callbacks == [] and not hasattr(est, "module_")
    assert est.get_params().keys() == params0.keys()


@pytest.mark.slow
@parametrize_with_checks([search(small_clf(max_epochs=3), {"lr": [1e-3, 1e-2]},
                                 n_candidates=2, n_finalists=1)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


# -- bad input: clear errors before any training ----------------------------------------------

class CountEpochs(Callback):
    epochs = 0

    def on_epoch_begin(self, net, **kwargs):
        CountEpochs.epochs += 1


class Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 3, 4)

    def forward(self, X):
        return self.conv(X.unsqueeze(1)).squeeze(-1)


def plain_net():
    return NeuralNetClassifier(MLPModule, module__n_features=4, module__n_outputs=3,
                               criterion=nn.CrossEntropyLoss, verbose=0, train_split=None)


def nan_X(X):
    X = X.copy()
    X[3, 1] = np.nan
    return X


BAD = [
    (lambda X, y: (search(), nan_X(X), y), ValueError, "NaN or infinite"),
    (lambda X, y: (search(), X, y[:-5]), ValueError, "inconsistent numbers of samples"),
    (lambda X, y: (search(space={}), X, y), ValueError, "empty"),
    (lambda X, y: (search(space=[]), X, y), ValueError, "non-empty dict"),
    (lambda X, y: (search(space={"lr": []}), X, y), ValueError, "list of values is empty"),
    (lambda X, y: (search(space={"lr": "0.1"}), X, y), ValueError, "expected a non-empty list"),
    (lambda X, y: (search(space={"lr": loguniform(1, 1e-3)}), X, y), ValueError, "inverted"),
    (lambda X, y: (search(space={"learning_rate": [0.1]}), X, y), ValueError,
     "unknown hyper-parameter 'learning_rate'"),
    (lambda X, y: (search(n_candidates=3, n_finalists=5), X, y), ValueError,
     "n_finalists=5 must be <= n_candidates=3"),
    (lambda X, y: (search(n_candidates=0), X, y), ValueError, "'n_candidates' parameter"),
    (lambda X, y: (search(screen_epochs=0), X, y), ValueError, "'screen_epochs' parameter"),
    (lambda X, y: (search(sharpness="hessian"), X, y), ValueError, "'sharpness' parameter"),
    (lambda X, y: (search(screen_params={"learning_rate": 1e-3}), X, y), ValueError,
     "screen_params: unknown hyper-parameter 'learning_rate'"),
    (lambda X, y: (search(screen_params=[("lr", 1e-3)]), X, y), ValueError,
     "'screen_params' parameter"),
    (lambda X, y: (search(SVC(), {"C": [1.0]}), X, y), TypeError, "skorch NeuralNet"),
    (lambda X, y: (search(NeuralNetClassifier(Conv, criterion=nn.CrossEntropyLoss,
                                              callbacks=[CountEpochs()]), {"lr": [0.1]}),
                   X, y), ValueError, "has no nn.Linear"),
    (lambda X, y: (search(make_pipeline(StandardScaler(), small_clf()),
                          {"tabularmlpclassifier__lr": [0.1]}), nan_X(X), y), ValueError,
     "Input X contains NaN"),
    (lambda X, y: (search(make_pipeline(StandardScaler(), plain_net()),
                          {"neuralnetclassifier__lr": [0.1]}), nan_X(X), y), ValueError,
     "after the Pipeline steps"),
]


@pytest.mark.parametrize("make, exc, match", BAD)
def test_bad_input_fails_before_training(iris, make, exc, match):
    X, y = iris
    est, Xb, yb = make(X, y)
    est.set_params(estimator=_count_epochs(est.estimator))
    CountEpochs.epochs = 0
    with pytest.raises(exc, match=match):
        est.fit(Xb, yb)
    assert CountEpochs.epochs == 0


def _count_epochs(estimator):
    from skhpo.nets import find_net
    try:
        net, prefix = find_net(estimator)
    except TypeError:
        return estimator
    cbs = net.callbacks if isinstance(net.callbacks, list) else []
    if any(isinstance(c, CountEpochs) for c in cbs):
        return estimator
    return clone(estimator).set_params(**{f"{prefix}callbacks": cbs + [CountEpochs()]})


def test_some_failed_screening_warns_not_raises(iris):
    X, y = iris
    space = {"lr": [1e-2, 1e9], "optimizer": [torch.optim.SGD]}
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        s = search(small_clf(), space, n_candidates=2, n_finalists=1).fit(X, y)
    assert any(issubclass(w.category, FitFailedWarning) for w in rec)
    assert s.best_params_["lr"] == 1e-2


def test_dataframe_with_categoricals_through_a_column_transformer():
    pd = pytest.importorskip("pandas")
    from sklearn.compose import ColumnTransformer
    from sklearn.datasets import load_breast_cancer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    X = X.iloc[:, :5].copy()
    X["band"] = pd.cut(X.iloc[:, 0], 3, labels=["lo", "mid", "hi"]).astype(str)
    y = y.map({0: "malignant", 1: "benign"})
    pre = ColumnTransformer([("num", StandardScaler(), list(X.columns[:5])),
                             ("cat", OneHotEncoder(), ["band"])])
    pipe = Pipeline([("pre", pre), ("net", small_clf())])
    s = search(pipe, {"net__lr": [1e-3, 1e-2], "net__width": [16, 64]}, n_candidates=4,
               n_finalists=2, cv=3).fit(X, y)
    assert set(s.predict(X.iloc[:10])) <= {"malignant", "benign"}
    assert list(s.feature_names_in_) == list(X.columns)
    assert s.best_score_ > 0.8
