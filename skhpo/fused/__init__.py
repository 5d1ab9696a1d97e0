"""Training many candidates at once: stacked weights, one batched forward/backward and one
batched optimizer step per group of models (see :mod:`skhpo.fused.trainer`)."""

from ._adam import BatchedAdam
from .cost import calibrate, group_size, max_group_weights, max_weights, recommend
from .population import StudentGroup, StudentState
from .trainer import (
    ENGINES,
    MAX_WEIGHTS,
    FusedTask,
    FusedTrainer,
    TaskResult,
    fusion_key,
    unfusible,
)

__all__ = ["ENGINES", "MAX_WEIGHTS", "BatchedAdam", "FusedTask", "FusedTrainer", "StudentGroup",
           "StudentState", "TaskResult", "calibrate", "fusion_key", "group_size",
           "max_group_weights", "max_weights", "recommend", "unfusible"]
