"""Pick a learning rate for an MLP on digits with AutoHyperSearchCV (no validation data in the
walk), look at the walk, and compare with a 20-point learning-rate grid.

    python examples/autohyper_lr.py        # about a minute on 2 CPU cores (the grid is most of it)
"""

import os

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skhpo import AutoHyperSearchCV, TabularMLPClassifier

# the test suite runs every example with SKHPO_EXAMPLES_SHORT=1: the same code, tiny sizes
SHORT = os.environ.get("SKHPO_EXAMPLES_SHORT") == "1"
EPOCHS, GRID, TRIALS = (2, 3, 9) if SHORT else (30, 20, 200)

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0,
                                                    stratify=y)
pipe = Pipeline([("scale", StandardScaler()), ("net", TabularMLPClassifier(max_epochs=EPOCHS))])

auto = AutoHyperSearchCV(pipe, {"net__lr": None}, cv=3, max_trials=TRIALS, random_state=0)
auto.fit(X_train, y_train)
print(f"autoHyper: lr={auto.best_params_['net__lr']:.3g} after {auto.n_trials_} trials, "
      f"{auto.n_epochs_} epochs; test accuracy {auto.score(X_test, y_test):.4f}")
for lr, z in zip(auto.history_["params"], auto.history_["z"]):
    print(f"  lr={lr['net__lr']:.3g}  Z={z:.2f}")

grid = GridSearchCV(pipe, {"net__lr": list(np.geomspace(1e-4, 1e-1, GRID))}, cv=3)
grid.fit(X_train, y_train)
print(f"{GRID}-point grid: lr={grid.best_params_['net__lr']:.3g}, "
      f"{GRID * 3 * EPOCHS + EPOCHS} epochs; "
      f"test accuracy {grid.score(X_test, y_test):.4f}")

try:
    from skhpo.plotting import plot_walk
    plot_walk(auto).savefig("autohyper_walk.png", dpi=110)
    print("the walk is drawn in autohyper_walk.png")
except ImportError:
    print("install matplotlib to draw the walk")
