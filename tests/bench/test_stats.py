import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from skhpo.bench.stats import benjamini_hochberg, describe, pairwise_tests, wins_ties_losses


def test_describe():
    d = describe([1, 2, 3, 4, 100])
    assert d == {"median": 3.0, "iqr": 2.0, "mean": 22.0, "n": 5}


def test_benjamini_hochberg_by_hand():
    # p sorted: 0.01, 0.02, 0.03, 0.5 ; m = 4
    # raw BH: 0.04, 0.04, 0.04, 0.5 -> monotone from the top: same
    np.testing.assert_allclose(benjamini_hochberg([0.03, 0.5, 0.01, 0.02]),
                               [0.04, 0.5, 0.04, 0.04])
    # step-up monotonicity: 0.01*3/1=0.03, 0.04*3/2=0.06, 0.045*3/3=0.045 -> 0.03, 0.045, 0.045
    np.testing.assert_allclose(benjamini_hochberg([0.01, 0.04, 0.045]), [0.03, 0.045, 0.045])
    assert benjamini_hochberg([0.9, 0.95]).max() <= 1.0


def test_pairwise_tests_and_wins_ties_losses():
    scores = {"a": [0.90, 0.91, 0.92, 0.93, 0.94, 0.95],
              "b": [0.80, 0.81, 0.82, 0.83, 0.84, 0.85],
              "c": [0.905, 0.915, 0.925, 0.935, 0.945, 0.955]}
    tests = {(t["a"], t["b"]): t for t in pairwise_tests(scores)}
    p_ab = mannwhitneyu(scores["a"], scores["b"]).pvalue
    assert tests[("a", "b")]["p"] == pytest.approx(p_ab)
    assert tests[("a", "b")]["better"] == "a" and tests[("b", "c")]["better"] == "c"
    assert tests[("a", "c")]["better"] is None  # overlapping samples: a tie
    wtl = wins_ties_losses(list(tests.values()))
    assert wtl == {"a": {"wins": 1, "ties": 1, "losses": 0},
                   "b": {"wins": 0, "ties": 0, "losses": 2},
                   "c": {"wins": 1, "ties": 1, "losses": 0}}
    # lower is better flips the winner
    flipped = {(t["a"], t["b"]): t for t in pairwise_tests(scores, higher_is_better=False)}
    assert flipped[("a", "b")]["better"] == "b"


def test_identical_samples_are_a_tie():
    (t,) = pairwise_tests({"x": [1, 1, 1], "y": [1, 1, 1]})
    assert t["p"] == 1.0 and t["better"] is None
