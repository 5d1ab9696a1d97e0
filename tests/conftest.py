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
