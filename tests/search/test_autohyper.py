import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils.estimator_checks import parametrize_with_checks
from skorch import NeuralNetClassifier
from torch import nn

from skhpo import AutoHyperSearchCV, SmallCNNClassifier, TabularMLPClassifier
from skhpo.search.autohyper import WalkSettings, parse_params, trust_region_walk

LR = parse_params({"lr": None})


def synthetic(offset):
    """Z = clip(1 - log10(lr / offset) / 2, 0, 1), recording every batch of points."""
    calls = []

    def evaluate(points):
        calls.append(list(points))
        return [min(1.0, max(0.0, 1 - math.log10(p[0] / offset) / 2)) for p in points]
    return evaluate, calls


# -- the walk on a deterministic Z ------------------------------------------------------------

def test_descent_walks_up_then_the_factor_tail_stops_it():
    evaluate, calls = synthetic(1e-4)
    point, steps, cache, reason = trust_region_walk(evaluate, LR)
    assert reason == "converged"
    assert all(s["phase"] == "descent" for s in steps)  # Z(1e-4) = 1 >= 0.85 at once
    assert all(s["move"] == (1,) for s in steps)  # Z falls with lr: always the +1 neighbour
    # the plateau fires on the first step whose cumprod(minima)^0.8 < 5e-3 ...
    minima = [min(cache[k][1] for k in cache if cache[k][2] == i) for i in range(len(steps))]
    firing = next(i for i in range(len(steps)) if np.prod(minima[:i + 1]) ** 0.8 < 5e-3)
    # ... and exactly two more steps follow, with factors 1.03694 and 1.00303
    assert len(steps) == firing + 3
    factors = [s["factors"][0] for s in steps]
    assert factors[:firing + 1] == [1.45] * (firing + 1)
    assert factors[firing + 1] == pytest.approx(1.03694, abs=1e-5)
    assert factors[firing + 2] == pytest.approx(1.00303, abs=1e-5)
    # the final point is the last centre times the last factor
    assert point[0] == pytest.approx(steps[-1]["point"][0] * factors[-1])
    # value-keyed cache: 3 trials, then 1 per step at a fixed factor, 2 after each shrink
    assert [len(c) for c in calls] == [3] + [1] * firing + [2, 2]
    assert len(cache) == sum(len(c) for c in calls)


def test_start_phase_walks_down_until_nothing_learned_is_within_reach():
    evaluate, _ = synthetic(1e-6)  # Z(1e-4) = 0: even the start lr learns
    point, steps, cache, _ = trust_region_walk(evaluate, LR)
    start = [s for s in steps if s["phase"] == "start"]
    assert start and all(s["move"] == (-1,) for s in start)
    assert steps[len(start)]["phase"] == "descent"
    # the first descent step is the first whose neighbourhood reaches Z >= 0.85
    first = steps[len(start)]["point"][0]
    assert max(evaluate([(first / 1.45,)])) >= 0.85
    assert all(max(evaluate([(s["point"][0] / 1.45,)])) < 0.85 for s in start)


def test_ties_zero_rule_and_the_two_factor_tail():
    hp = parse_params({"lr": None, "optimizer__weight_decay": None})
    # Z = 0.9 below the start lr (so the walk is in descent at once), 0 elsewhere
    point, steps, cache, reason = trust_region_walk(
        lambda pts: [0.9 if p[0] < 0.99e-4 else 0.0 for p in pts], hp)
    # the other Z tie at 0: the last minimum in row-major order is (+1, +1)
    assert [s["move"] for s in steps] == [(1, 1)] * 4
    # wd starts at 0: its neighbours are 0, 0 and 1e-7 (the zero rule), deduplicated
    first = [cache[k][0] for k in cache if cache[k][2] == 0]
    assert len(first) == 6 and {p[1] for p in first} == {0.0, 1e-7}
    # Z = 0 fires the plateau at once; lr stops after 1.45 -> 1.03694 -> 1.00303, wd (2.0)
    # needs one more: 2.0 -> 1.0821 -> 1.00674 -> 1.000553
    lr_f = [s["factors"][0] for s in steps]
    wd_f = [s["factors"][1] for s in steps]
    np.testing.assert_allclose(lr_f, [1.45, 1.03694, 1.00303, 1.000249], atol=1e-5)
    np.testing.assert_allclose(wd_f, [2.0, 1.082085, 1.006738, 1.000553], atol=1e-5)
    assert point[1] == pytest.approx(1e-7 * 1.082085 * 1.006738 * 1.000553, rel=1e-5)
    # start-phase ties (every Z < 0.85): the first maximum, (-1, -1)
    _, steps, _, reason = trust_region_walk(lambda pts: [0.5] * len(pts), hp,
                                            WalkSettings(max_trials=30))
    assert steps[0]["phase"] == "start" and steps[0]["move"] == (-1, -1)
    assert reason == "max_trials"


def test_max_trials_guard_and_bounds():
    hp = parse_params({"lr": {"start": 1.0, "factor": 10.0, "high": 100.0}})
    point, steps, cache, reason = trust_region_walk(
        lambda pts: [0.5] * len(pts), hp, WalkSettings(start_threshold=0.1, max_trials=5))
    assert reason == "max_trials" and len(cache) <= 5
    assert max(p[0] for p, _, _ in cache.values()) <= 100.0  # clipped to the bounds


