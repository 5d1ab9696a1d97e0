import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris


@pytest.fixture(autouse=True)
def _one_thread():
    # small nets on a 2-core CI machine: threads only add noise
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def iris():
    X, y = load_iris(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    return X.astype(np.float32), y


@pytest.fixture
def loaded(monkeypatch):
    """Whether each CV fit loaded a fused fold, in the order of the fits."""
    from skhpo.fused.prefit import PrefitStates

    out = []
    original = PrefitStates.on_train_begin

    def counting(self, net, X=None, y=None, **kwargs):
        original(self, net, X=X, y=y, **kwargs)
        out.append(self.loaded_ is not None)

    monkeypatch.setattr(PrefitStates, "on_train_begin", counting)
    return out
