"""Change detector and the rank split, as units."""

from __future__ import annotations

import numpy as np

from usjepa_fast.embed.redundancy import ChangeDetector, block_thumbnail
from usjepa_fast.embed.sharding import assign_shares


def test_block_thumbnail_is_a_block_mean() -> None:
    img = np.arange(64 * 48, dtype=np.uint8).reshape(64, 48)
    t = block_thumbnail(img, size=16)
    assert t.shape == (16, 12)
    np.testing.assert_allclose(t[0, 0], img[:4, :4].mean(), rtol=1e-6)


def test_change_detector_skips_still_frames_and_bounds_drift() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (64, 64)).astype(np.uint8)
    det = ChangeDetector(threshold=2.0, size=16)
    det.reset(None)
    assert det.check(0, base) == -1  # first frame is always embedded
    assert det.check(1, base) == 0  # identical
    assert det.check(2, np.clip(base.astype(int) + 1, 0, 255).astype(np.uint8)) == 0  # below threshold
    # slow drift: each step is below the threshold vs its predecessor, but not vs the embedded frame
    drifted = np.clip(base.astype(int) + 3, 0, 255).astype(np.uint8)
    assert det.check(3, drifted) == -1
    assert det.check(4, drifted) == 3


def test_change_detector_ignores_changes_outside_the_scan_region() -> None:
    img = np.full((32, 32), 100, np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[8:24, 8:24] = True
    det = ChangeDetector(threshold=1.0, size=32)
    det.reset(mask)
    det.check(0, img)
    text = img.copy()
    text[:4, :] = 255  # burned-in text changes outside the region
    assert det.check(1, text) == 0
    inside = img.copy()
    inside[8:24, 8:24] = 140
    assert det.check(2, inside) == -1


def test_shares_are_disjoint_complete_deterministic_and_balanced() -> None:
    sizes = [100, 1, 50, 50, 3, 7, 99, 2]
    shares = assign_shares(sizes, 3)
    flat = sorted(i for s in shares for i in s)
    assert flat == list(range(len(sizes)))
    assert shares == assign_shares(sizes, 3)
    loads = [sum(sizes[i] for i in s) for s in shares]
    assert max(loads) - min(loads) <= max(sizes)
    assert assign_shares(sizes, 1) == [list(range(len(sizes)))]


def test_device_thumbnails_equal_the_numpy_block_means() -> None:
    import torch

    from usjepa_fast.embed.redundancy import block_thumbnails_torch

    frames = np.random.default_rng(1).integers(0, 255, (3, 70, 45)).astype(np.uint8)
    got = block_thumbnails_torch(torch.from_numpy(frames), 16)
    for g, f in zip(got, frames, strict=True):
        np.testing.assert_allclose(g, block_thumbnail(f, 16), rtol=1e-6)
    small = np.zeros((2, 8, 8), np.uint8)
    assert block_thumbnails_torch(torch.from_numpy(small), 16).shape == (2, 8, 8)
