"""skhpo: research hyper-parameter optimisation methods for PyTorch nets, as scikit-learn
search estimators around skorch."""

from .models import SmallCNNClassifier, TabularMLPClassifier, TabularMLPRegressor
from .nets import ArrayBatchIterator, FiniteLossGuard, TrainingDivergedError
from .search import (
    AutoHyperSearchCV,
    CuttingPlaneTuner,
    FlatnessSearchCV,
    FusedGridSearchCV,
    FusedHalvingGridSearchCV,
    FusedHalvingRandomSearchCV,
    FusedRandomizedSearchCV,
    HyperLocalRefiner,
    PopulationMutationSearch,
)

__version__ = "0.1.0"

__all__ = [
    "ArrayBatchIterator",
    "AutoHyperSearchCV",
    "CuttingPlaneTuner",
    "FiniteLossGuard",
    "FlatnessSearchCV",
    "FusedGridSearchCV",
    "FusedHalvingGridSearchCV",
    "FusedHalvingRandomSearchCV",
    "FusedRandomizedSearchCV",
    "HyperLocalRefiner",
    "PopulationMutationSearch",
    "SmallCNNClassifier",
    "TabularMLPClassifier",
    "TabularMLPRegressor",
    "TrainingDivergedError",
]
