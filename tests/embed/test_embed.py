"""embed_folder end to end on synthetic clips and images: backends, decoders, resume, changes,
corrupt files, redundancy skipping, rank sharding, clip pooling, CLI."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from usjepa_fast.embed import EmbedOptions, embed_folder, embed_split, load, merge_outputs
from usjepa_fast.embed.store import read_parts

FAST = dict(batch_size=8, progress=False, part_rows=1)  # part_rows=1: one committed part per file


def _opts(**kw) -> EmbedOptions:
    return EmbedOptions(**{**FAST, **kw})


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _frame_counts(clips: Path) -> dict[str, int]:
    import av

    out = {}
    for p in sorted(clips.iterdir()):
        if p.suffix in (".mp4", ".webm", ".avi"):
            with av.open(str(p)) as c:
                out[p.name] = sum(1 for _ in c.decode(video=0))
    return out


@pytest.fixture()
def clips(synth_root, tmp_path) -> Path:
    """A private copy of the synthetic clips (tests modify/corrupt files)."""
    dst = tmp_path / "clips"
    shutil.copytree(synth_root / "clips", dst)
    return dst


def test_video_folder_torch_and_onnx_backends_agree(clips, tmp_path, torch_backend, onnx_backend) -> None:
    counts = _frame_counts(clips)
    results = {}
    for b in (torch_backend, onnx_backend):
        s = embed_folder(clips, tmp_path / b.name, b, options=_opts(dtype="float32"))
        assert s.files_embedded == 3 and s.files_failed == 0 and s.backend == b.name
        X, rows = load(tmp_path / b.name)
        assert Counter(r.path for r in rows) == counts  # every frame of every clip, once
        for path in counts:  # frame indices complete and in order
            assert [r.frame_index for r in rows if r.path == path] == list(range(counts[path]))
        assert X.shape == (sum(counts.values()), torch_backend.info.width) and np.isfinite(X).all()
        results[b.name] = X
    a, b = results.values()
    assert _cos(a, b).min() > 0.9999


def test_features_equal_direct_model_call(clips, tmp_path, torch_backend) -> None:
    """The pipeline's pixels are exactly the data layer's preprocessing of the decoded frames."""
    from usjepa_fast.data.preprocess import preprocess_batch
    from usjepa_fast.data.video import PyAVDecoder

    embed_folder(
        clips / "clip_000.mp4", tmp_path / "o", torch_backend, options=_opts(dtype="float32", scan_region=False)
    )
    X, rows = load(tmp_path / "o")
    frames = torch.from_numpy(np.stack([f.image for f in PyAVDecoder().frames(clips / "clip_000.mp4")]))
    info = torch_backend.info
    ref = torch_backend(preprocess_batch(frames, None, info.input_size, info.mean, info.std)).numpy()
    assert _cos(X, ref).min() > 0.99999


def test_sampling_and_clip_pooling(clips, tmp_path, torch_backend) -> None:
    s = embed_folder(clips, tmp_path / "k", torch_backend, options=_opts(every_k=4, max_frames=3))
    _, rows = load(tmp_path / "k")
    assert s.frames_embedded == 9
    assert {r.path: [x.frame_index for x in rows if x.path == r.path] for r in rows}["clip_000.mp4"] == [0, 4, 8]
    embed_folder(clips, tmp_path / "pool", torch_backend, options=_opts(clip_pool=True, dtype="float32"))
    Xp, rows_p = load(tmp_path / "pool")
    assert len(rows_p) == 3 and all(r.frame_index == -1 for r in rows_p)
    embed_folder(clips / "clip_001.webm", tmp_path / "full", torch_backend, options=_opts(dtype="float32"))
    Xf, _ = load(tmp_path / "full")
    np.testing.assert_allclose(Xp[[r.path for r in rows_p].index("clip_001.webm")], Xf.mean(0), rtol=1e-4, atol=1e-5)


def test_image_folder_and_ultrabench_split(synth_root, tmp_path, torch_backend) -> None:
    ub = synth_root / "ultrabench"
    s = embed_folder(ub, tmp_path / "ub", torch_backend, options=_opts(dtype="float32", part_rows=16))
    X, rows = load(tmp_path / "ub")
    assert s.files_embedded == 48 and len(rows) == 48 and all(r.path.startswith("images/") for r in rows)
    assert not any("masks/" in r.path for r in rows)  # an UltraBench dir embeds its records, not its masks
    split = embed_split(torch_backend, ub, "test", batch_size=5)
    Xt, yt = split.x, split.y
    from usjepa_fast.data.ultrabench import UltraBenchDataset

    ds = UltraBenchDataset(ub, "test")
    assert Xt.shape == (len(ds), X.shape[1]) and Xt.dtype == np.float32 and not split.failed
    np.testing.assert_array_equal(yt, ds.labels)
    assert split.paths == [str(p) for p in ds.paths] and split.index.tolist() == list(range(len(ds)))
    by_path = {r.path: i for i, r in enumerate(rows)}
    idx = [by_path[p.relative_to(ub).as_posix()] for p in ds.paths]
    assert _cos(Xt, X[idx]).min() > 0.9999  # folder embedding == split embedding (same pixels)
    # a plain image folder (no UltraBench JSON) works too
    s2 = embed_folder(ub / "images", tmp_path / "img", torch_backend, options=_opts())
    assert s2.files_embedded == len(list((ub / "images").glob("*.png")))


def test_dali_cpu_decoder_on_vp9_and_mjpeg(clips, tmp_path, torch_backend) -> None:
    pytest.importorskip("nvidia.dali")
    s = embed_folder(clips, tmp_path / "dali", torch_backend, options=_opts(decoder="dali", dtype="float32"))
    assert s.files_failed == 0
    embed_folder(clips, tmp_path / "pyav", torch_backend, options=_opts(decoder="pyav", dtype="float32"))
    Xd, rd = load(tmp_path / "dali")
    Xp, rp = load(tmp_path / "pyav")
    assert [(r.path, r.frame_index) for r in rd] == [(r.path, r.frame_index) for r in rp]
    # DALI converts RGB->gray while PyAV reads the luma plane: tiny pixel differences only
    assert _cos(Xd, Xp).min() > 0.99


class _Crashing:
    """Wraps a backend and raises after ``n`` batches (a killed job)."""

    def __init__(self, inner, n: int) -> None:
        self.inner, self.n = inner, n
        self.info, self.name, self.device = inner.info, inner.name, inner.device

    def __call__(self, x):
        if self.n == 0:
            raise KeyboardInterrupt("simulated kill")
        self.n -= 1
        return self.inner(x)


def test_resume_after_interruption_has_no_duplicate_or_missing_rows(synth_root, tmp_path, torch_backend) -> None:
    ub = synth_root / "ultrabench"
    with pytest.raises(KeyboardInterrupt):
        embed_folder(ub, tmp_path / "o", _Crashing(torch_backend, 3), options=_opts(batch_size=4))
    done_first = sum(len(p.files) for p in read_parts(tmp_path / "o"))
    assert 0 < done_first < 48
    # a crash mid-commit leaves an orphan feature file; the next run must clean it up
    np.save(tmp_path / "o" / "parts" / "r000-999999.npy", np.zeros((1, 1)))
    s = embed_folder(ub, tmp_path / "o", torch_backend, options=_opts(batch_size=4))
    assert s.files_resumed == done_first and s.files_embedded == 48 - done_first
    X, rows = load(tmp_path / "o")
    assert sorted(r.path for r in rows) == sorted({r.path for r in rows}) and len(rows) == 48
    assert not (tmp_path / "o" / "parts" / "r000-999999.npy").exists()
    ref = tmp_path / "ref"
    embed_folder(ub, ref, torch_backend, options=_opts())
    Xr, rr = load(ref)
    order = {r.path: i for i, r in enumerate(rr)}
    assert _cos(X, Xr[[order[r.path] for r in rows]]).min() > 0.999


def test_changed_file_is_re_embedded(clips, tmp_path, torch_backend) -> None:
    out = tmp_path / "o"
    embed_folder(clips, out, torch_backend, options=_opts(dtype="float32"))
    X1, rows1 = load(out)
    # replace clip_000.mp4's content with a different clip of the same codec, and touch another
    target = clips / "clip_000.mp4"
    shutil.copyfile(clips / "clip_001.webm", tmp_path / "x.webm")
    import av

    with av.open(str(tmp_path / "x.webm")) as src, av.open(str(target), "w") as dst:
        stream = dst.add_stream("libx264", rate=15)
        stream.width, stream.height, stream.pix_fmt = 128, 128, "yuv420p"
        for i, frame in enumerate(src.decode(video=0)):
            if i >= 5:
                break
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                dst.mux(packet)
        for packet in stream.encode():
            dst.mux(packet)
    s = embed_folder(clips, out, torch_backend, options=_opts(dtype="float32"))
    assert s.files_embedded == 1 and s.files_resumed == 2
    X2, rows2 = load(out)
    assert [r.frame_index for r in rows2 if r.path == "clip_000.mp4"] == [0, 1, 2, 3, 4]
    assert len(rows2) == len(rows1) - 16 + 5
    # the untouched clips keep their rows; hash mode ignores a pure mtime change
    os.utime(clips / "clip_002.avi", ns=(1, 1))
    s3 = embed_folder(clips, out, torch_backend, options=_opts(dtype="float32", change_check="hash"))
    # no hash recorded yet for it: size/mtime decide, and the touch counts as a change
    assert s3.files_embedded == 1 and s3.files_resumed == 2
    os.utime(clips / "clip_002.avi", ns=(2, 2))
    s4 = embed_folder(clips, out, torch_backend, options=_opts(dtype="float32", change_check="hash"))
    assert s4.files_embedded == 0 and s4.files_resumed == 3


def test_corrupt_files_are_counted_listed_and_skipped(clips, tmp_path, torch_backend, caplog) -> None:
    data = (clips / "clip_000.mp4").read_bytes()
    (clips / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (clips / "garbage.png").write_bytes(b"\x89PNG not really")
    (clips / "empty.avi").write_bytes(b"")
    s = embed_folder(clips, tmp_path / "o", torch_backend, options=_opts())
    assert s.files_failed == 3 and s.files_embedded == 3
    assert set(s.failed) == {"truncated.mp4", "garbage.png", "empty.avi"}
    manifest = json.loads((tmp_path / "o" / "embed.json").read_text())
    assert manifest["files_failed"] == 3 and set(manifest["failed"]) == set(s.failed)
    _, rows = load(tmp_path / "o")
    assert {r.path for r in rows} == {"clip_000.mp4", "clip_001.webm", "clip_002.avi"}
    assert "could not be read" in caplog.text


def test_redundancy_skipping_embeds_fewer_frames_and_maps_every_frame(synth_root, tmp_path, torch_backend) -> None:
    clip = synth_root / "clips" / "clip_000.mp4"  # holds a still-probe segment
    frozen = json.loads((synth_root / "clips" / "clips.json").read_text())
    s_off = embed_folder(clip, tmp_path / "off", torch_backend, options=_opts(dtype="float32"))
    s_on = embed_folder(clip, tmp_path / "on", torch_backend, options=_opts(dtype="float32", redundancy_threshold=1.0))
    assert s_on.frames_embedded < s_off.frames_embedded
    assert s_on.frames_embedded + s_on.frames_duplicate == s_off.frames_embedded
    X, rows = load(tmp_path / "on")
    Xoff, _ = load(tmp_path / "off")
    assert [r.frame_index for r in rows] == list(range(s_off.frames_embedded))  # every frame in the index
    by_frame = {r.frame_index: i for i, r in enumerate(rows)}
    dups = [r for r in rows if r.duplicate_of >= 0]
    assert dups
    for r in dups:
        rep = rows[by_frame[r.duplicate_of]]
        assert rep.duplicate_of == -1 and r.row == rep.row
        np.testing.assert_array_equal(X[by_frame[r.frame_index]], X[by_frame[r.duplicate_of]])
        # a skipped frame's stand-in is (nearly) what embedding it would have given
        assert _cos(X[by_frame[r.frame_index]][None], Xoff[r.frame_index][None])[0] > 0.99
    lo, hi = next(m for m in frozen if m["video"] == "clip_000.mp4")["frozen"]
    assert all(lo <= r.frame_index < hi for r in dups)  # only the still segment was skipped
    _, rows_u = load(tmp_path / "on", include_duplicates=False)
    assert len(rows_u) == s_on.frames_embedded


def test_two_ranks_cover_every_file_once(synth_root, tmp_path, torch_backend) -> None:
    ub = synth_root / "ultrabench"
    out = tmp_path / "o"
    s0 = embed_folder(ub, out, torch_backend, options=_opts(part_rows=8), rank=0, world_size=2, merge=False)
    s1 = embed_folder(ub, out, torch_backend, options=_opts(part_rows=8), rank=1, world_size=2, merge=False)
    assert s0.files_total + s1.files_total == 48 and min(s0.files_total, s1.files_total) >= 20
    parts = read_parts(out)
    per_rank = {r: set().union(*(p.files for p in parts if p.rank == r)) for r in (0, 1)}
    assert not per_rank[0] & per_rank[1] and len(per_rank[0] | per_rank[1]) == 48
    _, n = merge_outputs(out, ub)
    _, rows = load(out)
    assert n == 48 and len({r.path for r in rows}) == 48
    assert {r.shard.split("/")[1][:4] for r in rows} == {"r000", "r001"}


def test_auto_backend_says_which_it_picked(tmp_path, caplog) -> None:
    import logging

    from usjepa_fast.embed import open_backend
    from usjepa_fast.embed.precision import resolve_precision

    caplog.set_level(logging.INFO, logger="usfast")
    b = open_backend("vit_tiny_patch16_224", "auto", "cpu", img_size=32, threads=1, cache_dir=tmp_path)
    want = resolve_precision("auto", "torch", "cpu", width=192).precision
    assert b.name == f"torch-eager-cpu-{want}"  # a rule by hardware: nothing timed, nothing exported
    assert f"backend: {b.name} for vit_tiny_patch16_224" in caplog.text and not list(tmp_path.iterdir())
    x = torch.randn(3, 3, 32, 32)
    assert b(x).shape == (3, 192)


def test_cli_embed_writes_index_and_reports(clips, tmp_path) -> None:
    from typer.testing import CliRunner

    from usjepa_fast.cli.main import app

    out = tmp_path / "cli"
    res = CliRunner().invoke(
        app,
        [
            "embed",
            str(clips),
            "--encoder",
            "vit_tiny_patch16_224",
            "--out",
            str(out),
            "--backend",
            "torch",
            "--batch-size",
            "8",
            "--max-frames",
            "2",
            "--no-progress",
            "--threads",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "backend torch-eager-cpu-fp32" in res.output and "3 files embedded" in res.output
    _, rows = load(out)
    assert len(rows) == 6
