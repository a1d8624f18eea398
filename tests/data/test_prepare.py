"""``usfast prepare`` / ``prepare_corpus``: every source decoded once into shards, unreadable inputs
listed, resumable after a crash or a kill, deterministic, and read back by ``PreparedCorpus`` as the
folder datasets read the same frames."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from usjepa_fast.data.dicom import dicom_available
from usjepa_fast.data.folders import ImageFolderDataset, VideoFrameDataset
from usjepa_fast.data.prepare import prepare_corpus, storage_shape, store_frame, store_mask
from usjepa_fast.data.prepared import PreparedCorpus, collate_frames
from usjepa_fast.data.preprocess import PreprocessConfig, Preprocessor
from usjepa_fast.data.shards import PartWriter, iter_part, read_part_index
from usjepa_fast.data.ultrabench import UltraBenchDataset
from usjepa_fast.errors import DataError

CLIP_FRAMES = 16  # synth_root: 3 clips of 16 frames at 128 px
EVAL = PreprocessConfig(image_size=64, patch_size=16)


@pytest.fixture(scope="module")
def sources(synth_root: Path, tmp_path_factory) -> dict[str, Path]:
    """media/: the 3 synthetic clips (+ their sidecar masks), 4 images without masks, a corrupt clip and
    a dangling symlink; dicom/: a JPEG cine, an extensionless uncompressed cine, a dual-view image."""
    base = tmp_path_factory.mktemp("prepare_src")
    media = base / "media"
    (media / "stills").mkdir(parents=True)
    for f in sorted((synth_root / "clips").glob("clip_*")):
        shutil.copy2(f, media / f.name)
    for f in sorted((synth_root / "ultrabench" / "images").glob("*.png"))[:4]:
        shutil.copy2(f, media / "stills" / f.name)
    (media / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    (media / "gone.mp4").symlink_to(base / "nowhere.mp4")
    out = {"ub": synth_root / "ultrabench", "media": media}
    if dicom_available():
        from usjepa_fast.data.synth import write_dicom_set

        write_dicom_set(base / "dicom", size=64, seed=1, n_frames=8)
        out["dicom"] = base / "dicom"
    return out


@pytest.fixture(scope="module")
def corpus(sources, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("corpus") / "c"
    summary = prepare_corpus(list(sources.values()), out, storage_size=64, shard_frames=24)
    return out, summary


def test_every_source_prepared_and_unreadable_listed(sources, corpus) -> None:
    out, s = corpus
    n_train = len(UltraBenchDataset(sources["ub"], "train"))
    names = {m["name"]: m for m in s.members}
    assert names["ultrabench[ultrabench:train]"]["frames"] == n_train
    assert names["media[images]"]["frames"] == 4
    assert names["media[videos]"]["frames"] == 3 * CLIP_FRAMES
    assert names["media[videos]"]["unreadable"] == 1  # broken.mp4 (gone.mp4 is a listing problem)
    reasons = dict(s.unreadable)
    assert set(reasons) == {str(sources["media"] / "broken.mp4"), str(sources["media"] / "gone.mp4")}
    assert "dangling symbolic link" in reasons[str(sources["media"] / "gone.mp4")]
    assert "broken.mp4" in reasons[str(sources["media"] / "broken.mp4")]
    if "dicom" in sources:
        assert names["dicom[videos]"]["frames"] == 16 and names["dicom[images]"]["frames"] == 1
    assert s.frames == sum(m["frames"] for m in s.members) and s.jobs > 2 and s.shards > s.jobs
    manifest = json.loads((out / "corpus.json").read_text())
    assert manifest["frames"] == s.frames and len(manifest["unreadable"]) == 2
    # Every frame is stored at the storage size: short side 64 (the 128-px inputs halved).
    c = PreparedCorpus(out)
    assert len(c) == s.frames and c.item_shape.min() <= 64 and (c.item_shape.min(axis=1) == 64).all()


def test_items_equal_the_folder_datasets_at_native_size(sources, tmp_path) -> None:
    out = tmp_path / "native"
    prepare_corpus([sources["media"], sources["ub"]], out, storage_size=None, max_side=None, shard_frames=20)
    c = PreparedCorpus(out, transform=Preprocessor(EVAL))
    by_key = {(it["path"], it["frame_index"]): i for i, it in enumerate(c[j] for j in range(len(c)))}
    pp = Preprocessor(EVAL)
    videos = VideoFrameDataset(sources["media"], transform=pp, on_error="skip")
    images = ImageFolderDataset(sources["media"], transform=pp)
    ub = UltraBenchDataset(sources["ub"], "train", transform=pp)
    refs = [videos[i] for i in range(len(videos))] + [images[i] for i in range(len(images))]
    refs += [{**ub[i], "frame_index": 0} for i in range(len(ub))]
    assert len(refs) == len(c) == len(by_key)
    for ref in refs:
        item = c[by_key[(ref["path"], ref.get("frame_index", 0))]]
        for key in ("image", "scan_mask", "valid_patches"):
            assert torch.equal(item[key], ref[key]), (ref["path"], key)
        if "timestamp" in ref:
            assert item["timestamp"] == pytest.approx(ref["timestamp"])


def test_items_at_the_storage_size_equal_resized_folder_frames(sources, corpus) -> None:
    out, _ = corpus
    c = PreparedCorpus(out, transform=Preprocessor(EVAL))
    raw = VideoFrameDataset(sources["media"], on_error="skip")  # gray + mask, no transform
    pp = Preprocessor(EVAL)
    videos = [i for i in range(len(c)) if c.unit_kinds[c.item_clip[i]] == "video"]
    items = {(c[i]["path"], c[i]["frame_index"]): i for i in videos}
    checked = 0
    for i in range(0, len(raw), 5):
        ref = raw[i]
        shape = storage_shape(*ref["image"].shape, 64, 1024)
        exp = pp(store_frame(ref["image"], shape), store_mask(ref["scan_mask"], shape))
        key = (ref["path"], ref["frame_index"])
        if key in items:
            got = c[items[key]]
            assert torch.equal(got["image"], exp["image"]) and torch.equal(got["valid_patches"], exp["valid_patches"])
            checked += 1
    assert checked == len(range(0, len(raw), 5)) >= 9


def test_mixed_corpus_view_clips_and_groups(corpus) -> None:
    out, s = corpus
    c = PreparedCorpus(out, cap=10)
    assert c.names == [m["name"] for m in s.members if m["frames"]]
    assert c.sizes == [m["frames"] for m in s.members if m["frames"]] and c.offsets[-1] == len(c)
    capped = np.minimum(c.sizes, 10)
    assert np.allclose(c.weights, capped / capped.sum())
    for i in (0, len(c) // 2, len(c) - 1):
        d, local = c.locate(i)
        assert c[i]["source"] == d and 0 <= local < c.sizes[d]
    # A clip's frames are contiguous and in frame order; every item of a unit shares its group.
    for unit in range(len(c.unit_paths)):
        span = c.clip_frames(unit)
        if len(span) > 1:
            assert [c[j]["frame_index"] for j in span] == sorted(c[j]["frame_index"] for j in span)
            assert len({c[j]["group"] for j in span}) == 1 and {c[j]["clip"] for j in span} == {unit}
    batch = collate_frames([PreparedCorpus(out)[i] for i in (0, len(c) - 1)])
    assert batch["frames"].dtype == torch.uint8 and batch["frames"].shape[0] == 2 and batch["sizes"].shape == (2, 2)


def test_same_shards_whatever_the_worker_count(sources, corpus, tmp_path) -> None:
    out, _ = corpus
    two = tmp_path / "two"
    prepare_corpus(list(sources.values()), two, storage_size=64, shard_frames=24, workers=2)
    assert _tree(two) == _tree(out)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_interrupted_prepare_resumes_without_duplicates_or_losses(sources, corpus, tmp_path, monkeypatch) -> None:
    out, clean = corpus
    crashed = tmp_path / "crashed"
    calls = {"n": 0}
    add = PartWriter.add

    def flaky_add(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 60:  # mid-job, after some parts were committed
            raise RuntimeError("simulated crash")
        return add(self, *args, **kwargs)

    monkeypatch.setattr(PartWriter, "add", flaky_add)
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare_corpus(list(sources.values()), crashed, storage_size=64, shard_frames=24)
    monkeypatch.setattr(PartWriter, "add", add)
    assert not (crashed / "corpus.json").exists() and any((crashed / "shards").glob("*.json"))
    with pytest.raises(DataError, match="unfinished prepare"):
        PreparedCorpus(crashed)
    resumed = prepare_corpus(list(sources.values()), crashed, storage_size=64, shard_frames=24)
    assert 0 < resumed.jobs_resumed < resumed.jobs and resumed.frames == clean.frames
    assert _tree(crashed) == _tree(out)
    again = prepare_corpus(list(sources.values()), crashed, storage_size=64, shard_frames=24)
    assert again.jobs_resumed == again.jobs and _tree(crashed) == _tree(out)


def test_killed_prepare_resumes(sources, tmp_path) -> None:
    """A real SIGKILL while a worker writes a part; the rerun completes the same corpus as a clean run."""
    src = [str(sources["media"])]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    script = textwrap.dedent(f"""
        import time
        from usjepa_fast.data import shards
        from usjepa_fast.data.prepare import prepare_corpus
        commit = shards.PartWriter._commit
        def slow_commit(self, *a, **k):
            commit(self, *a, **k)
            time.sleep(0.3)  # a slow disk: the parent kills us between parts
        shards.PartWriter._commit = slow_commit
        prepare_corpus({src!r}, {str(killed)!r}, storage_size=64, shard_frames=8)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), *sys.path])}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 60
        while len(list((killed / "shards").glob("*.json"))) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, "prepare ended before it could be killed"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (killed / "corpus.json").exists()
    resumed = prepare_corpus(src, killed, storage_size=64, shard_frames=8)
    prepare_corpus(src, clean, storage_size=64, shard_frames=8)
    assert resumed.jobs_resumed >= 1 and _tree(killed) == _tree(clean)
    assert not [p for p in (killed / "shards").iterdir() if p.name.startswith(".")]
    # A part whose data was cut short later (disk trouble): a rerun redoes its job, the corpus is exact again.
    victim = sorted((killed / "shards").glob("*.bin"))[-1]
    victim.write_bytes(victim.read_bytes()[:100])
    assert prepare_corpus(src, killed, storage_size=64, shard_frames=8).jobs_resumed == resumed.jobs - 1
    assert _tree(killed) == _tree(clean)


