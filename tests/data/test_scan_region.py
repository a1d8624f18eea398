"""Scan-region detection on frames of known geometry, patch validity, mask caching."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from usjepa_fast.data import synth
from usjepa_fast.data.scan_region import (
    PATCH_COVERAGE,
    ScanMaskCache,
    detect_clip_region,
    detect_scan_region,
    load_mask,
    mask_iou,
    patch_validity,
    save_mask,
    scan_patch_index,
    usable_frames,
)
from usjepa_fast.errors import DataError


def _frame_with_ui(geometry: str, label: int, seed: int, size: int = 160):
    """A synthetic frame whose true region is known; calipers forced on, text/ruler always drawn."""
    rng = np.random.default_rng(seed)
    geom = synth.random_geometry(rng, size, geometry)
    nz, nx = 2 * size, size
    tissue = synth.random_tissue(rng, label, geom)
    acq = synth.random_acquisition(rng, nz, tissue)
    echo, atten = synth.tissue_maps(rng, tissue, geom, nz, nx)
    rf = synth.rf_lines(rng, echo, synth._psf(acq.sigma_z, acq.sigma_x))
    gain = synth.attenuation_gain(atten, acq.tgc_nominal, acq.tgc_error).reshape(nz // 2, 2, nx).mean(axis=1)
    beam = synth.log_compress(synth.envelope(rf) * gain, acq.gain_db, acq.dynamic_range_db)
    frame = np.clip(np.rint(synth.scan_convert(beam, geom) * 255), 0, 255).astype(np.uint8)
    calipers = [synth._canvas_point(geom, 0.5, 0.3), synth._canvas_point(geom, 0.5, 0.7)]
    frame = synth.draw_overlays(frame, geom, rng, acq, calipers)
    _, _, true = geom.beam_coords()
    return frame, true


@pytest.mark.parametrize("geometry", ["fan", "linear"])
@pytest.mark.parametrize("label", [0, 1, 2, 3])
def test_detection_matches_known_geometry(geometry, label) -> None:
    for seed in range(3):
        frame, true = _frame_with_ui(geometry, label, seed=10 * label + seed)
        # the frame really has burned-in text/calipers outside and inside the region
        assert (frame[~true] > 150).sum() > 50
        found = detect_scan_region(frame)
        assert found.dtype == bool and found.shape == frame.shape
        assert mask_iou(found, true) >= 0.9, (geometry, label, seed, mask_iou(found, true))


def test_clip_detection_uses_motion_and_ignores_static_text() -> None:
    rng = np.random.default_rng(3)
    for geometry in ("fan", "linear"):
        frames, true, _ = synth.render_clip(rng, 2, 128, 10, None, geometry)
        found = detect_scan_region(frames)
        assert mask_iou(found, true) >= 0.9


def test_detection_handles_blank_float_and_16bit_inputs() -> None:
    assert not detect_scan_region(np.zeros((64, 64), np.uint8)).any()
    frame, true = _frame_with_ui("linear", 0, seed=1, size=128)
    assert mask_iou(detect_scan_region(frame.astype(np.uint16) * 257), true) >= 0.9
    assert mask_iou(detect_scan_region(frame.astype(np.float32) / 255), true) >= 0.9
    with pytest.raises(DataError):
        detect_scan_region(np.zeros((4, 4), np.uint8))


def test_patch_validity_touch_rule() -> None:
    mask = np.zeros((448, 448), bool)
    mask[100, 200] = True  # a single pixel touches exactly one patch
    grid = patch_validity(mask, image_size=224, patch_size=16)
    assert grid.shape == (14, 14) and grid.dtype == torch.bool
    assert grid.sum() == 1 and grid[100 // 32, 200 // 32]
    # a 1-pixel-wide vertical line is never lost by the resize
    line = np.zeros((300, 500), bool)
    line[:, 251] = True
    g = patch_validity(line, 224, 16)
    assert g.any(dim=0).sum() == 1 and g.all(dim=0).sum() == 1
    assert patch_validity(np.ones((50, 70), bool), 64, 16).all()
    assert not patch_validity(np.zeros((50, 70), bool), 64, 16).any()
    assert patch_validity(torch.ones(32, 32, dtype=torch.bool), 96, 16).shape == (6, 6)
    with pytest.raises(ValueError):
        patch_validity(mask, 224, 15)


def test_patch_coverage_rule() -> None:
    assert PATCH_COVERAGE == 0.5
    mask = np.zeros((64, 64), bool)  # 4x4 patches of 16 px on a 64 px model input (no resize)
    mask[:, :24] = True  # column 0 fully covered, column 1 exactly half
    mask[:, 24:25] = True  # ... plus one pixel column: 9/16 of column 1
    mask[:4, 40:44] = True  # column 2: a corner of 16 of 256 pixels (1/16)
    g = patch_validity(mask, 64, 16)
    assert g[:, 0].all() and g[:, 1].all() and not g[:, 2:].any()
    assert patch_validity(mask, 64, 16, coverage=0.6)[:, 1].sum() == 0  # 9/16 < 0.6
    touch = patch_validity(mask, 64, 16, coverage=0.0)  # any pixel: the corner counts too
    assert touch[0, 2] and not touch[1, 2] and touch[:, :2].all()
    half = np.zeros((64, 64), bool)
    half[:, :8] = True  # exactly half of column 0: inclusive at 0.5
    assert patch_validity(half, 64, 16)[:, 0].all()
    # a strip thinner than the coverage everywhere keeps the patches it touches, never none
    thin = np.zeros((64, 64), bool)
    thin[:, 30] = True
    assert patch_validity(thin, 64, 16).sum() == 4
    with pytest.raises(ValueError, match="coverage"):
        patch_validity(mask, 64, 16, coverage=1.5)


def test_scan_patch_index_is_raster_order_of_valid_patches() -> None:
    mask = np.zeros((128, 128), bool)
    mask[32:96, 64:] = True  # rows 1-2, columns 2-3 of a 4x4 grid after the resize to 64
    idx = scan_patch_index(mask, 64, 16)
    assert idx.tolist() == [6, 7, 10, 11] and idx.dtype == torch.int64
    assert scan_patch_index(None, 64, 16).tolist() == list(range(16))
    assert scan_patch_index(np.zeros((10, 10), bool), 64, 16).tolist() == list(range(16))  # empty: all


def test_scan_mask_cache(tmp_path) -> None:
    frame, _ = _frame_with_ui("fan", 1, seed=5, size=128)
    data = tmp_path / "data"
    data.mkdir()
    media = data / "a.png"
    save_mask(frame > 0, media)  # any file stands in for the media
    calls = []

    def detect():
        calls.append(1)
        return detect_scan_region(frame)

    cache = ScanMaskCache(tmp_path / "cache")
    m1 = cache.get(media, detect)
    m2 = ScanMaskCache(tmp_path / "cache").get(media, detect)  # a new process: from disk
    np.testing.assert_array_equal(m1, m2)
    stored = list((tmp_path / "cache" / "scan_masks").glob("a-*.scanmask.png"))
    assert len(calls) == 1 and len(stored) == 1
    assert sorted(p.name for p in data.iterdir()) == ["a.png"]  # nothing beside the data by default
    # the media changed: the cached mask is stale and recomputed
    os.utime(media, ns=(1, 1))
    ScanMaskCache(tmp_path / "cache").get(media, detect)
    assert len(calls) == 2
    # an unreadable entry is a miss, not an error
    for entry in (tmp_path / "cache" / "scan_masks").iterdir():
        entry.write_bytes(b"torn")
    np.testing.assert_array_equal(ScanMaskCache(tmp_path / "cache").get(media, detect), m1)
    assert len(calls) == 3
    # default root: $USFAST_CACHE_DIR (the test session points it at a temp dir)
    assert ScanMaskCache().dir == Path(os.environ["USFAST_CACHE_DIR"]) / "scan_masks"
    # beside=True (asked for explicitly): a hidden mask next to the data
    ScanMaskCache(tmp_path / "cache2", beside=True).get(media, detect)
    assert list(data.glob(".a-*.scanmask.png"))
    with pytest.raises(DataError, match="does not exist"):
        cache.get(tmp_path / "missing.png", detect)


def test_clip_rule_drops_blank_and_dark_frames() -> None:
    rng = np.random.default_rng(4)
    frames, true, _ = synth.render_clip(rng, 1, 96, 12, None, "fan")
    lead = frames.copy()
    lead[:4] = 0  # a black lead-in
    lead[4:6] = (lead[4:6] * 0.2).astype(np.uint8)  # the end of a fade from black
    lead[6, 10:20, 10:80] = 255  # a title card: text on black
    lead[6][lead[6] < 255] = 0
    np.testing.assert_array_equal(usable_frames(lead), lead[7:])  # only the normal frames are left
    assert not detect_scan_region(lead[0]).any()  # the old first-frame rule finds nothing
    assert mask_iou(detect_clip_region(lead), true) >= 0.9
    assert not detect_clip_region(np.zeros((5, 32, 32), np.uint8)).any()
    with pytest.raises(DataError):
        detect_clip_region(np.zeros((3, 4, 4), np.uint8))


def test_load_mask_accepts_0_1_and_0_255(tmp_path) -> None:
    from PIL import Image

    m = np.zeros((8, 9), np.uint8)
    m[2:5, 3:7] = 1
    Image.fromarray(m).save(tmp_path / "a.png")
    Image.fromarray(m * 255).save(tmp_path / "b.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "a.png"), m > 0)
    np.testing.assert_array_equal(load_mask(tmp_path / "b.png"), m > 0)
    with pytest.raises(DataError, match="does not exist"):
        load_mask(tmp_path / "c.png")
