"""Clips as they decode: frame lists from decoding (edit lists, truncation), the one scan_mask for every
caller, caches outside the data, and the skip rule that counts files."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from support.media import folder_state, moving_frames, write_broken_clips, write_clip

from usjepa_fast.data import clips
from usjepa_fast.data.clips import ClipIndex, _SpreadKeeper, clip_index, scan_mask, spread_frames, spread_positions
from usjepa_fast.data.folders import ImageFolderDataset, VideoFrameDataset
from usjepa_fast.data.media import find_media, read_image_gray
from usjepa_fast.data.scan_region import detect_scan_region, mask_iou, save_mask
from usjepa_fast.data.video import FrameSampling, PyAVDecoder
from usjepa_fast.errors import DataError


@pytest.fixture(scope="module")
def real_world(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A clip folder as real exports look, built with the simulator's writer and PyAV remuxing:

    ``edit_list.mov`` lists 30 frames and presents 24 (its edit list hides 6), ``truncated.mp4`` has its
    index first and lost the second half of its data, ``black_start.mp4`` (fan) starts with 10 black
    frames, ``good.mp4`` (linear) is clean, and ``gone.mp4`` is a dangling symbolic link.
    """
    return write_broken_clips(tmp_path_factory.mktemp("real_world"))


class _OtherDecoder:
    """A decoder that is not PyAVDecoder (as DALI or a GPU decoder would be): indexed through frames()."""

    name = "other"

    def __init__(self) -> None:
        self._inner = PyAVDecoder()

    def frames(self, path, sampling=None):
        return self._inner.frames(path, sampling)

    def probe(self, path):
        return self._inner.probe(path)


def _decoded_times(path: Path) -> list[float]:
    return [f.timestamp for f in PyAVDecoder().frames(path)]


def test_index_comes_from_decoding_not_metadata(real_world, tmp_path) -> None:
    edit = clip_index(real_world.root / "edit_list.mov", cache_dir=tmp_path)
    assert (edit.listed, edit.num_frames, edit.trimmed, edit.shortfall) == (30, 24, 6, 6)
    assert list(edit.timestamps) == _decoded_times(real_world.root / "edit_list.mov")
    cut = clip_index(real_world.root / "truncated.mp4", cache_dir=tmp_path)
    assert cut.listed == 30 and 1 <= cut.num_frames < 30
    assert list(cut.timestamps) == _decoded_times(real_world.root / "truncated.mp4")
    good = clip_index(real_world.root / "good.mp4", cache_dir=tmp_path)
    assert (good.listed, good.num_frames, good.shortfall, good.stopped) == (24, 24, 0, None)
    # a decoder other than PyAV is indexed through its own frames(): the same list here
    other = clip_index(real_world.root / "edit_list.mov", _OtherDecoder(), cache_dir=tmp_path)
    assert other.timestamps == edit.timestamps and other.decoder == "other"
    assert "30 frames, 24 decode (6 trimmed by its edit list)" in edit.describe("x")
    with pytest.raises(DataError, match="gone.mp4"):
        clip_index(real_world.root / "gone.mp4", cache_dir=tmp_path)


def test_clip_index_is_cached_by_path_size_and_mtime(tmp_path, monkeypatch) -> None:
    (tmp_path / "data").mkdir()
    clip = write_clip(tmp_path / "data" / "a.mp4", moving_frames(n=9))
    first = clip_index(clip, cache_dir=tmp_path / "cache")
    entries = list((tmp_path / "cache" / "clip_index").glob("a-*.json"))
    assert len(entries) == 1 and sorted(p.name for p in clip.parent.iterdir()) == ["a.mp4"]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the index is cached")

    monkeypatch.setattr(clips, "_decode_times", no_decoding)
    assert clip_index(clip, cache_dir=tmp_path / "cache") == first
    monkeypatch.undo()
    os.utime(clip, ns=(1, 1))  # the file changed: stale entry, decoded again
    assert clip_index(clip, cache_dir=tmp_path / "cache") == first
    assert len(list((tmp_path / "cache" / "clip_index").glob("a-*.json"))) == 2
    for entry in (tmp_path / "cache" / "clip_index").iterdir():
        entry.write_text('{"timestamps": [0.0, ')  # torn: a miss, not an error
    assert clip_index(clip, cache_dir=tmp_path / "cache") == first