def test_other_sources_or_options_are_refused_unless_overwrite(sources, tmp_path) -> None:
    out = tmp_path / "c"
    prepare_corpus([sources["media"]], out, storage_size=64)
    with pytest.raises(DataError, match="other options"):
        prepare_corpus([sources["media"]], out, storage_size=32)
    with pytest.raises(DataError, match="other sources"):
        prepare_corpus([sources["media"], sources["ub"]], out, storage_size=64)
    with pytest.raises(DataError, match="does not exist"):  # a bad source deletes nothing
        prepare_corpus([tmp_path / "missing"], out, storage_size=32, overwrite=True)
    assert PreparedCorpus(out).item_shape.min() == 64
    s = prepare_corpus([sources["media"]], out, storage_size=32, overwrite=True)
    assert PreparedCorpus(out).item_shape.min() == 32 and s.jobs_resumed == 0
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty and not a usfast corpus"):
        prepare_corpus([sources["media"]], tmp_path / "busy")
    with pytest.raises(DataError, match="does not exist"):
        prepare_corpus([tmp_path / "missing"], tmp_path / "c2")


def test_sampling_scan_mask_none_and_group_by_folder(sources, tmp_path) -> None:
    from usjepa_fast.data.video import FrameSampling

    out = tmp_path / "c"
    s = prepare_corpus(
        [sources["media"]],
        out,
        storage_size=None,
        sampling=FrameSampling(every_k=3, max_frames=4),
        scan_mask="none",
        group_by="folder",
    )
    c = PreparedCorpus(out)
    videos = [i for i in range(len(c)) if c.unit_kinds[c.item_clip[i]] == "video"]
    assert len(videos) == 3 * 4 and sorted({c[i]["frame_index"] for i in videos}) == [0, 3, 6, 9]
    assert all(c.read(i)[1].all() for i in range(len(c)))  # scan_mask="none": whole frames
    stills = {c[i]["group"] for i in range(len(c)) if "stills" in c[i]["path"]}
    assert stills == {"media/stills"} and s.frames == len(c)


