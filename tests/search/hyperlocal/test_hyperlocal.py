import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from skorch import NeuralNetClassifier
from torch import nn

from skhpo import HyperLocalRefiner, TabularMLPClassifier
from skhpo.search.hyperlocal.curvature import flat_params
from skhpo.search.hyperlocal.lp import LinearProgram, solve_lp


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X).astype(np.float32)
    return train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)


def small(**kw):
    return TabularMLPClassifier(**{"depth": 1, "width": 16, "max_epochs": 15,
                                   "random_state": 0, **kw})


def grid():
    return GridSearchCV(small(l2=[1e-3, 1e-3]), {"l2": [[1e-3, 1e-3], [1e-2, 1e-4]]}, cv=2)


def test_ridge_lp_is_a_sign_step_on_the_ift_hypergradient():
    """All rows, tiny delta, loose weight box: the LP's hyper-parameter move is
    -sign(IFT hypergradient) and its weight move the implicit response."""
    rng = np.random.default_rng(0)
    X, Xv = rng.normal(size=(10, 3)), rng.normal(size=(10, 3))
    w_true = np.array([1.0, -2.0, 0.5])
    y, yv = X @ w_true + 0.3 * rng.normal(size=10), Xv @ w_true + 0.3 * rng.normal(size=10)
    lam = 0.5
    H = 2 * X.T @ X / 10 + 2 * lam * np.eye(3)  # f = mean (Xw - y)^2 + lam ||w||^2
    w = np.linalg.solve(H / 2, X.T @ y / 10)
    H_wl = (2 * w)[:, None]
    g = 2 * Xv.T @ (Xv @ w - yv) / 10
    hypergrad = -(H_wl[:, 0] @ np.linalg.solve(H, g))
    lp = LinearProgram(c=np.r_[0.0, g], A=np.hstack([H_wl, H]), delta=1e-9,
                       lower=np.r_[-1.0, np.full(3, -100.0)], upper=np.r_[1.0, np.full(3, 100.0)])
    x = solve_lp(lp).x
    assert x[0] == pytest.approx(-np.sign(hypergrad))
    np.testing.assert_allclose(x[1:], -np.linalg.solve(H, H_wl[:, 0] * x[0]), atol=1e-3)


def test_refines_a_grid_search_and_never_worsens_validation(digits):
    """The paper's method (LP over penalties and weights, one validation set)."""
    Xtr, Xte, ytr, yte = digits
    h = HyperLocalRefiner(grid(), weight_step="lp", accept_fraction=0,
                          random_state=0).fit(Xtr, ytr)
    before, after = h.validation_loss_
    assert after <= before
    assert h.improved_ and after < before
    assert set(h.best_params_) == {"l2"} and len(h.best_params_["l2"]) == 2
    assert all(v >= 0 for v in h.best_params_["l2"])  # clipped to the domain
    assert h.cv_results_["params"][0] != h.cv_results_["params"][1]
    assert h.best_score_ == h.cv_results_["mean_test_score"][1]
    assert set(h.timings_) == {"gradients", "hessian", "lp", "line_search"}
    kinds = h.history_["kind"]
    assert kinds[0] == "lp" and kinds.count("line_search") > 5
    # the base model is untouched: the refined one is a copy
    assert not torch.equal(flat_params(h.base_estimator_.module_),
                           flat_params(h.best_estimator_.module_))
    assert h.best_estimator_.l2 == h.best_params_["l2"]


