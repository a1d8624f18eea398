"""I-JEPA / US-JEPA predictor: context tokens + mask tokens at target positions -> teacher latents.

Shapes through :meth:`Predictor.forward` (B batch, Kc context tokens, nT target blocks of Kt
tokens each, M = nT * Kt, Ds student width, Dp predictor width, Dt teacher width):

    context (B, Kc, Ds) --embed--> (B, Kc, Dp) + pos[context_idx]
    mask token (Dp,) + pos[target_idx] --> (B, M, Dp)
    per-block mode: repeat context nT times -> (B*nT, Kc + Kt, Dp)   (I-JEPA: each target block is
                    predicted from the context alone, never from another block's mask tokens)
    joint mode:     (B, Kc + M, Dp)                                    (cheaper, V-JEPA style)
    blocks, norm, keep the mask-token outputs, project -> (B, M, Dt)

The output order matches ``target_idx`` so the loss gathers teacher tokens with the same index.
The output projection goes to the **teacher's** width, which need not equal the student's.
"""

from __future__ import annotations

import math

import torch
from timm.models.vision_transformer import Block
from torch import nn

from usjepa_fast.models.pos_embed import sincos_2d
from usjepa_fast.models.vit import KernelAttention, apply_masks


class Predictor(nn.Module):
    """Narrow transformer that regresses target-token latents from the encoded context."""

    def __init__(
        self,
        grid: tuple[int, int],
        in_dim: int,
        out_dim: int,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        per_block: bool = True,
    ) -> None:
        super().__init__()
        self.grid = tuple(grid)
        self.per_block = per_block
        self.predictor_embed = nn.Linear(in_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Fixed table, saved with the weights so a checkpoint is self-describing about its grid.
        self.register_buffer("pos_embed", sincos_2d(embed_dim, self.grid)[None], persistent=False)
        dpr = [float(r) for r in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = nn.Sequential(
            *[
                Block(
                    embed_dim,
                    num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop_path=dpr[i],
                    attn_layer=KernelAttention,
                )
                for i in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.predictor_proj = nn.Linear(embed_dim, out_dim)
        self.out_dim = out_dim
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for layer_id, blk in enumerate(self.blocks, start=1):  # I-JEPA depth-aware rescale
            blk.attn.proj.weight.data.div_(math.sqrt(2.0 * layer_id))
            blk.mlp.fc2.weight.data.div_(math.sqrt(2.0 * layer_id))

    def forward(
        self,
        context: torch.Tensor,
        context_idx: torch.Tensor,
        target_idx: torch.Tensor,
        num_target_blocks: int = 1,
    ) -> torch.Tensor:
        """context (B, Kc, Ds), context_idx (B, Kc), target_idx (B, M) -> (B, M, Dt)."""
        b, kc, _ = context.shape
        m = target_idx.shape[1]
        pos = self.pos_embed.to(context.dtype).expand(b, -1, -1)  # (B, N, Dp)
        ctx = self.predictor_embed(context) + apply_masks(pos, context_idx)  # (B, Kc, Dp)
        tgt = self.mask_token.to(ctx.dtype) + apply_masks(pos, target_idx)  # (B, M, Dp)
        if self.per_block and num_target_blocks > 1:
            if m % num_target_blocks:
                raise ValueError(f"{m} target tokens do not split into {num_target_blocks} equal blocks")
            kt = m // num_target_blocks
            tgt = tgt.reshape(b * num_target_blocks, kt, -1)  # (B*nT, Kt, Dp), block-major per sample
            ctx = ctx.repeat_interleave(num_target_blocks, dim=0)  # (B*nT, Kc, Dp)
        x = self.blocks(torch.cat([ctx, tgt], dim=1))
        x = self.norm(x[:, kc:])  # mask-token outputs only
        return self.predictor_proj(x).reshape(b, m, self.out_dim)  # (B, M, Dt)
