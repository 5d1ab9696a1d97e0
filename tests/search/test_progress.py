"""Progress: every training phase of every class reports to scikit-learn's callbacks (a
``FitCallback`` given with ``set_callbacks``, e.g. ``sklearn.callback.ProgressBar``)."""

from collections import Counter

import pytest
from scipy.stats import loguniform
from sklearn.datasets import load_iris
from sklearn.model_selection import GridSearchCV

from skhpo import (
    AutoHyperSearchCV,
    CuttingPlaneTuner,
    FlatnessSearchCV,
    FusedRandomizedSearchCV,
    HyperLocalRefiner,
    PopulationMutationSearch,
    TabularMLPClassifier,
)

pytest.importorskip("sklearn.callback")


class Recorder:
    """A FitCallback that records the path of every finished task."""

    def __init__(self):
        self.ended = Counter()

    def setup(self, estimator, context):
        self.setups = getattr(self, "setups", 0) + 1

    def teardown(self, estimator, context):
        self.teardowns = getattr(self, "teardowns", 0) + 1

    def on_fit_task_begin(self, estimator, context, **kwargs):
        return None  # only the ends are counted

    def on_fit_task_end(self, estimator, context, **kwargs):
        path, ctx = [], context
        while ctx is not None:
            path.append(ctx.task_name)
            ctx = ctx.parent
        self.ended["/".join(reversed(path))] += 1


NET = dict(width=8, max_epochs=2, dropout=0.2)
CASES = {
    "flatness": (lambda: FlatnessSearchCV(TabularMLPClassifier(**NET),
                                          {"lr": loguniform(1e-3, 1e-1)}, n_candidates=4,
                                          n_finalists=2, cv=2, random_state=0),
                 {"fit/search/screening/training": 4, "fit/search/training/training": 4,
                  "fit/search/cross-validation/candidate-split-evaluation": 4,
                  "fit/refit-with-best-params": 1}),
    "autohyper": (lambda: AutoHyperSearchCV(TabularMLPClassifier(**NET), {"lr": None},
                                            max_trials=3, epochs_per_trial=1, cv=2,
                                            random_state=0),
                  {"fit/search/walk/training": 3, "fit/search/training/training": 2,
                   "fit/search/cross-validation/candidate-split-evaluation": 2}),
    "fused-random": (lambda: FusedRandomizedSearchCV(TabularMLPClassifier(**NET),
                                                     {"lr": loguniform(1e-3, 1e-1)}, n_iter=2,
                                                     cv=2, random_state=0),
                     {"fit/search/training/training": 4,
                      "fit/search/cross-validation/candidate-split-evaluation": 4}),
    "hpm": (lambda: PopulationMutationSearch(TabularMLPClassifier(**NET), {"lr": (1e-3, 1e-1)},
                                             population_size=2, n_steps=3, random_state=0),
            {"fit/steps/step": 3, "fit/steps": 1}),
    "cpmlho": (lambda: CuttingPlaneTuner(TabularMLPClassifier(**NET), random_state=0),
               {"fit/epochs/epoch": 2, "fit/epochs": 1}),
    "hyperlocal": (lambda: HyperLocalRefiner(
        GridSearchCV(TabularMLPClassifier(width=8, max_epochs=2, l2=1e-3), {"l2": [1e-4, 1e-3]},
                     cv=2), random_state=0),
        {"fit/base search": 1}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_phase_reports_progress(name):
    make, expected = CASES[name]
    X, y = load_iris(return_X_y=True)
    recorder = Recorder()
    search = make()
    search.set_callbacks(recorder)
    search.fit(X, y)
    assert recorder.ended["fit"] == 1 and recorder.setups == recorder.teardowns == 1
    for path, count in expected.items():
        assert recorder.ended[path] == count, (path, dict(recorder.ended))
