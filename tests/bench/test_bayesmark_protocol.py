import json

import numpy as np
import pytest
from sklearn.datasets import load_iris

from skhpo.bench.bayesmark_protocol import (
    MLP_ADAM,
    PAPER_CRITERION,
    WarpedUniform,
    flattest,
    load_raw,
    load_results,
    objective,
    run_study,
    sample_configs,
    score_results,
)
from skhpo.cli import main

#: benchmark protocols: run by the full suite, not by the quick tier (-m 'not slow')
pytestmark = pytest.mark.slow


def test_integer_draws_round_half_to_even_so_endpoints_get_half_mass():
    dist, rng = WarpedUniform("int", "linear", 0, 2), np.random.default_rng(0)
    draws = np.array([dist.rvs(rng) for _ in range(20000)])
    freq = np.bincount(draws, minlength=3) / draws.size
    np.testing.assert_allclose(freq, [0.25, 0.5, 0.25], atol=0.015)


def test_warped_draws_stay_in_the_box_and_follow_the_warp():
    rng = np.random.default_rng(1)
    configs = sample_configs(rng, 2000)
    for name, (kind, _warp, low, high) in MLP_ADAM.items():
        values = np.array([c[name] for c in configs])
        assert values.min() >= low and values.max() <= high, name
        if kind == "int":
            assert all(isinstance(c[name], int) for c in configs)
    # log warp: the median of alpha is the geometric middle of [1e-5, 10]
    alpha = np.array([c["alpha"] for c in configs])
    assert abs(np.log10(np.median(alpha)) - np.log10(np.sqrt(1e-5 * 10))) < 0.2
    # logit warp: beta_1's median is expit of the middle of [logit .5, logit .99]
    from scipy.special import expit, logit
    beta1 = np.median([c["beta_1"] for c in configs])
    assert abs(beta1 - expit((logit(0.5) + logit(0.99)) / 2)) < 0.02
    assert sample_configs(np.random.default_rng(5), 3) == sample_configs(
        np.random.default_rng(5), 3)