@pytest.mark.slow
def test_prefit_pipeline_weight_decay_and_the_gurobi_backend(digits):
    pytest.importorskip("gurobipy")
    Xtr, Xte, ytr, yte = digits
    Xa, Xv, ya, yv = train_test_split(Xtr, ytr, test_size=0.2, random_state=0, stratify=ytr)
    net = NeuralNetClassifier(nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10)),
                              criterion=nn.CrossEntropyLoss, optimizer=torch.optim.Adam,
                              optimizer__weight_decay=1e-3, lr=1e-2, max_epochs=10,
                              train_split=None, verbose=0)
    pipe = make_pipeline(StandardScaler(), net).fit(Xa, ya)
    name = "neuralnetclassifier__optimizer__weight_decay"
    kw = dict(param_bounds=[name], weight_step="lp", rows="all", random_state=0)
    with pytest.raises(ValueError, match="pass its training data too"):
        HyperLocalRefiner(pipe, **kw).fit(Xv, yv)
    a = HyperLocalRefiner(pipe, **kw).fit(Xv, yv, X_train=Xa, y_train=ya)
    b = HyperLocalRefiner(pipe, lp_solver="gurobi", **kw).fit(Xv, yv, X_train=Xa, y_train=ya)
    assert a.validation_loss_ == pytest.approx(b.validation_loss_, rel=1e-5)
    assert a.best_params_[name] == pytest.approx(b.best_params_[name], rel=1e-4, abs=1e-9)
    assert a.validation_loss_[1] <= a.validation_loss_[0]


@pytest.mark.parametrize("kw", [dict(rows=0.01, random_state=1, accept_fraction=0),
                                pytest.param(dict(rows="all", random_state=2, box_weights=0.1),
                                             marks=pytest.mark.slow),  # an LP of every row
                                dict(rows=40, random_state=3, max_iter=2, line_step=1.0)])
def test_validation_loss_is_never_above_the_base(digits, kw):
    Xtr, _, ytr, _ = digits
    h = HyperLocalRefiner(grid(), weight_step="lp", **kw).fit(Xtr, ytr)
    before, after = h.validation_loss_
    assert after <= before
    if not h.improved_:  # a rejected step leaves the weights exactly as they were
        assert torch.equal(flat_params(h.base_estimator_.module_),
                           flat_params(h.best_estimator_.module_))
    # one LP per step; a second step runs only after an accepted first one
    lps = [i for i, k in enumerate(h.history_["kind"]) if k == "lp"]
    assert len(lps) == (2 if kw.get("max_iter", 1) == 2 and h.improved_ else 1)


@pytest.mark.parametrize("make, match", [
    (lambda: HyperLocalRefiner(grid(), ["lr"]), "the learning rate does not enter"),
    (lambda: HyperLocalRefiner(grid(), ["dropout"]), "dropout has no deterministic"),
    (lambda: HyperLocalRefiner(grid(), ["module__width"]), "architecture parameters"),
    (lambda: HyperLocalRefiner(grid(), ["alpha"]), "is not a penalty"),
    (lambda: HyperLocalRefiner(grid(), delta=0.0), "'delta' parameter"),
    (lambda: HyperLocalRefiner(grid(), box_weights=-1.0), "'box_weights' parameter"),
    (lambda: HyperLocalRefiner(grid(), weight_step="newton"), "'weight_step' parameter"),
    (lambda: HyperLocalRefiner(grid(), accept_fraction=1.0), "'accept_fraction' parameter"),
    (lambda: HyperLocalRefiner(grid(), accept_fraction=-0.1), "'accept_fraction' parameter"),
    (lambda: HyperLocalRefiner(grid(), hessian="sr1", weight_step="response"),
     "set weight_step='lp'"),
    (lambda: HyperLocalRefiner(GridSearchCV(small(), {"l2": [1e-3]}, cv=2, refit=False)),
     "no best_estimator_"),
    (lambda: HyperLocalRefiner(GridSearchCV(small(), {"lr": [1e-3, 1e-2]}, cv=2)),
     "tunes no penalty"),
    (lambda: HyperLocalRefiner(small(optimizer=torch.optim.AdamW),
                               ["optimizer__weight_decay"]), "decouples weight decay"),
])
def test_bad_input(digits, make, match):
    Xtr, _, ytr, _ = digits
    refiner = make()
    with pytest.raises(ValueError, match=match):
        refiner.fit(Xtr[:300], ytr[:300])
    assert not hasattr(refiner.estimator, "cv_results_")  # the user's search is never fitted


