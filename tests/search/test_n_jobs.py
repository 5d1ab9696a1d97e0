"""``n_jobs`` is checked by every search before any training, with one message."""

import numpy as np
import pytest
from sklearn.datasets import load_digits
from skorch import NeuralNet

from skhpo import (
    AutoHyperSearchCV,
    CuttingPlaneTuner,
    FlatnessSearchCV,
    FusedGridSearchCV,
    FusedRandomizedSearchCV,
    PopulationMutationSearch,
    TabularMLPClassifier,
)


def _net():
    return TabularMLPClassifier(depth=1, width=8, max_epochs=1)


SEARCHES = {
    "flatness": lambda n: FlatnessSearchCV(_net(), {"lr": (1e-3, 1e-2)}, n_candidates=4,
                                           n_finalists=2, cv=2, n_jobs=n),
    "autohyper": lambda n: AutoHyperSearchCV(_net(), {"lr": None}, cv=2, max_trials=3,
                                             n_jobs=n),
    "population": lambda n: PopulationMutationSearch(_net(), {"lr": (1e-3, 1e-2)},
                                                     population_size=2, n_steps=1, n_jobs=n),
    "fused-random": lambda n: FusedRandomizedSearchCV(_net(), {"lr": [1e-3, 1e-2]}, n_iter=2,
                                                      cv=2, n_jobs=n),
    "fused-grid": lambda n: FusedGridSearchCV(_net(), {"lr": [1e-3, 1e-2]}, cv=2, n_jobs=n),
}


@pytest.mark.parametrize("name", sorted(SEARCHES))
@pytest.mark.parametrize("n_jobs", [0, 2.0])
def test_a_bad_n_jobs_fails_before_any_training(name, n_jobs, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a net trained")
    monkeypatch.setattr(NeuralNet, "fit", no_training)
    X, y = load_digits(return_X_y=True)
    # 0: ours (scikit-learn's constraint takes any int); 2.0: scikit-learn's own check
    message = "n_jobs must be None or a non-zero int" if n_jobs == 0 else \
        "The 'n_jobs' parameter"
    with pytest.raises(ValueError, match=message):
        SEARCHES[name](n_jobs).fit((X / 16).astype(np.float32)[:100], y[:100])


def test_cutting_plane_tuner_takes_no_n_jobs():
    assert "n_jobs" not in CuttingPlaneTuner(_net()).get_params()
