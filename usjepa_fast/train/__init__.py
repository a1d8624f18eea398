"""SALT / US-JEPA / USrc-JEPA pretraining: ``run(cfg) -> RunSummary`` (see ``train.engine``)."""

from usjepa_fast.train.config import TrainConfig, load_train_config
from usjepa_fast.train.engine import RunSummary, Trainer, run
from usjepa_fast.train.pipeline import TwoStageResult, pixel_teacher_stage, pretrain_two_stage, salt_student_stage

__all__ = [
    "RunSummary",
    "TrainConfig",
    "Trainer",
    "TwoStageResult",
    "load_train_config",
    "pixel_teacher_stage",
    "pretrain_two_stage",
    "run",
    "salt_student_stage",
]
