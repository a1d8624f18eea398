"""Multi-block and USrc masks: shapes, equal counts, no overlap, region constraint, fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from usjepa_fast.errors import DataError
from usjepa_fast.masking import MaskConfig, MultiBlockMaskCollator, apply_masks, masks_to_grid

GRID = (12, 12)


def _fan(batch: int, seed: int = 0) -> torch.Tensor:
    """Sector-shaped validity grids of varying width: (B, gh, gw) bool."""
    rng = np.random.default_rng(seed)
    out = np.zeros((batch, *GRID), dtype=bool)
    rows, cols = np.mgrid[0 : GRID[0], 0 : GRID[1]]
    for b in range(batch):
        half_angle = rng.uniform(0.35, 0.7)
        ang = np.arctan2(cols + 0.5 - GRID[1] / 2, rows + 3.0)  # apex above the image
        out[b] = (np.abs(ang) < half_angle) & (rows >= 1)
    return torch.from_numpy(out)


def _check_batch(masks, batch: int, cfg: MaskConfig, valid: torch.Tensor | None) -> None:
    n = GRID[0] * GRID[1]
    ctx, tgt = masks.context_idx, masks.target_idx
    assert ctx.dtype == torch.long and tgt.dtype == torch.long
    assert ctx.shape[0] == tgt.shape[0] == batch
    assert tgt.shape[1] % cfg.num_target_blocks == 0
    assert ctx.shape[1] >= cfg.min_keep
    assert int(ctx.min()) >= 0 and int(ctx.max()) < n and int(tgt.max()) < n
    for b in range(batch):
        c, t = set(ctx[b].tolist()), set(tgt[b].tolist())
        assert len(c) == ctx.shape[1], "context indices must be unique"
        assert not (c & t), "context and targets overlap"
        if valid is not None:
            flat = valid[b].reshape(-1)
            assert bool(flat[tgt[b]].all()), "a target patch lies outside the scan region"
            assert bool(flat[ctx[b]].all()), "a context patch lies outside the scan region"


@pytest.mark.parametrize("usrc", [False, True])
def test_shapes_counts_and_no_overlap(usrc: bool) -> None:
    cfg = MaskConfig(usrc=usrc)
    coll = MultiBlockMaskCollator(cfg, GRID)
    valid = _fan(8) if usrc else None
    for seed in range(5):
        masks = coll.sample(8, valid, np.random.default_rng(seed))
        _check_batch(masks, 8, cfg, valid)


def test_plain_targets_are_rectangles_of_one_size() -> None:
    coll = MultiBlockMaskCollator(MaskConfig(), GRID)
    masks = coll.sample(4, None, np.random.default_rng(3))
    kt = masks.tokens_per_block
    for j in range(masks.num_target_blocks):
        block = masks_to_grid(masks.target_idx[:, j * kt : (j + 1) * kt], GRID)
        for b in range(4):
            rows, cols = torch.nonzero(block[b], as_tuple=True)
            h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
            assert h * w == kt == int(block[b].sum()), "plain I-JEPA target must be a full rectangle"
    scale = kt / (GRID[0] * GRID[1])
    assert 0.03 < scale < 0.2


def test_determinism_by_seed() -> None:
    coll = MultiBlockMaskCollator(MaskConfig(usrc=True), GRID)
    valid = _fan(6)
    a = coll.sample(6, valid, np.random.default_rng([1, 2, 3]))
    b = coll.sample(6, valid, np.random.default_rng([1, 2, 3]))
    c = coll.sample(6, valid, np.random.default_rng([1, 2, 4]))
    assert torch.equal(a.context_idx, b.context_idx) and torch.equal(a.target_idx, b.target_idx)
    assert not (torch.equal(a.context_idx, c.context_idx) and torch.equal(a.target_idx, c.target_idx))


def test_min_keep_is_honoured_with_large_targets() -> None:
    cfg = MaskConfig(target_scale=(0.2, 0.25), min_keep=30, num_target_blocks=4)
    masks = MultiBlockMaskCollator(cfg, GRID).sample(4, None, np.random.default_rng(0))
    assert masks.context_idx.shape[1] >= 30


def test_usrc_tau_keeps_most_of_each_block_valid() -> None:
    cfg = MaskConfig(usrc=True, tau=0.8)
    valid = _fan(16, seed=1)
    masks = MultiBlockMaskCollator(cfg, GRID).sample(16, valid, np.random.default_rng(0))
    assert "target_recentred" not in masks.fallbacks
    # blocks accepted at tau=0.8 keep >= 80% of the block area, so truncation loses <= 20%
    assert masks.tokens_per_block >= 1


def test_usrc_fallbacks_are_counted_for_broken_masks() -> None:
    cfg = MaskConfig(usrc=True, max_tries=5)
    valid = _fan(3)
    valid[0] = False  # an empty scan mask: plain I-JEPA for that image
    valid[1] = False
    valid[1, 5:7, 5:7] = True  # a tiny region: targets re-centred / best effort
    masks = MultiBlockMaskCollator(cfg, GRID).sample(3, valid, np.random.default_rng(0))
    assert masks.fallbacks.get("context_grid", 0) >= 1
    assert sum(masks.fallbacks.values()) >= 2
    flat = valid[2].reshape(-1)
    assert bool(flat[masks.target_idx[2]].all())


def test_usrc_requires_valid_patches() -> None:
    coll = MultiBlockMaskCollator(MaskConfig(usrc=True), GRID)
    with pytest.raises(DataError, match="valid_patches"):
        coll.sample(2, None, np.random.default_rng(0))


def test_collator_call_and_apply_masks() -> None:
    coll = MultiBlockMaskCollator(MaskConfig(usrc=True), GRID, seed=5)
    valid = _fan(3)
    items = [{"image": torch.randn(3, 96, 96), "valid_patches": valid[i]} for i in range(3)]
    batch = coll(items)
    assert batch["image"].shape == (3, 3, 96, 96)
    x = torch.arange(3 * 144 * 2, dtype=torch.float32).view(3, 144, 2)
    picked = apply_masks(x, batch["context_idx"])
    assert picked.shape == (3, batch["context_idx"].shape[1], 2)
    assert torch.equal(picked[..., 0], x[torch.arange(3)[:, None], batch["context_idx"], 0])


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    batch=st.integers(1, 6),
    usrc=st.booleans(),
    n_blocks=st.integers(1, 4),
    tau=st.floats(0.3, 1.0),
)
def test_property_invariants(seed: int, batch: int, usrc: bool, n_blocks: int, tau: float) -> None:
    cfg = MaskConfig(usrc=usrc, num_target_blocks=n_blocks, tau=tau)
    valid = _fan(batch, seed) if usrc else None
    masks = MultiBlockMaskCollator(cfg, GRID).sample(batch, valid, np.random.default_rng(seed))
    _check_batch(masks, batch, cfg, valid)
