"""Models: the context encoder (student), the predictor, SALT/EMA teachers and the registry.

See docs/ARCHITECTURE.md ("models/") for the contracts. ``frozen`` and ``checkpoints`` hold the
frozen-encoder loading shared with export/embed/probe.
"""

from usjepa_fast.models.predictor import Predictor
from usjepa_fast.models.registry import ModelConfig, create, get_config, list_models
from usjepa_fast.models.teacher import Teacher, ema_teacher, frozen_teacher
from usjepa_fast.models.vit import KernelAttention, KernelBlock, VisionTransformer

__all__ = [
    "KernelAttention",
    "KernelBlock",
    "ModelConfig",
    "Predictor",
    "Teacher",
    "VisionTransformer",
    "create",
    "ema_teacher",
    "frozen_teacher",
    "get_config",
    "list_models",
]
