"""Video decoding behind a small interface: PyAV on the CPU, DALI's CPU pipeline for VP9/MJPEG.

Callers ask a :class:`VideoDecoder` for ``frames(path, sampling)`` and get grayscale :class:`Frame`
objects; they never touch PyAV or DALI. A GPU backend (DALI mixed/NVDEC, a later issue) implements the
same protocol and registers in :func:`get_decoder`, so dataset and embedding code do not change.

Frame sampling (:class:`FrameSampling`) is applied in the decoder so that skipped frames are never
converted to numpy: ``fps`` keeps the first frame at or after each ``1/fps`` tick of the *timestamps*
(robust to variable frame rate), ``every_k`` keeps every k-th of those, ``max_frames`` stops early.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from usjepa_fast.data.media import to_gray
from usjepa_fast.errors import BackendUnavailableError, DataError


@dataclass(frozen=True)
class FrameSampling:
    """Which frames of a clip to keep."""

    every_k: int = 1  # keep every k-th frame (after the fps filter); 1 keeps all
    fps: float | None = None  # target frame rate by timestamps; None keeps the native rate
    max_frames: int | None = None  # stop after this many kept frames per clip; None = no limit

    def __post_init__(self) -> None:
        if self.every_k < 1:
            raise DataError(f"frame sampling every_k={self.every_k} must be >= 1")
        if self.fps is not None and not self.fps > 0:
            raise DataError(f"frame sampling fps={self.fps} must be > 0 (or None for the native rate)")
        if self.max_frames is not None and self.max_frames < 1:
            raise DataError(f"frame sampling max_frames={self.max_frames} must be >= 1 (or None)")


class _Sampler:
    """Stateful keep/drop decision over a stream of (index, timestamp) in decode order."""

    def __init__(self, sampling: FrameSampling) -> None:
        self.s = sampling
        self.next_tick: float | None = None
        self.passed_fps = 0
        self.kept = 0

    @property
    def done(self) -> bool:
        return self.s.max_frames is not None and self.kept >= self.s.max_frames

    def keep(self, timestamp: float) -> bool:
        if self.done:
            return False
        if self.s.fps is not None:
            period = 1.0 / self.s.fps
            if self.next_tick is None:
                self.next_tick = timestamp
            # Small tolerance: container timestamps are rounded to the time base.
            if timestamp + 1e-6 < self.next_tick:
                return False
            # Advance past this timestamp so a gap in the stream does not emit a burst of frames.
            steps = math.floor((timestamp + 1e-6 - self.next_tick) / period) + 1
            self.next_tick += steps * period
        passed = self.passed_fps
        self.passed_fps += 1
        if passed % self.s.every_k:
            return False
        self.kept += 1
        return True

    def select_indices(self, timestamps: list[float]) -> list[int]:
        return [i for i, t in enumerate(timestamps) if self.keep(t)]


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its index in the clip (display order), its timestamp (seconds since the clip's
    first frame) and the gray image ``(H, W)`` uint8."""

    index: int
    timestamp: float
    image: np.ndarray


@dataclass(frozen=True)
class VideoInfo:
    """What :meth:`VideoDecoder.probe` learns from the container header (no full decode)."""

    num_frames: int  # frames in the stream; estimated from duration*fps when the header has no count
    fps: float
    width: int
    height: int
    codec: str


@runtime_checkable
class VideoDecoder(Protocol):
    """Decode a video file into sampled grayscale frames."""

    name: str

    def frames(self, path: str | Path, sampling: FrameSampling | None = None) -> Iterator[Frame]: ...

    def probe(self, path: str | Path) -> VideoInfo: ...


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"video {path} does not exist; check the path")
    if path.stat().st_size == 0:
        raise DataError(f"video {path} is empty (0 bytes); re-export or remove it")


