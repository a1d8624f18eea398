"""The ragged token layout: S sequences of different lengths packed back to back.

Every ultrasound frame has its own scan region, so every sample of a JEPA batch keeps its own
number of context and target tokens. Tokens travel **packed**: ``x (T, ...)`` where
``T = sum(lens)`` and sequence ``s`` is ``x[cu_seqlens[s] : cu_seqlens[s + 1]]`` (the layout of
FlashAttention's varlen API and of PyTorch's jagged nested tensors). Token-wise layers (norms, qkv,
projection, MLP: >90% of a ViT's FLOPs at JEPA lengths) run on ``(T, D)`` and never see a pad;
only attention needs to know where one sequence ends, and :class:`VarlenLayout` tells it.

The layout is built once per batch from lengths that live on the host (the mask collator knows
them), so nothing here forces a device sync: ``max_len`` and ``total`` are Python ints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True, eq=False)
class VarlenLayout:
    """Where each of S packed sequences starts and ends; all tensors on the compute device."""

    lens: torch.Tensor  # (S,) int64 sequence lengths
    cu_seqlens: torch.Tensor  # (S+1,) int32 cumulative lengths (FlashAttention / Triton varlen input)
    seq_id: torch.Tensor  # (T,) int64 sequence of each packed token (drop path, pooling)
    pad_index: torch.Tensor  # (T,) int64 row of each packed token in the padded (S * max_len) layout
    max_len: int  # longest sequence (host int: shapes of the padded form, kernel grids)
    total: int  # T, the number of real tokens (host int)
    uniform: bool  # every sequence has the same length: the packed tensor *is* a dense (S, L, ...) view

    @property
    def num_seqs(self) -> int:
        return int(self.lens.shape[0])

    @classmethod
    def from_lens(
        cls, lens: torch.Tensor | np.ndarray | Sequence[int], device: torch.device | str | None = None
    ) -> VarlenLayout:
        """Build from host lengths ``(S,)`` (a CUDA tensor would need a sync: pass host lengths)."""
        host = torch.as_tensor(np.asarray(lens.cpu() if isinstance(lens, torch.Tensor) else lens), dtype=torch.int64)
        host = host.reshape(-1)
        if host.numel() and int(host.min()) < 0:
            raise ValueError(f"sequence lengths must be >= 0, got min {int(host.min())}")
        s = host.numel()
        total = int(host.sum())
        max_len = int(host.max()) if s else 0
        cu = torch.zeros(s + 1, dtype=torch.int64)
        torch.cumsum(host, 0, out=cu[1:])
        seq_id = torch.repeat_interleave(torch.arange(s), host, output_size=total)
        pos = torch.arange(total) - cu[:-1].repeat_interleave(host, output_size=total)  # position in sequence
        uniform = s > 0 and int(host.min()) == max_len
        layout = cls(
            lens=host,
            cu_seqlens=cu.to(torch.int32),
            seq_id=seq_id,
            pad_index=seq_id * max_len + pos,
            max_len=max_len,
            total=total,
            uniform=uniform,
        )
        return layout.to(device) if device is not None else layout

    def _map(self, fn) -> VarlenLayout:
        return VarlenLayout(
            lens=fn(self.lens),
            cu_seqlens=fn(self.cu_seqlens),
            seq_id=fn(self.seq_id),
            pad_index=fn(self.pad_index),
            max_len=self.max_len,
            total=self.total,
            uniform=self.uniform,
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> VarlenLayout:
        if self.lens.device == torch.device(device):
            return self
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> VarlenLayout:
        """Page-locked host copies, so that ``.to("cuda", non_blocking=True)`` does not block."""
        return self._map(lambda t: t.pin_memory())

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Packed ``(T, ...)`` -> zero-padded ``(S, max_len, ...)`` (pads get no gradient back)."""
        if self.uniform:
            return x.view(self.num_seqs, self.max_len, *x.shape[1:])
        out = x.new_zeros((self.num_seqs * self.max_len, *x.shape[1:]))
        return out.index_copy(0, self.pad_index, x).view(self.num_seqs, self.max_len, *x.shape[1:])

    def unpad(self, y: torch.Tensor) -> torch.Tensor:
        """Padded ``(S, max_len, ...)`` -> packed ``(T, ...)`` (whatever the pads hold is dropped)."""
        flat = y.reshape(self.num_seqs * self.max_len, *y.shape[2:])
        return flat if self.uniform else flat.index_select(0, self.pad_index)

    def segment_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Mean over each sequence: packed ``(T, D)`` -> ``(S, D)`` (an empty sequence gives zeros)."""
        out = x.new_zeros((self.num_seqs, *x.shape[1:])).index_add_(0, self.seq_id, x)
        return out / self.lens.clamp(min=1).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
