"""Video decoding behind a small interface and one registry: PyAV, DALI CPU (VP9/MJPEG), DALI GPU (NVDEC).

Callers ask :func:`get_decoder` (``"auto"`` | ``"pyav"`` | ``"dali"`` | ``"dali-gpu"`` | ``"dicom"``)
for a :class:`VideoDecoder` and call ``frames(path, sampling)`` to get grayscale :class:`Frame`
objects; they never touch PyAV or DALI. The DALI decoders (``data/dali.py`` on the CPU,
``data/dali_gpu.py`` with NVDEC) implement the same protocol; the GPU one adds ``decode_clip``
(sampled frames as one CUDA tensor) for consumers that stay on the GPU. Every video decoder comes
wrapped in :class:`MediaDecoder`, which hands DICOM cine loops to
:class:`usjepa_fast.data.dicom.DicomDecoder` (FFmpeg and DALI cannot read DICOM), so a folder of
videos and DICOM goes through one decoder object.

Frame sampling (:class:`FrameSampling`) is applied in the decoder so that skipped frames are never
converted to numpy: ``fps`` keeps the first frame at or after each ``1/fps`` tick of the *timestamps*
(robust to variable frame rate), ``every_k`` keeps every k-th of those, ``max_frames`` stops early.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from usjepa_fast.errors import DataError


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


# ----------------------------------------------------------------------------------------------
# the registry

DECODERS = ("auto", "pyav", "dali", "dali-gpu", "dicom")


class MediaDecoder:
    """A video decoder that hands DICOM objects to :class:`~usjepa_fast.data.dicom.DicomDecoder`.

    ``base`` decodes everything else. ``name``, ``on_device`` and any other attribute (``threads``,
    ``device``, ...) are the base's, so callers see the decoder they asked for; ``decode_clip`` of a
    DICOM cine decodes on the CPU and copies the kept frames to the base's device.
    """

    def __init__(self, base: VideoDecoder) -> None:
        self.base = base
        self._dicom: VideoDecoder | None = None

    @property
    def name(self) -> str:
        return self.base.name

    @property
    def on_device(self) -> bool:
        return bool(getattr(self.base, "on_device", False))

    def __getattr__(self, attr: str) -> Any:  # only called for attributes this class does not have
        if attr == "base":  # not yet set (unpickling): no recursion
            raise AttributeError(attr)
        return getattr(self.base, attr)

    def for_path(self, path: str | Path) -> VideoDecoder:
        """The decoder that reads ``path``: DicomDecoder for a DICOM object, else the base."""
        from usjepa_fast.data.media import is_dicom_file

        if is_dicom_file(path):
            if self._dicom is None:
                from usjepa_fast.data.dicom import DicomDecoder

                self._dicom = DicomDecoder()
            return self._dicom
        return self.base

    def frames(self, path: str | Path, sampling: FrameSampling | None = None) -> Iterator[Frame]:
        return self.for_path(path).frames(path, sampling)

    def probe(self, path: str | Path) -> VideoInfo:
        return self.for_path(path).probe(path)

    def decode_clip(self, path: str | Path, sampling: FrameSampling | None = None) -> Any:
        """The base's ``decode_clip`` (frames on its device); a DICOM cine is decoded on the CPU and
        its kept frames copied there as one ``(K, H, W)`` uint8 tensor."""
        dec = self.for_path(path)
        if dec is self.base:
            return self.base.decode_clip(path, sampling)
        import torch

        from usjepa_fast.data.dali_gpu import DeviceClip

        kept = list(dec.frames(path, sampling))
        if not kept:
            raise DataError(f"DICOM {path} has no frame to keep with {sampling}; check the sampling options")
        device = getattr(self.base, "device", None) or "cpu"
        gray = torch.from_numpy(np.stack([f.image for f in kept])).to(device)
        return DeviceClip(indices=[f.index for f in kept], timestamps=[f.timestamp for f in kept], gray=gray)


def base_decoder(decoder: VideoDecoder) -> VideoDecoder:
    """The video decoder inside a :class:`MediaDecoder` (others as they are)."""
    return decoder.base if isinstance(decoder, MediaDecoder) else decoder


def with_dicom(decoder: VideoDecoder) -> VideoDecoder:
    """``decoder`` able to read DICOM too: wrapped in :class:`MediaDecoder` unless it already is one
    (or is the DICOM decoder itself)."""
    if isinstance(decoder, MediaDecoder) or getattr(decoder, "name", None) == "dicom":
        return decoder
    return MediaDecoder(decoder)


def _is_cuda(device: Any) -> bool:
    return device is not None and str(getattr(device, "type", device)).startswith("cuda")


def resolve_decoder(name: str = "auto", device: Any = None) -> str:
    """The concrete decoder ``name`` stands for: ``"auto"`` = ``"dali-gpu"`` (NVDEC: decoded frames
    never leave the GPU) when ``device`` is CUDA and DALI can use it, else ``"pyav"`` (DALI's CPU
    decoder refuses H.264/MPEG-4, PyAV reads everything)."""
    if name not in DECODERS:
        raise DataError(f"unknown video decoder '{name}'; use {', '.join(DECODERS)}")
    if name != "auto":
        return name
    if _is_cuda(device):
        from usjepa_fast.data.dali_gpu import dali_gpu_available

        if dali_gpu_available():
            return "dali-gpu"
    return "pyav"


def get_decoder(name: str = "auto", device: Any = None, *, threads: int = 0) -> VideoDecoder:
    """The one decoder registry: ``"auto"`` | ``"pyav"`` | ``"dali"`` (DALI CPU for VP8/VP9/MJPEG, PyAV
    fallback per file) | ``"dali-gpu"`` (NVDEC on ``device``; frames stay on the GPU through its
    ``decode_clip``) | ``"dicom"`` (DICOM objects only). Video decoders come wrapped in
    :class:`MediaDecoder` (DICOM paths go to the DICOM decoder). ``threads``: FFmpeg threads per clip
    for PyAV (0 = FFmpeg's choice; callers that already decode several clips in parallel pass 1)."""
    name = resolve_decoder(name, device)
    if name == "dicom":
        from usjepa_fast.data.dicom import DicomDecoder

        return DicomDecoder()
    if name == "pyav":
        return MediaDecoder(PyAVDecoder(threads=threads))
    if name == "dali":
        from usjepa_fast.data.dali import DaliCpuWithFallback

        return MediaDecoder(DaliCpuWithFallback(threads=max(1, threads)))
    from usjepa_fast.data.dali_gpu import DaliGpuDecoder

    return MediaDecoder(DaliGpuDecoder(device))
