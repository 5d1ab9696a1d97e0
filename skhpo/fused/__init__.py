"""Training many candidates at once: stacked weights, one batched forward/backward and one
batched optimizer step per group of models (see :mod:`skhpo.fused.trainer`)."""

from ._adam import BatchedAdam
from .trainer import ENGINES, FusedTask, FusedTrainer, TaskResult, fusion_key, unfusible

__all__ = ["ENGINES", "BatchedAdam", "FusedTask", "FusedTrainer", "TaskResult", "fusion_key",
           "unfusible"]
