"""Masked (variable-length) multi-head attention for the JEPA context encoder and predictor.

Shapes: q, k, v are (B, H, N, D); ``seq_lens`` (B,) int holds each sample's valid length: tokens
at positions >= seq_lens[b] are padding, never attended to (their outputs are zero-filled by the
reference so both paths agree). ``seq_lens=None`` means every sequence is full.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from usjepa_fast.kernels.dispatch import use_triton


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_lens: torch.Tensor | None = None
) -> torch.Tensor:
    """PyTorch SDPA with a key-padding mask built from ``seq_lens``; (B, H, N, D) -> (B, H, N, D)."""
    if seq_lens is None:
        return F.scaled_dot_product_attention(q, k, v)
    n = q.shape[-2]
    valid = torch.arange(n, device=q.device)[None, :] < seq_lens.to(q.device)[:, None]  # (B, N)
    attn_mask = valid[:, None, None, :]  # (B, 1, 1, N): keys allowed
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return out * valid[:, None, :, None].to(out.dtype)


def masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_lens: torch.Tensor | None = None
) -> torch.Tensor:
    """Dispatch: fused Triton kernel on CUDA (or when forced), PyTorch reference otherwise."""
    if use_triton(q, k, v):
        from usjepa_fast.kernels.attention_triton import triton_masked_attention

        return triton_masked_attention(q, k, v, seq_lens)
    return attention_reference(q, k, v, seq_lens)
