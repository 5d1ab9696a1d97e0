"""Progress events for scikit-learn's callbacks (``sklearn.callback``, scikit-learn >= 1.9).

Every training phase of every search is a task of the fit's task tree, and every finished
training (a screened candidate, a walk trial, a fold, a population step, an epoch of the
self-tuning network) one leaf under it, so a ``ProgressBar`` (or any ``FitCallback`` given
with ``search.set_callbacks(...)``) follows the whole search:

    fit
    └── search
        ├── screening          (FlatnessSearchCV: one leaf per candidate)
        ├── walk               (AutoHyperSearchCV: one leaf per trial; total unknown)
        ├── training           (the folds trained before scikit-learn's cross-validation)
        └── cross-validation   (scikit-learn's candidate-split evaluations)

and, for the methods with their own loop, ``fit`` → ``steps`` (PopulationMutationSearch),
``epochs`` (CuttingPlaneTuner), ``base search`` / ``refinement`` (HyperLocalRefiner). With an
older scikit-learn, or no callbacks, every call here does nothing.
"""

from contextlib import contextmanager

__all__ = ["Phase", "root_context", "search_context"]


class Phase:
    """One phase of a search: ``done(i)`` reports its i-th training as finished (``i`` is
    ignored when the total is unknown). A no-op without a parent context."""

    def __init__(self, estimator, parent, name, total=None):
        self.estimator = estimator
        self.ctx = None
        if parent is not None:  # every parent here numbers its subtasks itself (sequential)
            self.ctx = parent.subcontext(task_name=name, max_subtasks=total,
                                         sequential_subtasks=total is None)
            self.ctx.call_on_fit_task_begin(estimator=estimator)

    def done(self, i=None, name="training"):
        if self.ctx is None:
            return
        leaf = self.ctx.subcontext(
            task_name=name, **({} if self.ctx.sequential_subtasks else {"task_id": i}))
        leaf.call_on_fit_task_begin(estimator=self.estimator)
        leaf.call_on_fit_task_end(estimator=self.estimator)

    def close(self):
        if self.ctx is not None:
            self.ctx.call_on_fit_task_end(estimator=self.estimator)
            self.ctx = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextmanager
def search_context(estimator, callback_ctx):
    """The ``search`` task under scikit-learn's root context (None without callbacks),
    open for the duration of the block."""
    if callback_ctx is None:
        yield None
        return
    with Phase(estimator, callback_ctx, "search") as phase:
        yield phase.ctx


@contextmanager
def root_context(estimator, X=None, y=None):
    """For a search with its own ``fit`` (the hold-out family): the fit's root context, its
    begin and end events, and the callbacks' setup and teardown, as scikit-learn's own
    ``fit`` runs them; None with an older scikit-learn."""
    if not hasattr(estimator, "_init_callback_context"):
        yield None
        return
    from sklearn.callback._callback_support import callback_management_context

    with callback_management_context(estimator):
        ctx = estimator._init_callback_context(max_subtasks=None)
        ctx.call_on_fit_task_begin(estimator=estimator, X=X, y=y)
        yield ctx
        ctx.call_on_fit_task_end(estimator=estimator, X=X, y=y)
