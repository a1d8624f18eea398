"""Masking: I-JEPA multi-block masks and USrc (scan-region-conditioned) masks, as index tensors."""

from usjepa_fast.masking.multiblock import MaskBatch, MaskConfig, MultiBlockMaskCollator
from usjepa_fast.masking.ragged import RaggedIndex, apply_masks, masks_to_grid

__all__ = ["MaskBatch", "MaskConfig", "MultiBlockMaskCollator", "RaggedIndex", "apply_masks", "masks_to_grid"]
