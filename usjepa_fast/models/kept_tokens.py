"""A ViT forward on kept tokens only: any timm ``VisionTransformer``, usfast students, frozen teachers.

Every ultrasound frame has its own scan region, so the patches outside it (black surround, burned-in
text) need not go through the encoder at all. The tokens of the kept patches are gathered right
after patch + position embedding (so every kept token keeps its own position), the class / register
tokens of the model (its ``num_prefix_tokens``) are kept in front of every sample, and the blocks
then run on those tokens only. Two layouts, one set of layers:

- **packed** (:func:`forward_kept`, the PyTorch path): ``keep`` is a
  :class:`~usjepa_fast.masking.RaggedIndex` (one sequence per sample, every sample its own count);
  tokens travel as ``(T, D)`` with a :class:`~usjepa_fast.kernels.VarlenLayout`, exactly like the
  student's training forward: the norms, qkv, projection and MLP never see a pad, attention gets the
  sequence boundaries (:func:`usjepa_fast.kernels.varlen_attention`).
- **padded** (:func:`forward_kept_padded`, the ONNX / TensorRT form): ``keep (B, K)`` int64 patch
  indices, each row's real indices first and ``-1`` after them; the lengths are computed in the
  graph and become the key-padding mask of :func:`usjepa_fast.kernels.masked_attention`, so a graph
  with a dynamic token axis needs no host-side layout.

:func:`attend` and :func:`block_forward` are the attention and block bodies for both layouts; the
student's :class:`~usjepa_fast.models.vit.KernelAttention` / ``KernelBlock`` are those same
functions, so the frozen path and the training path cannot drift apart.

What cannot run on kept tokens is said in one line by :func:`kept_token_support` (convolutional
nets have no token sequence; relative-position / RoPE / windowed attention ties a token's meaning to
a full grid): BEiT, EVA, SAM's windowed ViT, Swin, ConvNeXt, ResNet, ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from usjepa_fast.kernels import VarlenLayout, masked_attention, varlen_attention
from usjepa_fast.masking.ragged import RaggedIndex, apply_masks

# Drop-path hook of the training block: (module, branch output, layout) -> branch output.
DropPath = Callable[[nn.Module, torch.Tensor, VarlenLayout], torch.Tensor]


# -- the layers (both layouts) -----------------------------------------------------------------------
def attend(
    attn: nn.Module, x: torch.Tensor, layout: VarlenLayout | None = None, seq_lens: torch.Tensor | None = None
) -> torch.Tensor:
    """timm ``Attention`` (fused qkv, optional q/k norm, scale norm, output gate) on kept tokens.

    ``x`` packed ``(T, C)`` with ``layout``; or padded ``(B, L, C)`` with ``seq_lens (B,)`` (or a
    ``layout`` whose lengths are used): positions at or past a row's length are never attended to
    and come out as whatever the projection makes of a zero attention output (ignore them).
    """
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    if x.dim() == 2:
        if layout is None:
            raise ValueError("packed (T, C) tokens need a VarlenLayout")
        t = x.shape[0]
        q, k, v = attn.qkv(x).reshape(t, 3, attn.num_heads, attn.head_dim).unbind(1)  # each (T, H, hd)
        q, k = attn.q_norm(q), attn.k_norm(k)
        out = varlen_attention(q, k, v, layout).reshape(t, attn.attn_dim)  # (T, H*hd)
    else:
        b, n, _ = x.shape
        qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, L, hd)
        q, k = attn.q_norm(q), attn.k_norm(k)
        lens = seq_lens if seq_lens is not None else (None if layout is None else layout.lens)
        out = masked_attention(q, k, v, lens).transpose(1, 2).reshape(b, n, attn.attn_dim)  # (B, L, H*hd)
    out = attn.norm(out)
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out))


def block_forward(
    blk: nn.Module,
    x: torch.Tensor,
    layout: VarlenLayout | None = None,
    seq_lens: torch.Tensor | None = None,
    drop_path: DropPath | None = None,
) -> torch.Tensor:
    """timm ``Block`` (pre-norm, layer scale) on kept tokens; ``drop_path`` is the student's
    per-sequence stochastic depth (frozen encoders: none)."""
    y = blk.ls1(attend(blk.attn, blk.norm1(x), layout, seq_lens))
    x = x + (drop_path(blk.drop_path1, y, layout) if drop_path is not None else y)
    y = blk.ls2(blk.mlp(blk.norm2(x)))
    return x + (drop_path(blk.drop_path2, y, layout) if drop_path is not None else y)


def _run_block(blk: nn.Module, x: torch.Tensor, layout: VarlenLayout | None, seq_lens: torch.Tensor | None):
    # The student's KernelBlock brings its own stochastic depth; any other timm Block runs frozen.
    if getattr(blk, "accepts_layout", False) and seq_lens is None:
        return blk(x, layout=layout)
    return block_forward(blk, x, layout, seq_lens)


# -- what can run ------------------------------------------------------------------------------------
def kept_token_support(model: nn.Module) -> str | None:
    """None when ``model`` can run on kept tokens, else why not (one line, no trailing fix)."""
    from timm.layers import Attention
    from timm.models.vision_transformer import Block, VisionTransformer

    name = type(model).__name__
    if not isinstance(model, VisionTransformer):
        return (
            f"{name} is not a plain ViT (no token sequence, or attention tied to the full grid: relative "
            "positions, RoPE, windows)"
        )
    if getattr(model, "dynamic_img_size", False):
        return f"{name} was built with dynamic_img_size (position embeddings resampled per input)"
    for i, blk in enumerate(model.blocks):
        plain = type(blk).forward is Block.forward or getattr(blk, "accepts_layout", False)
        ok_block = isinstance(blk, Block) and plain
        attn = getattr(blk, "attn", None)
        ok_attn = isinstance(attn, Attention) and all(hasattr(attn, a) for a in ("qkv", "attn_dim", "q_norm"))
        if not (ok_block and ok_attn):
            return f"{name} block {i} is a {type(blk).__name__} with {type(attn).__name__}, not timm's Block/Attention"
    return None


# -- the forwards ------------------------------------------------------------------------------------
def embed_tokens(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) -> (B, P + N, D): prefix (class / register) tokens, then patch tokens, with
    position embedding (timm's ``forward_features`` up to the blocks)."""
    return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))


