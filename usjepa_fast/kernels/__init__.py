"""Kernel call sites used by the models and the trainer (Triton on CUDA, PyTorch elsewhere)."""

from usjepa_fast.kernels.attention import (
    attention_reference,
    masked_attention,
    varlen_attention,
    varlen_attention_reference,
)
from usjepa_fast.kernels.dispatch import get_backend, set_backend, use_backend
from usjepa_fast.kernels.smooth_l1 import salt_smooth_l1, smooth_l1_reference
from usjepa_fast.kernels.varlen import VarlenLayout

__all__ = [
    "VarlenLayout",
    "attention_reference",
    "get_backend",
    "masked_attention",
    "salt_smooth_l1",
    "set_backend",
    "smooth_l1_reference",
    "use_backend",
    "varlen_attention",
    "varlen_attention_reference",
]