@pytest.mark.parametrize("params, match", [
    ({"lr": -1.0}, "learning rate must be > 0"),
    ({"lr": 0.0}, "learning rate must be > 0"),
    ({"lr": {"start": 0.0}}, "start must be > 0"),
    ({"lr": {"start": 1e-3, "factor": 1.0}}, "step factor must be > 1"),
    ({"lr": (1e-1, 1e-3)}, "empty or inverted"),
    ({"lr": (1e-3, 1e-1, 0.5)}, "outside the box"),
    ({"lr": {"begin": 1}}, "unknown keys"),
    ({"module__width": None}, "no default start value"),
    ({"lr": float("nan")}, "finite number"),
    ({}, "param_bounds is empty"),
    ("lr", "param_bounds must be a dict"),
])
def test_params_are_validated(params, match):
    with pytest.raises(ValueError, match=match):
        parse_params(params)


def test_params_forms():
    # a tuple is a range, as in every skhpo search: (low, high[, start])
    (h,) = parse_params({"optimizer__weight_decay": (1e-4, 1.5)})
    assert (h.start, h.factor, h.minimum, h.low, h.high) == (1e-4, 2.0, 0.0, 1e-4, 1.5)
    (h,) = parse_params({"lr": (1e-4, 1e-1, 3e-3)})
    assert (h.start, h.factor, h.low, h.high) == (3e-3, 1.45, 1e-4, 1e-1)
    (h,) = parse_params({"optimizer__weight_decay": {"start": 1e-4, "factor": 1.5}})
    assert (h.start, h.factor, h.minimum, h.high) == (1e-4, 1.5, 0.0, 1.0)
    (h,) = parse_params(["net__lr"])
    assert (h.start, h.factor, h.minimum) == (1e-4, 1.45, 1e-6)
    (h,) = parse_params({"module__width": {"start": 16, "factor": 2}})
    assert (h.start, h.factor) == (16.0, 2.0)


# -- on real nets -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return StandardScaler().fit_transform(X).astype(np.float32), y


def mlp(**kw):
    return TabularMLPClassifier(**{"depth": 2, "width": 128, "batch_size": 128,
                                   "max_epochs": 10, **kw})


def test_end_to_end_digits_mlp(digits):
    X, y = digits
    s = AutoHyperSearchCV(mlp(), {"lr": None}, cv=3, random_state=0).fit(X, y)
    assert 1e-3 <= s.best_params_["lr"] <= 1e-2
    assert s.n_trials_ <= 40 and s.stop_reason_ == "converged"
    h = s.history_
    assert len(h["trial"]) == s.n_trials_ and set(h["status"]) == {"ok"}
    assert all(len(z) == 5 for z in h["z_epochs"])
    assert h["z"][0] == 1.0 and min(h["z"]) == 0.0  # from nothing learned to all layers
    assert set(h["ranks"][0]) == {"layers.0:linear", "layers.3:linear"}  # output excluded
    # cv_results_: GridSearchCV's keys for the one cross-validated point, plus stable_rank
    grid = GridSearchCV(mlp(), {"lr": [1e-3]}, cv=3).fit(X[:200], y[:200])
    assert set(s.cv_results_) == set(grid.cv_results_) | {"stable_rank"}
    assert s.cv_results_["params"] == [s.best_params_]
    assert s.best_score_ == s.cv_results_["mean_test_score"][0] > 0.9
    assert s.n_epochs_ == s.n_trials_ * 5 + 3 * 10 + 10
    assert s.score(X, y) > 0.9


def test_cnn_reads_convolutions_and_n_jobs_does_not_change_the_walk(digits):
    X, y = digits
    cnn = SmallCNNClassifier(n_blocks=1, n_filters=8, max_epochs=2, batch_size=128)
    kw = dict(cv=2, random_state=0, max_trials=6, epochs_per_trial=2)
    with pytest.warns(RuntimeWarning, match="max_trials=6"):
        a = AutoHyperSearchCV(cnn, {"lr": None}, n_jobs=1, **kw).fit(X, y)
        b = AutoHyperSearchCV(cnn, {"lr": None}, n_jobs=2, **kw).fit(X, y)
    assert a.history_["z"] == b.history_["z"] and a.best_params_ == b.best_params_
    assert set(a.history_["ranks"][0]) == {"features.0:mode3", "features.0:mode4"}


def test_diverged_trial_counts_as_nothing_learned(digits):
    X, y = digits
    net = NeuralNetClassifier(
        nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)),
        criterion=nn.CrossEntropyLoss, optimizer=torch.optim.SGD, max_epochs=2,
        train_split=None, verbose=0)
    # plain SGD at lr 10 and 100 diverges on digits; the walk must go on below them
    big = {"lr": {"start": 10.0, "factor": 10.0, "high": 1e9}}
    s = AutoHyperSearchCV(net, big, max_trials=5, cv=2, random_state=0)
    with pytest.warns(RuntimeWarning, match="max_trials"):
        s.fit(X, y)
    status = dict(zip([p["lr"] for p in s.history_["params"]], s.history_["status"]))
    assert status[10.0] == status[100.0] == "diverged"
    assert all(z == 1.0 for z, st in zip(s.history_["z"], s.history_["status"])
               if st == "diverged")
    assert "diverged:" in s.history_["reason"][s.history_["status"].index("diverged")]
    assert s.best_params_["lr"] < 10.0 and np.isfinite(s.best_score_)


