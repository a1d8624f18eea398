"""SALT loss: Smooth-L1 between predictor outputs and (optionally layer-normed) teacher targets.

Shapes: ``pred`` (B, M, D) predictor outputs at the M target positions; ``teacher`` either
(B, M, D) already-gathered targets (``target_idx=None``) or (B, N, D) full teacher tokens with
``target_idx`` (B, M) long indices into N. Returns the scalar mean over B*M*D elements.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from usjepa_fast.kernels.dispatch import use_triton


def smooth_l1_reference(
    pred: torch.Tensor,
    teacher: torch.Tensor,
    target_idx: torch.Tensor | None = None,
    beta: float = 1.0,
    normalize_target: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    target = teacher
    if target_idx is not None:
        target = torch.gather(teacher, 1, target_idx[..., None].expand(-1, -1, teacher.shape[-1]))
    target = target.detach().float()
    if normalize_target:
        target = F.layer_norm(target, (target.shape[-1],), eps=eps)
    return F.smooth_l1_loss(pred.float(), target, beta=beta)


def salt_smooth_l1(
    pred: torch.Tensor,
    teacher: torch.Tensor,
    target_idx: torch.Tensor | None = None,
    beta: float = 1.0,
    normalize_target: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Dispatch: fused Triton loss (value and gradient in one pass) on CUDA, reference otherwise."""
    if use_triton(pred, teacher):
        from usjepa_fast.kernels.smooth_l1_triton import triton_salt_smooth_l1

        return triton_salt_smooth_l1(pred, teacher, target_idx, beta, normalize_target, eps)
    return smooth_l1_reference(pred, teacher, target_idx, beta, normalize_target, eps)
