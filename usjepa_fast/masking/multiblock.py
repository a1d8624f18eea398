"""I-JEPA multi-block masking, and USrc: the same masks restricted to each image's scan region.

Per batch (as in I-JEPA) one target block size and one context block size are drawn (scale and
aspect ratio), then per image:

1. ``num_target_blocks`` target blocks of that size at random positions;
2. one context block; context = context block minus the union of the targets (no overlap, so the
   student never sees what it must predict); redrawn until it keeps ``min_keep`` patches;
3. counts are equalised across the batch by a *random* subset down to the batch minimum (I-JEPA
   keeps the first indices, which biases truncation towards the top rows), so that the gathers in
   the encoder and predictor are dense ``(B, K)`` tensors.

**USrc** (``usrc=True``) uses each item's ``valid_patches`` grid (True = the patch touches the scan
region): a target block is accepted only if at least ``tau`` of its patches are valid, and then only
its valid patches become targets; the context is limited to valid patches too.

Default ``tau = 0.8``: (a) all targets are anatomy by construction (invalid patches are dropped), so
tau only decides how much of a block may be cut away; since targets are then truncated to the batch
minimum, tau bounds the worst-case truncation of *every* sample's targets to ``1 - tau`` (20%) of a
block; (b) tau = 1.0 would reject nearly every block that touches a curved fan edge, which biases
targets towards the image centre and makes rejection sampling slow on narrow sector scans; (c) a
low tau lets slivers of 2-3 patches through, which are near-trivial to predict from neighbours.

Bounded rejection sampling and its fallback: each block gets ``max_tries`` draws. A target that never
reaches tau takes the best candidate seen (highest valid fraction); if that holds no valid patch at
all (a scan region smaller than one block), the block is re-centred on a random valid patch. A
context that never keeps ``min_keep`` patches falls back to "all valid patches minus targets" and,
if even that is too small (an image with an almost empty scan mask), to the whole grid minus the
targets (plain I-JEPA for that image). Every fallback is counted in ``MaskBatch.fallbacks`` and
logged by the trainer, so a dataset whose scan masks are broken shows up in the logs.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from usjepa_fast.errors import DataError

log = logging.getLogger("usfast")


@dataclass
class MaskConfig:
    """Multi-block masking; defaults are US-JEPA's (I-JEPA with smaller targets)."""

    num_target_blocks: int = 4  # I-JEPA/US-JEPA: 4 target blocks per image
    target_scale: tuple[float, float] = (0.075, 0.125)  # fraction of the grid per target block (US-JEPA)
    target_aspect: tuple[float, float] = (0.75, 1.5)  # height/width ratio range, log-uniform
    context_scale: tuple[float, float] = (0.85, 1.0)  # the context block covers most of the image
    context_aspect: tuple[float, float] = (1.0, 1.0)  # square context block, as in I-JEPA
    min_keep: int = 10  # fewest context patches an image may keep (I-JEPA)
    usrc: bool = False  # restrict blocks to each image's scan region (USrc-JEPA)
    tau: float = 0.8  # USrc: min fraction of valid patches for a target block (see module doc)
    max_tries: int = 20  # rejection-sampling budget per block before the documented fallback


@dataclass
class MaskBatch:
    """Dense indices into the row-major patch grid of one batch."""

    context_idx: torch.Tensor  # (B, Kc) long, sorted per row
    target_idx: torch.Tensor  # (B, nT * Kt) long, block-major: block j is [j*Kt, (j+1)*Kt)
    num_target_blocks: int
    fallbacks: dict[str, int] = field(default_factory=dict)

    @property
    def tokens_per_block(self) -> int:
        return self.target_idx.shape[1] // self.num_target_blocks


def _block_size(
    rng: np.random.Generator, scale: tuple[float, float], aspect: tuple[float, float], grid: tuple[int, int]
) -> tuple[int, int]:
    gh, gw = grid
    s = rng.uniform(*scale)
    a = math.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1])))
    n = gh * gw * s
    h = int(round(math.sqrt(n * a)))
    w = int(round(math.sqrt(n / a)))
    return max(1, min(h, gh)), max(1, min(w, gw))


