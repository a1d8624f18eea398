"""Training from what users have (issues 12, 13, 17): a folder of real-world-broken clips runs to the end
with its shortfalls reported and nothing written beside the data; a prepared corpus trains, resumes
exactly and gives the raw folder's losses; the hold-out is whole clips; DICOM folders are inputs."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from support.media import folder_state, write_broken_clips

from usjepa_fast.data import synth
from usjepa_fast.train import run
from usjepa_fast.train.data import build_pretrain_data

PIXEL = ("objective.kind=pixel", "data.batch_size=4", "optim.steps=4", "optim.warmup_steps=1")


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def broken_clips(tmp_path_factory) -> SimpleNamespace:
    """``edit_list.mov`` (lists 30 frames, presents 24), ``truncated.mp4`` (index first, second half of
    the data gone), ``black_start.mp4`` (10 black frames first), ``good.mp4``, ``gone.mp4`` (dangling)."""
    return write_broken_clips(tmp_path_factory.mktemp("broken"), size=64, seed=5)


def test_training_over_broken_clips_runs_to_the_end_and_reports_them(
    make_cfg, broken_clips, tmp_path, monkeypatch
) -> None:
    """Issue 17: short clips yield the frames they have, the dangling link is listed, validation and
    checkpoints happen, and the input folder (read-only for a non-root user) is unchanged."""
    from usjepa_fast.data.clips import scan_mask
    from usjepa_fast.embed.sources import list_sources, source_mask
    from usjepa_fast.masking.preview import load_preview_frames

    data = tmp_path / "data"
    shutil.copytree(broken_clips.root, data, symlinks=True)
    monkeypatch.setenv("USFAST_CACHE_DIR", str(tmp_path / "cache"))
    before = folder_state(data)
    read_only = os.geteuid() != 0  # root ignores permission bits: then the listing diff is the check
    if read_only:
        data.chmod(0o555)
    try:
        cfg = make_cfg(
            tmp_path / "run", *PIXEL, f"data.sources=[{data}]", "data.every_k=2", "data.val_fraction=0.25",
            "run.val_every=2", "run.ckpt_every=2",
        )  # fmt: skip
        summary = run(cfg)
        assert summary.finished and summary.best_val_loss is not None
        inputs = summary.inputs
        assert sorted(Path(p).name for p in inputs["short"]) == ["edit_list.mov", "truncated.mp4"]
        assert list(inputs["unreadable"]) == [str(data / "gone.mp4")] and not inputs["failed"]
        assert json.loads((tmp_path / "run" / "summary.json").read_text())["inputs"]["counts"]["short"] == 2
        # embed, masks and training: the same scan mask for every clip
        corpus = build_pretrain_data(cfg.data, cfg.model.patch_size, cfg.run.seed).corpus
        (videos,) = corpus.datasets
        preview = {name.split("#")[0]: mask for name, _, mask, _ in load_preview_frames(data, 8)}
        for src in list_sources(data):
            first = next(iter(videos.decoder.frames(src.path))).image
            reference = scan_mask(src.path)
            np.testing.assert_array_equal(videos.clip_mask(src.path), reference)
            np.testing.assert_array_equal(preview[src.path.name], reference)
            embedded = source_mask(src, first)
            np.testing.assert_array_equal(reference if embedded is None else embedded, reference)
        # embed and the masks preview over the same (read-only) folder write only where told
        from usjepa_fast.embed import EmbedOptions, embed_folder, open_backend
        from usjepa_fast.masking.preview import render_mask_preview

        backend = open_backend("random:vit_tiny_patch16_224", "torch", "cpu", img_size=32, threads=1)
        done = embed_folder(data, tmp_path / "emb", backend, options=EmbedOptions(every_k=6, progress=False))
        # (embed's own rule for a clip that ends early: failed here; the embed engine owns it)
        assert done.files_embedded >= 3 and set(done.failed) <= {"truncated.mp4"}
        render_mask_preview(data, tmp_path / "preview.png", image_size=32, patch_size=4, n=4)
    finally:
        if read_only:
            data.chmod(0o755)
    assert folder_state(data) == before


@pytest.fixture(scope="module")
def prepared(synth_root, tmp_path_factory) -> SimpleNamespace:
    """synth_root's 3 clips prepared at native size (items equal the folder's) and, with its images, at
    32 px (the training size)."""
    from usjepa_fast.data.prepare import prepare_corpus

    base = tmp_path_factory.mktemp("prepared")
    clips = synth_root / "clips"
    native = base / "native"
    prepare_corpus([clips], native, storage_size=None, max_side=None, shard_frames=16)
    small = base / "small"
    prepare_corpus([clips, synth_root / "ultrabench"], small, storage_size=32, shard_frames=16)
    return SimpleNamespace(clips=clips, native=native, small=small)


def test_prepared_corpus_gives_the_raw_folders_losses_and_hold_out(make_cfg, prepared, tmp_path) -> None:
    """Issue 12: the same frames, masks, split and sampler clips from the prepared corpus as from the raw
    folder, hence the same seeded losses."""
    common = (*PIXEL, "optim.steps=3", "data.val_fraction=0.34", "run.val_every=3")
    raw_cfg = make_cfg(tmp_path / "raw", *common, f"data.sources=[{prepared.clips}]")
    prep_cfg = make_cfg(tmp_path / "prep", *common, f"data.sources=[{prepared.native}]")
    raw, prep = (build_pretrain_data(c.data, 4, 0) for c in (raw_cfg, prep_cfg))
    assert raw.corpus.names == prep.corpus.names == ["clips[videos]"] and len(raw.corpus) == 48
    assert raw.train.indices == prep.train.indices and raw.val.indices == prep.val.indices and raw.val.indices
    assert [c.tolist() for c in raw.clips] == [c.tolist() for c in prep.clips]
    a, b = run(raw_cfg), run(prep_cfg)
    assert a.finished and b.finished
    assert _losses(tmp_path / "raw") == pytest.approx(_losses(tmp_path / "prep"), rel=1e-5, abs=1e-6)
    assert a.best_val_loss == pytest.approx(b.best_val_loss, rel=1e-5)


def test_prepare_train_resume_on_clips_and_images(make_cfg, prepared, tmp_path) -> None:
    """Issue 12: prepare -> train -> resume reproduces the uninterrupted run."""
    common = (*PIXEL, "optim.steps=6", f"data.sources=[{prepared.small}]", "run.ckpt_every=2", "run.val_every=3")
    full = run(make_cfg(tmp_path / "full", *common))
    part = run(make_cfg(tmp_path / "part", *common, "run.stop_after=3"))
    assert full.finished and part.step == 3 and not part.finished
    resumed = run(make_cfg(tmp_path / "part", *common), resume=True)
    assert resumed.resumed_from == 3 and resumed.finished
    assert _losses(tmp_path / "full") == _losses(tmp_path / "part")
    assert full.inputs["counts"] == {"unreadable": 0, "short": 0, "failed": 0}


def test_validation_never_shares_a_clip_with_training(synth_root, tmp_path) -> None:
    from usjepa_fast.data.split import corpus_groups
    from usjepa_fast.train.config import DataConfig

    cfg = DataConfig(sources=[str(synth_root / "clips"), str(synth_root / "ultrabench")], image_size=32)
    cfg.val_fraction = 0.3
    data = build_pretrain_data(cfg, 4, 0)
    groups, _ = corpus_groups(data.corpus)
    train_groups, val_groups = set(groups[data.train.indices]), set(groups[data.val.indices])
    assert val_groups and not train_groups & val_groups
    videos = data.corpus.datasets[0]
    clip_of = lambda i: videos.files[videos.index[i][0]]  # noqa: E731
    n_videos = len(videos)
    train_clips = {clip_of(i) for i in data.train.indices if i < n_videos}
    val_clips = {clip_of(i) for i in data.val.indices if i < n_videos}
    assert not train_clips & val_clips
    # the sampler gets the clip of every train item of the video member (clip-aware visits)
    assert data.clips[0] is not None and len(data.clips[0]) == data.sizes[0]


def test_dicom_folder_is_a_training_input(make_cfg, tmp_path, monkeypatch, caplog) -> None:
    """Issue 13: cine loops are clips, single-frame objects images; every frame is an item."""
    pytest.importorskip("pydicom", minversion="3.0")
    from usjepa_fast.data.dicom import read_dicom_info

    synth.write_dicom_set(tmp_path / "d", size=48, seed=2, n_frames=6)
    cfg = make_cfg(tmp_path / "run", *PIXEL, "optim.steps=2", f"data.sources=[{tmp_path / 'd'}]", "data.val_fraction=0")
    data = build_pretrain_data(cfg.data, 4, 0)
    assert data.corpus.names == ["d[images]", "d[videos]"]
    cines = [p for p in data.corpus.datasets[1].files]
    assert sorted(p.name for p in cines) == ["IM_0001", "cine_000.dcm"]
    assert len(data.corpus) == 1 + sum(read_dicom_info(p).num_frames for p in cines)
    from usjepa_fast.data.prepare import prepare_corpus

    monkeypatch.setenv("USFAST_CACHE_DIR", str(tmp_path / "cache"))
    prepare_corpus([tmp_path / "d"], tmp_path / "corpus", storage_size=32, shard_frames=8)
    with caplog.at_level(logging.DEBUG, logger="usfast"):
        assert run(cfg).finished
        prepared = make_cfg(tmp_path / "run2", *PIXEL, "optim.steps=2", f"data.sources=[{tmp_path / 'corpus'}]")
        assert run(prepared).finished
    # privacy: no patient tag in any run, corpus or cache file (contents and names) nor in the log
    secrets = [v for k, v in synth.SYNTH_PATIENT.items() if k != "PatientSex"]
    for folder in ("run", "run2", "corpus", "cache"):
        for f in (tmp_path / folder).rglob("*"):
            if f.is_file():
                data_bytes = f.read_bytes()
                assert not any(v.encode() in data_bytes or v in f.name for v in secrets), f
    assert not any(v in caplog.text for v in secrets)


def test_resume_refuses_a_prepared_corpus_that_changed(make_cfg, synth_root, tmp_path) -> None:
    from usjepa_fast.data.prepare import prepare_corpus
    from usjepa_fast.errors import UsfastError

    corpus = tmp_path / "corpus"
    prepare_corpus([synth_root / "clips"], corpus, storage_size=32, shard_frames=16)
    common = (*PIXEL, f"data.sources=[{corpus}]", "data.val_fraction=0", "run.ckpt_every=1")
    assert run(make_cfg(tmp_path / "run", *common, "run.stop_after=1")).step == 1
    prepare_corpus([synth_root / "clips"], corpus, storage_size=40, shard_frames=16, overwrite=True)
    with pytest.raises(UsfastError, match="another version of prepared corpus"):
        run(make_cfg(tmp_path / "run", *common), resume=True)


def test_files_failing_in_dataloader_workers_reach_the_run_summary(make_cfg, synth_root, tmp_path, monkeypatch) -> None:
    """A clip that breaks after indexing (replaced, unmounted) fails inside a DataLoader worker: the
    run goes on with other clips' frames and the summary names the file."""
    from usjepa_fast.data.folders import VideoFrameDataset
    from usjepa_fast.errors import DataError

    original = VideoFrameDataset._clip_frames

    def breaks(self, path):
        if path.name == "clip_001.webm":
            raise DataError(f"video {path} is corrupt or truncated after 0 frames; re-encode or remove it")
        return original(self, path)

    monkeypatch.setattr(VideoFrameDataset, "_clip_frames", breaks)  # inherited by the forked worker
    sources = f"data.sources=[{synth_root / 'clips'}]"
    cfg = make_cfg(tmp_path / "run", *PIXEL, sources, "data.val_fraction=0", "data.num_workers=1", "data.every_k=2")
    summary = run(cfg)
    assert summary.finished
    assert list(summary.inputs["failed"]) == [str(synth_root / "clips" / "clip_001.webm")]
    assert summary.inputs["counts"]["failed"] == 1
