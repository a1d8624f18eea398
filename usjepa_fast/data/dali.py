"""NVIDIA DALI video decoding: the one DALI pipeline, DALI's CPU decoder, and its PyAV fallback.

``get_decoder("dali")`` returns :class:`DaliCpuWithFallback` (DALI's CPU decoder for VP8/VP9/MJPEG,
PyAV for every other codec, chosen per file); the NVDEC decoder (``data/dali_gpu.py``) shares
:class:`DaliClipPipeline`. DALI's in-memory video decoder is ``fn.decoders.video`` in DALI 2.x and
``fn.experimental.decoders.video`` in the 1.x releases (:func:`dali_video_op` takes whichever
exists). Which frames to keep is decided before decoding, on the clip's true frame list
(``data.clips.clip_index``) with the same :class:`~usjepa_fast.data.video.FrameSampling` rule PyAV
applies, and only those frames are decoded where DALI takes a frame list (>= 1.48); the reported
timestamps are that list's, i.e. PyAV's, never ``index / fps``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from usjepa_fast.data.media import to_gray
from usjepa_fast.data.video import Frame, FrameSampling, PyAVDecoder, VideoInfo, _Sampler
from usjepa_fast.errors import BackendUnavailableError, DataError


def dali_available() -> bool:
    """True when ``nvidia.dali`` imports (its CPU pipelines run without a GPU)."""
    try:
        import nvidia.dali  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means unavailable
        return False
    return True


def _version(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def dali_video_op():  # -> the DALI operator function
    """DALI's decoder of in-memory video: ``fn.decoders.video`` where it exists (DALI 2.x), else the
    ``fn.experimental.decoders.video`` of the 1.x releases (the only name up to 1.45)."""
    from nvidia.dali import fn

    op = getattr(getattr(fn, "decoders", None), "video", None)
    return op if op is not None else fn.experimental.decoders.video


def dali_frame_selection() -> bool:
    """Whether the video decoder takes a ``frames=[...]`` list (added in DALI 1.48): then only the
    sampled frames are decoded into memory; older releases decode the whole clip and we index it."""
    import nvidia.dali

    return _version(getattr(nvidia.dali, "__version__", "0")) >= (1, 48)


class DaliClipPipeline:
    """One DALI pipeline, built once and fed clip by clip through ``external_source``.

    ``device="cpu"`` (``device_id=None``: no GPU needed) or ``"mixed"`` (NVDEC, output on GPU
    ``device_id``). :meth:`decode` returns DALI's output batch for one clip: ``(K, H, W, 3)`` uint8
    with the ``frames`` asked for (when :func:`dali_frame_selection`), else every frame of the clip.
    A pipeline is not thread-safe: keep one per thread (the decoders below do).
    """

    def __init__(self, device: str = "cpu", device_id: int | None = None, num_threads: int = 1) -> None:
        from nvidia.dali import fn, pipeline_def, types

        op = dali_video_op()
        self.selects = dali_frame_selection()
        selects = self.selects

        @pipeline_def(batch_size=1, num_threads=num_threads, device_id=device_id, prefetch_queue_depth=1)
        def pipe():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            if selects:
                wanted = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
                # pad_mode="none": an index past the end is an error (a truncated clip), not black frames
                return op(encoded, device=device, frames=wanted, pad_mode="none")
            return op(encoded, device=device)

        self.pipe = pipe()
        self.pipe.build()
        self.broken = False  # set after a failed clip: the owner builds a fresh pipeline

    def decode(self, path: Path, indices: list[int]):  # -> DALI TensorList of one sample
        data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        if data.size == 0:
            raise DataError(f"video {path} is empty (0 bytes); re-export or remove it")
        try:
            self.pipe.feed_input("encoded", [data])
            if self.selects:
                self.pipe.feed_input("frames", [np.asarray(indices, dtype=np.int32)])
            (out,) = self.pipe.run()
        except Exception as exc:  # noqa: BLE001 - DALI raises RuntimeError for corrupt streams
            self.broken = True
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            first = next((ln for ln in lines if "Critical error" not in ln), lines[0] if lines else "")
            raise DataError(
                f"video {path} cannot be decoded by DALI ({first[:200] or exc.__class__.__name__}); "
                "re-encode it or use --decoder pyav"
            ) from None
        return out


def select_frames(path: Path, sampling: FrameSampling | None) -> tuple[list[int], list[float]]:
    """``(kept frame indices, every frame's timestamp)``: the :class:`FrameSampling` rule applied to the
    clip's true frame list (:func:`usjepa_fast.data.clips.clip_index`: decoded once and cached, the
    timestamps PyAV's ``frames()`` yields), before DALI decodes any pixel."""
    from usjepa_fast.data.clips import clip_index

    times = list(clip_index(path).timestamps)
    return _Sampler(sampling or FrameSampling()).select_indices(times), times


class DaliCpuDecoder:
    """NVIDIA DALI's CPU video decoder (``device="cpu"``), strict about codecs.

    DALI decodes only VP8/VP9/MJPEG on the CPU (H.264/HEVC/AV1 need the mixed/NVDEC backend); other
    codecs raise :class:`BackendUnavailableError` (``get_decoder("dali")`` wraps this with a per-file
    PyAV fallback). Frames to keep are chosen from the clip's frame list first and only those are
    decoded (DALI >= 1.48); timestamps are the real ones, as PyAV reports them.
    """

    name = "dali"
    CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})

    def __init__(self, num_threads: int = 1) -> None:
        if not dali_available():
            raise BackendUnavailableError(
                "NVIDIA DALI is not installed; pip install 'usjepa-fast[dali]' or use --decoder pyav"
            )
        self.num_threads = max(1, num_threads)
        self._probe = PyAVDecoder(threads=1)
        self._local = threading.local()  # one pipeline per decode thread

    def probe(self, path: str | Path) -> VideoInfo:
        return self._probe.probe(path)

    def supports(self, path: str | Path) -> bool:
        return self.probe(path).codec in self.CPU_CODECS

    def _pipeline(self) -> DaliClipPipeline:
        pipe = getattr(self._local, "pipe", None)
        if pipe is None or pipe.broken:
            pipe = self._local.pipe = DaliClipPipeline("cpu", None, self.num_threads)
        return pipe

    def frames(self, path: str | Path, sampling: FrameSampling | None = None) -> Iterator[Frame]:
        path = Path(path)
        info = self.probe(path)
        if info.codec not in self.CPU_CODECS:
            raise BackendUnavailableError(
                f"DALI CPU cannot decode {info.codec} ({path}); it handles {sorted(self.CPU_CODECS)} only; "
                "use --decoder pyav"
            )
        keep, times = select_frames(path, sampling)
        pipe = self._pipeline()
        video = np.asarray(pipe.decode(path, keep).at(0))  # (K, H, W, 3) or (F, H, W, 3)
        if not pipe.selects:
            if keep and keep[-1] >= video.shape[0]:
                raise DataError(f"video {path} ended after {video.shape[0]} frames (truncated?); re-encode it")
            video = video[keep]
        for j, i in enumerate(keep):
            yield Frame(index=i, timestamp=times[i], image=to_gray(video[j]))


class DaliCpuWithFallback:
    """``--decoder dali``: DALI's CPU decoder for the codecs it handles (VP8/VP9/MJPEG), PyAV for the
    rest, chosen per file, so a mixed folder decodes whole."""

    name = "dali"

    def __init__(self, threads: int = 1) -> None:
        self.dali = DaliCpuDecoder()
        self.pyav = PyAVDecoder(threads=threads)

    def probe(self, path: str | Path) -> VideoInfo:
        return self.pyav.probe(path)

    def frames(self, path: str | Path, sampling: FrameSampling | None = None) -> Iterator[Frame]:
        try:
            supported = self.dali.supports(path)
        except DataError:
            supported = False  # let PyAV produce the precise error for this file
        if not supported:
            yield from self.pyav.frames(path, sampling)
            return
        try:
            yield from self.dali.frames(path, sampling)
        except BackendUnavailableError:
            yield from self.pyav.frames(path, sampling)