@pytest.mark.parametrize("make, match", [
    (lambda: AutoHyperSearchCV(mlp(), {"not_a_param": (1.0, 2.0)}), "not_a_param"),
    (lambda: AutoHyperSearchCV(mlp(), {"lr": -1.0}), "learning rate must be > 0"),
    (lambda: AutoHyperSearchCV(mlp(), {"lr": {"start": 1e-3, "factor": 0.5}}),
     "step factor must be > 1"),
    (lambda: AutoHyperSearchCV(mlp(), {"lr": None}, include_linear=False),
     "no layer the stable-rank metric can read"),
    (lambda: AutoHyperSearchCV(mlp(), {"lr": None}, epochs_per_trial=0), "epochs_per_trial"),
    (lambda: AutoHyperSearchCV(SVC(), {"lr": None}), "skorch"),
])
def test_bad_input_fails_before_training(digits, make, match):
    X, y = digits
    with pytest.raises((ValueError, TypeError), match=match):
        make().fit(X[:50], y[:50])


def test_pipeline_clone_pickle_and_no_mutation(digits):
    X, y = digits
    pipe = make_pipeline(StandardScaler(), mlp())
    params = {"tabularmlpclassifier__lr": None}
    s = AutoHyperSearchCV(pipe, params, cv=2, random_state=0, max_trials=4)
    before = pipe.get_params(deep=False)
    with pytest.warns(RuntimeWarning) as caught:
        s.fit(X, y)
    assert caught[0].filename == __file__  # the warning points at the user's line
    assert pipe.get_params(deep=False) == before and params == {"tabularmlpclassifier__lr": None}
    assert not hasattr(pipe[-1], "module_") and pipe[-1].callbacks is None
    assert list(s.best_params_) == ["tabularmlpclassifier__lr"]
    assert clone(s).get_params()["param_bounds"] == params
    again = pickle.loads(pickle.dumps(s))
    np.testing.assert_array_equal(again.predict(X[:20]), s.predict(X[:20]))


@pytest.mark.slow
@parametrize_with_checks([AutoHyperSearchCV(TabularMLPClassifier(max_epochs=5, width=16),
                                            {"lr": 1e-2}, epochs_per_trial=1, max_trials=3,
                                            cv=2)])
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # max_trials stops these tiny walks
        check(estimator)


def test_plot_walk_draws_the_trials_and_the_walk(digits):
    import matplotlib
    matplotlib.use("Agg")
    from skhpo.plotting import plot_walk
    X, y = digits
    s = AutoHyperSearchCV(mlp(max_epochs=2), {"lr": None, "optimizer__weight_decay": None},
                          cv=2, random_state=0, max_trials=12, epochs_per_trial=2)
    with pytest.warns(RuntimeWarning):
        s.fit(X, y)
    fig = plot_walk(s)
    assert len(fig.axes) == 2
    lr_ax = fig.axes[0]
    assert lr_ax.get_xlabel() == "lr" and lr_ax.get_xscale() == "log"
    walk = lr_ax.lines[0].get_xdata()
    np.testing.assert_allclose(walk, [p[0] for p in s.steps_["point"]])
    trials = lr_ax.collections[0].get_offsets()
    assert len(trials) == s.n_trials_
    with pytest.raises(ValueError, match="fitted AutoHyperSearchCV"):
        plot_walk(AutoHyperSearchCV(mlp(), {"lr": None}))


def test_a_grey_stem_is_not_read_unless_asked():
    """A convolution reading one channel, in a net with other convolutions, is left out of Z
    by default (its unfoldings only show structure at too-high learning rates);
    ``grey_stem="read"`` reads it, and a net whose only convolution is grey keeps it."""
    import warnings

    from skhpo import SmallCNNClassifier

    X, y = load_digits(return_X_y=True)
    X, y = (X / 16).astype(np.float32)[:300], y[:300]

    def layers_read(**kw):
        grey = kw.pop("grey_stem", "skip")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # max_trials ends the walk early
            search = AutoHyperSearchCV(SmallCNNClassifier(max_epochs=1, **kw), {"lr": None},
                                       epochs_per_trial=1, max_trials=3, cv=2,
                                       grey_stem=grey, random_state=0).fit(X, y)
        return {key.split(":")[0] for key in search.history_["ranks"][0]}

    assert layers_read() == {"features.3"}
    assert layers_read(grey_stem="read") == {"features.0", "features.3"}
    assert layers_read(n_blocks=1) == {"features.0"}
    with pytest.raises(ValueError, match="grey_stem"):
        AutoHyperSearchCV(SmallCNNClassifier(), {"lr": None}, grey_stem="drop").fit(X, y)
