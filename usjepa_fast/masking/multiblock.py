"""I-JEPA multi-block masking, and USrc: the same masks restricted to each image's scan region.

Per batch (as in I-JEPA) one target block size and one context block size are drawn (scale and
aspect ratio), then per image:

1. ``num_target_blocks`` target blocks of that size at random positions;
2. one context block; context = context block minus the union of the targets (no overlap, so the
   student never sees what it must predict); redrawn until it keeps ``min_keep`` patches;
3. **no equalisation** (``equalize="none"``, default): every image keeps its whole context and
   every block its own tokens, so the batch is ragged (:class:`~usjepa_fast.masking.ragged.RaggedIndex`).
   ``equalize="truncate"`` reproduces the dense I-JEPA batch instead: every context and every
   block is cut to the batch minimum by a *random* subset (I-JEPA keeps the first indices, which
   biases truncation towards the top rows). With scan regions of different sizes that discards
   most of the context (60% at the paper settings with USrc, 13% without: one narrow fan starves
   the whole batch); it stays for comparisons on the same draw (``benchmarks/ragged_tokens.py``).

**USrc** (``usrc=True``) uses each item's ``valid_patches`` grid (True = the patch touches the scan
region): a target block is accepted only if at least ``tau`` of its patches are valid, and then only
its valid patches become targets; the context is limited to valid patches too.

Default ``tau = 0.8``: (a) all targets are anatomy by construction (invalid patches are dropped), so
tau only decides how much of a block may be cut away: an accepted block keeps at least ``tau`` of
its area (and, without equalisation, exactly its valid patches); (b) tau = 1.0 would reject nearly
every block that touches a curved fan edge, which biases targets towards the image centre and makes
rejection sampling slow on narrow sector scans; (c) a low tau lets slivers of 2-3 patches through,
which are near-trivial to predict from neighbours.

Bounded rejection sampling and its fallback: each block gets ``max_tries`` draws. A target that never
reaches tau takes the best candidate seen (highest valid fraction); if that holds no valid patch at
all (a scan region smaller than one block), the block is re-centred on a random valid patch. A
context that never keeps ``min_keep`` patches falls back to "all valid patches minus targets" and,
if even that is too small (an image with an almost empty scan mask), to the whole grid minus the
targets (plain I-JEPA for that image). Every fallback is counted in ``MaskBatch.fallbacks`` and
logged by the trainer, so a dataset whose scan masks are broken shows up in the logs. Without
equalisation a fallback block changes only its own sample's tokens.

The sampler is vectorised over the batch: all candidate positions of all blocks are drawn at once
and scored with integral images (a box count is four lookups), so a B=256 draw costs ~1-3 ms
instead of ~30-60 ms of per-image Python loops. Drawing every try up front picks the first accepted
candidate of i.i.d. draws, the same distribution as sequential rejection.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from usjepa_fast.errors import DataError
from usjepa_fast.masking.ragged import RaggedIndex

log = logging.getLogger("usfast")

FALLBACKS = ("target_best_effort", "target_recentred", "context_valid", "context_grid")


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
    # none: every sample keeps all its context/target tokens (ragged batch); truncate: cut to the
    # batch minimum (dense I-JEPA batches; the baseline of the ragged-vs-truncated comparisons)
    equalize: Literal["none", "truncate"] = "none"


@dataclass
class MaskBatch:
    """The masks of one batch as ragged index tensors (CPU from the collator; ``.to(device)``)."""

    context: RaggedIndex  # lens (B, 1): each sample's context patches, raster order
    target: RaggedIndex  # lens (B, nT): each sample's target blocks, block-major per sample
    context_available: torch.Tensor  # (B,) int64 context patches the sample had before equalisation
    target_available: torch.Tensor  # (B, nT) int64 target patches of each block before equalisation
    target_shape: tuple[int, int]  # (h, w) of this batch's target blocks (before the scan-region cut)
    fallbacks: dict[str, int] = field(default_factory=dict)

    @property
    def num_target_blocks(self) -> int:
        return self.target.seqs_per_sample

    @property
    def batch_size(self) -> int:
        return self.context.batch_size

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MaskBatch:
        return MaskBatch(
            self.context.to(device, non_blocking),
            self.target.to(device, non_blocking),
            self.context_available,
            self.target_available,
            self.target_shape,
            dict(self.fallbacks),
        )

    def pin_memory(self) -> MaskBatch:  # DataLoader(pin_memory=True) calls this
        return MaskBatch(
            self.context.pin_memory(),
            self.target.pin_memory(),
            self.context_available,
            self.target_available,
            self.target_shape,
            dict(self.fallbacks),
        )


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


def _integral(m: np.ndarray) -> np.ndarray:
    """(B, gh, gw) bool -> (B, gh+1, gw+1) int32 summed-area table (box sums in 4 lookups)."""
    out = np.zeros((m.shape[0], m.shape[1] + 1, m.shape[2] + 1), dtype=np.int32)
    out[:, 1:, 1:] = m.cumsum(1, dtype=np.int32).cumsum(2, dtype=np.int32)
    return out


def _box_counts(table: np.ndarray, tops: np.ndarray, lefts: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Count of True cells in boxes ``size`` at (tops, lefts) (B, ...) of each sample's table."""
    h, w = size
    b = np.arange(table.shape[0]).reshape(-1, *([1] * (tops.ndim - 1)))
    return table[b, tops + h, lefts + w] - table[b, tops, lefts + w] - table[b, tops + h, lefts] + table[b, tops, lefts]