def test_folder_with_short_clips_reads_to_the_end(real_world, tmp_path, caplog, monkeypatch) -> None:
    monkeypatch.setattr(clips, "_reported", set())
    with caplog.at_level(logging.WARNING, logger="usfast"):
        ds = VideoFrameDataset(real_world.root, cache_dir=tmp_path, on_error="raise")
        again = VideoFrameDataset(real_world.root, FrameSampling(every_k=2), cache_dir=tmp_path)  # train opens two
    names = sorted(p.name for p in ds.paths)
    assert names == ["black_start.mp4", "edit_list.mov", "good.mp4", "truncated.mp4"]
    per_clip = {p.name: clip_index(p, cache_dir=tmp_path).num_frames for p in ds.paths}
    assert len(ds) == sum(per_clip.values()) and per_clip["edit_list.mov"] == 24
    assert sorted(Path(p).name for p in ds.short_clips) == ["edit_list.mov", "truncated.mp4"]
    assert "dangling symbolic link" in ds.unreadable_files[str(real_world.root / "gone.mp4")]
    for name in ("edit_list.mov", "truncated.mp4"):
        assert sum(name in r.getMessage() and "short clip" in r.getMessage() for r in caplog.records) == 1
    # every listed item is readable (on_error="raise": any failure would raise here)
    seen = {p.name: 0 for p in ds.paths}
    for i in range(len(ds)):
        item = ds[i]
        seen[Path(item["path"]).name] += 1
        assert item["image"].shape == item["scan_mask"].shape == (96, 96)
    assert seen == per_clip and ds.num_skipped == 0 and len(again) < len(ds)


def test_consecutive_failures_count_files_not_frames(tmp_path, caplog) -> None:
    root = tmp_path / "v"
    root.mkdir()
    write_clip(root / "a.mp4", moving_frames(n=20, seed=1))
    write_clip(root / "b.mp4", moving_frames(n=6, seed=2))
    ds = VideoFrameDataset(root, scan_mask="none", on_error="skip", cache_dir=tmp_path / "cache")
    assert len(ds) == 26
    (root / "a.mp4").write_bytes(b"\x00" * 4000)  # a breaks after indexing: 20 unreadable items, one file
    with caplog.at_level(logging.WARNING, logger="usfast"):
        first = ds[0]
        later = ds[17]
    assert Path(first["path"]).name == "b.mp4" and first["frame_index"] == 0
    assert Path(later["path"]).name == "b.mp4"
    assert list(ds.failed_files) == [str(root / "a.mp4")] and ds.num_skipped == 2
    assert sum("a.mp4" in r.getMessage() for r in caplog.records) == 1  # logged once per file
    ds._decoded.clear()
    (root / "b.mp4").write_bytes(b"\x00" * 4000)
    with pytest.raises(DataError, match=r"2 consecutive files are unreadable .*a\.mp4, b\.mp4"):
        ds[3]


