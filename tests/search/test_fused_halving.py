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


EPOCHS = dict(n_candidates=9, factor=3, resource="max_epochs", min_resources=1,
              max_resources=9, cv=3, random_state=0)


def _from_the_start(monkeypatch):
    """Survivors train again from the start at every rung (as scikit-learn's halving)."""
    monkeypatch.setattr(FusedHalvingRandomSearchCV, "_start_of",
                        lambda self, folds, rows: (None, ""))


def test_survivors_continue_and_give_the_models_trained_from_the_start(digits, monkeypatch):
    X, y = digits
    net = TabularMLPClassifier(depth=1, width=32, batch_size=64, dropout=0.2)
    ours = FusedHalvingRandomSearchCV(net, SPACE, **EPOCHS).fit(X, y)
    # rungs of 1, 3, 9 epochs: the survivors of a rung continued from its epochs
    assert ours.n_resources_ == [1, 3, 9] and ours.n_candidates_ == [9, 3, 1]
    assert ours.candidate_starts_ == [0] * 9 + [1] * 3 + [3]
    assert ours.restart_reasons_ == [""] * 13
    _from_the_start(monkeypatch)
    restarted = FusedHalvingRandomSearchCV(net, SPACE, **EPOCHS).fit(X, y)
    assert restarted.candidate_starts_ == [0] * 13
    for key in ("params", "mean_test_score", *(f"split{i}_test_score" for i in range(3)),
                "mean_train_score"):
        assert list(ours.cv_results_[key]) == list(restarted.cv_results_[key]), key
    assert ours.best_params_ == restarted.best_params_
    # and both are scikit-learn's halving (its fits seeded alike, trained one by one)
    theirs = HalvingRandomSearchCV(_net(), SPACE, **EPOCHS).fit(X, y)
    _same_search(FusedHalvingRandomSearchCV(_net(), SPACE, **EPOCHS).fit(X, y), theirs,
                 len(y) // 3)


def test_a_survivor_continues_its_history_and_its_early_stopping(digits, monkeypatch):
    from skorch.callbacks import EarlyStopping

    from skhpo.fused.prefit import PrefitStates
    X, y = digits
    histories = {}
    original = PrefitStates.on_train_begin

    def record(self, net, X=None, y=None, **kwargs):  # what each of scikit-learn's fits loads
        original(self, net, X=X, y=y, **kwargs)
        histories.setdefault(net.max_epochs or self.loaded_, []).append(
            [(row["epoch"], row["train_loss"]) for row in net.history])
    monkeypatch.setattr(PrefitStates, "on_train_begin", record)
    # train_loss must halve every epoch, or the fold stops after two epochs without
    net = TabularMLPClassifier(depth=1, width=32, batch_size=64, callbacks=[
        EarlyStopping(monitor="train_loss", patience=2, threshold=0.5)])
    ours = FusedHalvingRandomSearchCV(net, SPACE, **EPOCHS).fit(X, y)
    assert ours.candidate_starts_[9:] != [0] * 4 and ours.restart_reasons_ == [""] * 13
    ours_h = histories
    histories = {}
    _from_the_start(monkeypatch)
    FusedHalvingRandomSearchCV(net, SPACE, **EPOCHS).fit(X, y)
    assert ours_h == histories  # same epochs (early stops included) and losses, every fold
    stopped = [h for epochs in (3, 9) for h in histories[epochs] if len(h) < epochs]
    assert stopped, "no fold stopped early: the test does not test early stopping"


def test_what_cannot_continue_trains_from_the_start_and_says_why(digits):
    from skorch.callbacks import EarlyStopping

    X, y = digits
    net = TabularMLPClassifier(depth=1, width=32, batch_size=64, callbacks=[
        EarlyStopping(monitor="train_loss", patience=50, load_best=True)])
    search = FusedHalvingRandomSearchCV(net, SPACE, **EPOCHS).fit(X, y)
    assert search.candidate_starts_ == [0] * 13 and search.engine_ == "fused"
    assert search.restart_reasons_[:9] == [""] * 9
    assert all("load_best=True" in why for why in search.restart_reasons_[9:])
    kw = dict(factor=2, resource="n_samples", min_resources=150, cv=2, random_state=0)
    samples = FusedHalvingGridSearchCV(_net().set_params(max_epochs=2),
                                       {"lr": [1e-3, 3e-3, 1e-2, 3e-2]}, **kw).fit(X, y)
    assert samples.candidate_starts_ == [0] * 7
    assert all("resource='n_samples'" in why for why in samples.restart_reasons_[4:])


def test_a_search_stopped_after_a_rung_resumes_and_continues_from_the_checkpoint(
        digits, tmp_path, monkeypatch):
    X, y = digits
    net = TabularMLPClassifier(depth=1, width=32, batch_size=64)
    whole = FusedHalvingRandomSearchCV(net, SPACE, **EPOCHS).fit(X, y)
    search = FusedHalvingRandomSearchCV(net, SPACE, checkpoint=tmp_path, **EPOCHS)
    original = FusedHalvingRandomSearchCV._start_of

    def interrupted(self, folds, rows):
        if folds is not None:
            raise KeyboardInterrupt  # stopped once the first rung is written
        return original(self, folds, rows)
    monkeypatch.setattr(FusedHalvingRandomSearchCV, "_start_of", interrupted)
    with pytest.raises(KeyboardInterrupt):
        search.fit(X, y)
    monkeypatch.setattr(FusedHalvingRandomSearchCV, "_start_of", original)
    search.fit(X, y)
    assert search.n_resumed_ == 9 * 3  # the first rung's folds; the others continued them
    assert search.candidate_starts_ == whole.candidate_starts_, search.restart_reasons_[9:]
    for key in ("params", "mean_test_score", "split0_test_score"):
        assert list(search.cv_results_[key]) == list(whole.cv_results_[key]), key


def test_a_learning_rate_schedule_continues_across_rungs(digits, monkeypatch):
    from skorch.callbacks import LRScheduler

    X, y = digits
    net = TabularMLPClassifier(depth=1, width=32, batch_size=64,
                               callbacks=[LRScheduler("StepLR", step_size=2, gamma=0.5)])
    ours = FusedHalvingRandomSearchCV(net, SPACE, **EPOCHS).fit(X, y)
    assert ours.candidate_starts_ == [0] * 9 + [1] * 3 + [3]
    _from_the_start(monkeypatch)
    restarted = FusedHalvingRandomSearchCV(net, SPACE, **EPOCHS).fit(X, y)
    for key in ("mean_test_score", "split0_test_score", "mean_train_score"):
        assert list(ours.cv_results_[key]) == list(restarted.cv_results_[key]), key


def test_a_pipelines_net_continues_over_its_epochs(digits):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = digits
    pipe = Pipeline([("scale", StandardScaler()),
                     ("net", TabularMLPClassifier(depth=1, width=32, batch_size=64))])
    space = {f"net__{k}": v for k, v in SPACE.items()}
    search = FusedHalvingRandomSearchCV(pipe, space, **{**EPOCHS, "resource": "net__max_epochs"})
    search.fit(X, y)
    assert search.candidate_starts_ == [0] * 9 + [1] * 3 + [3]
    assert search.restart_reasons_ == [""] * 13 and search.engine_ == "fused"