class PyAVDecoder:
    """FFmpeg (PyAV) CPU decoder; handles every container/codec the FFmpeg build has (mp4, avi, mov,
    mkv, webm, gif, mpeg; h264, hevc, mpeg4, mpeg2, vp8/9, av1, mjpeg, gif).

    ``threads``: FFmpeg decoder threads per clip (``0`` = FFmpeg's choice). Frame-level threading is
    worthwhile for large H.264 frames; embedders that already parallelise over clips should pass 1.
    """

    name = "pyav"

    def __init__(self, threads: int = 0) -> None:
        self.threads = threads

    def _open(self, path: Path):  # -> av.container.InputContainer
        import av

        _check_file(path)
        try:
            container = av.open(str(path), mode="r")
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise DataError(
                f"video {path} cannot be opened ({exc.__class__.__name__}: {exc}); re-encode or remove it"
            ) from None
        if not container.streams.video:
            container.close()
            raise DataError(f"{path} has no video stream; remove it or pass only video files")
        return container

    def probe(self, path: str | Path) -> VideoInfo:
        path = Path(path)
        container = self._open(path)
        try:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.base_rate or stream.guessed_rate
            fps = float(rate) if rate else 0.0
            n = int(stream.frames or 0)
            if n <= 0:
                duration = None
                if stream.duration is not None and stream.time_base is not None:
                    duration = float(stream.duration * stream.time_base)
                elif container.duration is not None:
                    duration = container.duration / 1_000_000.0  # av.time_base is microseconds
                n = int(round(duration * fps)) if duration and fps else 0
            if n <= 0:
                # No header count and no duration (some gif/avi): count packets, cheap vs decoding.
                n = sum(1 for p in container.demux(stream) if p.size)
            ctx = stream.codec_context
            return VideoInfo(num_frames=n, fps=fps, width=int(ctx.width), height=int(ctx.height), codec=ctx.name)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - any FFmpeg failure is a data problem of this file
            raise DataError(
                f"video {path} cannot be probed ({exc.__class__.__name__}: {exc}); re-encode or remove it"
            ) from None
        finally:
            container.close()

    def frames(self, path: str | Path, sampling: FrameSampling | None = None) -> Iterator[Frame]:
        for index, t, frame in self.raw_frames(path, sampling):
            yield Frame(index=index, timestamp=t, image=_frame_to_gray(frame))

    def raw_frames(
        self, path: str | Path, sampling: FrameSampling | None = None
    ) -> Iterator[tuple[int, float, object]]:
        """:meth:`frames` without the numpy conversion: ``(index, timestamp, av.VideoFrame)`` of the kept
        frames (``data.clips`` lists every frame that decodes and converts only the few it keeps)."""
        import av

        path = Path(path)
        sampler = _Sampler(sampling or FrameSampling())
        container = self._open(path)
        decoded = 0
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if self.threads:
                stream.codec_context.thread_count = self.threads
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else 0.0
            t_start: float | None = None
            for index, frame in enumerate(container.decode(stream)):
                decoded += 1
                if frame.time is not None:
                    # Seconds since the first frame: containers may start at a non-zero pts.
                    t_start = float(frame.time) if t_start is None else t_start
                    t = float(frame.time) - t_start
                else:  # missing pts (some avi/gif): fall back to the nominal rate
                    t = index / fps if fps else float(index)
                if not sampler.keep(t):
                    if sampler.done:
                        break
                    continue
                yield index, t, frame
                if sampler.done:
                    break
        except av.FFmpegError as exc:
            raise DataError(
                f"video {path} is corrupt or truncated after {decoded} frames ({exc.__class__.__name__}); "
                "re-encode or remove it"
            ) from None
        finally:
            container.close()
        if decoded == 0:
            raise DataError(f"video {path} has no decodable frames (truncated or unsupported codec); re-encode it")


