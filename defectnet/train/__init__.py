"""DefectNet training: gate-loss and LR schedules, the trainer, checkpoints and run folders.

Public API: :class:`GateLossSchedule`, :class:`LrSchedule`, :class:`TrainConfig`,
:class:`Variant`, :func:`train`, :func:`load_run`, :class:`RunInfo`.
"""

from defectnet.train.checkpoint import RunInfo, load_run
from defectnet.train.config import TrainConfig, Variant
from defectnet.train.schedules import GateLossSchedule, LrSchedule, Strategy
from defectnet.train.trainer import train

__all__ = ["GateLossSchedule", "LrSchedule", "RunInfo", "Strategy", "TrainConfig", "Variant", "load_run", "train"]
