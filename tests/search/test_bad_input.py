"""Bad input over the five searches: every case fails with the right exception, a message that
names the parameter or the cause, and -- where the input was known before training -- before
any optimiser step (counted by a real optimiser that counts its steps)."""

import numpy as np
import pytest
import torch
from scipy.stats import loguniform
from sklearn.datasets import load_iris
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from skorch import NeuralNetClassifier

from skhpo import (
    AutoHyperSearchCV,
    CuttingPlaneTuner,
    FlatnessSearchCV,
    HyperLocalRefiner,
    PopulationMutationSearch,
    TabularMLPClassifier,
)


class CountingAdam(torch.optim.Adam):
    """torch's Adam, counting the steps every instance takes (class-wide)."""

    steps = 0

    def step(self, closure=None):
        type(self).steps += 1
        return super().step(closure)


class Logits(torch.nn.Module):
    """A plain user module: raw scores out, a dropout layer inside."""

    def __init__(self, n_out=3):
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
                                          torch.nn.Dropout(0.2), torch.nn.Linear(8, n_out))

    def forward(self, X):
        return self.layers(X)


def _mlp(**kw):
    return TabularMLPClassifier(**{"width": 8, "max_epochs": 2, "dropout": 0.2,
                                   "optimizer": CountingAdam, **kw})


def _user_net(**kw):
    return NeuralNetClassifier(Logits, **{"max_epochs": 2, "train_split": None,
                                          "optimizer": CountingAdam, **kw})


# one constructor per class: (estimator, **overrides) -> search
SEARCHES = {
    "flatness": lambda est, **kw: FlatnessSearchCV(
        est, kw.pop("space", {"lr": loguniform(1e-3, 1e-1)}),
        **{"n_candidates": 4, "n_finalists": 2, "cv": 2, "random_state": 0, **kw}),
    "autohyper": lambda est, **kw: AutoHyperSearchCV(
        est, kw.pop("space", {"lr": None}),
        **{"max_trials": 3, "epochs_per_trial": 1, "cv": 2, "random_state": 0, **kw}),
    "hpm": lambda est, **kw: PopulationMutationSearch(
        est, kw.pop("space", {"lr": (1e-3, 1e-1)}),
        **{"population_size": 2, "n_steps": 1, "random_state": 0, **kw}),
    "cpmlho": lambda est, **kw: CuttingPlaneTuner(
        est, **{"random_state": 0, **{k: v for k, v in kw.items() if k != "space"}}),
    "hyperlocal": lambda est, **kw: HyperLocalRefiner(
        GridSearchCV(est, kw.pop("space", {"optimizer__weight_decay": [1e-4, 1e-3]}), cv=2),
        **{"random_state": 0, **kw}),
}


@pytest.fixture(scope="module")
def iris():
    X, y = load_iris(return_X_y=True)
    return X.astype(np.float32), y


def _fails(search, X, y, error, match):
    CountingAdam.steps = 0
    with pytest.raises(error, match=match):
        search.fit(X, y)
    assert CountingAdam.steps == 0, "an optimiser step ran before the error"


# -- the same cases for every class ------------------------------------------------------------

def _nan_X(X, y):
    X = X.copy()
    X[3, 1] = np.nan
    return X, y


def _short_y(X, y):
    return X, y[:-5]


def _y_2d_strings(X, y):
    return X, np.array([["a", "b"]] * len(y))


def _one_sample(X, y):
    return X[:1], y[:1]


COMMON = {  # name -> (estimator, data transform, search kwargs, error, message)
    "logits_under_nll": (_user_net, None, {}, ValueError,
                         r"raw scores, not probabilities.*NLLLoss.*softmax.*CrossEntropyLoss"),
    "more_classes_than_outputs": (
        lambda: _user_net(module__n_out=2, criterion=torch.nn.CrossEntropyLoss), None, {},
        ValueError, "y has 3 classes but the module returns 2 outputs per row"),
    "labels_beyond_outputs": (
        lambda: _user_net(criterion=torch.nn.CrossEntropyLoss), lambda X, y: (X, y + 1), {},
        ValueError, r"class indices 1\.\.3, but the module returns 3 outputs.*LabelEncoder"),
    "nan_in_X": (_mlp, _nan_X, {}, ValueError, "NaN"),
    "length_mismatch": (_mlp, _short_y, {}, ValueError, "inconsistent numbers of samples"),
    "one_sample": (_mlp, _one_sample, {}, ValueError, r"sample|split|class"),
    "bad_max_ratio": (lambda: _mlp(callbacks__finite_loss__max_ratio=0.5), None, {},
                      ValueError, "max_ratio must be None or a number > 1"),
    "bad_random_state": (_mlp, None, {"random_state": "seed"}, ValueError, "random_state"),
    "not_a_net": (lambda: make_pipeline(StandardScaler()), None, {}, TypeError,
                  r"skorch|net"),
}


