"""verbose > 0 reports through the "skhpo" logger, so users configure it like any logger; with
nothing configured the messages are printed, as scikit-learn's verbose searches print."""

import logging

import numpy as np
from sklearn.datasets import load_iris

from skhpo import CuttingPlaneTuner, TabularMLPClassifier


def _fit(verbose):
    X, y = load_iris(return_X_y=True)
    return CuttingPlaneTuner(TabularMLPClassifier(dropout=0.1, max_epochs=2), warmup_epochs=1,
                             random_state=0, verbose=verbose).fit(X.astype(np.float32), y)


def test_the_library_adds_only_a_null_handler():
    handlers = logging.getLogger("skhpo").handlers
    assert handlers and all(isinstance(h, logging.NullHandler) for h in handlers)


def test_verbose_messages_go_to_the_skhpo_logger(caplog):
    with caplog.at_level(logging.INFO, logger="skhpo"):
        _fit(verbose=1)
    records = [r for r in caplog.records if r.name == "skhpo.cutting_plane"]
    assert [r.getMessage()[:8] for r in records] == ["epoch 1/", "epoch 2/"]
    assert all(r.levelno == logging.INFO for r in records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="skhpo"):
        _fit(verbose=0)
    assert not [r for r in caplog.records if r.name.startswith("skhpo")]


def test_a_configured_level_silences_the_search(caplog):
    with caplog.at_level(logging.WARNING, logger="skhpo"):
        _fit(verbose=1)
    assert not [r for r in caplog.records if r.name.startswith("skhpo")]


def test_verbose_shows_its_messages_above_a_warning_root(caplog):
    """basicConfig's root level is WARNING: verbose=1 still reaches the handler."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)
    try:
        _fit(verbose=1)
    finally:
        root.setLevel(level)
    assert [r.getMessage()[:8] for r in caplog.records
            if r.name == "skhpo.cutting_plane"] == ["epoch 1/", "epoch 2/"]


def test_with_nothing_configured_verbose_prints(capsys, monkeypatch):
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # no handler anywhere
    _fit(verbose=1)
    out = capsys.readouterr().out.splitlines()
    assert [line[:8] for line in out] == ["epoch 1/", "epoch 2/"]
