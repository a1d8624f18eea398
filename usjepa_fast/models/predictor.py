"""I-JEPA / US-JEPA predictor: context tokens + mask tokens at target positions -> teacher latents.

Tokens travel packed (see :mod:`usjepa_fast.kernels.varlen`). Shapes through :meth:`Predictor.forward`
(B samples, sample b with Lc[b] context tokens and nT target blocks of Lt[b, j] tokens each;
Tc = sum Lc, Tt = sum Lt; Ds student width, Dp predictor width, Dt teacher width):

    context (Tc, Ds) --embed--> (Tc, Dp) + pos[context idx]
    mask token (Dp,) + pos[target idx] --> (Tt, Dp)
    per-block mode: B*nT sequences [context of b ; block j of b]   (I-JEPA: each target block is
                    predicted from the context alone, never from another block's mask tokens)
    joint mode:     B sequences [context of b ; all blocks of b]   (cheaper, V-JEPA style)
    one index_select assembles the packed sequences (Tp, Dp); blocks; the mask-token rows are
    picked back out in target order; norm; project -> (Tt, Dt)

Every sample keeps its own context and block sizes; nothing is padded or truncated. The output
order matches the target :class:`~usjepa_fast.masking.RaggedIndex`, so the loss gathers teacher
tokens with the same index. The output projection goes to the **teacher's** width, which need not
equal the student's. Dense ``(B, Kc)`` / ``(B, M)`` indices are the equal-length case of the same
path (``(B, Kc, Ds)`` in, ``(B, M, Dt)`` out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from usjepa_fast.kernels import VarlenLayout
from usjepa_fast.masking.ragged import RaggedIndex
from usjepa_fast.models.pos_embed import sincos_2d
from usjepa_fast.models.vit import KernelAttention, KernelBlock


@dataclass(frozen=True, eq=False)
class PredictorPlan:
    """How packed context and mask tokens become the predictor's packed sequences."""

    gather: torch.Tensor  # (Tp,) rows of cat([context (Tc), mask tokens (Tt)]) in sequence order
    out_rows: torch.Tensor  # (Tt,) rows of the mask tokens in the packed sequences, in target order
    layout: VarlenLayout  # the predictor sequences (per (sample, block) or per sample)
    context_lens: torch.Tensor  # (B, 1) host lengths of the context it was built for (cache check)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PredictorPlan:
        return PredictorPlan(
            self.gather.to(device, non_blocking=non_blocking),
            self.out_rows.to(device, non_blocking=non_blocking),
            self.layout.to(device, non_blocking=non_blocking),
            self.context_lens,
        )

    def pin_memory(self) -> PredictorPlan:
        return PredictorPlan(
            self.gather.pin_memory(), self.out_rows.pin_memory(), self.layout.pin_memory(), self.context_lens
        )


def _exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(x, 0) - x


def build_plan(context: RaggedIndex, target: RaggedIndex, per_block: bool) -> PredictorPlan:
    """Host-side index arithmetic (lengths are host tensors): no device sync, O(T) work."""
    lc, lt = context.sample_lens, target.lens  # (B,), (B, nT) host int64
    nt = target.seqs_per_sample
    tc = int(lc.sum())
    ctx_start = _exclusive_cumsum(lc)  # (B,)
    tgt_start = tc + _exclusive_cumsum(lt.reshape(-1))  # (B*nT,) rows in the cat([ctx, tgt]) tensor
    if per_block and nt > 1:  # sequence (b, j) = context of b, then block j of b
        a_start, a_len = ctx_start.repeat_interleave(nt), lc.repeat_interleave(nt)
        b_start, b_len = tgt_start, lt.reshape(-1)
    else:  # sequence b = context of b, then all its blocks (contiguous: targets are sample-major)
        a_start, a_len = ctx_start, lc
        b_start, b_len = tgt_start.view(-1, nt)[:, 0], lt.sum(1)
    seq_len = a_len + b_len
    total = int(seq_len.sum())
    seq = torch.repeat_interleave(torch.arange(seq_len.numel()), seq_len, output_size=total)
    pos = torch.arange(total) - _exclusive_cumsum(seq_len)[seq]
    in_context = pos < a_len[seq]
    gather = torch.where(in_context, a_start[seq] + pos, b_start[seq] + pos - a_len[seq])
    out_rows = torch.nonzero(~in_context).squeeze(1)  # sequence order == target order (both sample-major)
    device = target.device
    return PredictorPlan(gather.to(device), out_rows.to(device), VarlenLayout.from_lens(seq_len, device), context.lens)


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
                KernelBlock(
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

    def plan(self, context_idx: RaggedIndex, target_idx: RaggedIndex) -> PredictorPlan:
        """The packing plan for these masks (memoised on the target index: the trainer warms it
        in its mask thread, off the critical path)."""
        key = ("predictor_plan", self.per_block)
        cached = target_idx._cache.get(key)
        if cached is not None and cached.context_lens is context_idx.lens:  # built for this very context
            return cached
        plan = build_plan(context_idx, target_idx, self.per_block)
        target_idx._cache[key] = plan
        return plan

    def forward(
        self,
        context: torch.Tensor,
        context_idx: torch.Tensor | RaggedIndex,
        target_idx: torch.Tensor | RaggedIndex,
        num_target_blocks: int = 1,
    ) -> torch.Tensor:
        """Packed: context (Tc, Ds) + RaggedIndex masks -> (Tt, Dt) in target order.

        Dense: context (B, Kc, Ds), context_idx (B, Kc), target_idx (B, M) of ``num_target_blocks``
        equal blocks -> (B, M, Dt). (With RaggedIndex targets the block count is their J.)
        """
        dense = not isinstance(target_idx, RaggedIndex)
        if dense:
            b, m = target_idx.shape
            context = context.reshape(-1, context.shape[-1])  # (B*Kc, Ds)
            context_idx = RaggedIndex.from_dense(context_idx)
            target_idx = RaggedIndex.from_dense(target_idx, num_target_blocks)
        plan = self.plan(context_idx, target_idx)
        pos = self.pos_embed[0].to(context.dtype)  # (N, Dp)
        ctx = self.predictor_embed(context) + pos.index_select(0, context_idx.idx)  # (Tc, Dp)
        tgt = self.mask_token[0].to(ctx.dtype) + pos.index_select(0, target_idx.idx)  # (Tt, Dp)
        x = torch.cat([ctx, tgt]).index_select(0, plan.gather)  # (Tp, Dp) packed predictor sequences
        for blk in self.blocks:
            x = blk(x, layout=plan.layout)
        x = self.norm(x.index_select(0, plan.out_rows))  # mask-token outputs only, (Tt, Dp)
        out = self.predictor_proj(x)  # (Tt, Dt)
        return out.view(b, m, self.out_dim) if dense else out
