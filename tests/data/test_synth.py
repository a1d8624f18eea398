"""Synthetic B-mode data: format, determinism, physics of the lesion classes, clips."""

from __future__ import annotations

import json

import numpy as np
import pytest

from usjepa_fast.data import synth
from usjepa_fast.data.media import read_image_gray
from usjepa_fast.data.video import PyAVDecoder
from usjepa_fast.errors import DataError


def test_layout_and_records(synth_root) -> None:
    ub = synth_root / "ultrabench"
    assert json.loads((ub / "classes.json").read_text()) == list(synth.CLASSES)
    recs = [r for s in ("train", "validation", "test") for r in json.loads((ub / f"{s}.json").read_text())]
    assert len(recs) == 48 and {r["class"] for r in recs} == set(synth.CLASSES)
    for r in recs:
        assert synth.CLASSES[r["label"]] == r["class"] and r["patient"].startswith("p")
        img = read_image_gray(ub / r["image"])
        assert img.shape == (128, 128) and img.dtype == np.uint8
        assert (r["lesion"] is None) == (r["class"] == "normal")
    manifest = json.loads((synth_root / "clips" / "clips.json").read_text())
    assert [m["video"] for m in manifest] == ["clip_000.mp4", "clip_001.webm", "clip_002.avi"]
    codecs = [PyAVDecoder().probe(synth_root / "clips" / m["video"]).codec for m in manifest]
    assert codecs == ["h264", "vp9", "mjpeg"]
    assert all((synth_root / "clips" / m["scan_mask"]).is_file() for m in manifest)


def test_frozen_segment_repeats_frames(synth_root) -> None:
    manifest = json.loads((synth_root / "clips" / "clips.json").read_text())
    lo, hi = manifest[0]["frozen"]
    frames = [f.image.astype(int) for f in PyAVDecoder().frames(synth_root / "clips" / "clip_000.mp4")]
    assert len(frames) == 16
    diffs = [np.abs(frames[t] - frames[t - 1]).mean() for t in range(1, len(frames))]
    still = [d for t, d in enumerate(diffs, start=1) if lo < t < hi]
    moving = [d for t, d in enumerate(diffs, start=1) if not lo < t < hi]
    assert max(still) < 0.5 and min(moving) > 3.0  # the probe stands still, then moves again


def test_deterministic_by_seed(tmp_path) -> None:
    a = synth.synthesize(tmp_path / "a", n_images=6, n_clips=1, image_size=64, seed=5, clip_frames=4)
    b = synth.synthesize(tmp_path / "b", n_images=6, n_clips=1, image_size=64, seed=5, clip_frames=4, workers=2)
    c = synth.synthesize(tmp_path / "c", n_images=6, n_clips=0, image_size=64, seed=6)
    files = sorted(p.relative_to(a.out_dir) for p in a.out_dir.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b.out_dir) for p in b.out_dir.rglob("*") if p.is_file())
    for f in files:
        assert (a.out_dir / f).read_bytes() == (b.out_dir / f).read_bytes(), f
    img = "ultrabench/images/synth_00000.png"
    assert (a.out_dir / img).read_bytes() != (c.out_dir / img).read_bytes()


def _disc_mean(img: np.ndarray, center: tuple[float, float], radius: float) -> float:
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    return float(img[(yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2].mean())


@pytest.mark.parametrize("label", [1, 2, 3])
def test_lesion_physics(label) -> None:
    """Cysts are anechoic with posterior enhancement, solid masses hypoechoic with a shadow,
    hyperechoic masses bright, each relative to tissue at the same depth beside them."""
    inside, behind = [], []
    for seed in range(6):
        frame, mask, meta = synth.render_image(np.random.default_rng([label, seed]), label, 160, "linear")
        les = meta["lesion"]
        (r, c), rad = les["center_px"], les["radius_px"]
        side = c + 2.6 * rad if c < 80 else c - 2.6 * rad  # same depth, beside the lesion
        inside.append(_disc_mean(frame, (r, c), 0.6 * rad) / _disc_mean(frame, (r, side), 0.6 * rad))
        below = min(r + 2.2 * rad, 150)
        behind.append(_disc_mean(frame, (below, c), 0.6 * rad) / _disc_mean(frame, (below, side), 0.6 * rad))
    inside_m, behind_m = float(np.median(inside)), float(np.median(behind))
    if label == 1:  # cyst
        assert inside_m < 0.3 and behind_m > 1.1
    elif label == 2:  # solid mass
        assert inside_m < 0.85 and behind_m < 0.8
    else:  # hyperechoic mass
        assert inside_m > 1.15


def test_mean_brightness_alone_does_not_separate_the_classes() -> None:
    means, labels = [], []
    for i in range(64):
        frame, mask, _ = synth.render_image(np.random.default_rng([9, i]), i % 4, 96)
        means.append(frame[mask].mean())
        labels.append(i % 4)
    means, labels = np.array(means), np.array(labels)
    # best 1-D nearest-centroid classifier on mean brightness (evaluated on its own training set)
    centroids = np.array([means[labels == k].mean() for k in range(4)])
    pred = np.abs(means[:, None] - centroids[None]).argmin(axis=1)
    assert (pred == labels).mean() < 0.5  # chance is 0.25; lesion texture, not gain, must carry the label


def test_bad_arguments(tmp_path) -> None:
    with pytest.raises(DataError, match="even"):
        synth.synthesize(tmp_path, n_images=1, n_clips=0, image_size=65)
    with pytest.raises(DataError, match=">= 0"):
        synth.synthesize(tmp_path, n_images=-1)
    with pytest.raises(DataError, match="clip_frames"):
        synth.synthesize(tmp_path, n_images=0, n_clips=1, clip_frames=2)