def test_streamed_part_equals_random_access(corpus) -> None:
    out, _ = corpus
    c = PreparedCorpus(out)
    part = sorted((out / "shards").glob("*.json"))[1]
    index = read_part_index(part)
    first = int(np.flatnonzero(c.item_part == sorted(c.part_files).index(index["data"]))[0])
    with open(out / "shards" / index["data"], "rb") as fh:
        for k, frame in enumerate(iter_part(fh, index)):
            gray, mask = c.read(first + k)
            assert np.array_equal(frame.image, gray) and np.array_equal(frame.mask, mask)
            assert frame.unit == c.item_clip[first + k]


@pytest.mark.skipif(not dicom_available(), reason="needs pydicom (the dicom extra)")
def test_dicom_frames_timing_and_regions(sources, corpus, tmp_path) -> None:
    from usjepa_fast.data.clips import scan_mask
    from usjepa_fast.data.dicom import dicom_scan_region, read_dicom_info
    from usjepa_fast.data.media import find_media
    from usjepa_fast.data.scan_region import load_mask, sidecar_mask_path

    files = find_media(sources["dicom"], ("dicom",)).files
    assert {p.name for p in files} == {"cine_000.dcm", "IM_0001", "dual_000.dcm"}  # IM_0001: by its preamble
    cine = sources["dicom"] / "cine_000.dcm"
    assert np.array_equal(scan_mask(cine), load_mask(sidecar_mask_path(cine)))  # a provided mask wins
    alone = tmp_path / "cine.dcm"
    shutil.copy2(cine, alone)
    regions, _ = dicom_scan_region(alone)
    assert np.array_equal(scan_mask(alone), regions)  # no sidecar: the header's B-mode region, no detection
    assert scan_mask(alone, mode="detect").shape == regions.shape  # detect: on spread frames of the cine
    out, _ = corpus
    c = PreparedCorpus(out)
    unit = next(u for u, p in enumerate(c.unit_paths) if p == "cine_000.dcm")
    span = c.clip_frames(unit)
    info = read_dicom_info(cine)
    assert [c[i]["timestamp"] for i in span] == pytest.approx(list(info.timestamps))
    shape = storage_shape(info.rows, info.columns, 64, 1024)
    assert np.array_equal(c.read(span[0])[1], store_mask(load_mask(sidecar_mask_path(cine)), shape))


