"""Models: the context encoder (student), the predictor, SALT/EMA teachers and the registry.

See docs/ARCHITECTURE.md ("models/") for the contracts. ``resolve`` is the one resolver of encoder
specs (timm name, usfast run dir / .safetensors, checkpoint + arch, ``zoo:NAME=PATH``, ``random:SPEC``)
shared by the teacher, export, embed and probe; ``frozen`` holds the frozen-encoder types and sidecar
files, ``checkpoints`` the state-dict unwrapping, ``zoo`` the paper baselines.
"""

from usjepa_fast.models.predictor import Predictor
from usjepa_fast.models.registry import ModelConfig, create, get_config, list_models
from usjepa_fast.models.resolve import EncoderSpec, describe_encoder, parse_encoder_spec, resolve_encoder
from usjepa_fast.models.teacher import Teacher, ema_teacher, frozen_teacher
from usjepa_fast.models.vit import KernelAttention, KernelBlock, VisionTransformer

__all__ = [
    "EncoderSpec",
    "KernelAttention",
    "KernelBlock",
    "ModelConfig",
    "Predictor",
    "Teacher",
    "VisionTransformer",
    "create",
    "describe_encoder",
    "ema_teacher",
    "frozen_teacher",
    "get_config",
    "list_models",
    "parse_encoder_spec",
    "resolve_encoder",
]
