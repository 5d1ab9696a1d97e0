"""Tune a PyTorch MLP on breast_cancer with FlatnessSearchCV, as you would with GridSearchCV.

Run: python examples/quickstart.py   (about 10 s on 2 CPU cores)
"""

import os

import pandas as pd
from scipy.stats import loguniform
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skhpo import FlatnessSearchCV, TabularMLPClassifier

# the test suite runs every example with SKHPO_EXAMPLES_SHORT=1: the same code, tiny sizes
SHORT = os.environ.get("SKHPO_EXAMPLES_SHORT") == "1"
EPOCHS, CANDIDATES = (2, 6) if SHORT else (30, 30)

X, y = load_breast_cancer(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, stratify=y, random_state=0)

pipe = Pipeline([("scale", StandardScaler()), ("net", TabularMLPClassifier(max_epochs=EPOCHS))])
space = {
    "net__lr": loguniform(1e-4, 3e-2),
    "net__depth": [1, 2, 3],
    "net__width": [16, 32, 64, 128, 256],
    "net__batch_size": [16, 32, 64, 128],
    "net__optimizer__weight_decay": loguniform(1e-8, 1e-2),
}

# screen 30 random configurations after one epoch each, cross-validate the 5 flattest
search = FlatnessSearchCV(pipe, space, n_candidates=CANDIDATES, n_finalists=5, cv=3,
                          random_state=0)
search.fit(X_train, y_train)

print("best params:", search.best_params_)
print(f"CV accuracy {search.best_score_:.3f}, test accuracy {search.score(X_test, y_test):.3f}")
print(f"epochs spent: {search.n_epochs_}")

history = pd.DataFrame(search.history_)
print(history[["candidate", "sharpness", "status", "screen_time"]].sort_values("sharpness"))
