"""Multi-head attention call sites for the JEPA context encoder and predictor.

Two layouts (see :mod:`usjepa_fast.kernels.varlen`):

- **padded / dense**, :func:`masked_attention`: q, k, v ``(B, H, N, D)``; ``seq_lens`` (B,) int
  holds each sample's valid length: tokens at positions >= seq_lens[b] are padding, never attended
  to, and their outputs are zeros (with zero gradients) on every path. ``seq_lens=None`` means
  every sequence is full.
- **packed**, :func:`varlen_attention`: q, k, v ``(T, H, D)`` with a :class:`VarlenLayout`; tokens
  attend within their own sequence. This is what training runs (ragged contexts and predictor
  sequences); there are no pads at all outside the attention core.

Dispatch (``"auto"``), chosen by measurement (``benchmarks/ragged_tokens.py``, docs/ARCHITECTURE.md):

| call | equal lengths | ragged, CUDA | ragged, CPU |
|---|---|---|---|
| masked_attention | SDPA (PyTorch picks flash / mem-efficient / math) | Triton varlen kernel | SDPA + key mask |
| varlen_attention | SDPA on the dense view (no copy, no mask) | Triton packed kernel | pad, SDPA + key mask, unpad |

``"triton"`` forces the kernels wherever the layout allows it; ``"torch"`` forces the references.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from usjepa_fast.kernels.dispatch import get_backend, use_triton
from usjepa_fast.kernels.varlen import VarlenLayout


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


def _triton_head_dim_ok(head_dim: int) -> bool:
    """Under "auto" an unsupported head dim falls back to the reference; forced "triton" raises."""
    from usjepa_fast.kernels.attention_triton import head_dim_supported

    return get_backend() == "triton" or head_dim_supported(head_dim)


def masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_lens: torch.Tensor | None = None
) -> torch.Tensor:
    """Padded layout: the Triton varlen kernel on CUDA for ragged batches, SDPA otherwise.

    Dense batches (``seq_lens=None``) take SDPA under ``"auto"`` even on CUDA: with no padding to
    skip, PyTorch's flash backend is the fastest kernel there is. Under ``"auto"`` a head dim the
    kernel does not cover (not a power of two in 16..256) falls back to the reference; under
    ``"triton"`` it raises instead, so a forced run is never silently the reference.
    """
    dense = seq_lens is None
    if use_triton(q, k, v) and (get_backend() == "triton" or not dense) and _triton_head_dim_ok(q.shape[-1]):
        from usjepa_fast.kernels.attention_triton import triton_masked_attention

        return triton_masked_attention(q, k, v, seq_lens)
    return attention_reference(q, k, v, seq_lens)


def varlen_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: VarlenLayout) -> torch.Tensor:
    """Packed (T, H, D) -> (T, H, D) through the padded reference: pad, SDPA + key mask, unpad.

    On CPU this is the fastest correct ragged path measured (jagged nested-tensor SDPA and a
    per-sequence loop are 2-12x slower at JEPA shapes); equal lengths skip the pad and the mask.
    """

    def heads_first(x: torch.Tensor) -> torch.Tensor:  # (T, H, D) -> (S, H, L, D), a view when uniform
        return layout.pad(x).transpose(1, 2)

    out = attention_reference(
        heads_first(q), heads_first(k), heads_first(v), None if layout.uniform else layout.lens
    )  # (S, H, L, D)
    return layout.unpad(out.transpose(1, 2))


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: VarlenLayout) -> torch.Tensor:
    """Packed layout: q, k, v ``(T, H, D)`` (views of a fused qkv are fine) -> ``(T, H, D)``.

    Sequence ``s`` holds tokens ``layout.cu_seqlens[s] : layout.cu_seqlens[s + 1]``; scale
    ``1/sqrt(D)``. Equal lengths run SDPA on the dense view under ``"auto"``; ragged batches on
    CUDA the packed Triton kernel; everything else :func:`varlen_attention_reference`.
    """
    forced = get_backend() == "triton"
    if use_triton(q, k, v) and (forced or not layout.uniform) and _triton_head_dim_ok(q.shape[-1]):
        from usjepa_fast.kernels.attention_triton import triton_varlen_attention

        return triton_varlen_attention(q, k, v, layout.cu_seqlens, layout.max_len)
    return varlen_attention_reference(q, k, v, layout)