def _counting_grid(calls):
    """A GridSearchCV that records every call of its ``fit`` in ``calls``."""
    class Counting(GridSearchCV):
        def fit(self, *a, **k):
            calls.append(1)
            return super().fit(*a, **k)
    return Counting


def test_names_are_checked_before_the_base_search_trains(digits):
    Xtr, _, ytr, _ = digits
    calls = []
    Counting = _counting_grid(calls)
    search = Counting(small(), {"l2": [1e-3, 1e-2]}, cv=2)
    with pytest.raises(ValueError, match="the learning rate"):
        HyperLocalRefiner(search, ["lr"]).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="tunes no penalty"):
        HyperLocalRefiner(Counting(small(), {"lr": [1e-3]}, cv=2)).fit(Xtr, ytr)
    assert calls == []


# -- scikit-learn linear models: exact refits along the LP's penalty direction (step 8b) -------

@pytest.fixture(scope="module")
def diabetes():
    from sklearn.datasets import load_diabetes
    X, y = load_diabetes(return_X_y=True)
    return train_test_split(X, y, test_size=0.2, random_state=42)


def test_ridge_moves_alpha_against_the_hypergradient(diabetes):
    from sklearn.linear_model import Ridge
    Xtr, _, ytr, _ = diabetes
    h = HyperLocalRefiner(Ridge(alpha=0.05), accept_fraction=0, random_state=0).fit(Xtr, ytr)
    # the same split the refiner made, and the validation MSE as a function of alpha
    Xa, Xv, ya, yv = train_test_split(Xtr, ytr, test_size=0.2,
                                      random_state=np.random.RandomState(0).randint(2**31 - 1))

    def val_mse(alpha):
        return np.mean((Ridge(alpha=alpha).fit(Xa, ya).predict(Xv) - yv) ** 2)
    hypergrad = (val_mse(0.05 + 1e-6) - val_mse(0.05 - 1e-6)) / 2e-6
    assert h.improved_
    assert np.sign(h.best_params_["alpha"] - 0.05) == -np.sign(hypergrad)
    assert h.validation_loss_[1] == pytest.approx(val_mse(h.best_params_["alpha"]))
    assert h.validation_loss_[1] < h.validation_loss_[0]


def test_elastic_net_pipeline_from_a_grid_search(diabetes):
    from sklearn.linear_model import ElasticNet
    Xtr, Xte, ytr, yte = diabetes
    search = GridSearchCV(make_pipeline(StandardScaler(), ElasticNet()),
                          {"elasticnet__alpha": [1e-2, 1e-1, 1.0],
                           "elasticnet__l1_ratio": [0.1, 0.5, 0.9]}, cv=3)
    h = HyperLocalRefiner(search, random_state=0).fit(Xtr, ytr)
    assert h.validation_loss_[1] <= h.validation_loss_[0]
    alpha, ratio = h.best_params_["elasticnet__alpha"], h.best_params_["elasticnet__l1_ratio"]
    assert alpha > 0 and 0 < ratio <= 1
    assert h.best_estimator_[-1].alpha == alpha and h.best_estimator_[-1].l1_ratio == ratio
    assert len(h.cv_results_["params"]) == 2 and h.history_["kind"][0] == "lp"
    with pytest.raises(ValueError, match="param_bounds may name"):
        HyperLocalRefiner(search, ["elasticnet__tol"]).fit(Xtr, ytr)


# -- the benchmark protocol (skhpo hyperlocal) ---------------------------------------------------

