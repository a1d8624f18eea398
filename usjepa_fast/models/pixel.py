"""Stage-1 pixel targets (SALT stage 1 / MAE-style masked pixel reconstruction).

The stage-1 model is the same context encoder + predictor as stage 2; only the targets change:
instead of teacher latents, the predictor regresses the raw pixels of each target patch, layer-normed
per patch (MAE's "normalised pixel" targets, which make the task about structure, not brightness).
The per-patch normalisation is exactly ``normalize_target=True`` of the SALT loss kernel, so both
stages go through :func:`usjepa_fast.kernels.salt_smooth_l1`.

Inputs are grayscale replicated to 3 channels, so one channel (their mean) carries all information:
the pixel target of a patch is p*p values, not 3*p*p.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def patchify_gray(images: torch.Tensor, patch_size: int, pool: int = 1) -> torch.Tensor:
    """(B, C, S, S) -> (B, N, (p/pool)^2): channel-mean pixels of each patch, row-major patch order.

    ``pool`` > 1 average-pools inside each patch first. Ultrasound speckle is a random interference
    pattern that no context can predict; pooling removes most of it from the target, so the model is
    asked for tissue structure (echogenicity of regions, edges, lesions) rather than speckle grains.
    """
    b, _, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image {h}x{w} is not a multiple of patch size {p}")
    if p % pool:
        raise ValueError(f"pixel pool {pool} must divide the patch size {p}")
    gray = images.float().mean(dim=1, keepdim=True)  # (B, 1, S, S)
    if pool > 1:
        gray = F.avg_pool2d(gray, pool)  # (B, 1, S/pool, S/pool)
    q = p // pool
    x = gray[:, 0].reshape(b, h // p, q, w // p, q).permute(0, 1, 3, 2, 4)  # (B, gh, gw, q, q)
    return x.reshape(b, (h // p) * (w // p), q * q)


def pixel_target_dim(patch_size: int, pool: int = 1) -> int:
    return (patch_size // pool) ** 2