class MultiBlockMaskCollator:
    """Collate items and draw masks: ``__call__(list[dict]) -> dict(image, context_idx, target_idx, ...)``.

    The trainer calls :meth:`sample` directly with a per-step seeded generator so that masks are
    reproducible across resume and independent of data-loader workers; ``__call__`` is the
    DataLoader-friendly form (one generator advanced per call).
    """

    def __init__(self, cfg: MaskConfig, grid: tuple[int, int] = (14, 14), seed: int = 0) -> None:
        if cfg.num_target_blocks < 1:
            raise ValueError("num_target_blocks must be >= 1")
        if not 0.0 < cfg.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {cfg.tau}")
        self.cfg = cfg
        self.grid = (int(grid[0]), int(grid[1]))
        self._rng = np.random.default_rng(seed)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch = torch.utils.data.default_collate(items)
        valid = batch.get("valid_patches") if self.cfg.usrc else None
        masks = self.sample(len(items), valid, self._rng)
        batch["context_idx"] = masks.context_idx
        batch["target_idx"] = masks.target_idx
        batch["num_target_blocks"] = masks.num_target_blocks
        batch["mask_fallbacks"] = masks.fallbacks
        return batch

    # -- sampling ---------------------------------------------------------------------------------
    def sample(self, batch_size: int, valid: torch.Tensor | None, rng: np.random.Generator) -> MaskBatch:
        """Draw masks for ``batch_size`` images; ``valid`` (B, gh, gw) bool is used when ``usrc``."""
        cfg, grid = self.cfg, self.grid
        if cfg.usrc:
            if valid is None:
                raise DataError("USrc masking needs 'valid_patches' in every item; build the dataset with scan masks")
            valid_np = valid.detach().cpu().numpy().astype(bool).reshape(batch_size, *grid)
        else:
            valid_np = np.ones((batch_size, *grid), dtype=bool)
        t_size = _block_size(rng, cfg.target_scale, cfg.target_aspect, grid)
        c_size = _block_size(rng, cfg.context_scale, cfg.context_aspect, grid)
        fallbacks = {"target_best_effort": 0, "target_recentred": 0, "context_valid": 0, "context_grid": 0}

        contexts: list[np.ndarray] = []
        targets: list[list[np.ndarray]] = []
        for b in range(batch_size):
            v = valid_np[b]
            if cfg.usrc and v.sum() < cfg.min_keep + 1:  # empty/broken scan mask: plain I-JEPA here
                fallbacks["context_grid"] += 1
                v = np.ones(grid, dtype=bool)
            blocks = [self._target_block(rng, t_size, v, fallbacks) for _ in range(cfg.num_target_blocks)]
            covered = np.zeros(grid, dtype=bool)
            for blk in blocks:
                covered |= blk
            targets.append([np.flatnonzero(blk & v) for blk in blocks])
            contexts.append(self._context(rng, c_size, v, covered, fallbacks))

        kc = min(len(c) for c in contexts)
        kt = min(len(t) for per in targets for t in per)
        ctx = np.stack([_subset(rng, c, kc) for c in contexts])
        tgt = np.stack([np.concatenate([_subset(rng, t, kt) for t in per]) for per in targets])
        return MaskBatch(
            context_idx=torch.from_numpy(ctx).long(),
            target_idx=torch.from_numpy(tgt).long(),
            num_target_blocks=cfg.num_target_blocks,
            fallbacks={k: n for k, n in fallbacks.items() if n},
        )

    def _place(self, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
        gh, gw = self.grid
        h, w = size
        top = int(rng.integers(0, gh - h + 1))
        left = int(rng.integers(0, gw - w + 1))
        m = np.zeros(self.grid, dtype=bool)
        m[top : top + h, left : left + w] = True
        return m

    def _target_block(
        self, rng: np.random.Generator, size: tuple[int, int], valid: np.ndarray, fallbacks: dict[str, int]
    ) -> np.ndarray:
        if not self.cfg.usrc:
            return self._place(rng, size)
        area = size[0] * size[1]
        best, best_frac = None, -1.0
        for _ in range(self.cfg.max_tries):
            blk = self._place(rng, size)
            frac = (blk & valid).sum() / area
            if frac >= self.cfg.tau:
                return blk
            if frac > best_frac:
                best, best_frac = blk, frac
        if best is not None and best_frac > 0:
            fallbacks["target_best_effort"] += 1
            return best
        # No draw touched the region: centre the block on a random valid patch (clipped to the grid).
        fallbacks["target_recentred"] += 1
        cy, cx = divmod(int(rng.choice(np.flatnonzero(valid))), self.grid[1])
        gh, gw = self.grid
        top = min(max(cy - size[0] // 2, 0), gh - size[0])
        left = min(max(cx - size[1] // 2, 0), gw - size[1])
        blk = np.zeros(self.grid, dtype=bool)
        blk[top : top + size[0], left : left + size[1]] = True
        return blk

    def _context(
        self,
        rng: np.random.Generator,
        size: tuple[int, int],
        valid: np.ndarray,
        covered: np.ndarray,
        fallbacks: dict[str, int],
    ) -> np.ndarray:
        allowed = valid & ~covered
        for _ in range(self.cfg.max_tries):
            keep = np.flatnonzero(self._place(rng, size) & allowed)
            if len(keep) >= self.cfg.min_keep:
                return keep
        keep = np.flatnonzero(allowed)
        if len(keep) >= self.cfg.min_keep:
            fallbacks["context_valid"] += 1
            return keep
        fallbacks["context_grid"] += 1
        keep = np.flatnonzero(~covered)
        if len(keep) == 0:
            raise DataError(
                f"target blocks cover the whole {self.grid} grid; lower masking.target_scale or num_target_blocks"
            )
        return keep


def _subset(rng: np.random.Generator, idx: np.ndarray, k: int) -> np.ndarray:
    """Random size-k subset of ``idx``, kept in ascending (raster) order."""
    if len(idx) == k:
        return idx
    return np.sort(rng.choice(idx, size=k, replace=False))


def masks_to_grid(idx: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, K) indices -> (B, gh, gw) bool occupancy (for previews and tests)."""
    out = torch.zeros(idx.shape[0], grid[0] * grid[1], dtype=torch.bool)
    out.scatter_(1, idx.cpu(), True)
    return out.view(idx.shape[0], *grid)
