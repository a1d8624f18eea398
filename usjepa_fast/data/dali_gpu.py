"""NVIDIA DALI on the GPU (``--decoder dali-gpu``): NVDEC decode of the sampled frames, gray on the device.

Needs ``nvidia-dali-cuda*`` and a CUDA GPU (the decoder's ``device="mixed"`` backend handles
H.264/HEVC/VP8/VP9/MJPEG/AV1/MPEG-4 through NVDEC). One pipeline per decode thread is built once
(:class:`~usjepa_fast.data.dali.DaliClipPipeline`, shared with the CPU decoder) and fed clip by
clip. Which frames to keep is decided *before* decoding, on the clip's true frame list
(``data.clips.clip_index``) with the same :class:`~usjepa_fast.data.video.FrameSampling` rule PyAV
applies, and only those frames are decoded into GPU memory (DALI >= 1.48; older releases decode the
clip whole and index it). The timestamps are the real ones, not ``index / fps``.

:meth:`DaliGpuDecoder.decode_clip` returns the kept frames as one ``(K, H, W)`` uint8 CUDA tensor
(the embed engine preprocesses them there); :meth:`DaliGpuDecoder.frames` satisfies the
:class:`~usjepa_fast.data.video.VideoDecoder` protocol by copying frames to the host one by one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from usjepa_fast.data.dali import DaliClipPipeline, dali_available, select_frames
from usjepa_fast.data.video import Frame, FrameSampling, PyAVDecoder, VideoInfo
from usjepa_fast.errors import BackendUnavailableError, DataError


def dali_gpu_available() -> bool:
    """DALI with its PyTorch plugin imports and a CUDA device is visible."""
    if not dali_available():
        return False
    try:
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means unavailable
        return False
    return torch.cuda.is_available()


@dataclass
class DeviceClip:
    """The sampled frames of one clip, decoded on the GPU."""

    indices: list[int]  # frame index in the clip of each row of ``gray``
    timestamps: list[float]  # seconds since the clip's first frame, per row
    gray: torch.Tensor  # (K, H, W) uint8 on the decoder's CUDA device


def rgb_to_gray(frames: torch.Tensor) -> torch.Tensor:
    """``(F, H, W, 3)`` uint8 -> ``(F, H, W)`` uint8 ITU-R 601 luma (same weights as ``media.to_gray``)."""
    w = torch.tensor([0.299, 0.587, 0.114], device=frames.device, dtype=torch.float32)
    return (frames.to(torch.float32) @ w).round_().clamp_(0, 255).to(torch.uint8)


class DaliGpuDecoder:
    """NVDEC through DALI's mixed backend; frames stay in GPU memory (see the module doc)."""

    name = "dali-gpu"
    on_device = True  # consumers may call decode_clip and keep the pixels on the GPU

    def __init__(self, device: torch.device | str | None = None, num_threads: int = 2) -> None:
        if not dali_gpu_available():
            raise BackendUnavailableError("DALI GPU decoding needs nvidia-dali and a CUDA GPU; use --decoder pyav")
        dev = torch.device(device) if device is not None else torch.device("cuda")
        if dev.type != "cuda":
            raise BackendUnavailableError(f"--decoder dali-gpu decodes on a CUDA device, not {dev}; use pyav")
        self.device = torch.device("cuda", dev.index if dev.index is not None else torch.cuda.current_device())
        self.num_threads = max(1, num_threads)
        self._probe = PyAVDecoder(threads=1)
        self._local = threading.local()  # one pipeline per decode thread

    def probe(self, path: str | Path) -> VideoInfo:
        return self._probe.probe(path)

    def _pipeline(self) -> DaliClipPipeline:
        pipe = getattr(self._local, "pipe", None)
        if pipe is None or pipe.broken:
            pipe = self._local.pipe = DaliClipPipeline("mixed", self.device.index, self.num_threads)
        return pipe

    def decode_clip(self, path: str | Path, sampling: FrameSampling | None = None) -> DeviceClip:
        """The clip's sampled frames as ``(K, H, W)`` uint8 on ``self.device`` (K >= 1)."""
        from nvidia.dali.plugin.pytorch import feed_ndarray

        path = Path(path)
        keep, times = select_frames(path, sampling)
        pipe = self._pipeline()
        tensor = pipe.decode(path, keep)[0]  # TensorGPU (K | F, H, W, 3)
        rgb = torch.empty(tuple(tensor.shape()), dtype=torch.uint8, device=self.device)
        feed_ndarray(tensor, rgb, cuda_stream=torch.cuda.current_stream(self.device))
        if not pipe.selects:
            if keep[-1] >= rgb.shape[0]:
                raise DataError(f"video {path} ended after {rgb.shape[0]} frames (truncated?); re-encode it")
            rgb = rgb[torch.as_tensor(keep, device=self.device)]
        return DeviceClip(indices=list(keep), timestamps=[times[i] for i in keep], gray=rgb_to_gray(rgb))

    def frames(self, path: str | Path, sampling: FrameSampling | None = None) -> Iterator[Frame]:
        clip = self.decode_clip(path, sampling)
        for j, (i, t) in enumerate(zip(clip.indices, clip.timestamps, strict=True)):
            yield Frame(index=i, timestamp=t, image=clip.gray[j].cpu().numpy())
