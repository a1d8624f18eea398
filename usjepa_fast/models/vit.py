"""The student / context encoder: a timm ViT that runs only on the kept context tokens.

The class subclasses timm's ``VisionTransformer`` built with ``class_token=False,
global_pool="avg", fc_norm=False, num_classes=0``, so its state dict is exactly timm's and the
export-ready ``student.safetensors`` loads into ``timm.create_model(timm_name, **timm_kwargs)``
with no key mapping. Two things differ from timm:

- attention goes through the kernel call sites (:func:`usjepa_fast.kernels.varlen_attention` for
  packed tokens, :func:`~usjepa_fast.kernels.masked_attention` for dense ones: Triton on CUDA,
  SDPA elsewhere), so the fused kernels slot in without touching the model;
- ``forward(x, keep)`` gathers the kept tokens right after patch + position embedding, so the
  transformer blocks see only them: the cost scales with the kept count, which is the whole point
  of masked latent prediction. ``keep`` is a :class:`~usjepa_fast.masking.RaggedIndex` (every
  sample keeps its own number of tokens: its whole context within its own scan region) and the
  tokens then travel packed, ``(T, D)`` with ``T`` = the real tokens of the batch: the norms, qkv,
  projection and MLP never see a pad, and attention gets the sequence boundaries in a
  :class:`~usjepa_fast.kernels.VarlenLayout`. Dense ``(B, K)`` indices are the equal-length case
  of the same path.

:class:`KernelBlock` is timm's ``Block`` (same parameters and keys) that also accepts packed
tokens; stochastic depth then drops whole sequences, as timm drops whole samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import Block
from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer
from torch import nn

from usjepa_fast.kernels import VarlenLayout
from usjepa_fast.masking.ragged import RaggedIndex
from usjepa_fast.models.frozen import EncoderInfo
from usjepa_fast.models.kept_tokens import attend, block_forward, embed_tokens, forward_kept
from usjepa_fast.models.pos_embed import sincos_2d


class KernelAttention(Attention):
    """timm ``Attention`` (same parameters and keys) whose core goes through the kernel call site.

    Inputs: dense ``(B, N, C)``; packed ``(T, C)`` with ``layout`` (the training path); or padded
    ``(B, L, C)`` with ``layout`` (its ``lens`` become the key-padding lengths). The bodies are
    :func:`usjepa_fast.models.kept_tokens.attend`, shared with frozen timm ViTs on kept tokens.
    ``attn_mask`` is honoured with plain SDPA: it exists only for the "all tokens + attention mask"
    baseline of ``benchmarks/train_step.py`` and for timm's API; training never passes one.
    """

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        layout: VarlenLayout | None = None,
    ) -> torch.Tensor:
        if is_causal:
            raise ValueError("KernelAttention does not support causal attention")
        if attn_mask is None:
            return attend(self, x, layout)
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = self.norm(out.transpose(1, 2).reshape(b, n, self.attn_dim))  # (B, N, H*hd)
        return self.proj_drop(self.proj(out))


class KernelBlock(Block):
    """timm ``Block`` (same parameters and keys) that also runs packed ``(T, C)`` tokens."""

    accepts_layout = True  # models.kept_tokens runs it with its own stochastic depth

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        layout: VarlenLayout | None = None,
    ) -> torch.Tensor:
        if layout is None:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        return block_forward(self, x, layout, drop_path=self._drop_path)

    def _drop_path(self, module: nn.Module, y: torch.Tensor, layout: VarlenLayout) -> torch.Tensor:
        """Stochastic depth per *sequence*: timm's DropPath on (T, C) would drop single tokens."""
        prob = float(getattr(module, "drop_prob", 0.0))
        if prob == 0.0 or not self.training:
            return y
        if y.dim() == 3:  # padded (B, L, C): one row is one sequence, timm's rule applies
            return module(y)
        keep_prob = 1.0 - prob
        keep = y.new_empty(layout.num_seqs).bernoulli_(keep_prob)  # one draw per sequence
        if keep_prob > 0.0 and getattr(module, "scale_by_keep", True):
            keep.div_(keep_prob)
        return y * keep.index_select(0, layout.seq_id)[:, None]


