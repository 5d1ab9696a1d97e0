"""One public vocabulary across the searches: the same space object through the same
parameter name in every class, every value handed back inside the distribution it came from,
one template each (skhpo.search._cv, skhpo.search._holdout)."""

import warnings

import numpy as np
import pytest
from scipy.stats import loguniform, randint, uniform
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import RandomizedSearchCV
from sklearn.model_selection._search import BaseSearchCV
from sklearn.preprocessing import StandardScaler

from skhpo import (
    AutoHyperSearchCV,
    CuttingPlaneTuner,
    FlatnessSearchCV,
    HyperLocalRefiner,
    PopulationMutationSearch,
    TabularMLPClassifier,
)
from skhpo.search.autohyper import parse_params

CLASSES = [FlatnessSearchCV, AutoHyperSearchCV, HyperLocalRefiner, PopulationMutationSearch,
           CuttingPlaneTuner]


@pytest.fixture(scope="module")
def cancer():
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X).astype(np.float32)
    return X[:240], y[:240]


def _net(**kw):
    return TabularMLPClassifier(**{"width": 8, "max_epochs": 2, "dropout": 0.1, **kw})


def test_autohyper_reads_a_distribution_as_its_bounds():
    (lr, wd) = parse_params({"lr": loguniform(1e-3, 1e-1),
                             "optimizer__weight_decay": loguniform(1e-6, 1e-2)})
    assert (lr.low, lr.high, lr.start, lr.factor) == pytest.approx((1e-3, 1e-1, 1e-3, 1.45))
    assert (wd.low, wd.high, wd.start) == pytest.approx((1e-6, 1e-2, 1e-6))
    (start,) = parse_params({"lr": [3e-3]})
    assert start.start == 3e-3 and start.factor == 1.45


# -- one space for all five classes --------------------------------------------------------

SPACE = {"lr": loguniform(1e-3, 1e-1), "optimizer__weight_decay": loguniform(1e-6, 1e-2),
         "dropout": uniform(0.0, 0.5)}


def _five(space, **overrides):
    """Each class with the part of ``space`` its method can tune."""
    def part(*names):
        return {k: space[k] for k in names if k in space}
    base = RandomizedSearchCV(_net(), part("optimizer__weight_decay"), n_iter=2, cv=2,
                              random_state=0)
    return [
        FlatnessSearchCV(_net(), space, n_candidates=3, n_finalists=1, cv=2, random_state=0),
        AutoHyperSearchCV(_net(), part("lr", "optimizer__weight_decay"), epochs_per_trial=1,
                          max_trials=9, cv=2, random_state=0),
        HyperLocalRefiner(base, part("optimizer__weight_decay"), random_state=0),
        PopulationMutationSearch(_net(), space, population_size=2, n_steps=1, random_state=0),
        CuttingPlaneTuner(_net(max_epochs=2), part("dropout"), warmup_epochs=1,
                          random_state=0),
    ]


@pytest.mark.parametrize("index", range(5), ids=[c.__name__ for c in CLASSES])
def test_the_same_space_is_accepted_by_all_five_classes(cancer, index):
    X, y = cancer
    search = _five(SPACE)[index]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search.fit(X, y)
    assert isinstance(search, BaseSearchCV)
    assert search.n_trainings_ >= 1 and search.n_epochs_ >= 0
    boxes = {"lr": (1e-3, 1e-1), "optimizer__weight_decay": (1e-6, 1e-2), "dropout": (0, 0.5)}
    for name, value in search.best_params_.items():
        key = "dropout" if name.startswith("dropout") else name
        lo, hi = boxes[key]
        assert lo * (1 - 1e-9) <= value <= hi * (1 + 1e-9), (name, value)
    # inherited forwarding: scikit-learn's predict / score / classes_ / n_features_in_
    assert search.predict(X[:5]).shape == (5,)
    assert search.predict_proba(X[:5]).shape == (5, 2)
    assert 0 <= search.score(X, y) <= 1
    assert list(search.classes_) == [0, 1] and search.n_features_in_ == X.shape[1]


@pytest.mark.parametrize("cls", CLASSES)
def test_no_leaf_overrides_fit_predict_or_score(cls):
    assert issubclass(cls, BaseSearchCV)
    for method in ("fit", "predict", "predict_proba", "score", "transform"):
        assert method not in vars(cls), f"{cls.__name__} overrides {method}"
    for method in ("fit", "predict", "predict_proba", "score", "transform", "classes_",
                   "n_features_in_"):
        owner = next(k for k in cls.__mro__ if method in vars(k))
        assert owner is BaseSearchCV or (method == "fit" and owner.__module__ in
                                         ("skhpo.search._cv", "skhpo.search._holdout")), \
            (method, owner)


BAD = [
    ({"dropout": randint(0, 3)}, "only uniform and loguniform|dropout rate"),
    ({"dropout": uniform(0.2, 0.9)}, r"in \[0, 1\)"),
    ({"optimizer__weight_decay": loguniform(1e-2, 1e-6)}, "empty or inverted"),
    ({"lr": [-1e-3]}, "must be > 0"),
    ({"optimizer__weight_decay": []}, "empty|expected"),
]


