import math

import pytest

from skhpo.search.hyperlocal.linesearch import bounding_phase, golden_section, line_search


def test_bounding_phase_brackets_as_specified():
    # phi(t) = (t - 1)^2, step 0.1: phi falls at 0.1, 0.2, 0.4, 0.8, rises at 1.6 (i = 4)
    assert bounding_phase(lambda t: (t - 1) ** 2, 0.1) == pytest.approx((0.4, 1.6))
    assert bounding_phase(lambda t: t, 0.1) == (0.0, 0.1)  # rises at once: [0, step]
    assert bounding_phase(lambda t: (t - 0.15) ** 2, 0.1) == (0.0, 0.2)  # one move: [0, 2 step]
    with pytest.raises(ValueError, match="step must be > 0"):
        bounding_phase(lambda t: t, 0.0)


def test_golden_section_finds_the_minimum_to_tol():
    lo, hi = golden_section(lambda t: (t - 0.7) ** 2 + 3, 0.0, 2.0, tol=1e-6)
    assert hi - lo <= 1e-6 and lo <= 0.7 <= hi
    lo, hi = golden_section(lambda t: abs(t - 1.3), 0.4, 1.6, tol=1e-5)
    assert abs((lo + hi) / 2 - 1.3) < 1e-5


def test_line_search_records_trials_and_treats_non_finite_as_worst():
    t, trials = line_search(lambda t: (t - 1) ** 2, 0.1, 1e-5)
    assert t == pytest.approx(1.0, abs=1e-5)
    assert trials[0] == (0.0, 1.0) and len(trials) > 10
    # NaN beyond t = 0.5: the search stays below it
    t, _ = line_search(lambda t: (t - 1) ** 2 if t < 0.5 else math.nan, 0.1, 1e-5)
    assert t < 0.5
