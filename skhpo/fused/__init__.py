"""Training many candidates at once: stacked weights, one batched forward/backward and one
batched optimizer step per group of models.

* :func:`choose_engine` — the one engine decision every search makes (:mod:`.eligibility`);
* :class:`FusedTrainer` — plans tasks into groups, trains them, hands back fitted nets
  (:mod:`.trainer`);
* :func:`check_n_jobs`, :func:`n_workers`, :func:`trains_on_cpu` — ``n_jobs`` and where the
  engine's worker processes come from (:mod:`._workers`);
* :func:`max_weights`, :func:`group_size` — the size limits (:mod:`.cost`), and the memory
  a group may take (a :class:`GroupSplitWarning` when it is split to stay within it).
"""

from ._workers import check_n_jobs, n_workers, trains_on_cpu
from .cost import group_size, max_weights
from .eligibility import ENGINES, Decision, choose_engine, fusion_key, unfusible
from .trainer import FusedTask, FusedTrainer, GroupSplitWarning, Plan, TaskResult

__all__ = ["ENGINES", "Decision", "FusedTask", "FusedTrainer", "GroupSplitWarning", "Plan",
           "TaskResult", "check_n_jobs", "choose_engine", "fusion_key", "group_size",
           "max_weights", "n_workers", "trains_on_cpu", "unfusible"]