def test_protocol_rows_and_summary():
    from skhpo.bench.hyperlocal_protocol import run_one, summarize
    pytest.importorskip("optuna")
    rows = [run_one(("enet",), base, 0, n_trials=8) for base in ("grid", "qmc")]
    rows.append(run_one(("mlp", 1, 200), "random", 0, n_trials=2, max_epochs=2))
    paper = run_one(("mlp", 1, 200), "random", 0, n_trials=2, max_epochs=2,
                    refiner_params={"weight_step": "lp", "accept_fraction": 0})
    assert np.isnan(paper["accept_mean_change"])  # no held-back check in the paper's method
    assert paper["base_time"] > 0 and paper["val_loss_before"] == rows[-1]["val_loss_before"]
    for r in rows:
        assert r["val_loss_after"] <= r["val_loss_before"]  # accept-if-better
        assert r["added_time"] == pytest.approx(r["refine_time"] / r["base_time"])
    mlp = rows[-1]
    assert mlp["task"] == "mlp-1hp-200" and 0 <= mlp["test_acc_after"] <= 1
    summary = {(s["task"], s["base"]): s for s in summarize(rows)}
    enet = summary["enet-diabetes", "grid"]
    assert enet["runs"] == 1 and "d_val_acc" not in enet
    assert enet["d_val_loss"] == pytest.approx(rows[0]["val_loss_after"] -
                                               rows[0]["val_loss_before"])


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--tasks", "mlp-3hp-all"], "--tasks: unknown ['mlp-3hp-all']"),
    (["--rows", "many"], "--rows must be a fraction"),
    (["--accept-fraction", "1.5"], "'accept_fraction' parameter"),
    (["--accept-confidence", "0.2"], "'accept_confidence' parameter"),
])
def test_hyperlocal_cli_bad_input(capsys, argv, message):
    from skhpo.cli import main
    assert main(["hyperlocal", *argv]) == 2
    assert message in capsys.readouterr().err


def test_sr1_hessian_needs_snapshots_and_refines(digits):
    from skhpo.search.hyperlocal.curvature import SR1Snapshots
    Xtr, _, ytr, _ = digits
    with pytest.raises(ValueError, match="needs the base net trained with"):
        HyperLocalRefiner(small(l2=[1e-3, 1e-3]), ["l2"], hessian="sr1",
                          weight_step="lp").fit(Xtr, ytr)
    net = small(width=8, l2=[1e-3, 1e-3], callbacks=[("sr1", SR1Snapshots())])
    h = HyperLocalRefiner(net, ["l2"], hessian="sr1", weight_step="lp",
                          random_state=0).fit(Xtr, ytr)
    assert h.validation_loss_[1] <= h.validation_loss_[0]
    assert h.history_["kind"][0] == "lp" and h.timings_["hessian"] > 0


