"""Masking: I-JEPA multi-block masks and USrc (scan-region-conditioned) masks."""

from usjepa_fast.masking.multiblock import MaskBatch, MaskConfig, MultiBlockMaskCollator, masks_to_grid
from usjepa_fast.models.vit import apply_masks

__all__ = ["MaskBatch", "MaskConfig", "MultiBlockMaskCollator", "apply_masks", "masks_to_grid"]
