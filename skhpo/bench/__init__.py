"""``skhpo bench``: skhpo's searches against the searches users already run, side by side.

Every method gets the same search space, the same data split and the same training budget per
trial (``max_epochs``); each result row reports the test score on a held-out split the search
never saw, the wall time, the training epochs spent and the number of trainings.
"""

from .runner import METHODS, TASKS, load_task, run_benchmark

__all__ = ["METHODS", "TASKS", "load_task", "run_benchmark"]
