"""Tune three dropout rates of an MLP within one training run with CuttingPlaneTuner.

    python examples/cutting_plane_dropout.py      # about 20 s on 2 CPU cores

The MLP's input dropout and its two hidden dropouts start at 0.05; CPMLHO trains the
self-tuning network for 50 epochs (5 of warm-up), moving the rates every 5 batches on the
mixed training + validation loss, with the cutting-plane penalty keeping the response weights
close to the general weights.
"""

import os

import numpy as np
import pandas as pd
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skhpo import CuttingPlaneTuner, TabularMLPClassifier

# the test suite runs every example with SKHPO_EXAMPLES_SHORT=1: the same code, tiny sizes
SHORT = os.environ.get("SKHPO_EXAMPLES_SHORT") == "1"
EPOCHS = 3 if SHORT else 50

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X.astype(np.float32), y, test_size=0.25,
                                                    random_state=0, stratify=y)
net = TabularMLPClassifier(width=256, input_dropout=0.05, dropout=0.05, max_epochs=EPOCHS)
tuner = CuttingPlaneTuner(Pipeline([("scale", StandardScaler()), ("net", net)]),
                          warmup_epochs=min(5, EPOCHS - 1), random_state=0)
tuner.fit(X_train, y_train)

print("final rates:", {k: round(v, 4) for k, v in tuner.best_params_.items()})
print(f"validation accuracy {tuner.best_score_:.4f}, test accuracy "
      f"{tuner.score(X_test, y_test):.4f}")
history = pd.DataFrame(tuner.history_)
columns = ["epoch", *tuner.best_params_, "valid_loss", "gap"]
print(history[columns].iloc[::10].to_string(index=False))
