"""Multi-block and USrc masks: ragged counts equal the available counts, no overlap, region
constraint, the truncate mode, fallbacks, and the RaggedIndex helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from usjepa_fast.errors import DataError
from usjepa_fast.masking import MaskConfig, MultiBlockMaskCollator, RaggedIndex, apply_masks, masks_to_grid

GRID = (12, 12)
N = GRID[0] * GRID[1]


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
    ctx, tgt = masks.context, masks.target
    assert ctx.idx.dtype == torch.long and tgt.idx.dtype == torch.long
    assert ctx.lens.shape == (batch, 1) and tgt.lens.shape == (batch, cfg.num_target_blocks)
    assert int(ctx.lens.min()) >= cfg.min_keep and int(tgt.lens.min()) >= 1
    assert int(ctx.idx.min()) >= 0 and int(ctx.idx.max()) < N and int(tgt.idx.max()) < N
    for b, (c_seq, t_seqs) in enumerate(zip(ctx.sequences(), tgt.sequences(), strict=True)):
        c = c_seq[0].tolist()
        assert c == sorted(set(c)), "context indices must be unique and in raster order"
        t = set()
        for block in t_seqs:
            assert block.tolist() == sorted(set(block.tolist()))
            t |= set(block.tolist())
        assert not (set(c) & t), "context and targets overlap"
        if valid is not None:
            flat = valid[b].reshape(-1)
            assert bool(flat[tgt.idx.new_tensor(sorted(t))].all()), "a target patch lies outside the scan region"
            assert bool(flat[c_seq[0]].all()), "a context patch lies outside the scan region"


@pytest.mark.parametrize("usrc", [False, True])
@pytest.mark.parametrize("equalize", ["none", "truncate"])
def test_shapes_counts_and_no_overlap(usrc: bool, equalize: str) -> None:
    cfg = MaskConfig(usrc=usrc, equalize=equalize)
    coll = MultiBlockMaskCollator(cfg, GRID)
    valid = _fan(8) if usrc else None
    for seed in range(5):
        masks = coll.sample(8, valid, np.random.default_rng(seed))
        _check_batch(masks, 8, cfg, valid)


@pytest.mark.parametrize("usrc", [False, True])
def test_ragged_counts_equal_the_available_counts(usrc: bool) -> None:
    """No truncation: every sample keeps its whole context and every block its own tokens."""
    valid = _fan(16, seed=2) if usrc else None
    coll = MultiBlockMaskCollator(MaskConfig(usrc=usrc), GRID)
    masks = coll.sample(16, valid, np.random.default_rng(7))
    assert torch.equal(masks.context.lens[:, 0], masks.context_available)
    assert torch.equal(masks.target.lens, masks.target_available)
    region = valid.reshape(16, N) if valid is not None else torch.ones(16, N, dtype=torch.bool)
    # Available context recomputed independently: region minus the union of the full target blocks.
    # (USrc targets are block ∩ region, so their union misses only patches outside the region.)
    tgt_union = masks_to_grid(masks.target, GRID).reshape(16, -1, N).any(1)
    ctx = masks_to_grid(masks.context, GRID).reshape(16, N)
    assert not (ctx & tgt_union).any() and not (ctx & ~region).any()
    assert not masks.fallbacks
    allowed = (region & ~tgt_union).view(16, *GRID)
    for b in range(16):  # context = context box ∩ allowed: nothing allowed inside its extent is dropped
        rows, cols = torch.nonzero(ctx[b].view(GRID), as_tuple=True)
        extent = torch.zeros(GRID, dtype=torch.bool)
        extent[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
        assert torch.equal(ctx[b].view(GRID), allowed[b] & extent)
    assert len(set(masks.context.lens[:, 0].tolist())) > 1, "the batch should be ragged"
    # Each block holds exactly its rectangle's patches inside the region.
    h, w = masks.target_shape
    for blocks in masks.target.sequences():
        for block in blocks:
            rows, cols = block // GRID[1], block % GRID[1]
            assert int(rows.max() - rows.min()) < h and int(cols.max() - cols.min()) < w
            if not usrc:
                assert len(block) == h * w


def test_truncate_cuts_to_the_batch_minimum_of_the_same_draw() -> None:
    valid = _fan(12, seed=3)
    ragged = MultiBlockMaskCollator(MaskConfig(usrc=True), GRID).sample(12, valid, np.random.default_rng(5))
    cut = MultiBlockMaskCollator(MaskConfig(usrc=True, equalize="truncate"), GRID).sample(
        12, valid, np.random.default_rng(5)
    )
    # Same draw (the truncation happens after all block draws): the same available counts ...
    assert torch.equal(ragged.context_available, cut.context_available)
    assert torch.equal(ragged.target_available, cut.target_available)
    # ... cut to one count per batch, each a subset of the ragged sample's tokens.
    assert cut.context.uniform and cut.target.uniform
    assert int(cut.context.lens[0, 0]) == int(ragged.context_available.min())
    assert int(cut.target.lens[0, 0]) == int(ragged.target_available.min())
    for r, c in zip(ragged.context.sequences(), cut.context.sequences(), strict=True):
        assert set(c[0].tolist()) <= set(r[0].tolist())


def test_plain_targets_are_rectangles_of_one_size() -> None:
    coll = MultiBlockMaskCollator(MaskConfig(), GRID)
    masks = coll.sample(4, None, np.random.default_rng(3))
    h, w = masks.target_shape
    grids = masks_to_grid(masks.target, GRID)  # (B, nT, gh, gw)
    for b in range(4):
        for j in range(masks.num_target_blocks):
            rows, cols = torch.nonzero(grids[b, j], as_tuple=True)
            assert int(rows.max() - rows.min() + 1) == h and int(cols.max() - cols.min() + 1) == w
            assert int(grids[b, j].sum()) == h * w, "plain I-JEPA target must be a full rectangle"
    assert 0.03 < h * w / N < 0.2


def test_determinism_by_seed() -> None:
    coll = MultiBlockMaskCollator(MaskConfig(usrc=True), GRID)
    valid = _fan(6)
    a = coll.sample(6, valid, np.random.default_rng([1, 2, 3]))
    b = coll.sample(6, valid, np.random.default_rng([1, 2, 3]))
    c = coll.sample(6, valid, np.random.default_rng([1, 2, 4]))
    for x, y in ((a.context, b.context), (a.target, b.target)):
        assert torch.equal(x.idx, y.idx) and torch.equal(x.lens, y.lens)
    assert not (torch.equal(a.context.idx, c.context.idx) and torch.equal(a.target.idx, c.target.idx))


def test_min_keep_is_honoured_with_large_targets() -> None:
    cfg = MaskConfig(target_scale=(0.2, 0.25), min_keep=30, num_target_blocks=4)
    masks = MultiBlockMaskCollator(cfg, GRID).sample(4, None, np.random.default_rng(0))
    assert int(masks.context.lens.min()) >= 30


@pytest.mark.parametrize("equalize", ["none", "truncate"])
def test_usrc_tau_keeps_most_of_each_block_valid(equalize: str) -> None:
    cfg = MaskConfig(usrc=True, tau=0.8, equalize=equalize)
    valid = _fan(16, seed=1)
    masks = MultiBlockMaskCollator(cfg, GRID).sample(16, valid, np.random.default_rng(0))
    assert not masks.fallbacks, "these fans are wide enough for every block to reach tau"
    # Blocks accepted at tau=0.8 keep >= 80% of the block area; without equalisation every block
    # keeps all of it, and truncation to the batch minimum still loses <= 20% of a block.
    h, w = masks.target_shape
    bound = math.ceil(cfg.tau * h * w)
    assert int(masks.target_available.min()) >= bound
    assert int(masks.target.lens.min()) >= bound


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
    assert bool(flat[torch.cat(masks.target.sequences()[2])].all())
    # A fallback in one sample no longer shrinks the others: sample 2 keeps its own block sizes.
    normal = MultiBlockMaskCollator(cfg, GRID).sample(3, _fan(3), np.random.default_rng(0))
    assert int(masks.target.lens[2].min()) >= math.ceil(cfg.tau * normal.target_shape[0] * normal.target_shape[1])


def test_usrc_requires_valid_patches() -> None:
    coll = MultiBlockMaskCollator(MaskConfig(usrc=True), GRID)
    with pytest.raises(DataError, match="valid_patches"):
        coll.sample(2, None, np.random.default_rng(0))


def test_bad_equalize_is_refused() -> None:
    with pytest.raises(ValueError, match="equalize"):
        MultiBlockMaskCollator(MaskConfig(equalize="min"), GRID)  # type: ignore[arg-type]


def test_collator_call_and_apply_masks() -> None:
    coll = MultiBlockMaskCollator(MaskConfig(usrc=True), GRID, seed=5)
    valid = _fan(3)
    items = [{"image": torch.randn(3, 96, 96), "valid_patches": valid[i]} for i in range(3)]
    batch = coll(items)
    assert batch["image"].shape == (3, 3, 96, 96)
    masks = batch["masks"]
    x = torch.arange(3 * N * 2, dtype=torch.float32).view(3, N, 2)
    packed = apply_masks(x, masks.context)  # (Tc, 2)
    assert packed.shape == (masks.context.total, 2)
    rows = torch.repeat_interleave(torch.arange(3), masks.context.lens[:, 0])
    assert torch.equal(packed[:, 0], x[rows, masks.context.idx, 0])
    dense_idx = torch.stack([torch.arange(5), torch.arange(5, 10), torch.arange(10, 15)])
    assert torch.equal(apply_masks(x, dense_idx)[..., 0], x[torch.arange(3)[:, None], dense_idx, 0])


def test_ragged_index_helpers() -> None:
    mask = torch.zeros(2, 2, 6, dtype=torch.bool)
    mask[0, 0, [1, 4]] = True
    mask[0, 1, [0]] = True
    mask[1, 1, [2, 3, 5]] = True  # sample 1, block 0 is empty
    r = RaggedIndex.from_mask(mask)
    assert r.lens.tolist() == [[2, 1], [0, 3]] and r.idx.tolist() == [1, 4, 0, 2, 3, 5]
    assert r.flat(6).tolist() == [1, 4, 0, 8, 9, 11]
    assert torch.equal(r.to_mask(6), mask)
    assert r.sample_lens.tolist() == [3, 3] and not r.uniform
    lay = r.layout()
    assert lay.cu_seqlens.tolist() == [0, 2, 3, 3, 6] and lay.max_len == 3 and lay.total == 6
    assert r.layout(per_sample=True).uniform
    dense = RaggedIndex.from_dense(torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]]), seqs_per_sample=2)
    assert dense.uniform and dense.lens.tolist() == [[2, 2], [2, 2]]
    with pytest.raises(ValueError, match="lens sum"):
        RaggedIndex(torch.arange(3), torch.tensor([[1], [1]]))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    batch=st.integers(1, 6),
    usrc=st.booleans(),
    n_blocks=st.integers(1, 4),
    tau=st.floats(0.3, 1.0),
    truncate=st.booleans(),
)
def test_property_invariants(seed: int, batch: int, usrc: bool, n_blocks: int, tau: float, truncate: bool) -> None:
    cfg = MaskConfig(usrc=usrc, num_target_blocks=n_blocks, tau=tau, equalize="truncate" if truncate else "none")
    valid = _fan(batch, seed) if usrc else None
    masks = MultiBlockMaskCollator(cfg, GRID).sample(batch, valid, np.random.default_rng(seed))
    _check_batch(masks, batch, cfg, valid)
    if not truncate:
        assert torch.equal(masks.context.lens[:, 0], masks.context_available)
        assert torch.equal(masks.target.lens, masks.target_available)
