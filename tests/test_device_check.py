"""benchmarks/device_check.py: the script a lent GPU runs must itself pass or fail."""

import importlib.util
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("device_check",
                                                  ROOT / "benchmarks" / "device_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_row_says_where_the_weights_are(tmp_path):
    out = tmp_path / "rows.json"
    code = _script().main(["--only", "FusedRandomizedSearchCV", "CuttingPlaneTuner (SmallCNN)",
                           "--epochs", "2", "--samples", "300", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert code == 0 and [r["class"] for r in rows] == ["CuttingPlaneTuner (SmallCNN)",
                                                        "FusedRandomizedSearchCV"]
    assert all(r["ok"] and r["weights_on"] == ["cpu"] and 0 <= r["test_accuracy"] <= 1
               for r in rows)


def test_a_failing_class_fails_the_run(tmp_path):
    out = tmp_path / "rows.json"
    code = _script().main(["--device", "no-such-device", "--only", "FlatnessSearchCV",
                           "--out", str(out)])
    row = json.loads(out.read_text())["rows"][0]
    assert code == 1 and not row["ok"] and "device" in row["error"].lower()


def test_zoo_rows_and_group_independence_run_on_the_cpu(tmp_path):
    """The rows a GPU run adds for the engine's coverage and its contract, here on the CPU:
    a zoo net with BatchNorm trained fused, and each model equal to itself to the last bit
    in a group of four and in a group of two."""
    out = tmp_path / "rows.json"
    code = _script().main(["--only", "zoo batchnorm (engine=fused)",
                           "fused group independence (bitwise)", "--epochs", "2",
                           "--samples", "300", "--out", str(out)])
    rows = {r["class"]: r for r in json.loads(out.read_text())["rows"]}
    assert code == 0 and set(rows) == {"zoo batchnorm (engine=fused)",
                                       "fused group independence (bitwise)"}
    assert all(r["ok"] and r["weights_on"] == ["cpu"] for r in rows.values())
    assert 0.5 < rows["zoo batchnorm (engine=fused)"]["test_accuracy"] <= 1


def test_the_gpu_run_script_runs_here(tmp_path):
    """benchmarks/gpu_run.py, the one script a lent GPU runs, on the CPU at tiny sizes: each
    of its parts writes its rows, and the device check's verdict is its exit code."""
    spec = importlib.util.spec_from_file_location("gpu_run", ROOT / "benchmarks" / "gpu_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = module.main(["--device", "cpu", "--tiny", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "device_check.json").read_text())["rows"]
    fused = json.loads((tmp_path / "fused.json").read_text())
    limit = json.loads((tmp_path / "limit.json").read_text())
    assert code == 0 and len(rows) == 3 and all(r["ok"] for r in rows)
    assert [r["K"] for r in fused] == [1, 4] and fused[0]["fused_peak_gpu_mb"] is None
    assert limit[0]["variant"] == "no-dropout" and limit[0]["fused_s"] > 0
    assert set(json.loads((tmp_path / "timings.json").read_text())) == {
        "device_check", "fused", "limit"}
