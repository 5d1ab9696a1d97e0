import json
import os

import pytest

from skhpo.bench.runner import Budget, fused_check, load_task, run_benchmark, summarize
from skhpo.cli import main

#: benchmark protocols: run by the full suite, not by the quick tier (-m 'not slow')
pytestmark = pytest.mark.slow

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


def test_flatness_repo_screens_under_one_optimiser_and_spends_flatness_epochs():
    rows = {r["method"]: r for r in run_benchmark(["flatness", "flatness-repo"], ["iris"], [0],
                                                  Budget(n_trials=6, n_finalists=2,
                                                         max_epochs=2, cv=2))}
    assert rows["flatness-repo"]["epochs"] == rows["flatness"]["epochs"]
    # the finalists keep their own lr (not the screen's fixed 1e-3)
    assert rows["flatness-repo"]["best_params"]["net__lr"] != 1e-3


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
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "median test" in out and "wins / ties / losses" in out
    assert len(rows) == 4


@pytest.mark.parametrize("argv, message", [
    (["bench", "--tasks", "mnist"], "unknown task 'mnist'"),
    (["bench", "--methods", "hyperband"], "unknown method 'hyperband'"),
    (["bench", "--seeds", "0"], "--seeds must be >= 1"),
    (["bench", "--n-trials", "1", "--n-finalists", "1", "--tasks", "iris"],
     "too small for flatness"),
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


def test_equal_epoch_budget_sizes_flatness_to_random_search():
    budget = Budget(n_trials=4, n_finalists=2, max_epochs=3, cv=2)  # 24 CV epochs
    assert budget.flatness_sizes() == (6, 3)  # 6 one-epoch screens + 3 x 2 x 3 = 24
    rows = {r["method"]: r for r in run_benchmark(["random", "flatness"], ["iris"], [0],
                                                   budget)}
    assert rows["flatness"]["epochs"] == rows["random"]["epochs"] == 24 + 3
    # when the budget does not divide evenly flatness stays under it, by less than one finalist
    for n, k, e, cv in [(50, 10, 30, 3), (20, 4, 20, 3), (7, 3, 5, 2)]:
        b = Budget(n_trials=n, n_finalists=k, max_epochs=e, cv=cv)
        cand, fin = b.flatness_sizes()
        spent = cand + fin * cv * e
        assert b.epochs - (cv * e + n / k) < spent <= b.epochs + 1, (b, cand, fin)
    trials = Budget(n_trials=4, n_finalists=2, max_epochs=3, cv=2, mode="trials")
    assert trials.flatness_sizes() == (4, 2)
    with pytest.raises(ValueError, match="budget mode must be one of epochs, trials"):
        Budget(mode="time")
    with pytest.raises(ValueError, match="n_finalists=5 must be <= n_trials=4"):
        Budget(n_trials=4, n_finalists=5)


def test_optuna_tpe_on_the_same_space_and_budget():
    pytest.importorskip("optuna_integration")
    from skhpo.bench.runner import default_space, optuna_space
    space = optuna_space(default_space("classification"))
    assert space["net__lr"].log and (space["net__lr"].low, space["net__lr"].high) == (1e-4, 3e-2)
    assert space["net__depth"].choices == (1, 2, 3)
    budget = Budget(n_trials=3, n_finalists=1, max_epochs=2, cv=2)
    rows = {r["method"]: r for r in run_benchmark(["random", "optuna"], ["iris"], [0], budget)}
    assert rows["optuna"]["epochs"] == rows["random"]["epochs"] == 3 * 2 * 2 + 2
    assert rows["optuna"]["n_trainings"] == 3 * 2 + 1
    assert set(rows["optuna"]["best_params"]) == set(default_space("classification"))
    again = run_benchmark(["optuna"], ["iris"], [0], budget)[0]
    assert again["test_score"] == rows["optuna"]["test_score"]  # seeded sampler and nets


def test_missing_optional_method_is_skipped_with_a_message(monkeypatch, capsys, tmp_path):
    from skhpo.bench import runner
    monkeypatch.setitem(runner.OPTIONAL, "optuna", (("no_such_module_xyz",), "pip install x"))
    assert main(["bench", "--tasks", "iris", "--seeds", "1", "--n-trials", "2",
                 "--n-finalists", "1", "--max-epochs", "1", "--cv", "2",
                 "--methods", "random", "optuna"]) == 0
    captured = capsys.readouterr()
    assert "skipping optuna needs no_such_module_xyz: pip install x" in captured.err
    assert "optuna" not in captured.out.split("median test")[1]
    assert main(["bench", "--methods", "optuna"]) == 2
    assert "no method left to run" in capsys.readouterr().err


def test_plot_has_one_panel_per_task(tmp_path):
    import matplotlib.image as mpimg

    from skhpo.bench.plot import plot_results
    rows = [{"task": t, "method": m, "seed": s, "wall_time": 1.0 + s, "test_score": 0.5 + s / 10}
            for t in ("iris", "wine", "digits") for m in ("random", "flatness") for s in (0, 1)]
    one = plot_results([r for r in rows if r["task"] == "iris"], tmp_path / "one.png")
    three = plot_results(rows, tmp_path / "three.png")
    w1, w3 = mpimg.imread(one).shape[1], mpimg.imread(three).shape[1]
    assert w3 == pytest.approx(3 * w1, rel=0.02)


def test_progress_bar():
    from skhpo.bench.core import bar as _bar
    assert _bar(3, 12, 30.0) == "[#####...............] 3/12 1:30 left"
    assert _bar(12, 12, 30.0).startswith("[" + "#" * 20 + "] 12/12 0:00")


def test_autohyper_against_the_lr_grid_counts_every_trial():
    budget = Budget(n_trials=3, n_finalists=1, max_epochs=2, cv=2)
    rows = {r["method"]: r for r in run_benchmark(["autohyper", "lr-grid"], ["wine"], [0],
                                                   budget)}
    grid, auto = rows["lr-grid"], rows["autohyper"]
    assert grid["epochs"] == 20 * 2 * 2 + 2 and grid["n_trainings"] == 20 * 2 + 1
    assert list(auto["best_params"]) == ["net__lr"] == list(grid["best_params"])
    trials = auto["n_trainings"] - 2 - 1  # minus the final point's 2 folds and the refit
    assert trials >= 3 and auto["epochs"] == trials * 5 + 2 * 2 + 2


def test_hpm_and_cpmlho_in_the_bench_count_their_epochs():
    budget = Budget(n_trials=4, n_finalists=1, max_epochs=5, cv=2)
    rows = {r["method"]: r for r in run_benchmark(["hpm", "cpmlho", "random"], ["iris"], [0],
                                                   budget)}
    hpm, cp, rnd = rows["hpm"], rows["cpmlho"], rows["random"]
    # 4 students x (4 trials x 2 folds x 5 epochs / 4) steps = random search's 40 CV epochs
    assert hpm["epochs"] == 40 and hpm["n_trainings"] == 4
    assert rnd["epochs"] == 40 + 5
    assert set(hpm["best_params"]) == {"net__lr", "net__optimizer__weight_decay"}
    assert cp["epochs"] == 5 and cp["n_trainings"] == 1
    assert set(cp["best_params"]) == {"net__dropout[layers.2]", "net__dropout[layers.5]"}


def test_baselines_are_reproducible_with_workers():
    """With n_jobs=2 the baselines fit in worker processes: the net's own random_state makes
    a rerun give the same scores and the same chosen candidate."""
    budget = Budget(n_trials=4, n_finalists=1, max_epochs=3, cv=2)
    runs = [run_benchmark(["random"], ["wine"], [0, 1], budget, n_jobs=2) for _ in range(2)]
    for a, b in zip(*runs):
        assert a["test_score"] == b["test_score"] and a["cv_score"] == b["cv_score"]
        assert a["best_params"] == b["best_params"]


def test_quick_end_to_end(tmp_path, capsys):
    """The README's main job, exactly as a user runs it (about a minute on 2 cores)."""
    assert main(["bench", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = json.loads((tmp_path / "results.json").read_text())
    assert len(rows) == 15
    assert {r["method"] for r in rows} == {"random", "fused-random", "flatness"}
    assert {r["task"] for r in rows} == {"breast_cancer"}
    by = {(r["method"], r["seed"]): r for r in rows}
    for seed in range(5):  # equal epoch budgets: flatness within one finalist of random
        assert 0 <= by["random", seed]["epochs"] - by["flatness", seed]["epochs"] < 3 * 15 + 4
        assert by["flatness", seed]["test_score"] > 0.85
    assert "wins / ties / losses" in out and "15/15" in out
    assert "FusedRandomizedSearchCV against RandomizedSearchCV" in out
    for seed in range(5):  # the fused drop-in trains random search's fits
        assert by["fused-random", seed]["epochs"] == by["random", seed]["epochs"]
    assert (tmp_path / "results.png").exists()


# -- HPM protocols ------------------------------------------------------------------------------

def test_synthetic_functions_reach_their_minima():
    import math

    import torch

    from skhpo.bench.synthetic import FUNCTIONS

    argmins = {"branin": [(-math.pi, 12.275), (math.pi, 2.275), (9.42478, 2.475)],
               "hartmann6": [(0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573)],
               "rosenbrock": [(1.0, 1.0)], "bohachevsky": [(0.0, 0.0)]}
    for name, points in argmins.items():
        f, domain, f_min = FUNCTIONS[name]
        for x in points:
            assert float(f(torch.tensor(x, dtype=torch.float64))) == pytest.approx(f_min, abs=1e-5)
            assert all(lo <= xi <= hi for xi, (lo, hi) in zip(x, domain))


@pytest.mark.parametrize("method", ["random", "pbt", "hypergradient", "hpm-wo-t", "hpm"])
def test_synthetic_budget_is_counted_exactly(method):
    from skhpo.bench.synthetic import FUNCTIONS, best_so_far, run_method

    trace = run_method(method, "branin", budget=60, seed=1)
    assert len(trace) == 60  # every member's evaluations, the teacher's included
    curve = best_so_far(trace, [30, 60])
    assert curve[1] <= curve[0] and curve[1] >= FUNCTIONS["branin"][2] - 1e-9


def test_synthetic_hpm_beats_random_on_hartmann6():
    """The population's hypergradient steps find Hartmann-6's basin: over 3 seeds and 150
    evaluations both HPM variants end below random search (which stays above -3)."""
    import numpy as np

    from skhpo.bench.synthetic import run_method

    best = {m: np.mean([run_method(m, "hartmann6", 150, s).min() for s in range(3)])
            for m in ("random", "hpm-wo-t", "hpm")}
    assert best["hpm"] < best["random"] and best["hpm-wo-t"] < best["random"]


def test_hpm_cli_synthetic_and_nets(tmp_path, capsys):
    from skhpo.cli import main

    assert main(["hpm", "synthetic", "--seeds", "2", "--budget", "30", "--out",
                 str(tmp_path / "syn")]) == 0
    out = capsys.readouterr().out
    assert "hartmann6" in out and "hpm-wo-t" in out
    assert (tmp_path / "syn" / "synthetic.png").stat().st_size > 1000
    assert main(["hpm", "nets", "--tasks", "wine", "--seeds", "1", "--population", "3",
                 "--n-steps", "2", "--out", str(tmp_path / "nets")]) == 0
    rows = (tmp_path / "nets" / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 3  # random, hpm-wo-t, hpm
    assert main(["hpm", "synthetic", "--budget", "10"]) == 2


def test_fused_random_trains_random_search_fits(tmp_path):
    """The fused drop-in in the bench: the same candidates and seeds as random search, so the
    same chosen parameters and test scores (to float32 rounding)."""
    assert main(["bench", "--tasks", "iris", "--seeds", "2", "--n-trials", "4",
                 "--max-epochs", "3", "--cv", "2", "--methods", "random", "fused-random",
                 "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())
    by = {(r["method"], r["seed"]): r for r in rows}
    for seed in range(2):
        ours, theirs = by["fused-random", seed], by["random", seed]
        assert ours["best_params"] == theirs["best_params"]
        assert abs(ours["test_score"] - theirs["test_score"]) <= 1 / 38 + 1e-9
        assert ours["epochs"] == theirs["epochs"] and ours["n_trainings"] == theirs["n_trainings"]
    (line,) = fused_check(rows)
    assert "iris" in line and "same best candidate in 2/2 seeds" in line
    assert fused_check([r for r in rows if r["method"] == "random"]) == []


def test_bench_checkpoint_skips_finished_runs(tmp_path, capsys):
    """An interrupted benchmark resumes: with --checkpoint, a second run of the command
    runs nothing that finished (the same rows, read back), and more seeds reuse the first
    ones; another budget is refused."""
    ck = str(tmp_path / "ck")
    argv = ["bench", "--tasks", "iris", "--n-trials", "2", "--max-epochs", "2", "--cv", "2",
            "--methods", "random", "--checkpoint", ck]
    assert main([*argv, "--seeds", "1", "--out", str(tmp_path / "a")]) == 0
    first = json.loads((tmp_path / "a" / "results.json").read_text())
    assert main([*argv, "--seeds", "2", "--out", str(tmp_path / "b")]) == 0
    second = json.loads((tmp_path / "b" / "results.json").read_text())
    assert second[0] == first[0]  # read back, wall time included: it did not run again
    assert len(second) == 2 and second[1]["seed"] == 1
    assert len([f for f in os.listdir(ck) if f.startswith("job-")]) == 2
    capsys.readouterr()
    assert main([*argv[:-4], "--max-epochs", "3", "--methods", "random", "--checkpoint", ck,
                 "--seeds", "1"]) == 2
    assert "holds the trainings of another search" in capsys.readouterr().err