@dataclass
class KeptTokens:
    """Output of :func:`forward_kept`: final-normed tokens of the kept patches, packed."""

    tokens: torch.Tensor  # (T, D) patch tokens in ``keep`` order
    prefix: torch.Tensor | None  # (B, P, D) class / register tokens, None when the model has none
    layout: VarlenLayout  # per-sample layout of ``tokens`` (``keep.layout(per_sample=True)``)

    def mean(self) -> torch.Tensor:
        """(B, D) mean of each sample's kept patch tokens."""
        return self.layout.segment_mean(self.tokens)


def _with_prefix(keep: RaggedIndex, prefix: int) -> tuple[RaggedIndex, torch.Tensor, torch.Tensor]:
    """``keep`` over patch positions -> the same over ``[prefix tokens, patches]`` (every sample its
    ``prefix`` tokens first), plus the packed rows of the patch tokens (T,) and of the prefix (B, P)."""
    dev = keep.idx.device
    inner = keep.layout(per_sample=True)
    full_lens = keep.sample_lens + prefix  # (B,) host
    outer = VarlenLayout.from_lens(full_lens, dev)
    starts = outer.cu_seqlens[:-1].long()  # (B,)
    pos = torch.arange(keep.total, device=dev) - inner.cu_seqlens[:-1].long().index_select(0, inner.seq_id)
    patch_rows = starts.index_select(0, inner.seq_id) + prefix + pos  # (T,)
    prefix_rows = starts[:, None] + torch.arange(prefix, device=dev)  # (B, P)
    idx = torch.empty(outer.total, dtype=torch.int64, device=dev)
    idx[patch_rows] = keep.idx + prefix
    idx[prefix_rows.reshape(-1)] = torch.arange(prefix, device=dev).repeat(keep.batch_size)
    full = RaggedIndex(idx, full_lens)
    full._cache[("layout", True)] = outer
    return full, patch_rows, prefix_rows


