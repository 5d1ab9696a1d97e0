import json

import pytest

from skhpo.bench.runner import Budget, load_task, run_benchmark, summarize
from skhpo.cli import main

TINY = Budget(n_trials=3, n_finalists=1, max_epochs=2, cv=2)


def test_equal_per_trial_epochs_and_epoch_accounting():
    rows = run_benchmark(["random", "flatness"], ["iris"], [0], TINY)
    by = {r["method"]: r for r in rows}
    # random: 3 candidates x 2 folds x 2 epochs + refit
    assert by["random"]["epochs"] == 3 * 2 * 2 + 2
    assert by["random"]["n_trainings"] == 3 * 2 + 1
    # flatness: 3 one-epoch screens + 1 finalist x 2 folds x 2 epochs + refit
    assert by["flatness"]["epochs"] == 3 + 1 * 2 * 2 + 2
    assert by["flatness"]["n_trainings"] == 3 + 2 + 1
    for r in rows:
        assert 0.0 <= r["test_score"] <= 1.0 and r["wall_time"] > 0
        assert all(k.startswith(("net__", "scale__")) for k in r["best_params"])
    (s_flat, s_rand) = summarize(rows)
    assert (s_flat["method"], s_rand["method"]) == ("flatness", "random")


def test_tasks_load():
    X, y, kind = load_task("diabetes")
    assert kind == "regression" and len(X) == len(y) == 442
    with pytest.raises(ValueError, match="unknown task 'mnist'"):
        load_task("mnist")


def test_cli_writes_results(tmp_path, capsys):
    code = main(["bench", "--tasks", "iris", "--seeds", "2", "--n-trials", "2",
                 "--n-finalists", "1", "--max-epochs", "2", "--cv", "2", "--out",
                 str(tmp_path)])
    assert code == 0
    rows = json.loads((tmp_path / "results.json").read_text())
    assert {r["method"] for r in rows} == {"random", "flatness"}
    assert (tmp_path / "results.csv").read_text().startswith("method,task,seed,test_score")
    out = capsys.readouterr().out
    assert "median test" in out and "wins / ties / losses" in out
    assert len(rows) == 4


@pytest.mark.parametrize("argv, message", [
    (["bench", "--tasks", "mnist"], "unknown task 'mnist'"),
    (["bench", "--methods", "hyperband"], "unknown method 'hyperband'"),
    (["bench", "--seeds", "0"], "--seeds must be >= 1"),
])
def test_cli_bad_input_is_a_message_not_a_traceback(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_grid_from_space_fits_the_budget():
    from skhpo.bench.runner import default_space, grid_from_space
    space = default_space("classification")
    for budget in (1, 6, 50, 400):
        grid = grid_from_space(space, budget)
        assert set(grid) == set(space)
        n = 1
        for values in grid.values():
            n *= len(values)
        assert n <= budget and n >= 1, (budget, grid)
    big = grid_from_space(space, 400)
    assert len(big["net__lr"]) >= 2 and big["net__depth"] == [1, 2, 3]
    assert all(1e-4 <= v <= 3e-2 for v in big["net__lr"])


def test_halving_over_epochs_spends_the_random_search_budget():
    budget = Budget(n_trials=3, n_finalists=1, max_epochs=9, cv=2)
    rows = {r["method"]: r for r in run_benchmark(["random", "halving", "grid"], ["iris"], [0],
                                                   budget)}
    # rungs of 9, 3, 1 candidates at 1, 3, 9 epochs: 27 epochs x 2 folds + refit
    assert rows["halving"]["epochs"] == rows["random"]["epochs"] == 3 * 2 * 9 + 9
    assert rows["halving"]["n_trainings"] > rows["random"]["n_trainings"]
    assert rows["grid"]["epochs"] <= rows["random"]["epochs"]
