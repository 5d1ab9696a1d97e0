"""Fit parameters and the user's objects are handled as scikit-learn handles them: ``groups``
go to the splitter only; every training gets copies of the user's callbacks."""

import numpy as np
import pytest
from scipy.stats import uniform
from sklearn.datasets import load_iris
from sklearn.model_selection import GridSearchCV, GroupKFold
from skorch.callbacks import Callback

from skhpo import (
    AutoHyperSearchCV,
    CuttingPlaneTuner,
    FlatnessSearchCV,
    FusedGridSearchCV,
    FusedRandomizedSearchCV,
    PopulationMutationSearch,
    TabularMLPClassifier,
)
from skhpo.nets import find_net


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



class _Count(Callback):
    """Counts the training batches it sees (not a constructor parameter: clones start at 0)."""

    batches_ = 0

    def on_batch_end(self, net, **kwargs):
        self.batches_ += 1


@pytest.mark.parametrize("make", [
    lambda n: FlatnessSearchCV(n, {"lr": [1e-2, 1e-3]}, n_candidates=2, n_finalists=1, cv=2,
                               random_state=0),
    lambda n: AutoHyperSearchCV(n, {"lr": [1e-2]}, epochs_per_trial=1, max_trials=3, cv=2,
                                random_state=0),
    lambda n: PopulationMutationSearch(n, {"dropout": uniform(0, 0.5)}, population_size=2,
                                       n_steps=1, refit=True, random_state=0),
    lambda n: CuttingPlaneTuner(n, warmup_epochs=1, refit=True, random_state=0),
    lambda n: FusedRandomizedSearchCV(n, {"lr": [1e-2, 1e-3]}, n_iter=2, cv=2, random_state=0),
], ids=["flatness", "autohyper", "population", "cutting-plane", "fused-random"])
def test_the_users_callback_objects_are_never_trained(make):
    """As in GridSearchCV: every training gets a copy of the user's callbacks (before, the
    screening, the trials and the refits trained the user's own instance)."""
    X, y = load_iris(return_X_y=True)
    mine = _Count()
    net = TabularMLPClassifier(width=8, max_epochs=2, dropout=0.1, callbacks=[("count", mine)])
    search = make(net).fit(X, y)
    assert mine.batches_ == 0
    trained = find_net(search.best_estimator_)[0]
    assert dict(trained.callbacks_)["count"] is not mine
    assert dict(trained.callbacks_)["count"].batches_ > 0  # its copy did train


@pytest.mark.parametrize("make", [
    lambda net: FlatnessSearchCV(net, {"lr": [1e-3, 1e-2]}, n_candidates=2, n_finalists=1,
                                 cv=5),
    lambda net: AutoHyperSearchCV(net, {"lr": [1e-2]}, cv=5),
], ids=["flatness", "autohyper"])
def test_a_split_that_cannot_be_made_fails_before_training(make, monkeypatch):
    """Four samples and cv=5: scikit-learn's splitter raises, now before any screening or
    walk trains (before, the whole screening or walk ran first)."""
    X, y = load_iris(return_X_y=True)
    X, y = X[[0, 1, 50, 51]], y[[0, 1, 50, 51]]
    epochs = []
    original = TabularMLPClassifier.partial_fit

    def counting(self, *args, **kwargs):
        if self.max_epochs:
            epochs.append(self.max_epochs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TabularMLPClassifier, "partial_fit", counting)
    from skhpo.fused._group import StackedGroup

    monkeypatch.setattr(StackedGroup, "run", lambda self: epochs.append("fused group"))
    with pytest.raises(ValueError, match="n_splits=5"):
        make(TabularMLPClassifier(width=8, max_epochs=2)).fit(X, y)
    assert epochs == []


@pytest.mark.parametrize("make, error, message", [
    (lambda net: FlatnessSearchCV(net, {"lr": [1.0, 2.0]}, n_candidates=2, n_finalists=1,
                                  cv=2, random_state=0),
     ValueError, "All (2 screened candidates were discarded or|the 2 fits) failed"),
    (lambda net: AutoHyperSearchCV(net, {"lr": [9.0]}, epochs_per_trial=1, max_trials=3,
                                   cv=2, random_state=0),
     ValueError, r"All \d trials of the walk failed \(\d diverged\)"),
    (lambda net: PopulationMutationSearch(net, {"lr": (0.5, 5.0)}, population_size=3,
                                          n_steps=2, random_state=0),
     FloatingPointError, r"every student diverged at step \d"),
    (lambda net: CuttingPlaneTuner(net.set_params(dropout=0.2), random_state=0),
     FloatingPointError, "CuttingPlaneTuner: the training loss became"),
    (lambda net: FusedRandomizedSearchCV(net, {"lr": uniform(1.0, 1.0)}, n_iter=2, cv=2,
                                         random_state=0),
     ValueError, "All the 4 fits failed"),
], ids=["flatness", "autohyper", "hpm", "cpmlho", "fused-random"])
def test_every_training_failed_is_an_error(make, error, message):
    """When every training of a search fails, the search fails with the reason, instead of
    returning a best candidate: here every loss that rises at all is divergence (the guard's
    max_ratio just above 1) under SGD at a learning rate of 1-5."""
    import torch

    X, y = load_iris(return_X_y=True)
    net = TabularMLPClassifier(width=8, max_epochs=2, optimizer=torch.optim.SGD,
                               callbacks__finite_loss__max_ratio=1.000001)
    with pytest.raises(error, match=message) as info:
        make(net).fit(X, y)
    assert "diverged" in str(info.value) or "failed" in str(info.value)


def test_an_estimator_in_the_space_is_never_fitted_itself():
    """A candidate value that is an estimator (here a scaler step) is cloned per training,
    as scikit-learn's searches do."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    X, y = load_iris(return_X_y=True)
    scalers = [StandardScaler(), MinMaxScaler()]
    pipe = Pipeline([("scale", StandardScaler()),
                     ("net", TabularMLPClassifier(width=8, max_epochs=2))])
    for make in (
        lambda: FlatnessSearchCV(pipe, {"scale": scalers, "net__lr": [1e-2]}, n_candidates=2,
                                 n_finalists=2, cv=2, random_state=0, engine="sequential"),
        lambda: FlatnessSearchCV(pipe, {"scale": scalers, "net__lr": [1e-2]}, n_candidates=2,
                                 n_finalists=2, cv=2, random_state=0, engine="fused"),
        lambda: FusedGridSearchCV(pipe, {"scale": scalers}, cv=2, random_state=0),
    ):
        make().fit(X, y)
        assert not any(hasattr(s, "n_features_in_") for s in scalers)
