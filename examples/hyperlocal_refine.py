"""Refine the best model of a RandomizedSearchCV with the LP hyper local search.

    python examples/hyperlocal_refine.py      # about 10 s on 2 CPU cores

The base search tunes two per-layer L2 coefficients of an MLP on digits; HyperLocalRefiner then
moves both coefficients and the trained weights along one LP descent direction, without
retraining. By default the step is chosen on half of the validation data and kept only if the
other half agrees; the paper's method (accept_fraction=0: one set chooses and accepts) is run
beside it for comparison.
"""

import os

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import RandomizedSearchCV, train_test_split
from sklearn.preprocessing import StandardScaler

from skhpo import HyperLocalRefiner, TabularMLPClassifier

# the test suite runs every example with SKHPO_EXAMPLES_SHORT=1: the same code, tiny sizes
SHORT = os.environ.get("SKHPO_EXAMPLES_SHORT") == "1"
EPOCHS = 3 if SHORT else 30

X, y = load_digits(return_X_y=True)
X = StandardScaler().fit_transform(X).astype(np.float32)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0,
                                                    stratify=y)
net = TabularMLPClassifier(depth=1, width=32, max_epochs=EPOCHS, l2=[1e-3, 1e-3],
                           random_state=0)
space = {"l2": [[a, b] for a in (1e-4, 1e-3, 1e-2) for b in (1e-4, 1e-3, 1e-2)]}
search = RandomizedSearchCV(net, space, n_iter=4, cv=2, random_state=0)

for name, options in [("default", {}),
                      ("paper", {"accept_fraction": 0})]:
    refiner = HyperLocalRefiner(search, random_state=0, **options).fit(X_train, y_train)
    before, after = refiner.validation_loss_
    print(f"{name}: step kept: {refiner.improved_}")
    print(f"  validation loss {before:.4f} -> {after:.4f}; validation accuracy "
          f"{refiner.cv_results_['mean_test_score'][0]:.4f} -> "
          f"{refiner.cv_results_['mean_test_score'][1]:.4f}")
    print(f"  test accuracy {refiner.base_estimator_.score(X_test, y_test):.4f} -> "
          f"{refiner.score(X_test, y_test):.4f}")
    print("  l2:", refiner.cv_results_["params"][0]["l2"], "->",
          [round(v, 6) for v in refiner.best_params_["l2"]])
    print("  seconds:", {k: round(v, 3) for k, v in refiner.timings_.items()})
