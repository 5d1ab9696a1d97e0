"""Random search over learning rate, weight decay and dropout, with the fits trained in fused
groups: FusedRandomizedSearchCV is scikit-learn's RandomizedSearchCV (same arguments, same
cv_results_), for skhpo's MLPs many times faster per fit.

    python examples/fused_search.py      # about 25 s on 2 CPU cores
"""

import os
import time

import numpy as np
import pandas as pd
from scipy.stats import loguniform, uniform
from sklearn.datasets import load_digits
from sklearn.model_selection import RandomizedSearchCV, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skhpo import FusedRandomizedSearchCV, TabularMLPClassifier

# the test suite runs every example with SKHPO_EXAMPLES_SHORT=1: the same code, tiny sizes
SHORT = os.environ.get("SKHPO_EXAMPLES_SHORT") == "1"
EPOCHS, N_ITER = (2, 3) if SHORT else (20, 20)

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X.astype(np.float32), y, test_size=0.25,
                                                    random_state=0, stratify=y)
pipe = Pipeline([("scale", StandardScaler()),
                 ("net", TabularMLPClassifier(depth=1, width=128, max_epochs=EPOCHS))])
space = {"net__lr": loguniform(1e-4, 1e-2), "net__optimizer__weight_decay": loguniform(1e-6, 1e-3),
         "net__dropout": uniform(0.0, 0.5)}

for cls in (FusedRandomizedSearchCV, RandomizedSearchCV):
    start = time.perf_counter()
    search = cls(pipe, space, n_iter=N_ITER, cv=3, random_state=0).fit(X_train, y_train)
    print(f"{cls.__name__:24s} {time.perf_counter() - start:5.1f} s, CV {search.best_score_:.4f}, "
          f"test {search.score(X_test, y_test):.4f}")

results = pd.DataFrame(search.cv_results_)  # the same columns for both classes
print(results[["param_net__lr", "param_net__dropout", "mean_test_score"]]
      .sort_values("mean_test_score", ascending=False).head().to_string(index=False))