def test_objective_is_cv_accuracy_and_log_loss_and_failure_is_inf():
    _, _, X_train, y_train = load_raw("iris")
    assert len(X_train) == 120  # the 80 % part, unscaled
    good = {"hidden_layer_sizes": 50, "alpha": 1e-4, "batch_size": 32,
            "learning_rate_init": 1e-2, "tol": 1e-4, "validation_fraction": 0.1,
            "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-8}
    loss = objective(good, X_train, y_train, seed=0)
    assert -1.0 <= loss["acc"] < -0.6 and 0.0 < loss["nll"] < 1.0
    assert objective(good, X_train, y_train, seed=0) == loss  # seeded
    bad = {**good, "hidden_layer_sizes": 0}  # MLPClassifier refuses it in every fold
    assert objective(bad, X_train, y_train, seed=0) == {"acc": np.inf, "nll": np.inf}
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        load_raw("mnist")


def test_flattest_goes_through_flatness_search_screen():
    X, y = load_iris(return_X_y=True)
    configs = sample_configs(np.random.default_rng(0), 6)
    kept = flattest(configs, X, y, n_keep=2, criterion=PAPER_CRITERION, seed=0)
    assert len(kept) == 2 and all(c in configs for c in kept)
    assert kept == flattest(configs, X, y, n_keep=2, criterion=PAPER_CRITERION, seed=0)


def _study(method, seed, acc, nll):
    return {"dataset": "toy", "method": method, "seed": seed, "acc": acc, "nll": nll,
            "wall_time": 2.0 if method == "random" else 1.0}


def test_score_results_on_hand_made_studies():
    # random: two studies of 3 evaluations; "m": studies of 2 (padded with +inf)
    results = {("toy", "random"): [_study("random", 0, [-0.5, -0.6, -0.7], [1.0, 0.8, 0.9]),
                                   _study("random", 1, [-0.4, -0.5, -0.6], [1.2, 1.1, 1.0])],
               ("toy", "m"): [_study("m", 0, [-0.9, -0.5], [0.5, 0.9]),
                              _study("m", 1, [-0.6, -0.6], [1.5, 1.4])]}
    rows = {r["method"]: r for r in score_results(results)}
    # acc: opt = -0.9 (minus pad), clip = median of random = -0.55
    # m's finals: -0.9 -> 0, -0.6 -> (0.3 / 0.35); random's: -0.7 -> 0.2/0.35, -0.6 -> 0.3/0.35
    # nll: opt = 0.5, clip = median(1.0, 0.8, 0.9, 1.2, 1.1, 1.0) = 1.0
    # m's finals: 0.5 -> 0, 1.4 -> 0.9/0.5 clipped to 1; random's: 0.8 -> 0.6, 1.0 -> 1
    m = 100 * (1 - np.array([(0 + 0) / 2, (0.3 / 0.35 + 1) / 2]))
    r = 100 * (1 - np.array([(0.2 / 0.35 + 0.6) / 2, (0.3 / 0.35 + 1) / 2]))
    assert rows["m"]["mean"] == pytest.approx(m.mean(), abs=1e-6)
    assert rows["m"]["median"] == pytest.approx(np.median(m), abs=1e-6)
    assert rows["random"]["mean"] == pytest.approx(r.mean(), abs=1e-6)
    assert rows["random"]["wall_per_study"] == 2.0 and rows["m"]["n"] == 2
    assert rows["m"]["pool"] == "m+random"
    # a pool without random search has no clip: it is not scored
    assert score_results(results, pool={"m"}) == []


def test_cli_runs_resumes_and_scores(tmp_path, capsys):
    argv = ["bayesmark", "--out", str(tmp_path), "--datasets", "iris", "--studies", "2",
            "--calls", "2", "--methods", "random", "fghpo-repo", "--n-jobs", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("[") >= 4 and "fghpo-repo" in out
    results = load_results(str(tmp_path))
    assert sorted(results) == [("iris", "fghpo-repo"), ("iris", "random")]
    study = results["iris", "fghpo-repo"][0]
    assert len(study["configs"]) == len(study["acc"]) == 2
    assert (tmp_path / "scores.csv").read_text().startswith("dataset,method,pool,n,mean")
    saved = json.loads((tmp_path / "iris" / "random" / "0.json").read_text())
    assert main(argv) == 0  # resumes: nothing left to run, the same studies scored
    assert "[1/" not in capsys.readouterr().out
    assert json.loads((tmp_path / "iris" / "random" / "0.json").read_text()) == saved
    # a sub-pool is normalised on its own and saved beside the full pool's scores
    assert main(["bayesmark", "--out", str(tmp_path), "--score-only", "--pool", "random"]) == 0
    pooled = (tmp_path / "scores_random.csv").read_text().splitlines()
    assert len(pooled) == 2 and pooled[1].startswith("iris,random,random,2,")
    assert main(["bayesmark", "--out", str(tmp_path), "--score-only", "--pool",
                 "fghpo-repo"]) == 2
    assert "--pool must include random" in capsys.readouterr().err


def test_study_suggestions_are_configurations_of_the_space():
    study = run_study("iris", "fghpo-paper", 0, n_calls=45)
    # the suggestions are exactly the 10 flattest of the study's 50 draws, flattest first
    from skhpo.bench.bayesmark_protocol import DATASETS, METHODS
    rng = np.random.default_rng([0, DATASETS.index("iris"), METHODS.index("fghpo-paper")])
    draws = sample_configs(rng, 50)
    _, _, X_train, y_train = load_raw("iris")
    assert study["configs"] == flattest(draws, X_train, y_train, n_keep=10,
                                        criterion=PAPER_CRITERION, seed=0)
    for c in study["configs"]:
        assert set(c) == set(MLP_ADAM)
    assert study["suggest_time"] < study["wall_time"]
    with pytest.raises(ValueError, match="unknown method 'tpe'"):
        run_study("iris", "tpe", 0)


def test_cli_bad_input(capsys):
    assert main(["bayesmark", "--out", "x", "--studies", "0"]) == 2
    assert "--studies must be >= 1" in capsys.readouterr().err