def _boxes(tops: np.ndarray, lefts: np.ndarray, size: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """Boolean box masks (..., gh, gw) of ``size`` at (tops, lefts) (...)."""
    rows, cols = np.arange(grid[0]), np.arange(grid[1])
    in_rows = (rows >= tops[..., None]) & (rows < tops[..., None] + size[0])  # (..., gh)
    in_cols = (cols >= lefts[..., None]) & (cols < lefts[..., None] + size[1])  # (..., gw)
    return in_rows[..., :, None] & in_cols[..., None, :]


def _random_subset(rng: np.random.Generator, mask: np.ndarray, k: int) -> np.ndarray:
    """Keep a uniformly random ``k`` of the True cells of every row of ``mask`` (R, N)."""
    keys = rng.random(mask.shape)
    keys[~mask] = 2.0  # never chosen while a True cell is left (every row holds >= k of them)
    chosen = np.argsort(keys, axis=1, kind="stable")[:, :k]
    out = np.zeros_like(mask)
    np.put_along_axis(out, chosen, True, axis=1)
    return out


def usrc_broken(valid: np.ndarray | torch.Tensor, min_keep: int) -> np.ndarray | torch.Tensor:
    """``(B,)`` bool: images whose scan region holds too few patches for USrc (``< min_keep + 1``)."""
    return valid.reshape(valid.shape[0], -1).sum(1) < min_keep + 1


def usrc_drawable(valid: np.ndarray | torch.Tensor, min_keep: int) -> np.ndarray | torch.Tensor:
    """The patches USrc draws context and targets from: ``valid (B, ...)`` bool, with an image whose
    region is broken (:func:`usrc_broken`) opened to its whole grid. A copy (numpy or torch, as given);
    every target lies inside it, so a teacher run on these patches only (``teacher.tokens=scan``)
    covers every target."""
    out = valid.copy() if isinstance(valid, np.ndarray) else valid.clone()
    out[usrc_broken(valid, min_keep)] = True
    return out


class MultiBlockMaskCollator:
    """Collate items and draw masks: ``__call__(list[dict]) -> dict(image, ..., masks=MaskBatch)``.

    The trainer calls :meth:`sample` directly with a generator seeded by (seed, step, micro, rank)
    so that masks are reproducible across resume and independent of data-loader workers;
    ``__call__`` is the DataLoader-friendly form (one generator advanced per call). :meth:`sample`
    touches no shared state, so it may run in a prefetch thread.
    """

    def __init__(self, cfg: MaskConfig, grid: tuple[int, int] = (14, 14), seed: int = 0) -> None:
        if cfg.num_target_blocks < 1:
            raise ValueError("num_target_blocks must be >= 1")
        if not 0.0 < cfg.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {cfg.tau}")
        if cfg.equalize not in ("none", "truncate"):
            raise ValueError(f"mask.equalize must be 'none' or 'truncate', got {cfg.equalize!r}")
        if cfg.max_tries < 1:
            raise ValueError(f"mask.max_tries must be >= 1, got {cfg.max_tries}")
        self.cfg = cfg
        self.grid = (int(grid[0]), int(grid[1]))
        self._rng = np.random.default_rng(seed)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch = torch.utils.data.default_collate(items)
        valid = batch.get("valid_patches") if self.cfg.usrc else None
        batch["masks"] = self.sample(len(items), valid, self._rng)
        return batch

    # -- sampling ---------------------------------------------------------------------------------
    def sample(self, batch_size: int, valid: torch.Tensor | None, rng: np.random.Generator) -> MaskBatch:
        """Draw masks for ``batch_size`` images; ``valid`` (B, gh, gw) bool is used when ``usrc``."""
        cfg, grid = self.cfg, self.grid
        b, n, nt = batch_size, self.num_patches, cfg.num_target_blocks
        if cfg.usrc:
            if valid is None:
                raise DataError("USrc masking needs 'valid_patches' in every item; build the dataset with scan masks")
            valid_np = valid.detach().cpu().numpy().astype(bool).reshape(b, *grid).copy()
        else:
            valid_np = np.ones((b, *grid), dtype=bool)
        t_size = _block_size(rng, cfg.target_scale, cfg.target_aspect, grid)
        c_size = _block_size(rng, cfg.context_scale, cfg.context_aspect, grid)
        fallbacks = dict.fromkeys(FALLBACKS, 0)
        if cfg.usrc:  # an empty/broken scan mask: plain I-JEPA for that image
            fallbacks["context_grid"] += int(usrc_broken(valid_np, cfg.min_keep).sum())
            valid_np = usrc_drawable(valid_np, cfg.min_keep)

        blocks = self._target_blocks(rng, t_size, valid_np, fallbacks)  # (B, nT, gh, gw)
        targets = (blocks & valid_np[:, None]).reshape(b, nt, n)
        context = self._contexts(rng, c_size, valid_np, blocks.any(1), fallbacks).reshape(b, n)
        ctx_available, tgt_available = context.sum(-1), targets.sum(-1)  # (B,), (B, nT)
        if cfg.equalize == "truncate":
            context = _random_subset(rng, context, int(ctx_available.min()))
            targets = _random_subset(rng, targets.reshape(b * nt, n), int(tgt_available.min())).reshape(b, nt, n)
        return MaskBatch(
            context=RaggedIndex.from_mask(context[:, None]),
            target=RaggedIndex.from_mask(targets),
            context_available=torch.from_numpy(ctx_available.astype(np.int64)),
            target_available=torch.from_numpy(tgt_available.astype(np.int64)),
            target_shape=t_size,
            fallbacks={k: v for k, v in fallbacks.items() if v},
        )

    def _positions(self, rng: np.random.Generator, size: tuple[int, int], shape: tuple[int, ...]) -> tuple:
        gh, gw = self.grid
        return rng.integers(0, gh - size[0] + 1, size=shape), rng.integers(0, gw - size[1] + 1, size=shape)

    def _target_blocks(
        self, rng: np.random.Generator, size: tuple[int, int], valid: np.ndarray, fallbacks: dict[str, int]
    ) -> np.ndarray:
        """(B, nT, gh, gw) target blocks (full rectangles; the caller cuts them to the region)."""
        cfg = self.cfg
        b, nt = valid.shape[0], cfg.num_target_blocks
        if not cfg.usrc:
            tops, lefts = self._positions(rng, size, (b, nt))
            return _boxes(tops, lefts, size, self.grid)
        tops, lefts = self._positions(rng, size, (b, nt, cfg.max_tries))
        frac = _box_counts(_integral(valid), tops, lefts, size) / (size[0] * size[1])  # (B, nT, tries)
        accepted = frac >= cfg.tau
        first_ok = accepted.argmax(-1)
        best = frac.argmax(-1)  # first maximum: the earliest of equally good draws
        choice = np.where(accepted.any(-1), first_ok, best)[..., None]  # (B, nT, 1)
        top, left = np.take_along_axis(tops, choice, -1)[..., 0], np.take_along_axis(lefts, choice, -1)[..., 0]
        chosen_frac = np.take_along_axis(frac, choice, -1)[..., 0]
        missed = ~accepted.any(-1)
        fallbacks["target_best_effort"] += int((missed & (chosen_frac > 0)).sum())
        # No draw touched the region: centre the block on a random valid patch (clipped to the grid).
        gh, gw = self.grid
        for bi, j in zip(*np.nonzero(missed & (chosen_frac == 0)), strict=True):
            fallbacks["target_recentred"] += 1
            cy, cx = divmod(int(rng.choice(np.flatnonzero(valid[bi]))), gw)
            top[bi, j] = min(max(cy - size[0] // 2, 0), gh - size[0])
            left[bi, j] = min(max(cx - size[1] // 2, 0), gw - size[1])
        return _boxes(top, left, size, self.grid)

    def _contexts(
        self,
        rng: np.random.Generator,
        size: tuple[int, int],
        valid: np.ndarray,
        covered: np.ndarray,
        fallbacks: dict[str, int],
    ) -> np.ndarray:
        """(B, gh, gw) context: a context block within the region, minus every target block."""
        cfg = self.cfg
        allowed = valid & ~covered  # (B, gh, gw)
        tops, lefts = self._positions(rng, size, (allowed.shape[0], cfg.max_tries))
        counts = _box_counts(_integral(allowed), tops, lefts, size)  # (B, tries)
        ok = counts >= cfg.min_keep
        choice = ok.argmax(-1)[:, None]
        top, left = np.take_along_axis(tops, choice, -1)[:, 0], np.take_along_axis(lefts, choice, -1)[:, 0]
        context = _boxes(top, left, size, self.grid) & allowed
        for bi in np.flatnonzero(~ok.any(-1)):
            if allowed[bi].sum() >= cfg.min_keep:
                fallbacks["context_valid"] += 1
                context[bi] = allowed[bi]
            else:
                fallbacks["context_grid"] += 1
                context[bi] = ~covered[bi]
                if not context[bi].any():
                    raise DataError(
                        f"target blocks cover the whole {self.grid} grid; lower masking.target_scale or "
                        "num_target_blocks"
                    )
        return context