def test_spread_positions_cover_the_clip_and_one_pass_finds_them() -> None:
    for k in (1, 2, 5, 16):
        for n in range(1, 260):
            pos = spread_positions(n, k)
            assert pos == sorted(set(pos)) and len(pos) == min(n, k), (n, k)
            assert all(0 <= p < n for p in pos)
            if k > 1:
                assert pos[0] == 0 and pos[-1] >= n - 1 - 2 * (-(-n // k)), (n, k, pos)
            keeper = _SpreadKeeper(k)
            for i in range(n):
                keeper.offer(i, float(i), i)
                assert len(keeper.kept) <= 2 * k + 1
            assert [i for i, _, _ in keeper.pick(n)] == pos
    assert spread_positions(0, 16) == [] and spread_positions(300, 16)[-1] >= 280


def test_spread_frames_are_the_decoded_frames_at_spread_positions(real_world, tmp_path) -> None:
    path = real_world.root / "good.mp4"
    every = list(PyAVDecoder().frames(path))
    picked = spread_frames(path, 5, cache_dir=tmp_path)
    assert [f.index for f in picked] == spread_positions(len(every), 5)
    for f in picked:
        np.testing.assert_array_equal(f.image, every[f.index].image)
        assert f.timestamp == every[f.index].timestamp
    # the pass also cached the clip's PyAV index
    assert clip_index(path, cache_dir=tmp_path).num_frames == len(every)


def test_scan_mask_is_the_same_for_every_caller(real_world, tmp_path) -> None:
    path = real_world.root / "black_start.mp4"
    first_frame = next(iter(PyAVDecoder().frames(path))).image
    assert not detect_scan_region(first_frame).any()  # the old first-frame rule: nothing
    reference = scan_mask(path)  # default cache root ($USFAST_CACHE_DIR)
    assert reference.dtype == bool and reference.shape == (96, 96)
    assert mask_iou(reference, real_world.fan_true) >= 0.9
    masks = [scan_mask(path, cache_dir=tmp_path / "fresh"), scan_mask(path, mode="detect")]  # recomputed, cached
    samplings = [FrameSampling(), FrameSampling(every_k=7), FrameSampling(max_frames=1), FrameSampling(fps=2.5)]
    for sampling in samplings:
        ds = VideoFrameDataset(real_world.root, sampling, cache_dir=tmp_path / "ds")
        masks.append(ds.clip_mask(path))
        fid = ds.paths.index(path)
        item = ds[next(i for i, (f, _, _) in enumerate(ds.index) if f == fid)]
        masks.append(item["scan_mask"])
    other = VideoFrameDataset(real_world.root, FrameSampling(every_k=3), _OtherDecoder(), cache_dir=tmp_path / "o")
    masks.append(other.clip_mask(path))
    for m in masks:
        np.testing.assert_array_equal(m, reference)
    assert mask_iou(scan_mask(real_world.root / "good.mp4"), real_world.linear_true) >= 0.9


def test_scan_mask_sources_sidecar_provided_and_images(tmp_path, caplog) -> None:
    root = tmp_path / "d"
    root.mkdir()
    clip = write_clip(root / "c.mp4", moving_frames(n=12))
    side = np.zeros((48, 64), bool)
    side[:, :20] = True
    save_mask(side, root / "c.scanmask.png")
    np.testing.assert_array_equal(scan_mask(clip), side)  # the sidecar wins
    detected = scan_mask(clip, mode="detect")
    truth = np.zeros((48, 64), bool)
    truth[6:42, 8:56] = True
    assert mask_iou(detected, truth) > 0.8
    provided = np.zeros((48, 64), bool)
    provided[10:20, 10:20] = True
    save_mask(provided, tmp_path / "record_mask.png")
    np.testing.assert_array_equal(scan_mask(clip, provided=tmp_path / "record_mask.png"), provided)
    save_mask(np.ones((8, 8), bool), root / "c.scanmask.png")  # wrong shape: ignored, detected instead
    with caplog.at_level(logging.WARNING, logger="usfast"):
        np.testing.assert_array_equal(scan_mask(clip), detected)
    assert "detecting the region instead" in caplog.text
    # images: single-frame detection on the image itself
    gray = np.zeros((40, 50), np.uint8)
    gray[5:35, 10:40] = np.random.default_rng(0).integers(50, 200, (30, 30))
    Image.fromarray(gray).save(root / "i.png")
    np.testing.assert_array_equal(scan_mask(root / "i.png"), detect_scan_region(read_image_gray(root / "i.png")))
    # a blank clip: nothing found -> the whole frame
    blank = write_clip(root / "blank.mp4", np.zeros((6, 48, 64), np.uint8))
    assert scan_mask(blank).all()
    with pytest.raises(DataError, match="neither an image nor a video"):
        scan_mask(root / "notes.txt")
    with pytest.raises(DataError, match="mask cache"):
        scan_mask(clip, mask_cache="elsewhere")


def test_no_file_appears_in_the_input_folder(real_world, tmp_path) -> None:
    data = tmp_path / "data"
    shutil.copytree(real_world.root, data / "clips", symlinks=True)
    (data / "images").mkdir()
    gray = np.zeros((40, 50), np.uint8)
    gray[5:35, 10:40] = 120
    Image.fromarray(gray).save(data / "images" / "i.png")
    before = folder_state(data)
    folders = [data, data / "clips", data / "images"]
    read_only = os.geteuid() != 0  # root ignores permission bits: then the listing diff is the check
    if read_only:
        for f in folders:
            f.chmod(0o555)
    cache = tmp_path / "cache"
    try:
        find_media(data)
        for mode in ("auto", "detect"):
            videos = VideoFrameDataset(data / "clips", FrameSampling(every_k=5), scan_mask=mode, cache_dir=cache)
            images = ImageFolderDataset(data / "images", scan_mask=mode, cache_dir=cache)
            for ds in (videos, images):
                for i in range(len(ds)):
                    ds[i]
        for path in find_media(data).files:
            scan_mask(path)  # default cache root
        spread_frames(data / "clips" / "good.mp4", 4)
        clip_index(data / "clips" / "edit_list.mov")
    finally:
        if read_only:
            for f in folders:
                f.chmod(0o755)
    assert folder_state(data) == before
    assert list((cache / "scan_masks").iterdir()) and list((cache / "clip_index").iterdir())
    # writing beside the data happens only when asked for
    beside = VideoFrameDataset(data / "clips", cache_dir=tmp_path / "c2", mask_cache="beside", scan_mask="detect")
    beside.clip_mask(data / "clips" / "good.mp4")
    assert [p.name.startswith(".good-") for p in (data / "clips").glob(".*.scanmask.png")] == [True]


def test_clip_index_round_trips_through_json(tmp_path) -> None:
    index = ClipIndex((0.0, 0.1, 0.2), listed=5, trimmed=1, stopped="cut", decoder="pyav")
    clips._store_index(tmp_path / "x.json", index)
    assert clips._read_index(tmp_path / "x.json") == index
    assert index.shortfall == 2 and index.num_frames == 3


def test_pretraining_corpus_over_the_folder_reads_every_item(real_world, caplog) -> None:
    """What training builds (``build_pretrain_corpus``, on_error="skip") reads every listed item: no
    skips, no abort, and the masks are the ones every other command gets."""
    from usjepa_fast.data.corpus import build_pretrain_corpus
    from usjepa_fast.data.preprocess import PreprocessConfig

    pre = PreprocessConfig(image_size=64, patch_size=16, train=True)
    with caplog.at_level(logging.WARNING, logger="usfast"):
        corpus = build_pretrain_corpus([str(real_world.root)], pre, sampling=FrameSampling(every_k=2))
    (videos,) = corpus.datasets
    for i in range(len(corpus)):
        item = corpus[i]
        assert item["image"].shape == (3, 64, 64) and item["valid_patches"].shape == (4, 4)
    assert videos.num_skipped == 0 and not videos.failed_files
    assert list(videos.unreadable_files) == [str(real_world.root / "gone.mp4")]
    np.testing.assert_array_equal(
        videos.clip_mask(real_world.root / "black_start.mp4"), scan_mask(real_world.root / "black_start.mp4")
    )
