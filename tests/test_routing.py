"""Fit parameters are routed as scikit-learn routes them: ``groups`` to the splitter only."""

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.model_selection import GridSearchCV, GroupKFold

from skhpo import AutoHyperSearchCV, FlatnessSearchCV, FusedGridSearchCV, TabularMLPClassifier


@pytest.mark.parametrize("make", [
    lambda net: FlatnessSearchCV(net, {"lr": [1e-3, 1e-2]}, n_candidates=2, n_finalists=2,
                                 cv=GroupKFold(3), random_state=0),
    lambda net: AutoHyperSearchCV(net, {"lr": [1e-2]}, epochs_per_trial=1, max_trials=4,
                                  cv=GroupKFold(3), random_state=0),
    lambda net: FusedGridSearchCV(net, {"lr": [1e-3, 1e-2]}, cv=GroupKFold(3), random_state=0),
], ids=["flatness", "autohyper", "fused-grid"])
def test_groups_reach_the_splitter_not_the_net(make):
    X, y = load_iris(return_X_y=True)
    groups = np.arange(len(y)) % 6
    net = TabularMLPClassifier(width=8, max_epochs=2)
    search = make(net).fit(X, y, groups=groups)
    reference = GridSearchCV(net, {"lr": [1e-2]}, cv=GroupKFold(3)).fit(X, y, groups=groups)
    assert search.n_splits_ == reference.n_splits_ == 3
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()

