"""Masks as index tensors, ragged: every sample keeps its own number of tokens.

A :class:`RaggedIndex` lists patch indices of ``B * J`` token sequences packed back to back
(``J`` sequences per sample: 1 for a context, ``num_target_blocks`` for targets), sample-major and
ascending (raster order) inside each sequence. Its lengths live on the host, so the layouts the
models need (:class:`usjepa_fast.kernels.VarlenLayout`) are built without a device sync.

:func:`apply_masks` is I-JEPA's tiny gather, for both forms: ``(B, K)`` dense indices give
``(B, K, D)``; a :class:`RaggedIndex` gives packed ``(T, D)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from usjepa_fast.kernels.varlen import VarlenLayout


@dataclass(eq=False)
class RaggedIndex:
    """Patch indices of ``B x J`` packed sequences; sequence ``(b, j)`` is the ``b * J + j``-th."""

    idx: torch.Tensor  # (T,) int64 patch indices in [0, N), packed sequence after sequence
    lens: torch.Tensor  # (B, J) int64 on the CPU: the length of each sequence
    # Plans built from this index (values have .to(device) and .pin_memory(): tensors, layouts, plans).
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.lens = torch.as_tensor(self.lens, dtype=torch.int64).cpu()
        if self.lens.dim() == 1:
            self.lens = self.lens[:, None]
        if self.idx.dim() != 1 or self.lens.dim() != 2:
            raise ValueError(f"RaggedIndex needs idx (T,) and lens (B, J), got {tuple(self.idx.shape)}, "
                             f"{tuple(self.lens.shape)}")  # fmt: skip
        if int(self.lens.sum()) != self.idx.shape[0]:
            raise ValueError(f"RaggedIndex lens sum to {int(self.lens.sum())} but idx holds {self.idx.shape[0]}")

    # -- sizes (host ints, no device sync) -------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return int(self.lens.shape[0])

    @property
    def seqs_per_sample(self) -> int:
        return int(self.lens.shape[1])

    @property
    def total(self) -> int:
        return int(self.idx.shape[0])

    @property
    def sample_lens(self) -> torch.Tensor:
        """(B,) tokens per sample over its J sequences (host)."""
        return self.lens.sum(1)

    @property
    def uniform(self) -> bool:
        return bool((self.lens == self.lens.flatten()[0]).all()) if self.lens.numel() else True

    @property
    def device(self) -> torch.device:
        return self.idx.device

    # -- layouts and flat indices (memoised per index object) ------------------------------------
    def layout(self, per_sample: bool = False) -> VarlenLayout:
        """Attention layout on ``idx``'s device: one sequence per (sample, j), or per sample."""
        key = ("layout", per_sample)
        if key not in self._cache:
            lens = self.sample_lens if per_sample else self.lens.reshape(-1)
            self._cache[key] = VarlenLayout.from_lens(lens, self.device)
        return self._cache[key]

    def flat(self, num_patches: int) -> torch.Tensor:
        """(T,) indices into a flattened ``(B * N)`` token tensor: ``sample * N + idx``."""
        key = ("flat", num_patches)
        if key not in self._cache:
            self._cache[key] = self.layout(per_sample=True).seq_id * num_patches + self.idx
        return self._cache[key]

    # -- conversions ----------------------------------------------------------------------------
    def to(self, device: torch.device | str, non_blocking: bool = False) -> RaggedIndex:
        """Move the indices and every plan built so far (layouts, flat indices, predictor plans)."""
        if self.idx.device == torch.device(device):
            return self
        moved = RaggedIndex(self.idx.to(device, non_blocking=non_blocking), self.lens)
        moved._cache.update({k: v.to(device, non_blocking=non_blocking) for k, v in self._cache.items()})
        return moved

    def pin_memory(self) -> RaggedIndex:
        """Page-locked copies of the indices and plans (for an async host-to-device copy)."""
        pinned = RaggedIndex(self.idx.pin_memory(), self.lens)
        pinned._cache.update({k: v.pin_memory() for k, v in self._cache.items()})
        return pinned

    @classmethod
    def from_dense(cls, idx: torch.Tensor, seqs_per_sample: int = 1) -> RaggedIndex:
        """(B, J*K) dense indices (J blocks of K, block-major per row) -> ragged with equal lengths."""
        b, m = idx.shape
        if m % seqs_per_sample:
            raise ValueError(f"{m} indices per sample do not split into {seqs_per_sample} equal blocks")
        lens = torch.full((b, seqs_per_sample), m // seqs_per_sample, dtype=torch.int64)
        return cls(idx.reshape(-1).long(), lens)

    @classmethod
    def from_mask(cls, mask: np.ndarray | torch.Tensor) -> RaggedIndex:
        """(B, J, N) bool occupancy -> the True positions of each (b, j), in raster order."""
        m = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        if m.ndim != 3:
            raise ValueError(f"from_mask expects a (B, J, N) mask, got shape {m.shape}")
        _, cols = np.nonzero(m.reshape(-1, m.shape[-1]))  # row-major: sequence after sequence
        return cls(torch.from_numpy(cols.astype(np.int64)), torch.from_numpy(m.sum(-1).astype(np.int64)))

    def to_mask(self, num_patches: int) -> torch.Tensor:
        """(B, J, N) bool occupancy on the CPU (previews, tests)."""
        rows = torch.repeat_interleave(torch.arange(self.lens.numel()), self.lens.reshape(-1))
        out = torch.zeros(self.lens.numel(), num_patches, dtype=torch.bool)
        out[rows, self.idx.cpu()] = True
        return out.view(self.batch_size, self.seqs_per_sample, num_patches)

    def sequences(self) -> list[list[torch.Tensor]]:
        """Per sample, per j: that sequence's indices (tests, debugging)."""
        parts = torch.split(self.idx.cpu(), self.lens.reshape(-1).tolist())
        j = self.seqs_per_sample
        return [list(parts[b * j : (b + 1) * j]) for b in range(self.batch_size)]


def apply_masks(x: torch.Tensor, idx: torch.Tensor | RaggedIndex) -> torch.Tensor:
    """Gather tokens: x (B, N, D) with idx (B, K) -> (B, K, D); with a RaggedIndex -> packed (T, D)."""
    if isinstance(idx, RaggedIndex):
        b, n, d = x.shape
        return x.reshape(b * n, d).index_select(0, idx.flat(n))
    return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))


def masks_to_grid(idx: torch.Tensor | RaggedIndex, grid: tuple[int, int]) -> torch.Tensor:
    """Occupancy grids: (B, K) indices -> (B, gh, gw); a RaggedIndex -> (B, J, gh, gw)."""
    if isinstance(idx, RaggedIndex):
        return idx.to_mask(grid[0] * grid[1]).view(idx.batch_size, idx.seqs_per_sample, *grid)
    out = torch.zeros(idx.shape[0], grid[0] * grid[1], dtype=torch.bool)
    out.scatter_(1, idx.cpu(), True)
    return out.view(idx.shape[0], *grid)