def _tuned_names(search):
    for attr in ("param_distributions", "params", "param_bounds", "hyperparams", "continuous"):
        value = getattr(search, attr, None)
        if isinstance(value, dict):
            return set(value)
    return set()


# every malformed entry for every class that tunes that name
CASES = [pytest.param(space, message, index, id=f"{CLASSES[index].__name__}-{i}")
         for i, (space, message) in enumerate(BAD) for index in range(5)
         if next(iter(space)) in _tuned_names(_five(SPACE)[index])]


@pytest.mark.parametrize("space, message, index", CASES)
def test_every_class_rejects_a_malformed_space_before_training(cancer, space, message, index):
    X, y = cancer
    name = next(iter(space))
    search = _five({**SPACE, **space})[index]
    fits = []
    original = TabularMLPClassifier.partial_fit

    def counting(self, *args, **kwargs):
        if self.max_epochs:
            fits.append(1)
        return original(self, *args, **kwargs)

    TabularMLPClassifier.partial_fit = counting
    try:
        with pytest.raises(ValueError, match=message) as info:
            search.fit(X, y)
    finally:
        TabularMLPClassifier.partial_fit = original
    assert name in str(info.value)
    assert not fits, "a net trained before the error"
    assert not hasattr(search, "cv_results_")


@pytest.mark.parametrize("search", [
    lambda: FlatnessSearchCV(_net(), {"no_such_param": [1, 2]}, n_candidates=2, n_finalists=1),
    lambda: AutoHyperSearchCV(_net(), {"no_such_param": loguniform(1e-3, 1e-1)}),
    lambda: PopulationMutationSearch(_net(), {"no_such_param": loguniform(1e-3, 1e-1)}),
    lambda: CuttingPlaneTuner(_net(), {"no_such_param": uniform(0, 0.5)}),
    lambda: HyperLocalRefiner(_net(), {"no_such_param": loguniform(1e-3, 1e-1)}),
], ids=[c.__name__ for c in CLASSES])
def test_every_class_rejects_a_name_the_net_does_not_have(cancer, search):
    X, y = cancer
    with pytest.raises(ValueError, match="no_such_param"):
        search().fit(X, y)


def test_hyperlocal_keeps_the_refined_value_in_the_distribution(cancer):
    X, y = cancer
    base = RandomizedSearchCV(_net(max_epochs=5), {"optimizer__weight_decay": [1e-3, 2e-3]},
                              n_iter=2, cv=2, random_state=0)
    box = uniform(1e-3, 1e-6)  # [1e-3, 1e-3 + 1e-6]: any LP step leaves it
    # the paper's method always steps (the default may keep the base, value and all)
    h = HyperLocalRefiner(base, {"optimizer__weight_decay": box}, box_hparams=1.0,
                          weight_step="lp", accept_fraction=0, random_state=0).fit(X, y)
    assert h.improved_
    assert 1e-3 <= h.best_params_["optimizer__weight_decay"] <= 1e-3 + 1e-6


def test_the_refined_value_stays_in_the_base_searchs_distribution(cancer):
    """The base search's own distribution bounds the refined value (the LP drives this weight
    decay to 0, outside loguniform(1e-6, 1e-2)); a wider range of the refiner's own lets it
    out, as the docs say."""
    X, y = cancer
    dist = loguniform(1e-6, 1e-2)
    base = RandomizedSearchCV(_net(max_epochs=3, random_state=0),
                              {"optimizer__weight_decay": dist}, n_iter=2, cv=2,
                              random_state=0)
    kw = dict(weight_step="lp", accept_fraction=0, random_state=0)
    kept = HyperLocalRefiner(base, **kw).fit(X, y)
    out = HyperLocalRefiner(base, {"optimizer__weight_decay": (0.0, 1.0)}, **kw).fit(X, y)
    assert kept.improved_ and out.improved_
    lo, hi = dist.support()
    assert lo <= kept.best_params_["optimizer__weight_decay"] <= hi
    assert out.best_params_["optimizer__weight_decay"] < lo  # the range really binds


@pytest.mark.parametrize("index", range(5), ids=[c.__name__ for c in CLASSES])
def test_every_value_handed_back_lies_in_its_distribution(cancer, index):
    """Whatever a class does with a value (samples, walks, steps, mutates, refines), the value
    in best_params_ lies in the support of the distribution it came from."""
    X, y = cancer
    space = {"lr": loguniform(1e-3, 3e-2), "optimizer__weight_decay": loguniform(1e-6, 1e-3),
             "dropout": uniform(0.05, 0.4)}
    search = _five(space)[index]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search.fit(X, y)
    for name, value in search.best_params_.items():
        dist = space["dropout" if name.startswith("dropout") else name]
        lo, hi = dist.support()
        assert lo <= value <= hi, (name, value, (lo, hi))
