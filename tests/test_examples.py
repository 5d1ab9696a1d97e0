"""Every script in examples/ runs as written, with tiny sizes (``SKHPO_EXAMPLES_SHORT=1``)."""

import pathlib
import runpy

import matplotlib
import pytest

EXAMPLES = sorted((pathlib.Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_the_example_runs(path, tmp_path, monkeypatch, capsys):
    matplotlib.use("Agg")
    monkeypatch.setenv("SKHPO_EXAMPLES_SHORT", "1")
    monkeypatch.chdir(tmp_path)  # an example may write a figure
    runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    assert "accuracy" in out or "CV" in out, out[-2000:]


def test_every_example_is_found():
    assert {p.stem for p in EXAMPLES} >= {"quickstart", "fused_search", "autohyper_lr",
                                          "hyperlocal_refine", "population_dropout",
                                          "cutting_plane_dropout"}
