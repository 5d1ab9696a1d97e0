"""skhpo which: each method against random search at equal epochs and at equal wall time."""

import pytest

from skhpo.bench.runner import Budget
from skhpo.bench.which_protocol import run_pair, summarize, verdicts

#: benchmark protocols: run by the full suite, not by the quick tier (-m 'not slow')
pytestmark = pytest.mark.slow

TINY = Budget(n_trials=4, n_finalists=1, max_epochs=3, cv=2)


@pytest.mark.parametrize("method", ["flatness", "hyperlocal", "fused-halving"])
def test_a_pair_gives_the_baseline_the_methods_epochs_and_wall_time(method):
    row = run_pair(method, "iris", 0, TINY)
    assert 0 <= row["method_score"] <= 1 and 0 <= row["epochs_score"] <= 1
    per_trial = TINY.cv * TINY.max_epochs
    if method == "hyperlocal":  # the same search, without the refinement
        assert row["epochs_trials"] == TINY.n_trials
    else:  # within one trial of the method's epochs (its refit aside)
        assert abs(row["epochs_epochs"] - row["method_epochs"]) <= per_trial / 2 + 1e-9
    assert row["epochs_epochs"] == row["epochs_trials"] * per_trial + TINY.max_epochs
    # equal wall time: the trial count scales with the method's wall time
    per_second = row["epochs_trials"] / row["epochs_wall"]
    assert row["wall_trials"] == max(1, round(row["method_wall"] * per_second))
    if row["wall_trials"] == row["epochs_trials"]:
        assert row["wall_score"] == row["epochs_score"]
    if method == "fused-halving":  # and the fused random search at equal wall time
        assert 0 <= row["fused_wall_score"] <= 1 and row["fused_wall_trials"] >= 1
        assert row["fused_wall_wall"] > 0
    else:
        assert "fused_wall_score" not in row


def _row(method, task, seed, m, e, w):
    return {"method": method, "task": task, "seed": seed, "method_score": m,
            "epochs_score": e, "wall_score": w, "method_wall": 1.0, "method_epochs": 10,
            "epochs_trials": 2, "wall_trials": 3, "epochs_wall": 1.0, "wall_wall": 1.5}


def test_summary_counts_paired_wins_and_verdicts_need_median_and_majority():
    rows = [_row("a", "iris", 0, 0.9, 0.8, 0.95), _row("a", "iris", 1, 0.9, 0.9, 0.95),
            _row("a", "iris", 2, 0.7, 0.8, 0.95),
            _row("b", "wine", 0, 0.9, 0.8, 0.8), _row("b", "wine", 1, 0.9, 0.85, 0.8)]
    summary = {(s["method"], s["task"]): s for s in summarize(rows)}
    a = summary["a", "iris"]
    assert a["wins_epochs"] == (1, 1, 1) and a["wins_wall"] == (0, 0, 3)
    assert a["d_epochs"] == pytest.approx(0.0) and a["d_wall"] == pytest.approx(-0.05)
    v = verdicts(summary.values())
    assert v["a"] == {"epochs": [], "wall": []}  # a tie in the median is no win
    assert v["b"] == {"epochs": ["wine"], "wall": ["wine"]}


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--cv", "1"], "--cv must be >= 2"),
    (["--tasks", "mnist"], "unknown task 'mnist'"),
    (["--n-trials", "1", "--max-epochs", "1"], "too small for flatness"),
])
def test_which_cli_bad_input_fails_before_training(capsys, argv, message):
    from skhpo.cli import main
    assert main(["which", *argv]) == 2
    assert message in capsys.readouterr().err
