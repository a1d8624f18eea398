"""Masked (variable-length) multi-head attention for the JEPA context encoder and predictor.

Shapes: q, k, v are (B, H, N, D); ``seq_lens`` (B,) int holds each sample's valid length: tokens
at positions >= seq_lens[b] are padding, never attended to, and their outputs are zeros (with zero
gradients) on both paths. ``seq_lens=None`` means every sequence is full.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from usjepa_fast.kernels.dispatch import get_backend, use_triton


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_lens: torch.Tensor | None = None
) -> torch.Tensor:
    """PyTorch SDPA with a key-padding mask built from ``seq_lens``; (B, H, N, D) -> (B, H, N, D)."""
    if seq_lens is None:
        return F.scaled_dot_product_attention(q, k, v)
    n = q.shape[-2]
    lens = seq_lens.to(q.device)
    positions = torch.arange(n, device=q.device)[None, :]
    # Keys allowed: positions < len, but always at least key 0 so that a length-0 sample has no
    # all-masked row (SDPA would return NaN there, and NaN * 0 is still NaN in the backward).
    key_valid = positions < lens.clamp(min=1)[:, None]  # (B, N)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_valid[:, None, None, :])
    query_valid = positions < lens[:, None]  # (B, N)
    return torch.where(query_valid[:, None, :, None], out, out.new_zeros(()))


def masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_lens: torch.Tensor | None = None
) -> torch.Tensor:
    """Dispatch: fused Triton kernel on CUDA (or when forced), PyTorch reference otherwise.

    Under ``"auto"`` a head dim the kernel does not cover (not a power of two in 16..256) falls
    back to the reference; under ``"triton"`` it raises instead, so a forced run is never silently
    the reference.
    """
    if use_triton(q, k, v):
        from usjepa_fast.kernels.attention_triton import head_dim_supported, triton_masked_attention

        if get_backend() == "triton" or head_dim_supported(q.shape[-1]):
            return triton_masked_attention(q, k, v, seq_lens)
    return attention_reference(q, k, v, seq_lens)