class VisionTransformer(TimmVisionTransformer):
    """JEPA context encoder with timm-compatible weights (no class token, mean pooling)."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        learnable_pos_embed: bool = False,
        timm_name: str = "vit_base_patch16_224",
    ) -> None:
        # Exactly the kwargs that rebuild this layout in timm (the export-ready sidecar stores them);
        # only the attention layer differs, and it has the same parameters as timm's.
        timm_kwargs: dict[str, Any] = dict(
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            class_token=False,
            global_pool="avg",
            fc_norm=False,
            num_classes=0,
        )
        super().__init__(**timm_kwargs, drop_path_rate=drop_path_rate, block_fn=KernelBlock, attn_layer=KernelAttention)
        self.timm_name = timm_name
        self._timm_kwargs = timm_kwargs
        self.grid: tuple[int, int] = tuple(self.patch_embed.grid_size)  # type: ignore[assignment]
        # I-JEPA uses fixed sin-cos position embeddings in the encoder; the tensor stays a
        # Parameter (frozen) so the key and shape are exactly timm's.
        with torch.no_grad():
            self.pos_embed.copy_(sincos_2d(embed_dim, self.grid)[None])
        self.pos_embed.requires_grad_(learnable_pos_embed)
        self._rescale_blocks()

    def _rescale_blocks(self) -> None:
        """I-JEPA's depth-aware init: shrink residual-branch outputs by sqrt(2 * layer)."""
        for layer_id, blk in enumerate(self.blocks, start=1):
            blk.attn.proj.weight.data.div_(math.sqrt(2.0 * layer_id))
            blk.mlp.fc2.weight.data.div_(math.sqrt(2.0 * layer_id))

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def timm_spec(self) -> tuple[str, dict[str, Any]]:
        """(timm name, kwargs) that rebuild this module's exact state-dict layout in timm."""
        return self.timm_name, dict(self._timm_kwargs)

    def encoder_info(self, name: str, mean: Sequence[float], std: Sequence[float]) -> EncoderInfo:
        """How frozen consumers (export, embed, probe) feed and pool this student (the sidecar)."""
        timm_name, timm_kwargs = self.timm_spec()
        return EncoderInfo(
            name=name,
            input_size=int(self.patch_embed.img_size[0]),
            mean=tuple(float(m) for m in mean),  # type: ignore[arg-type]
            std=tuple(float(v) for v in std),  # type: ignore[arg-type]
            pool="mean",  # no class token: JEPA students are read out by mean pooling
            width=self.embed_dim,
            patch_size=int(self.patch_embed.patch_size[0]),
            num_prefix_tokens=0,
            timm_name=timm_name,
            timm_kwargs=timm_kwargs,
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, N, D) patch tokens with position embedding."""
        return embed_tokens(self, x)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | RaggedIndex | None = None) -> torch.Tensor:
        """Final-normed tokens of the kept patches.

        x (B, 3, S, S); ``keep`` None -> (B, N, D); dense (B, K) indices -> (B, K, D); a
        RaggedIndex (one sequence per sample) -> packed (T, D) in its order.
        """
        if keep is None:
            return self.norm(self.blocks(self.embed(x)))
        ragged = keep if isinstance(keep, RaggedIndex) else RaggedIndex.from_dense(keep)
        # the one kept-token forward (models.kept_tokens): gather after patch + pos embedding, packed
        packed = forward_kept(self, x, ragged).tokens  # (T, D): the blocks only see kept tokens, no pads
        return packed if isinstance(keep, RaggedIndex) else packed.view(*keep.shape, -1)

    def forward_features(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        """All N tokens (timm API): (B, 3, S, S) -> (B, N, D)."""
        if attn_mask is None and not is_causal:
            return self.forward(x)
        return super().forward_features(x, attn_mask=attn_mask, is_causal=is_causal)

    def forward_masked(self, x: torch.Tensor, keep_mask: torch.Tensor) -> torch.Tensor:
        """Baseline: all N tokens through the blocks, dropped ones hidden by a key mask.

        keep_mask (B, N) bool -> (B, N, D); outputs at dropped positions are meaningless. Exists so
        ``benchmarks/train_step.py`` can measure what gathering saves; never used in training.
        """
        tokens = self.embed(x)
        attn_mask = keep_mask[:, None, None, :]  # (B, 1, 1, N): queries attend to kept keys only
        for blk in self.blocks:
            tokens = blk(tokens, attn_mask=attn_mask)
        return self.norm(tokens)

    def pooled(self, x: torch.Tensor, keep: RaggedIndex | None = None) -> torch.Tensor:
        """Mean of final-normed patch tokens, (B, 3, S, S) -> (B, D): what timm's forward returns.

        With ``keep`` the mean runs over each sample's kept tokens only (scan-region tokens).
        """
        if keep is None:
            return self.forward(x).mean(dim=1)
        return keep.layout(per_sample=True).segment_mean(self.forward(x, keep))
