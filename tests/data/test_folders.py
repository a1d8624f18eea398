"""Image- and video-folder datasets: formats, labels from sub-folders, sampling, masks, bad files."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
from data_helpers import CONTAINERS, moving_frames, write_clip
from PIL import Image

from usjepa_fast.data.clips import clip_index
from usjepa_fast.data.folders import ImageFolderDataset, VideoFrameDataset
from usjepa_fast.data.preprocess import PreprocessConfig, Preprocessor
from usjepa_fast.data.scan_region import mask_iou
from usjepa_fast.data.video import FrameSampling, PyAVDecoder
from usjepa_fast.errors import DataError


def _images(root):
    rng = np.random.default_rng(0)
    (root / "benign").mkdir(parents=True)
    (root / "malignant" / "deep").mkdir(parents=True)
    g = np.zeros((40, 50), np.uint8)
    g[5:35, 10:40] = rng.integers(50, 200, (30, 30))
    Image.fromarray(g).save(root / "benign" / "a.png")
    Image.fromarray(np.stack([g] * 3, -1)).save(root / "benign" / "b.jpg", quality=95)
    Image.fromarray(g).save(root / "malignant" / "c.bmp")
    Image.fromarray(g.astype(np.uint16) * 257).save(root / "malignant" / "deep" / "d.tif")
    Image.fromarray(np.stack([g] * 3, -1)).save(root / "malignant" / "e.tiff")
    return root


def test_image_folder_formats_and_labels(tmp_path) -> None:
    ds = ImageFolderDataset(_images(tmp_path / "imgs"), scan_mask="none")
    assert [p.suffix for p in ds.paths] == [".png", ".jpg", ".bmp", ".tif", ".tiff"]
    assert ds.classes == ["benign", "malignant"] and ds.labels.tolist() == [0, 0, 1, 1, 1]
    dtypes = [ds[i]["image"].dtype for i in range(len(ds))]
    assert dtypes == [np.uint8, np.uint8, np.uint8, np.uint16, np.uint8]
    assert all(ds[i]["scan_mask"].all() for i in range(len(ds)))


def test_image_folder_detects_and_caches_masks(tmp_path) -> None:
    root = _images(tmp_path / "imgs")
    pre = Preprocessor(PreprocessConfig(image_size=32))
    ds = ImageFolderDataset(root, pre, cache_dir=tmp_path / "cache")
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["valid_patches"].shape == (2, 2)
    raw = ImageFolderDataset(root, scan_mask="detect", cache_dir=tmp_path / "cache")[0]
    truth = np.zeros((40, 50), bool)
    truth[5:35, 10:40] = True
    assert mask_iou(raw["scan_mask"], truth) > 0.9
    assert len(list((tmp_path / "cache" / "scan_masks").glob("*.scanmask.png"))) >= 1


def test_provided_sidecar_mask_wins(tmp_path) -> None:
    root = _images(tmp_path / "imgs")
    side = np.zeros((40, 50), np.uint8)
    side[:, :10] = 255
    Image.fromarray(side).save(root / "benign" / "a.scanmask.png")
    ds = ImageFolderDataset(root, cache_dir=tmp_path / "cache")
    assert len(ds) == 5  # the sidecar is not an image of the dataset
    np.testing.assert_array_equal(ds[0]["scan_mask"], side > 0)


def test_video_folder_every_container(clip_folder) -> None:
    ds = VideoFrameDataset(clip_folder, FrameSampling(every_k=4), scan_mask="none")
    assert sorted(p.suffix for p in ds.paths) == sorted(CONTAINERS)
    assert len(ds) == len(CONTAINERS) * 3  # 12 frames, every 4th
    assert sorted({i for _, i, _ in ds.index}) == [0, 4, 8]
    item = ds[len(ds) - 1]
    assert item["image"].shape == (48, 64) and item["frame_index"] == 8
    assert item["timestamp"] == pytest.approx(0.8, abs=1e-3)


@pytest.mark.parametrize(
    "sampling",
    [FrameSampling(), FrameSampling(every_k=3), FrameSampling(fps=4), FrameSampling(fps=5, max_frames=3)],
)
def test_video_index_matches_what_the_decoder_yields(clip_folder, sampling) -> None:
    ds = VideoFrameDataset(clip_folder, sampling, scan_mask="none")
    dec = PyAVDecoder()
    for fid, path in enumerate(ds.paths):
        expected = [f.index for f in dec.frames(path, sampling)]
        assert [i for f, i, _ in ds.index if f == fid] == expected, path.name


def test_video_masks_from_sidecar_and_detection(synth_root, tmp_path) -> None:
    clips = synth_root / "clips"
    provided = VideoFrameDataset(clips, FrameSampling(every_k=4))
    from usjepa_fast.data.scan_region import load_mask

    truth = load_mask(clips / "clip_000.scanmask.png")
    np.testing.assert_array_equal(provided[0]["scan_mask"], truth)
    detected = VideoFrameDataset(clips, FrameSampling(every_k=4), scan_mask="detect", cache_dir=tmp_path / "c")
    assert mask_iou(detected[0]["scan_mask"], truth) > 0.9


def test_bad_folders_and_files(tmp_path, caplog) -> None:
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no readable image files"):
        ImageFolderDataset(tmp_path / "empty")
    with pytest.raises(DataError, match="no readable video files"):
        VideoFrameDataset(tmp_path / "empty")
    # a truncated image: raise by default, log-and-skip on request
    root = _images(tmp_path / "imgs")
    data = (root / "benign" / "a.png").read_bytes()
    (root / "benign" / "a.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="a.png"):
        ImageFolderDataset(root, scan_mask="none")[0]
    skipping = ImageFolderDataset(root, scan_mask="none", on_error="skip")
    with caplog.at_level(logging.WARNING, logger="usfast"):
        item = skipping[0]
    assert item["path"].endswith("b.jpg") and skipping.num_skipped == 1 and "a.png" in caplog.text


def test_unreadable_clip_is_skipped_at_indexing(tmp_path, caplog) -> None:
    root = tmp_path / "v"
    root.mkdir()
    write_clip(root / "ok.mp4", moving_frames(n=6))
    (root / "broken.mp4").write_bytes(b"\x00" * 2000)
    with caplog.at_level(logging.WARNING, logger="usfast"):
        ds = VideoFrameDataset(root, scan_mask="none")
    assert [p.name for p in ds.paths] == ["ok.mp4"] and len(ds) == 6
    assert str(root / "broken.mp4") in ds.skipped_clips and "broken.mp4" in caplog.text
    with pytest.raises(DataError, match="broken.mp4"):
        clip_index(root / "broken.mp4")


def test_clip_cache_bounds_memory(synth_root, tmp_path) -> None:
    clips = tmp_path / "clips"
    shutil.copytree(synth_root / "clips", clips)
    ds = VideoFrameDataset(clips, FrameSampling(every_k=8), clip_cache=1)
    for i in range(len(ds)):
        ds[i]
    assert len(ds._decoded) == 1
