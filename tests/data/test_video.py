"""Video decoding: every container, frame sampling rules, DALI CPU parity, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.media import CONTAINERS, moving_frames, write_clip

from usjepa_fast.data.dali import DaliCpuDecoder, dali_available
from usjepa_fast.data.video import (
    FrameSampling,
    PyAVDecoder,
    VideoDecoder,
    _Sampler,
    get_decoder,
    resolve_decoder,
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
    assert get_decoder("auto", device="cpu").name == "pyav"  # auto = PyAV unless the device is CUDA
    assert get_decoder("pyav", threads=1).threads == 1
    with pytest.raises(DataError, match="unknown video decoder"):
        get_decoder("ffmpeg-gpu")
    assert resolve_decoder("auto", "cpu") == "pyav" and resolve_decoder("dali", "cpu") == "dali"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_dali_gpu_without_a_gpu_is_a_one_line_refusal() -> None:
    from usjepa_fast.data.dali_gpu import dali_gpu_available

    assert not dali_gpu_available()
    assert resolve_decoder("auto", "cuda") == "pyav"  # auto falls back when NVDEC is not usable
    with pytest.raises(BackendUnavailableError, match="dali-gpu|DALI GPU"):
        get_decoder("dali-gpu", device="cuda")


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
def test_dali_uses_real_timestamps_and_decodes_only_kept_frames(tmp_path) -> None:
    """Variable frame rate clip: DALI's timestamps and fps-sampled frames are PyAV's (packet pts,
    not index / fps), and with frame selection only the kept frames come out of the pipeline."""
    import av

    from usjepa_fast.data.dali import DaliClipPipeline, dali_frame_selection, dali_video_op

    frames = moving_frames(n=10)
    path = tmp_path / "vfr.webm"
    pts = [0, 1, 2, 3, 8, 9, 10, 11, 12, 13]  # a gap: 10 fps time base, frames 4.. are 0.4 s late
    with av.open(str(path), mode="w") as c:
        st = c.add_stream("libvpx-vp9", rate=10)
        st.width, st.height, st.pix_fmt = 64, 48, "yuv420p"
        st.options = {"deadline": "realtime", "cpu-used": "8"}
        for f, t in zip(frames, pts, strict=True):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="gray").reformat(format="yuv420p")
            vf.pts = t
            for p in st.encode(vf):
                c.mux(p)
        for p in st.encode():
            c.mux(p)
    sampling = FrameSampling(fps=5)
    a = list(DaliCpuDecoder().frames(path, sampling))
    b = list(PyAVDecoder().frames(path, sampling))
    assert [f.index for f in a] == [f.index for f in b]
    assert [f.timestamp for f in a] == pytest.approx([f.timestamp for f in b], abs=1e-6)
    assert max(f.timestamp for f in a) > 1.0  # the real 1.3 s span, not 9 frames / 10 fps
    for x, y in zip(a, b, strict=True):
        assert np.abs(x.image.astype(int) - y.image).mean() < 1.0
    assert callable(dali_video_op())
    if dali_frame_selection():
        out = DaliClipPipeline("cpu").decode(path, [1, 7])
        assert np.asarray(out.at(0)).shape[0] == 2  # only the asked-for frames were decoded


@dali
def test_dali_bad_clip_is_a_data_error_and_the_decoder_keeps_working(synth_root, tmp_path) -> None:
    good = synth_root / "clips" / "clip_001.webm"
    bad = tmp_path / "bad.webm"
    data = good.read_bytes()
    bad.write_bytes(data[:200] + bytes(len(data) - 200))  # header kept, frames zeroed
    dec = DaliCpuDecoder()
    with pytest.raises(DataError, match="bad.webm"):
        list(dec.frames(bad))
    assert len(list(dec.frames(good, FrameSampling(max_frames=2)))) == 2


@dali
def test_dali_registry_entry_falls_back_to_pyav_per_file(synth_root) -> None:
    clips = synth_root / "clips"
    dec = get_decoder("dali")
    assert dec.name == "dali" and isinstance(dec, VideoDecoder)
    h264 = list(dec.frames(clips / "clip_000.mp4", FrameSampling(max_frames=3)))  # DALI CPU refuses H.264
    vp9 = list(dec.frames(clips / "clip_001.webm", FrameSampling(max_frames=3)))
    assert [f.index for f in h264] == [f.index for f in vp9] == [0, 1, 2]


@dali
def test_dali_cpu_refuses_h264_with_a_clear_error(synth_root) -> None:
    with pytest.raises(BackendUnavailableError, match="h264"):
        list(DaliCpuDecoder().frames(synth_root / "clips" / "clip_000.mp4"))


@pytest.mark.gpu
def test_dali_gpu_decodes_the_kept_frames_on_the_device(synth_root) -> None:
    pytest.importorskip("nvidia.dali")
    from usjepa_fast.data.dali_gpu import DaliGpuDecoder, dali_gpu_available

    if not dali_gpu_available():
        pytest.skip("DALI's GPU build is not installed")
    sampling = FrameSampling(every_k=3, max_frames=4)
    dec = DaliGpuDecoder("cuda")
    for name in ("clip_000.mp4", "clip_001.webm", "clip_002.avi"):
        path = synth_root / "clips" / name
        clip = dec.decode_clip(path, sampling)
        ref = list(PyAVDecoder().frames(path, sampling))
        assert clip.gray.is_cuda and clip.gray.shape[0] == len(ref) == 4
        assert clip.indices == [f.index for f in ref]
        assert clip.timestamps == pytest.approx([f.timestamp for f in ref], abs=1e-6)
        diff = np.abs(clip.gray.cpu().numpy().astype(int) - np.stack([f.image for f in ref])).mean()
        assert diff < 2.0