def forward_kept(model: nn.Module, x: torch.Tensor, keep: RaggedIndex) -> KeptTokens:
    """Packed kept-token forward of a timm ``VisionTransformer`` (see the module doc).

    ``x (B, 3, S, S)``; ``keep``: one sequence of patch indices in ``[0, N)`` per sample, on ``x``'s
    device. Returns the final-normed patch tokens packed in ``keep`` order and the prefix tokens.
    """
    if keep.seqs_per_sample != 1:
        raise ValueError(f"the encoder takes one token sequence per sample, got {keep.seqs_per_sample}")
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    tokens = embed_tokens(model, x)  # (B, P + N, D)
    if prefix:
        full, patch_rows, prefix_rows = _with_prefix(keep, prefix)
    else:
        full, patch_rows, prefix_rows = keep, None, None
    layout = full.layout(per_sample=True)
    packed = apply_masks(tokens, full)  # (T + B*P, D): the blocks see kept tokens only, no pads
    for blk in model.blocks:
        packed = _run_block(blk, packed, layout, None)
    packed = model.norm(packed)
    if patch_rows is None:
        return KeptTokens(packed, None, keep.layout(per_sample=True))
    return KeptTokens(
        packed.index_select(0, patch_rows),
        packed.index_select(0, prefix_rows.reshape(-1)).view(keep.batch_size, prefix, -1),
        keep.layout(per_sample=True),
    )


def forward_kept_padded(model: nn.Module, x: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded kept-token forward (the exportable form): ``keep (B, K)`` int64, each row's patch
    indices first, then ``-1``. Returns final-normed tokens ``(B, P + K, D)`` (prefix first; rows of
    ``-1`` entries are meaningless) and ``valid (B, K)`` bool. Equal to :func:`forward_kept` on the
    same indices (to float tolerance)."""
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    tokens = embed_tokens(model, x)  # (B, P + N, D)
    valid = keep >= 0  # (B, K)
    idx = keep.clamp(min=0) + prefix  # pads gather patch 0 (never attended to)
    gathered = torch.gather(tokens, 1, idx[..., None].expand(-1, -1, tokens.shape[-1]))  # (B, K, D)
    seq = torch.cat([tokens[:, :prefix], gathered], dim=1) if prefix else gathered  # (B, P + K, D)
    lens = valid.sum(dim=1) + prefix  # (B,) real tokens per row: valid entries must come first
    for blk in model.blocks:
        seq = _run_block(blk, seq, None, lens)
    return model.norm(seq), valid


# -- the two index forms -----------------------------------------------------------------------------
def pad_keep(keep: RaggedIndex, width: int | None = None) -> torch.Tensor:
    """A ``RaggedIndex`` (one sequence per sample) -> ``(B, K)`` int64, each row's indices first and
    ``-1`` after them (``K`` = the longest row, or ``width``): the kept-token input of an export."""
    layout = keep.layout(per_sample=True)
    k = max(layout.max_len, 1) if width is None else int(width)
    out = torch.full((keep.batch_size * k,), -1, dtype=torch.int64, device=keep.idx.device)
    rows = layout.seq_id * k + (layout.pad_index - layout.seq_id * layout.max_len)  # position in its row
    out[rows] = keep.idx
    return out.view(keep.batch_size, k)


def unpad_keep(keep: torch.Tensor) -> RaggedIndex:
    """``(B, K)`` indices padded with ``-1`` (real entries first) -> the ``RaggedIndex`` of the same rows."""
    valid = keep >= 0
    return RaggedIndex(keep[valid].long(), valid.sum(dim=1).cpu())
