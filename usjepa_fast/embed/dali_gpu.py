"""NVIDIA DALI on the GPU: NVDEC decode, gray conversion, change detection and preprocessing on the
device; decoded frames never travel to the host (only one frame per clip, for the scan-region
detection, and 32x32 change-detector thumbnails do).

Needs ``nvidia-dali-cuda*`` and a CUDA GPU (``fn.decoders.video`` with ``device="mixed"`` handles
H.264/HEVC/VP8/VP9/MJPEG/AV1/MPEG-4 through NVDEC). One pipeline per decode thread is built once and
fed clip by clip through ``external_source``; a clip is decoded whole (``(F, H, W, 3)`` on the GPU),
so very long high-resolution clips should be sampled with ``--max-frames`` or decoded with PyAV.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from usjepa_fast.errors import BackendUnavailableError, DataError

_local = threading.local()


def dali_gpu_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means unavailable
        return False
    return torch.cuda.is_available()


class DaliGpuClipDecoder:
    """Decode a whole clip on the GPU: ``decode(path) -> (F, H, W, 3)`` uint8 CUDA tensor."""

    def __init__(self, device: torch.device) -> None:
        if not dali_gpu_available():
            raise BackendUnavailableError("DALI GPU decoding needs nvidia-dali and a CUDA GPU; use --decoder pyav")
        from nvidia.dali import fn, pipeline_def, types

        self.device = device
        device_id = device.index if device.index is not None else torch.cuda.current_device()

        @pipeline_def(batch_size=1, num_threads=2, device_id=device_id, prefetch_queue_depth=1)
        def pipe():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            return fn.decoders.video(encoded, device="mixed")  # (F, H, W, 3) on the GPU

        self.pipe = pipe()
        self.pipe.build()

    def decode(self, path) -> torch.Tensor:
        from nvidia.dali.plugin.pytorch import feed_ndarray

        data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        if data.size == 0:
            raise DataError(f"video {path} is empty (0 bytes); re-export or remove it")
        try:
            self.pipe.feed_input("encoded", [data])
            (out,) = self.pipe.run()
        except Exception as exc:  # noqa: BLE001 - DALI raises RuntimeError for corrupt streams
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise DataError(
                f"video {path} cannot be decoded by DALI/NVDEC ({first}); re-encode it or use --decoder pyav"
            ) from None
        tensor = out[0]
        frames = torch.empty(tuple(tensor.shape()), dtype=torch.uint8, device=self.device)
        feed_ndarray(tensor, frames, cuda_stream=torch.cuda.current_stream(self.device))
        return frames


def _decoder(device: torch.device) -> DaliGpuClipDecoder:
    dec = getattr(_local, "decoder", None)
    if dec is None:
        dec = _local.decoder = DaliGpuClipDecoder(device)
    return dec


def rgb_to_gray(frames: torch.Tensor) -> torch.Tensor:
    """``(F, H, W, 3)`` uint8 -> ``(F, H, W)`` uint8 ITU-R 601 luma (same weights as the CPU path)."""
    w = torch.tensor([0.299, 0.587, 0.114], device=frames.device, dtype=torch.float32)
    return (frames.to(torch.float32) @ w).round_().clamp_(0, 255).to(torch.uint8)


def gpu_thumbnails(gray: torch.Tensor, size: int) -> np.ndarray:
    """``(F, H, W)`` uint8 -> ``(F, h, w)`` float32 block means identical to ``block_thumbnail``."""
    h, w = gray.shape[-2:]
    f = max(1, math.ceil(max(h, w) / size))
    x = gray[:, : (h // f) * f, : (w // f) * f].unsqueeze(1).to(torch.float32)
    return F.avg_pool2d(x, f, f).squeeze(1).cpu().numpy() if f > 1 else x.squeeze(1).cpu().numpy()


def embed_chunks_dali_gpu(
    fid: int, src: Any, info: Any, opts: Any, sampling: Any, device: torch.device, detector: Any
) -> Iterator[Any]:
    """Chunks (see ``pipeline._Chunk``) of one clip, with pixels preprocessed on ``device``."""
    from usjepa_fast.data.preprocess import preprocess_batch
    from usjepa_fast.data.video import PyAVDecoder, _Sampler
    from usjepa_fast.embed.pipeline import _Chunk
    from usjepa_fast.embed.sources import source_mask

    if device.type != "cuda":
        raise BackendUnavailableError("--decoder dali-gpu needs the inference backend on a CUDA device")
    fps = PyAVDecoder(threads=1).probe(src.path).fps or 1.0
    gray = rgb_to_gray(_decoder(device).decode(src.path))  # (F, H, W) on the GPU
    keep = _Sampler(sampling).select_indices([i / fps for i in range(gray.shape[0])])
    if not keep:
        return
    gray = gray[torch.as_tensor(keep, device=device)]  # (K, H, W)
    mask_np = source_mask(src, gray[0].cpu().numpy()) if opts.scan_region else None
    mask = torch.from_numpy(mask_np).to(device) if mask_np is not None else None
    dups = [-1] * len(keep)
    if detector is not None:
        detector.reset(mask_np)
        thumbs = gpu_thumbnails(gray, detector.size)
        dups = [detector.check_thumb(idx, thumbs[j], tuple(gray.shape[1:])) for j, idx in enumerate(keep)]
    step = max(1, opts.batch_size)
    for start in range(0, len(keep), step):
        sel = [j for j in range(start, min(len(keep), start + step)) if dups[j] < 0]
        entries = [(keep[j], keep[j] / fps, dups[j]) for j in range(start, min(len(keep), start + step))]
        pixels = None
        if sel:
            frames = gray[torch.as_tensor(sel, device=device)]
            masks = mask.unsqueeze(0).expand(len(sel), -1, -1) if mask is not None else None
            pixels = preprocess_batch(frames, masks, info.input_size, tuple(info.mean), tuple(info.std))
        yield _Chunk(fid, entries, pixels)
