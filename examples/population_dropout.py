"""Tune per-layer dropout rates and weight decay of an MLP with PopulationMutationSearch.

    python examples/population_dropout.py      # about 15 s on 2 CPU cores

Ten students train side by side on digits for 20 one-epoch steps; their dropout rates and
weight decay follow look-ahead hypergradients, and after every step the two worst copy one of
the two best with hyper-parameters mutated by the learned teacher.
"""

import os

import numpy as np
import pandas as pd
from scipy.stats import loguniform
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skhpo import PopulationMutationSearch, TabularMLPClassifier

# the test suite runs every example with SKHPO_EXAMPLES_SHORT=1: the same code, tiny sizes
SHORT = os.environ.get("SKHPO_EXAMPLES_SHORT") == "1"
STUDENTS, STEPS = (3, 2) if SHORT else (10, 20)

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X.astype(np.float32), y, test_size=0.25,
                                                    random_state=0, stratify=y)
pipe = Pipeline([("scale", StandardScaler()), ("net", TabularMLPClassifier(max_epochs=STEPS))])
bounds = {"net__dropout[layers.2]": (0.0, 0.75),
          "net__dropout[layers.5]": (0.0, 0.75),
          "net__optimizer__weight_decay": loguniform(1e-6, 1e-2)}
search = PopulationMutationSearch(pipe, bounds, population_size=STUDENTS, n_steps=STEPS,
                                  random_state=0, verbose=1)
search.fit(X_train, y_train)

print("best final hyper-parameters:",
      {k: float(f"{v:.3g}") for k, v in search.best_params_.items()})
print(f"validation accuracy {search.best_score_:.4f}, test accuracy "
      f"{search.score(X_test, y_test):.4f}, {search.n_epochs_:.0f} epochs in all")
history = pd.DataFrame(search.history_)
best = history[history.student == search.best_index_]
print("the winner's schedule (it may have been overwritten by copies of others):")
print(best[["step", *bounds, "val_loss", "exploited_from"]].to_string(index=False))
