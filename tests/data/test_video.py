"""Video decoding: every container, frame sampling rules, DALI CPU parity, bad files."""

from __future__ import annotations

import numpy as np
import pytest
from data_helpers import CONTAINERS, moving_frames, write_clip

from usjepa_fast.data.video import (
    DaliCpuDecoder,
    FrameSampling,
    PyAVDecoder,
    VideoDecoder,
    _Sampler,
    dali_available,
    get_decoder,
)
from usjepa_fast.errors import BackendUnavailableError, DataError


@pytest.mark.parametrize("suffix", list(CONTAINERS))
def test_pyav_decodes_every_container(tmp_path, suffix) -> None:
    frames = moving_frames(n=12)
    path = write_clip(tmp_path / f"c{suffix}", frames, fps=10)
    dec = PyAVDecoder()
    info = dec.probe(path)
    assert (info.width, info.height) == (64, 48) and info.num_frames == 12 and info.fps == pytest.approx(10)
    out = list(dec.frames(path))
    assert [f.index for f in out] == list(range(12))
    assert [f.timestamp for f in out] == pytest.approx([i / 10 for i in range(12)], abs=1e-3)
    for f, ref in zip(out, frames, strict=True):
        assert f.image.dtype == np.uint8 and f.image.shape == (48, 64)
        # lossy codecs: close to the source in the mean (gif: 256-colour palette)
        assert np.abs(f.image.astype(int) - ref).mean() < 12


def test_sampling_rules() -> None:
    ts = [i / 30 for i in range(90)]  # 3 s at 30 fps
    assert _Sampler(FrameSampling()).select_indices(ts) == list(range(90))
    assert _Sampler(FrameSampling(every_k=4)).select_indices(ts) == list(range(0, 90, 4))
    assert _Sampler(FrameSampling(fps=10)).select_indices(ts) == list(range(0, 90, 3))
    assert _Sampler(FrameSampling(fps=10, every_k=2)).select_indices(ts) == list(range(0, 90, 6))
    assert _Sampler(FrameSampling(every_k=5, max_frames=4)).select_indices(ts) == [0, 5, 10, 15]
    # variable frame rate: a gap does not produce a burst, ticks follow time not indices
    vfr = [0.0, 0.05, 0.1, 0.5, 0.52, 0.6, 0.7]
    assert _Sampler(FrameSampling(fps=10)).select_indices(vfr) == [0, 2, 3, 5, 6]
    for bad in (dict(every_k=0), dict(fps=0.0), dict(max_frames=0)):
        with pytest.raises(DataError):
            FrameSampling(**bad)


def test_decoder_applies_sampling(tmp_path) -> None:
    path = write_clip(tmp_path / "c.mp4", moving_frames(n=20), fps=20)
    dec = PyAVDecoder()
    assert [f.index for f in dec.frames(path, FrameSampling(every_k=3))] == list(range(0, 20, 3))
    assert [f.index for f in dec.frames(path, FrameSampling(fps=5))] == [0, 4, 8, 12, 16]
    assert [f.index for f in dec.frames(path, FrameSampling(max_frames=2))] == [0, 1]


def test_get_decoder_and_protocol() -> None:
    assert isinstance(get_decoder("pyav"), VideoDecoder)
    assert get_decoder("auto").name == "pyav"
    with pytest.raises(DataError, match="unknown video decoder"):
        get_decoder("ffmpeg-gpu")


def test_bad_videos(tmp_path) -> None:
    dec = PyAVDecoder()
    with pytest.raises(DataError, match="does not exist"):
        list(dec.frames(tmp_path / "missing.mp4"))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        dec.probe(empty)
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"RIFF" + bytes(range(256)) * 8)
    with pytest.raises(DataError, match="junk.avi"):
        list(dec.frames(junk))
    good = write_clip(tmp_path / "good.mp4", moving_frames(n=12))
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(DataError, match="truncated.mp4"):
        list(dec.frames(truncated))


dali = pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI not installed")


@dali
def test_dali_cpu_matches_pyav_on_vp9_and_mjpeg(synth_root) -> None:
    clips = synth_root / "clips"
    dali_dec, pyav = DaliCpuDecoder(), PyAVDecoder()
    sampling = FrameSampling(every_k=3, max_frames=4)
    for name in ("clip_001.webm", "clip_002.avi"):
        a = list(dali_dec.frames(clips / name, sampling))
        b = list(pyav.frames(clips / name, sampling))
        assert [f.index for f in a] == [f.index for f in b] == [0, 3, 6, 9]
        for x, y in zip(a, b, strict=True):
            assert x.image.shape == y.image.shape
            assert np.abs(x.image.astype(int) - y.image).mean() < 1.0


@dali
def test_dali_cpu_refuses_h264_with_a_clear_error(synth_root) -> None:
    with pytest.raises(BackendUnavailableError, match="h264"):
        list(DaliCpuDecoder().frames(synth_root / "clips" / "clip_000.mp4"))