def _frame_to_gray(frame) -> np.ndarray:  # frame: av.VideoFrame
    # For YUV sources the Y plane *is* the luma: copy it without a colour conversion.
    fmt = frame.format.name
    if fmt in ("yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "gray", "nv12"):
        plane = frame.planes[0]
        buf = np.frombuffer(plane, dtype=np.uint8).reshape(plane.height, plane.line_size)
        out = buf[:, : frame.width].copy()
        # color_range 2 = JPEG/full range even with a non-"j" pixel format; otherwise MPEG/limited.
        if fmt in ("yuv420p", "yuv422p", "yuv444p", "nv12") and getattr(frame, "color_range", 0) != 2:
            out = _limited_to_full_range(out)
        return out
    return frame.to_ndarray(format="gray")


# Limited-range (16..235) luma -> full range so gray levels match what PIL/players show.
_LIMITED_LUT = np.clip(np.rint((np.arange(256, dtype=np.float32) - 16.0) * (255.0 / 219.0)), 0, 255).astype(np.uint8)


def _limited_to_full_range(y: np.ndarray) -> np.ndarray:
    return _LIMITED_LUT[y]


def dali_available() -> bool:
    """True when ``nvidia.dali`` imports (its CPU pipelines run without a GPU)."""
    try:
        import nvidia.dali  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means unavailable
        return False
    return True


class DaliCpuDecoder:
    """NVIDIA DALI's CPU video decoder (``fn.decoders.video``, device="cpu").

    DALI decodes only VP8/VP9/MJPEG on the CPU (H.264/HEVC/AV1 need the mixed/NVDEC backend); other
    codecs raise :class:`BackendUnavailableError` so that :func:`get_decoder` callers can fall back
    to PyAV. Timestamps come from PyAV's header probe (DALI returns only pixels).
    """

    name = "dali"
    CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})

    def __init__(self, num_threads: int = 1) -> None:
        if not dali_available():
            raise BackendUnavailableError(
                "NVIDIA DALI is not installed; pip install 'usjepa-fast[dali]' or use --decoder pyav"
            )
        self.num_threads = num_threads
        self._probe = PyAVDecoder(threads=1)

    def probe(self, path: str | Path) -> VideoInfo:
        return self._probe.probe(path)

    def supports(self, path: str | Path) -> bool:
        return self.probe(path).codec in self.CPU_CODECS

    def _decode_all(self, path: Path) -> np.ndarray:
        """All frames ``(F, H, W, 3)`` uint8 via a one-sample CPU pipeline."""
        from nvidia.dali import fn, pipeline_def, types

        encoded = np.frombuffer(path.read_bytes(), dtype=np.uint8)

        @pipeline_def(batch_size=1, num_threads=self.num_threads, device_id=None, prefetch_queue_depth=1)
        def pipe():
            data = fn.external_source(source=lambda: [encoded], batch=True, dtype=types.UINT8)
            return fn.decoders.video(data, device="cpu")

        p = pipe()
        try:
            p.build()
            (out,) = p.run()
        except Exception as exc:  # noqa: BLE001 - DALI raises RuntimeError for corrupt streams
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise DataError(
                f"video {path} cannot be decoded by DALI ({first}); re-encode it or use --decoder pyav"
            ) from None
        return np.asarray(out.at(0))

    def frames(self, path: str | Path, sampling: FrameSampling | None = None) -> Iterator[Frame]:
        path = Path(path)
        info = self.probe(path)
        if info.codec not in self.CPU_CODECS:
            raise BackendUnavailableError(
                f"DALI CPU cannot decode {info.codec} ({path}); it handles {sorted(self.CPU_CODECS)} only; "
                "use --decoder pyav"
            )
        video = self._decode_all(path)  # (F, H, W, 3)
        fps = info.fps or 1.0
        timestamps = [i / fps for i in range(video.shape[0])]
        for i in _Sampler(sampling or FrameSampling()).select_indices(timestamps):
            yield Frame(index=i, timestamp=timestamps[i], image=to_gray(video[i]))


def get_decoder(name: str = "auto") -> VideoDecoder:
    """``"pyav"`` | ``"dali"`` (CPU pipeline, VP9/MJPEG) | ``"auto"`` (PyAV on the CPU)."""
    if name == "pyav":
        return PyAVDecoder()
    if name == "dali":
        return DaliCpuDecoder()
    if name == "auto":
        return PyAVDecoder()
    raise DataError(f"unknown video decoder '{name}'; use auto, pyav or dali")