@pytest.mark.slow
@parametrize_with_checks([HyperLocalRefiner(TabularMLPClassifier(max_epochs=20, width=16, lr=1e-2,
                                                                 l2=1e-4, random_state=0),
                                            ["l2"], random_state=0)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_a_useless_base_search_is_refused_before_it_trains(digits):
    """refit=False and hessian='sr1' without SR1Snapshots are known before any training."""
    Xtr, _, ytr, _ = digits
    calls = []
    Counting = _counting_grid(calls)
    with pytest.raises(ValueError, match="refit=False"):
        HyperLocalRefiner(Counting(small(), {"l2": [1e-3]}, cv=2, refit=False)).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="needs the base net trained with"):
        HyperLocalRefiner(Counting(small(), {"l2": [1e-3]}, cv=2), hessian="sr1",
                          weight_step="lp").fit(Xtr, ytr)
    assert calls == []


# -- the safeguards: the implicit weight response and the held-back acceptance ------------------

def test_conjugate_gradient_solves_and_stops_at_negative_curvature():
    from skhpo.search.hyperlocal.curvature import conjugate_gradient
    rng = np.random.default_rng(0)
    A = rng.normal(size=(30, 30))
    H = torch.as_tensor(A @ A.T + 0.5 * np.eye(30))
    b = torch.as_tensor(rng.normal(size=30))
    x, n = conjugate_gradient(lambda v: H @ v, b, damping=0.0, max_iter=200, tol=1e-10)
    np.testing.assert_allclose((H @ x).numpy(), b.numpy(), atol=1e-7)
    assert 0 < n <= 60
    # an indefinite H: never a step along negative curvature
    H_bad = torch.diag(torch.tensor([1.0, -1.0]))
    x, _ = conjugate_gradient(lambda v: H_bad @ v, torch.tensor([0.0, 1.0]), damping=0.0)
    assert torch.equal(x, torch.tensor([0.0, 1.0]))  # the first direction: b itself
    x, n = conjugate_gradient(lambda v: H_bad @ v, torch.tensor([1.0, 1.0]), damping=0.0)
    assert n == 0 and torch.equal(x, torch.tensor([1.0, 1.0]))


def test_the_response_step_keeps_the_linearised_training_optimality(digits):
    """weight_step="response": H_ww dw + H_wλ dλ ≈ 0 on every row (the LP's rows with all of
    them met exactly), with dλ = -sign of the implicit hypergradient."""
    from skhpo.search.hyperlocal.curvature import hessian_rows
    Xtr, _, ytr, _ = digits
    Xa, Xv, ya, yv = train_test_split(Xtr, ytr, test_size=0.3, random_state=0, stratify=ytr)
    net = TabularMLPClassifier(depth=0, l2=1e-3, max_epochs=60, lr=1e-2,
                               random_state=0).fit(Xa, ya)
    h = HyperLocalRefiner(net, ["l2"], weight_step="response", accept_fraction=0,
                          random_state=0)
    h.fit(Xv, yv, X_train=Xa, y_train=ya)
    row = h.history_["kind"].index("response")
    assert h.history_["hessian_products"][row] > 5
    # the same direction, recomputed with the refiner's own pieces, checked against H_ww
    from skhpo.search.hyperlocal.curvature import flat_gradient
    from skhpo.search.hyperlocal.penalties import read_penalties
    from skhpo.search.hyperlocal.step import NetStep, mixed_derivatives
    module, criterion = net.module_, net.criterion_
    train = (torch.as_tensor(Xa), torch.as_tensor(ya))
    penalties = read_penalties(net, "", {"l2": None}, {})
    assert [p.name for p in penalties] == ["l2"]

    def penalty(params):
        return 1e-3 * penalties[0].term(params)
    g = flat_gradient(module, criterion, torch.as_tensor(Xv), torch.as_tensor(yv))
    H_wl = mixed_derivatives(module, penalties)
    step = NetStep(h._step_settings(), module, criterion, penalties, train)
    d = step._response_direction(g, H_wl, penalty, 0)
    log = step.log
    d_lam, d_w = d[:1], d[1:]
    H = hessian_rows(module, criterion, *train, np.arange(g.numel()), penalty=penalty)
    residual = H @ d_w + H_wl @ d_lam
    assert float(residual.norm()) < 0.05 * float((H_wl @ d_lam).norm())
    # the predicted change g . dw is a descent, and log records it for the unscaled step
    assert float(g @ d_w) < 0 and float(d_lam.abs()) > 0
    assert log[0]["objective"] == pytest.approx(float(g @ d_w) / float(d_lam.abs()), rel=1e-4)


@pytest.mark.parametrize("weight_step", ["response", "lp"])
def test_a_step_is_kept_only_if_the_held_back_part_agrees(digits, weight_step):
    Xtr, _, ytr, _ = digits
    Xa, Xv, ya, yv = train_test_split(Xtr, ytr, test_size=0.3, random_state=0, stratify=ytr)
    net = TabularMLPClassifier(depth=1, width=16, l2=[1e-3, 1e-3], max_epochs=15,
                               random_state=0).fit(Xa, ya)
    w_user, outcomes = flat_params(net.module_).clone(), set()
    for seed in range(4):
        h = HyperLocalRefiner(net, ["l2"], weight_step=weight_step, accept_fraction=0.5,
                              random_state=seed).fit(Xv, yv, X_train=Xa, y_train=ya)
        kinds = h.history_["kind"]
        before, after = h.accept_loss_
        if h.improved_:
            assert after < before and h.validation_loss_[1] < h.validation_loss_[0]
            assert kinds[-1] == "accept" and h.history_["accepted"][-1] is True
        else:
            assert after == before and h.validation_loss_[1] == h.validation_loss_[0]
            assert torch.equal(flat_params(net.module_), flat_params(h.best_estimator_.module_))
            assert h.best_params_ == {"l2": [1e-3, 1e-3]} or "accept" not in kinds
        outcomes.add(h.improved_)
    assert outcomes == {True, False}  # both branches, with these seeds
    assert torch.equal(flat_params(net.module_), w_user)  # the user's net is never touched


def test_the_held_back_test_needs_a_confident_fall():
    from skhpo.search.hyperlocal.accept import loss_falls
    before = np.ones(100)
    noise = np.tile([0.1, -0.1], 50)
    # a mean fall of 0.005 with per-sample spread 0.1: se = 0.01, so only "it fell" passes
    after = before - 0.005 + noise
    ok, mean, se, bound = loss_falls(before, after, 0.5)
    assert ok and mean == pytest.approx(-0.005) and se == pytest.approx(0.01005, rel=1e-2)
    assert not loss_falls(before, after, 0.9)[0]
    assert loss_falls(before, before - 0.05 + noise, 0.9)[0]  # 5 standard errors
    assert not loss_falls(before, before + 0.05, 0.5)[0]  # a rise is never kept


def test_auto_takes_the_lp_step_on_small_nets_and_the_response_step_on_large_ones(digits):
    Xtr, _, ytr, _ = digits
    Xa, Xv, ya, yv = train_test_split(Xtr[:600], ytr[:600], test_size=0.3, random_state=0,
                                      stratify=ytr[:600])
    kinds = {}
    for width in (16, 256):  # 1,210 and 19,210 weights (the threshold: 15,000)
        net = TabularMLPClassifier(depth=1, width=width, l2=1e-3, max_epochs=2,
                                   random_state=0).fit(Xa, ya)
        h = HyperLocalRefiner(net, ["l2"], random_state=0).fit(Xv, yv, X_train=Xa, y_train=ya)
        kinds[width] = h.history_["kind"][0]
    assert kinds == {16: "lp", 256: "response"}


def test_a_scikit_learn_base_search_runs_as_its_fused_drop_in(digits):
    """engine="auto": the same fits (seeded nets), the same base results, trained as stacked
    models; "sequential": the search as given; another search class: as given."""
    from scipy.stats import loguniform
    from sklearn.model_selection import RandomizedSearchCV

    from skhpo import FlatnessSearchCV, FusedGridSearchCV, FusedRandomizedSearchCV

    X, _, y, _ = digits
    net = TabularMLPClassifier(width=16, max_epochs=3, random_state=0, l2=1e-4)
    base = RandomizedSearchCV(net, {"l2": loguniform(1e-6, 1e-2), "lr": loguniform(1e-3, 3e-2)},
                              n_iter=3, cv=2, random_state=0)
    fused = HyperLocalRefiner(base, ["l2"], random_state=0).fit(X, y)
    plain = HyperLocalRefiner(base, ["l2"], base_engine="sequential",
                              random_state=0).fit(X, y)
    assert type(fused.base_search_) is FusedRandomizedSearchCV
    assert type(plain.base_search_) is RandomizedSearchCV and not hasattr(base, "cv_results_")
    np.testing.assert_allclose(fused.base_search_.cv_results_["mean_test_score"],
                               plain.base_search_.cv_results_["mean_test_score"], atol=1e-6)
    assert fused.best_params_ == pytest.approx(plain.best_params_)
    grid = GridSearchCV(net, {"l2": [1e-4, 1e-3]}, cv=2)
    refined = HyperLocalRefiner(grid, ["l2"], random_state=3).fit(X, y)
    assert type(refined.base_search_) is FusedGridSearchCV
    assert refined.base_search_.random_state == 3
    flat = FlatnessSearchCV(net, {"l2": [1e-4, 1e-3]}, n_candidates=2, n_finalists=1, cv=2,
                            random_state=0)
    assert type(HyperLocalRefiner(flat, ["l2"], random_state=0).fit(X, y).base_search_) \
        is FlatnessSearchCV