@pytest.mark.parametrize("case", list(COMMON))
@pytest.mark.parametrize("method", list(SEARCHES))
def test_bad_input_fails_before_training(method, case, iris):
    make_est, transform, kw, error, match = COMMON[case]
    X, y = iris
    if transform is not None:
        X, y = transform(X, y)
    if case == "not_a_net" and method == "hyperlocal":
        # GridSearchCV itself accepts any estimator; the refiner refuses it before fitting
        error, match = (TypeError, ValueError), r"skorch|net"
    _fails(SEARCHES[method](make_est(), **kw), X, y, error, match)


# -- cases of one class ------------------------------------------------------------------------

SPECIFIC = [
    ("flatness", {"n_candidates": 2, "n_finalists": 3}, ValueError, "n_finalists"),
    ("flatness", {"engine": "gpu"}, ValueError, "engine"),
    ("flatness", {"space": {"lr": [1e-2], "no_such_param": [1]}}, ValueError, "no_such_param"),
    ("flatness", {"space": {"lr": [-1.0]}}, ValueError, "lr"),
    ("flatness", {"cv": 60}, ValueError, r"n_splits=60|members|cannot be greater"),
    ("autohyper", {"space": {"dropout": None}}, ValueError, r"lr|learning rate|dropout"),
    ("autohyper", {"engine": "fast"}, ValueError, "engine"),
    ("autohyper", {"max_trials": 0}, ValueError, "max_trials"),
    ("hpm", {"population_size": 1}, ValueError, "population_size"),
    ("hpm", {"space": {"lr": (1e-1, 1e-3)}}, ValueError, "lr"),
    ("hpm", {"space": {"dropout": (0.0, 1.5)}}, ValueError, "dropout"),
    ("cpmlho", {"warmup_epochs": -1}, ValueError, "warmup_epochs"),
    ("cpmlho", {"refit": "tuned"}, ValueError, r"refit.*'trained'"),
    ("hpm", {"refit": "student"}, ValueError, r"refit.*'trained'"),
    ("hyperlocal", {"hessian": "sr1", "weight_step": "lp"}, ValueError, r"sr1.*SR1Snapshots"),
    ("hyperlocal", {"hessian": "sr1", "weight_step": "response"}, ValueError,
     r"sr1.*set weight_step='lp'"),
    ("hyperlocal", {"accept_fraction": 1.0}, ValueError, "accept_fraction"),
    ("hyperlocal", {"accept_confidence": 0.1}, ValueError, "accept_confidence"),
    ("hyperlocal", {"weight_step": "newton"}, ValueError, "weight_step"),
    ("hyperlocal", {"space": {"lr": [1e-2, 1e-3]}}, ValueError,
     "param_bounds=None, but the base search tunes no penalty"),
    ("hyperlocal", {"base_engine": "fast"}, ValueError, "base_engine"),
    ("hyperlocal", {"rows": 0.0}, ValueError, "rows"),
    ("hyperlocal", {"lp_solver": "cplex"}, ValueError, "lp_solver"),
]


@pytest.mark.parametrize("method, kw, error, match", SPECIFIC,
                         ids=[f"{m}-{'-'.join(k)}" for m, k, _, _ in SPECIFIC])
def test_bad_settings_fail_before_training(method, kw, error, match, iris):
    X, y = iris
    _fails(SEARCHES[method](_mlp(), **dict(kw)), X, y, error, match)


def test_the_matrix_has_at_least_forty_cases():
    assert len(SEARCHES) * len(COMMON) + len(SPECIFIC) >= 40
