import numpy as np
import pytest

from skhpo.bench.bayesmark import best_so_far, normalized, normalized_scores, pool_baselines


def test_best_so_far_treats_nan_as_failure():
    np.testing.assert_array_equal(best_so_far([[3, np.nan, 2, 5]]), [[3, 3, 2, 2]])


def test_hand_computed_scores():
    # one test case; random's evaluations {3, 2, 4, 5, 1.5, 6} have median 3.5
    ev = {"acc": {"random": np.array([[3.0, 2.0, 4.0], [5.0, 1.5, 6.0]]),
                  "other": np.array([[1.0, 9.0, 9.0], [3.5, 3.5, 3.5]])}}
    opt, clip = pool_baselines(ev["acc"])
    assert clip == 3.5 and opt < 1.0 and opt == pytest.approx(1.0, abs=1e-10)
    scores = normalized_scores(ev)
    # random trial 1: best 2.0 -> N = (2 - 1) / 2.5 = 0.4 -> 60; trial 2: 1.5 -> 0.2 -> 80
    np.testing.assert_allclose(scores["random"], [60.0, 80.0], atol=1e-8)
    # other: trial 1 hits opt -> 100; trial 2 never beats clip -> N = 1 -> 0
    np.testing.assert_allclose(scores["other"], [100.0, 0.0], atol=1e-8)


def test_two_test_cases_are_averaged_per_trial():
    case = {"random": np.array([[2.0, 3.0]]), "m": np.array([[1.0, 1.0]])}
    scores = normalized_scores({"acc": case, "nll": case})
    np.testing.assert_allclose(scores["m"], [100.0], atol=1e-8)
    # random's best 2.0, clip median(2, 3) = 2.5, opt = 1 -> N = 1 / 1.5
    np.testing.assert_allclose(scores["random"], [100 * (1 - 1 / 1.5)], atol=1e-8)


def test_values_above_clip_are_clipped_and_failures_count_as_worst():
    assert normalized([10.0], 0.0, 1.0)[0] == 1.0
    assert normalized([np.inf], 0.0, 1.0)[0] == 1.0


def test_iid_random_search_scores_are_stable_and_an_oracle_scores_100():
    means = []
    for seed in range(3):
        r = np.random.default_rng(seed).uniform(0, 1, size=(200, 45))
        oracle = np.zeros((200, 45))
        means.append(normalized_scores({"p": {"random": r, "oracle": oracle}}))
    for s in means:
        np.testing.assert_allclose(s["oracle"], 100.0, atol=1e-8)
    # best of 45 uniform draws vs median 0.5: E[min] = 1/46 -> N ~ 0.0435 -> ~95.7
    random_means = [s["random"].mean() for s in means]
    assert np.ptp(random_means) < 1.0  # sd of a 200-trial mean is about 0.15 points
    assert random_means[0] == pytest.approx(100 * (1 - (1 / 46) / 0.5), abs=0.5)


def test_pool_needs_random_search():
    with pytest.raises(ValueError, match="no 'random' method"):
        pool_baselines({"m": np.ones((1, 2))})