def test_members_join_a_mixed_corpus_and_split_by_group(sources, corpus, synth_root) -> None:
    from usjepa_fast.data.corpus import MixedCorpus
    from usjepa_fast.data.split import corpus_groups, split_by_group

    out, _ = corpus
    pc = PreparedCorpus(out, transform=Preprocessor(EVAL), cap=20)
    raw = VideoFrameDataset(synth_root / "clips", transform=Preprocessor(EVAL))
    named = pc.member_datasets()
    mixed = MixedCorpus([ds for _, ds in named] + [raw], [n for n, _ in named] + ["raw[videos]"], cap=20)
    assert mixed.sizes == [*pc.sizes, len(raw)] and np.allclose(
        mixed.weights[:-1] / mixed.weights[:-1].sum(), pc.weights
    )
    assert mixed[0]["image"].shape == (3, 64, 64) and mixed[len(mixed) - 1]["source"] == len(named)
    groups, members = corpus_groups(mixed)
    train, val = split_by_group(groups, 0.2, members=members)
    assert len(val) and not set(groups[train]) & set(groups[val])
    g2, m2 = corpus_groups(pc)  # the corpus itself: the same partition of its items
    t2, v2 = split_by_group(g2, 0.2, members=m2)
    assert not set(g2[t2]) & set(g2[v2]) and len(pc.fingerprint) == 16


def test_a_clip_to_detect_is_decoded_once_with_the_folders_frames_and_mask(tmp_path, monkeypatch) -> None:
    """No sidecar: prepare's one decoding pass gives the frames and the mask every other reader gets."""
    from support.media import moving_frames, write_clip

    from usjepa_fast.data.clips import scan_mask
    from usjepa_fast.data.video import PyAVDecoder

    root = tmp_path / "raw"
    root.mkdir()
    frames = moving_frames(n=14)
    frames[:3] = 0  # black start
    clip = write_clip(root / "c.mp4", frames)
    passes = []
    original = PyAVDecoder.raw_frames

    def counting(self, path, sampling=None):
        passes.append(Path(path).name)
        return original(self, path, sampling)

    monkeypatch.setattr(PyAVDecoder, "raw_frames", counting)
    monkeypatch.setenv("USFAST_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "c"
    summary = prepare_corpus([root], out, storage_size=None, max_side=None, sampling=None, shard_frames=8)
    assert passes == ["c.mp4"] and summary.frames == 14
    monkeypatch.setattr(PyAVDecoder, "raw_frames", original)
    c = PreparedCorpus(out, transform=Preprocessor(EVAL))
    ref = VideoFrameDataset(root, transform=Preprocessor(EVAL))
    assert len(c) == len(ref) == 14
    for i in range(len(c)):
        for key in ("image", "scan_mask", "valid_patches"):
            assert torch.equal(c[i][key], ref[i][key]), (i, key)
    np.testing.assert_array_equal(PreparedCorpus(out).read(0)[1], scan_mask(clip))  # the stored native mask
