"""The student / context encoder: a timm ViT that runs only on the kept context tokens.

The class subclasses timm's ``VisionTransformer`` built with ``class_token=False,
global_pool="avg", fc_norm=False, num_classes=0``, so its state dict is exactly timm's and the
export-ready ``student.safetensors`` loads into ``timm.create_model(timm_name, **timm_kwargs)``
with no key mapping. Two things differ from timm:

- attention goes through :func:`usjepa_fast.kernels.masked_attention` (Triton on CUDA, SDPA
  elsewhere), so the fused kernel slots in without touching the model;
- ``forward(x, keep_idx)`` gathers the kept tokens right after patch + position embedding, so the
  transformer blocks see (B, K, D) instead of (B, N, D): the cost scales with K, which is the whole
  point of masked latent prediction (the context is ~50-70% of the image after target removal).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer

from usjepa_fast.kernels import masked_attention
from usjepa_fast.models.frozen import EncoderInfo
from usjepa_fast.models.pos_embed import sincos_2d


class KernelAttention(Attention):
    """timm ``Attention`` (same parameters and keys) whose core goes through the kernel call site.

    ``attn_mask`` is honoured with plain SDPA: it exists only for the "all tokens + attention mask"
    baseline of ``benchmarks/train_step.py`` and for timm's API; training never passes one.
    """

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if is_causal:
            raise ValueError("KernelAttention does not support causal attention")
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        if attn_mask is None:
            out = masked_attention(q, k, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = out.transpose(1, 2).reshape(b, n, self.attn_dim)  # (B, N, H*hd)
        out = self.norm(out)
        return self.proj_drop(self.proj(out))


def apply_masks(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather tokens by index: x (B, N, D), idx (B, K) long -> (B, K, D)."""
    return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))


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
        super().__init__(**timm_kwargs, drop_path_rate=drop_path_rate, attn_layer=KernelAttention)
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
        return self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))

    def forward(self, x: torch.Tensor, keep_idx: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, S, S), keep_idx (B, K) -> (B, K, D) final-normed tokens (all N when None)."""
        tokens = self.embed(x)  # (B, N, D)
        if keep_idx is not None:
            tokens = apply_masks(tokens, keep_idx)  # (B, K, D): the blocks only see context
        tokens = self.blocks(tokens)
        return self.norm(tokens)

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

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of final-normed patch tokens, (B, 3, S, S) -> (B, D): what timm's forward returns."""
        return self.forward(x).mean(dim=1)
