"""verbose > 0 reports through the "skhpo" logger, so users configure it like any logger."""

import logging

import numpy as np
from sklearn.datasets import load_iris

from skhpo import CuttingPlaneTuner, TabularMLPClassifier


def _fit(verbose):
    X, y = load_iris(return_X_y=True)
    return CuttingPlaneTuner(TabularMLPClassifier(dropout=0.1, max_epochs=2), warmup_epochs=1,
                             random_state=0, verbose=verbose).fit(X.astype(np.float32), y)


def test_verbose_messages_go_to_the_skhpo_logger(caplog):
    with caplog.at_level(logging.INFO, logger="skhpo"):
        _fit(verbose=1)
    records = [r for r in caplog.records if r.name == "skhpo.cutting_plane"]
    assert [r.getMessage()[:17] for r in records] == ["[CPMLHO] epoch 1/", "[CPMLHO] epoch 2/"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="skhpo"):
        _fit(verbose=0)
    assert not [r for r in caplog.records if r.name.startswith("skhpo")]


def test_a_configured_level_silences_the_search(caplog):
    with caplog.at_level(logging.WARNING, logger="skhpo"):
        _fit(verbose=1)
    assert not [r for r in caplog.records if r.name.startswith("skhpo")]
