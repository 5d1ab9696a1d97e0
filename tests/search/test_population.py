"""PopulationMutationSearch (HPM): the teacher, the population loop, the estimator."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import loguniform
from sklearn.base import clone
from sklearn.datasets import load_digits, load_iris
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from skorch import NeuralNetClassifier
from torch import nn

from skhpo import PopulationMutationSearch, TabularMLPClassifier
from skhpo.hyper import Box
from skhpo.search.population import RANDOM_RANGE, HPMSettings, Teacher, run_hpm

# -- the teacher --------------------------------------------------------------------------------

def test_teacher_gradient_is_the_corrected_eq12_not_the_printed_one():
    torch.manual_seed(0)
    teacher = Teacher(3, n_keys=8)
    h = torch.tensor([0.2, 0.7, 0.4], dtype=torch.float64)
    grad_alpha = torch.tensor([0.3, -1.2, 0.5], dtype=torch.float64)  # dL/d alpha
    (teacher(h) * grad_alpha).sum().backward()
    W, V = teacher.W.detach(), teacher.V.detach()
    s = torch.softmax(V.T @ h, 0)
    z = W @ s
    g_z = grad_alpha * (1 - torch.tanh(z) ** 2)             # tanh' (missing in print)
    jac = torch.diag(s) - torch.outer(s, s)                 # full softmax Jacobian
    dW = torch.outer(g_z, s)
    dV = torch.outer(h, jac.T @ (W.T @ g_z))
    assert torch.allclose(teacher.W.grad, dW, atol=1e-12)
    assert torch.allclose(teacher.V.grad, dV, atol=1e-12)
    printed_dW = torch.outer(grad_alpha, s)                  # no tanh'
    assert not torch.allclose(teacher.W.grad, printed_dW, atol=1e-6)


def test_teacher_starts_spread_like_random_mutation():
    alphas = []
    for seed in range(30):
        torch.manual_seed(seed)
        teacher = Teacher(4)
        with torch.no_grad():
            alphas.append(teacher(torch.rand(4, dtype=torch.float64)))
    alphas = torch.stack(alphas)
    assert ((alphas > 0) & (alphas < 2)).all()
    assert 0.06 < float(alphas.std()) < 0.25  # U[0.8, 1.2] has std 0.115; W = 0 would give 0


# -- the population loop on a toy problem --------------------------------------------------------

class Quadratic:
    """Students are points; training moves them 10 % toward the optimum 0.3; a student
    listed in ``diverge`` reports an infinite loss at step 0."""

    def __init__(self, diverge=()):
        self.boxes = [Box(0.0, 1.0), Box(0.0, 1.0)]
        self.names = ["a", "b"]
        self.diverge = set(diverge)
        self.copies = []

    def init(self, k, rng):
        return {"id": k, "x": rng.uniform(0.05, 0.95, size=2)}

    def train(self, students, step):
        out = [{**s, "x": s["x"] + 0.1 * (0.3 - s["x"])} for s in students]
        losses = [math.inf if step == 0 and s["id"] in self.diverge
                  else float(((s["x"] - 0.3) ** 2).sum()) for s in out]
        return out, losses

    def values(self, s):
        return s["x"]

    def copy(self, s, h):
        self.copies.append((s["id"], h.copy()))
        return {"id": s["id"], "x": np.asarray(h)}

    def teacher_objectives(self, s):
        return [lambda h: ((h - 0.3) ** 2).sum()]


@pytest.mark.parametrize("mutation", ["teacher", "random"])
def test_exploit_explore_bookkeeping(mutation):
    problem = Quadratic()
    students, losses, teacher, rows = run_hpm(
        problem, HPMSettings(population_size=5, truncation=0.4, n_steps=3, mutation=mutation),
        rng=0)
    hist = pd.DataFrame(rows)
    assert len(hist) == 15 and list(hist["step"].unique()) == [0, 1, 2]
    exploited = hist[hist["exploited_from"] >= 0]
    assert len(exploited) == 2 * 2  # ceil(0.4 * 5) = 2 bottom students at steps 0 and 1
    for _, row in exploited.iterrows():
        same = hist[(hist.step == row.step)]
        top2 = same.nsmallest(2, "val_loss")["student"].tolist()
        bottom2 = same.nlargest(2, "val_loss")["student"].tolist()
        assert row.exploited_from in top2 and row.student in bottom2
        assert len(row.alpha) == 2
        if mutation == "random":
            assert all(RANDOM_RANGE[0] <= a <= RANDOM_RANGE[1] for a in row.alpha)
    assert (teacher is None) == (mutation == "random")
    # the copy continues from clip(alpha * h*) of its source
    src_id, h_new = problem.copies[0]
    first = exploited.iloc[0]
    src_x = hist[(hist.step == first.step) & (hist.student == first.exploited_from)][["a", "b"]]
    np.testing.assert_allclose(h_new, np.clip(np.array(first.alpha) * src_x.to_numpy()[0],
                                               1e-6, 1 - 1e-6))


def test_teacher_learns_to_move_mutations_toward_the_optimum():
    torch.manual_seed(0)
    problem = Quadratic()
    teacher = Teacher(2, 16)
    opt = torch.optim.SGD(teacher.parameters(), lr=0.1)
    h_star = torch.tensor([0.9, 0.9], dtype=torch.float64)
    x = torch.tensor([0.5, 0.5], dtype=torch.float64)
    before = problem.teacher_objectives(None)[0](teacher(x) * h_star).item()
    for _ in range(200):
        loss = problem.teacher_objectives(None)[0](teacher(x) * h_star)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = problem.teacher_objectives(None)[0](teacher(x) * h_star).item()
    assert after < 0.1 * before  # alpha -> 1/3 brings 0.9 to the optimum 0.3


def test_diverged_students_are_replaced_and_recorded():
    problem = Quadratic(diverge={1, 3})
    students, losses, _, rows = run_hpm(
        problem, HPMSettings(population_size=5, truncation=0.2, n_steps=2, mutation="random"),
        rng=0)
    hist = pd.DataFrame(rows)
    step0 = hist[hist.step == 0]
    assert step0["diverged"].tolist() == [False, True, False, True, False]
    replaced = set(step0[step0.exploited_from >= 0]["student"])
    assert {1, 3} <= replaced  # both diverged ones, beyond the ceil(0.2 * 5) = 1 bottom
    assert np.isfinite(losses).all()


def test_all_students_diverging_is_an_error():
    with pytest.raises(FloatingPointError, match="every student diverged at step 0"):
        run_hpm(Quadratic(diverge=range(4)),
                HPMSettings(population_size=4, truncation=0.25, n_steps=2), rng=0)


# -- the estimator --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:600].astype(np.float32), y[:600]


def _pipe(**kw):
    kw.setdefault("lr", 1e-2)
    return make_pipeline(StandardScaler(), TabularMLPClassifier(width=32, dropout=0.1, **kw))


BOUNDS = {"tabularmlpclassifier__dropout[layers.2]": (0.0, 0.75),
          "tabularmlpclassifier__dropout[layers.5]": (0.0, 0.75),
          "tabularmlpclassifier__optimizer__weight_decay": loguniform(1e-6, 1e-2)}


@pytest.fixture(scope="module")
def fitted(digits):
    X, y = digits
    search = PopulationMutationSearch(_pipe(), BOUNDS, population_size=4, n_steps=4,
                                      hyper_lr=0.05, random_state=0)
    return search.fit(X, y)


def test_fit_results(fitted, digits):
    X, y = digits
    s = fitted
    hist = pd.DataFrame(s.history_)
    assert len(hist) == 4 * 4 and s.n_epochs_ == 16
    for name, spec in BOUNDS.items():
        lo, hi = spec if isinstance(spec, tuple) else spec.support()
        assert ((hist[name] > lo) & (hist[name] < hi)).all()
        assert lo < s.best_params_[name] < hi
    # hyper-parameters moved by their hypergradient within a step (not only by mutation)
    first = hist[(hist.step == 0) & (hist.exploited_from < 0)].student
    kept = hist[(hist.step == 1) & (hist.student.isin(first))]
    prev = hist[hist.step == 0].set_index("student").loc[kept.student]
    assert (np.abs(kept["tabularmlpclassifier__dropout[layers.2]"].to_numpy()
                   - prev["tabularmlpclassifier__dropout[layers.2]"].to_numpy()) > 1e-4).all()
    assert s.best_index_ == int(np.argmin(s.cv_results_["val_loss"]))
    assert s.best_score_ == s.cv_results_["mean_test_score"][s.best_index_]
    assert s.best_score_ > 0.8
    assert s.score(X, y) > 0.8
    assert s.predict(X[:5]).shape == (5,)
    assert isinstance(s.teacher_, Teacher)


def test_cv_results_schema_matches_gridsearch(fitted, digits):
    X, y = digits
    grid = GridSearchCV(_pipe(max_epochs=1), {"tabularmlpclassifier__lr": [1e-3, 1e-2]},
                        cv=2).fit(X, y)
    ours, theirs = fitted.cv_results_, grid.cv_results_
    structural = {k for k in theirs if not k.startswith("param") and "split1" not in k}
    assert structural <= set(ours)
    for key in structural:
        assert np.asarray(ours[key]).dtype.kind == np.asarray(theirs[key]).dtype.kind, key
    assert pd.DataFrame(ours).shape[0] == 4
    column = ours["param_tabularmlpclassifier__optimizer__weight_decay"]
    assert isinstance(column, np.ma.MaskedArray)


def test_best_estimator_is_the_student_with_user_settings(fitted):
    net = fitted.best_estimator_[-1]
    assert net.max_epochs == 20 and net.warm_start is False
    layer = net.module_.layers[5]
    rate = fitted.best_params_["tabularmlpclassifier__dropout[layers.5]"]
    assert float(layer.p) == pytest.approx(rate)


def test_refit_true_retrains_a_plain_net(digits):
    X, y = digits
    search = PopulationMutationSearch(_pipe(), BOUNDS, population_size=2, n_steps=2, refit=True,
                                      random_state=1).fit(X, y)
    net = search.best_estimator_[-1]
    assert isinstance(net.module_.layers[5], nn.Dropout)  # a plain net, not a student
    assert net.module_.layers[5].p == pytest.approx(
        search.best_params_["tabularmlpclassifier__dropout[layers.5]"])
    assert net.optimizer_.param_groups[0]["weight_decay"] == pytest.approx(
        search.best_params_["tabularmlpclassifier__optimizer__weight_decay"])
    assert len(net.history) == 2 and search.n_epochs_ == 2 * 2 + 2


def test_l2_per_layer_refit(digits):
    X, y = digits
    net = TabularMLPClassifier(width=16, max_epochs=2)
    search = PopulationMutationSearch(net, {"l2[1]": (0.0, 0.01), "lr": loguniform(1e-3, 1e-1)},
                                      population_size=2, n_steps=1, refit=True,
                                      random_state=0).fit(X, y)
    coefs = search.best_estimator_.penalty_coefficients()["l2"]
    assert coefs[0] == 0 and coefs[2] == 0
    assert coefs[1] == pytest.approx(search.best_params_["l2[1]"])


def test_results_do_not_depend_on_n_jobs(digits):
    X, y = digits
    kw = dict(population_size=3, n_steps=3, random_state=3, engine="sequential")
    a = PopulationMutationSearch(_pipe(), BOUNDS, n_jobs=1, **kw).fit(X, y)
    b = PopulationMutationSearch(_pipe(), BOUNDS, n_jobs=2, **kw).fit(X, y)
    assert a.best_params_ == pytest.approx(b.best_params_)
    np.testing.assert_allclose(a.cv_results_["val_loss"], b.cv_results_["val_loss"], rtol=1e-6)


def test_user_inputs_are_not_mutated(digits):
    X, y = digits
    est = _pipe()
    bounds = dict(BOUNDS)
    params = {k: v for k, v in est.get_params().items() if isinstance(v, (int, float, str))}
    PopulationMutationSearch(est, bounds, population_size=2, n_steps=1, random_state=0).fit(X, y)
    assert bounds.keys() == BOUNDS.keys()
    plain = {k: v for k, v in est.get_params().items() if isinstance(v, (int, float, str))}
    assert plain == params
    assert not hasattr(est[-1], "module_")


@pytest.mark.parametrize("bounds, kw, message", [
    ({"dropout[layers.2]": (0.6, 0.2)}, {}, "empty or inverted"),
    ({"dropout[layers.2]": (0.0, 1.0)}, {}, r"\[0, 1\)"),
    ({"optimizer__weight_decay": (-1e-3, 1e-2)}, {}, "must be >= 0"),
    ({"dropout[layers.9]": (0.0, 0.5)}, {}, "no dropout layer"),
    ({"module__width": (8, 64)}, {}, "not a hyper-parameter"),
    ({"nonsense": (0, 1)}, {}, "nonsense"),
    ({"lr": (1e-3, 1e-1)}, {"population_size": 1}, "population_size"),
    ({"lr": (1e-3, 1e-1)}, {"truncation": 0.0}, "truncation"),
    ({"lr": (1e-3, 1e-1)}, {"truncation": 0.6}, "truncation"),
    ({}, {}, "param_bounds is empty"),
])
def test_bad_input_fails_before_training(digits, bounds, kw, message):
    X, y = digits
    search = PopulationMutationSearch(TabularMLPClassifier(width=8, dropout=0.1), bounds, **kw)
    with pytest.raises(ValueError, match=message):
        search.fit(X, y)
    assert not hasattr(search, "history_")


def test_dropout_bound_needs_a_dropout_layer():
    X, y = load_iris(return_X_y=True)
    net = NeuralNetClassifier(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3),
                                            nn.Softmax(dim=-1)), max_epochs=1)
    search = PopulationMutationSearch(net, {"module__dropout": (0.0, 0.5)})
    with pytest.raises(ValueError, match="not a parameter|no nn.Dropout"):
        search.fit(X.astype(np.float32), y)


def test_plain_skorch_net_with_dropout(digits):
    X, y = digits
    torch.manual_seed(0)  # the module instance's weights are the students' start
    module = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10),
                           nn.Softmax(dim=-1))
    net = NeuralNetClassifier(module, max_epochs=3, lr=0.1, batch_size=64)
    search = PopulationMutationSearch(net, {"dropout[2]": (0.0, 0.75),
                                            "lr": loguniform(1e-2, 0.5)},
                                      population_size=3, n_steps=5, random_state=0)
    search.fit(X / 16.0, y)
    assert search.best_score_ > 0.7
    assert 0 < search.best_params_["dropout[2]"] < 0.75
    assert net.module is module and not hasattr(net, "module_")
    assert type(module[2]) is nn.Dropout  # the surgery happened on the students only


def test_clone_and_params():
    s = PopulationMutationSearch(TabularMLPClassifier(), {"lr": (1e-3, 1e-1)}, n_steps=3)
    c = clone(s)
    assert c.get_params()["n_steps"] == 3 and c.param_bounds == s.param_bounds


def test_pickle_round_trip(fitted, digits):
    import pickle
    X, _ = digits
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.predict(X[:20]), fitted.predict(X[:20]))


@pytest.mark.slow
@parametrize_with_checks([PopulationMutationSearch(TabularMLPClassifier(max_epochs=2, width=8),
                                                   {"lr": (1e-3, 1e-1)}, population_size=2,
                                                   n_steps=2, random_state=0)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_string_labels_and_minibatch_steps_keep_every_class():
    X, y = load_iris(return_X_y=True)
    labels = np.array(["setosa", "versicolor", "virginica"])[y]
    search = PopulationMutationSearch(TabularMLPClassifier(width=16, lr=0.05, batch_size=16),
                                      {"lr": loguniform(1e-2, 1e-1)}, population_size=2,
                                      n_steps=3, step=1, random_state=0)
    search.fit(X.astype(np.float32), labels)
    assert search.classes_.tolist() == ["setosa", "versicolor", "virginica"]
    assert set(search.predict(X.astype(np.float32))) <= set(labels)
    # one minibatch of 120 rows per step
    assert search.n_epochs_ == pytest.approx(2 * 3 * 16 / 120)


def test_plot_schedules_draws_every_student(fitted):
    import matplotlib
    matplotlib.use("Agg")
    from skhpo.plotting import plot_schedules

    fig = plot_schedules(fitted)
    assert len(fig.axes) == len(BOUNDS)
    ax = fig.axes[0]
    assert len(ax.lines) == fitted.population_size
    bold = [line for line in ax.lines if line.get_linewidth() == 2]
    assert len(bold) == 1
    hist = pd.DataFrame(fitted.history_)
    best = hist[hist.student == fitted.best_index_][list(BOUNDS)[0]].to_numpy()
    np.testing.assert_allclose(bold[0].get_ydata(), best)
    with pytest.raises(ValueError, match="fitted"):
        plot_schedules(PopulationMutationSearch(_pipe(), BOUNDS))


# -- the fused population (engine="fused") ----------------------------------------------------

def _diabetes():
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    return X[:300].astype(np.float32), ((y[:300] - y.mean()) / y.std()).astype(np.float32)


ENGINE_CASES = {
    # per-layer concrete dropout and weight decay (double backward through the dropout)
    "dropout-wd": (lambda: _pipe(), BOUNDS, {}),
    # lr and per-layer penalties on a regressor, minibatch steps, a fixed input dropout
    "lr-l2-l1-regression": (
        lambda: make_pipeline(StandardScaler(), __import__("skhpo").TabularMLPRegressor(
            width=16, depth=2, input_dropout=0.1, batch_size=32)),
        {"tabularmlpregressor__lr": loguniform(1e-3, 3e-2),
         "tabularmlpregressor__l2[1]": (0.0, 0.01), "tabularmlpregressor__l1": (0.0, 1e-3)},
        {"step": 5, "hyper_every": 3}),
    # SGD students with momentum (the STN / HPM benchmark setting) tuning lr and dropout
    "sgd-momentum": (
        lambda: _pipe(optimizer=torch.optim.SGD, optimizer__momentum=0.9, lr=0.05),
        {"tabularmlpclassifier__lr": loguniform(1e-2, 1e-1),
         "tabularmlpclassifier__dropout": (0.0, 0.5)}, {}),
    # plain SGD (no momentum buffer) with Nesterov off and weight decay tuned
    "sgd-plain-wd": (
        lambda: _pipe(optimizer=torch.optim.SGD, lr=0.1),
        {"tabularmlpclassifier__optimizer__weight_decay": loguniform(1e-5, 1e-2)}, {}),
}


@pytest.mark.parametrize("case", sorted(ENGINE_CASES))
def test_fused_population_follows_the_sequential_one(digits, case):
    """The stacked population draws what each skorch student draws, in the same order: the
    same mutations, the same ranking, hyper-parameter schedules and losses equal to float32
    rounding, the same best student."""
    make, bounds, kw = ENGINE_CASES[case]
    X, y = digits if "regression" not in case else _diabetes()
    runs = {engine: PopulationMutationSearch(make(), bounds, population_size=4, n_steps=4,
                                             hyper_lr=0.05, random_state=1, engine=engine,
                                             **kw).fit(X, y)
            for engine in ("fused", "sequential")}
    fused, seq = runs["fused"], runs["sequential"]
    assert fused.engine_ == "fused" and fused.engine_reason_ == ""
    assert seq.engine_ == "sequential"
    hf, hs = pd.DataFrame(fused.history_), pd.DataFrame(seq.history_)
    assert (hf.exploited_from > -1).any()  # some students were copied and mutated
    pd.testing.assert_series_equal(hf.exploited_from, hs.exploited_from)
    for name in bounds:
        np.testing.assert_allclose(hf[name], hs[name], rtol=1e-5, err_msg=name)
        assert fused.best_params_[name] == pytest.approx(seq.best_params_[name], rel=1e-5)
    np.testing.assert_allclose(hf.val_loss, hs.val_loss, rtol=1e-5)
    assert fused.best_index_ == seq.best_index_
    np.testing.assert_allclose(fused.cv_results_["mean_test_score"],
                               seq.cv_results_["mean_test_score"], atol=0.02)
    # the best student is an ordinary fitted net with the schedule's final values
    a, b = fused.best_estimator_[-1], seq.best_estimator_[-1]
    np.testing.assert_allclose(a.predict_proba(fused.best_estimator_[:-1].transform(X[:50]))
                               if hasattr(a, "predict_proba") else
                               a.predict(fused.best_estimator_[:-1].transform(X[:50])),
                               b.predict_proba(seq.best_estimator_[:-1].transform(X[:50]))
                               if hasattr(b, "predict_proba") else
                               b.predict(seq.best_estimator_[:-1].transform(X[:50])),
                               atol=1e-4)
    assert len(a.history) == len(b.history) == 4
    np.testing.assert_allclose(a.history[:, "train_loss"], b.history[:, "train_loss"],
                               rtol=1e-5)
    state_a, state_b = a.optimizer_.state_dict(), b.optimizer_.state_dict()
    assert type(a.optimizer_) is type(b.optimizer_)
    assert [sorted(s) for s in state_a["state"].values()] == \
        [sorted(s) for s in state_b["state"].values()]
    if isinstance(a.optimizer_, torch.optim.Adam):
        assert [s["step"] for s in state_a["state"].values()] == \
            [s["step"] for s in state_b["state"].values()]
    for sa, sb in zip(state_a["state"].values(), state_b["state"].values()):
        for key in ("exp_avg", "momentum_buffer"):
            if key in sa:
                torch.testing.assert_close(sa[key], sb[key], rtol=1e-3, atol=1e-5)
    assert a.optimizer_.param_groups[0]["lr"] == pytest.approx(
        b.optimizer_.param_groups[0]["lr"], rel=1e-5)


def test_fused_students_diverge_alone_as_skorch_students_do(digits):
    X, y = digits
    bounds = {"tabularmlpclassifier__lr": loguniform(1e-3, 1e4)}
    runs = [PopulationMutationSearch(_pipe(), bounds, population_size=6, n_steps=3,
                                     random_state=0, engine=engine).fit(X, y)
            for engine in ("fused", "sequential")]
    hf, hs = (pd.DataFrame(r.history_) for r in runs)
    assert hf.diverged.any() and not hf.diverged.all()
    pd.testing.assert_series_equal(hf.diverged, hs.diverged)
    pd.testing.assert_series_equal(hf.exploited_from, hs.exploited_from)
    healthy = ~hf.diverged
    np.testing.assert_allclose(hf.val_loss[healthy], hs.val_loss[healthy], rtol=1e-5)
    assert runs[0].best_params_ == pytest.approx(runs[1].best_params_, rel=1e-5)


def test_engine_auto_falls_back_with_the_reason_and_fused_refuses(digits):
    X, y = digits
    net = TabularMLPClassifier(width=16, dropout=0.1, optimizer=torch.optim.RMSprop,
                               max_epochs=2)
    kw = dict(population_size=2, n_steps=1, random_state=0)
    auto = PopulationMutationSearch(net, {"dropout": (0.0, 0.5)}, **kw).fit(X, y)
    assert auto.engine_ == "sequential" and "optimizer RMSprop" in auto.engine_reason_
    with pytest.raises(ValueError, match="engine='fused'.*optimizer RMSprop"):
        PopulationMutationSearch(net, {"dropout": (0.0, 0.5)}, engine="fused", **kw).fit(X, y)
    with pytest.raises(ValueError, match="engine"):
        PopulationMutationSearch(net, {"dropout": (0.0, 0.5)}, engine="gpu", **kw).fit(X, y)


def test_a_population_split_into_parts_trains_the_same(digits, monkeypatch):
    X, y = digits
    kw = dict(population_size=4, n_steps=2, hyper_lr=0.05, random_state=2, engine="fused")
    whole = PopulationMutationSearch(_pipe(), BOUNDS, **kw).fit(X, y)
    monkeypatch.setenv("SKHPO_MAX_GROUP_WEIGHTS", "1")  # parts of 2 students
    parts = PopulationMutationSearch(_pipe(), BOUNDS, **kw).fit(X, y)
    pd.testing.assert_frame_equal(pd.DataFrame(whole.history_).drop(columns="alpha"),
                                  pd.DataFrame(parts.history_).drop(columns="alpha"),
                                  check_exact=True)
