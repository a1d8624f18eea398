"""Decode workers of the embed engine: one source file -> chunks of preprocessed frames.

A worker thread takes ``(fid, Source)`` items from a queue and, per file, reads/decodes the frames
(image reader, or the decoder from ``data.video.get_decoder``), finds the scan region once per file,
runs the change detector, preprocesses (``data.preprocess``) and puts :class:`Chunk` messages (at
most ``batch_size`` frames to embed each) on the consumer's queue, then :class:`End` (or
:class:`Fail` with a one-line reason). The queue is bounded in *frames* by a semaphore of credits
that the consumer releases as batches finish, so memory stays flat however files are shaped.

On a CUDA backend the CPU workers hand over uint8 frames in pinned memory (``Chunk.raw``) and
preprocessing runs on the device in the consumer; with a decoder that decodes on the device
(``dali-gpu``) frames never leave the GPU.

An optional *pixel transform* ``(pixels (n, 3, S, S) normalised, scan masks (n, S, S) bool, fid) ->
pixels`` runs on the preprocessed pixels of every chunk (the probe's test-time corruptions).

With ``tokens="scan"`` a worker also turns the file's scan region into the patches to keep
(``Chunk.keep``: raster-order flat indices on the model grid, :func:`usjepa_fast.data.scan_region.
scan_patch_index` with ``patch_coverage``), once per file like the region itself; the consumer
gives the backend only those patches of every frame.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from usjepa_fast.embed.options import EmbedOptions
from usjepa_fast.embed.redundancy import ChangeDetector, block_thumbnails_torch
from usjepa_fast.embed.sources import Source, read_image, source_mask
from usjepa_fast.errors import DataError, UsfastError

# (fid, source) -> gray image (H, W) and its scan region (H, W) bool or None (whole frame)
ImageReader = Callable[[int, Source], tuple[np.ndarray, "np.ndarray | None"]]
PixelTransform = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass
class Chunk:
    fid: int
    # per sampled frame in order: (frame_index, timestamp, duplicate_of); entries with
    # duplicate_of == -1 correspond, in order, to the rows of ``pixels`` (or ``raw``)
    entries: list[tuple[int, float, int]]
    pixels: torch.Tensor | None  # (n, 3, S, S) float32 preprocessed, or None (all duplicates / raw)
    raw: tuple[torch.Tensor, torch.Tensor | None] | None = None  # GPU path: uint8 (n,H,W), masks (n,H,W)
    keep: torch.Tensor | None = None  # tokens="scan": (k,) int64 patch indices kept for every frame here

    @property
    def rows(self) -> int:
        if self.pixels is not None:
            return int(self.pixels.shape[0])
        return int(self.raw[0].shape[0]) if self.raw is not None else 0


@dataclass
class End:
    fid: int


@dataclass
class Fail:
    fid: int
    reason: str


@dataclass
class Abort:
    """Not a bad file but a failure of the run itself (e.g. the pixel transform): re-raised."""

    error: BaseException


class PixelTransformError(Exception):
    """Carries an exception raised by the pixel transform out of a worker (it must stop the run,
    not count a file as unreadable)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


STOP = object()


def preprocess_on_device(
    raw: tuple[torch.Tensor, torch.Tensor | None], info: Any, device: torch.device
) -> torch.Tensor:
    """Pinned uint8 frames (+ masks) -> ``(n, 3, S, S)`` on ``device`` (asynchronous copy first)."""
    from usjepa_fast.data.preprocess import preprocess_batch

    frames, masks = raw
    frames = frames.to(device, non_blocking=True)
    masks = masks.to(device, non_blocking=True) if masks is not None else None
    return preprocess_batch(frames, masks, info.input_size, tuple(info.mean), tuple(info.std))


def apply_pixel_transform(
    transform: PixelTransform | None, pixels: torch.Tensor, masks: torch.Tensor | None, fid: int
) -> torch.Tensor:
    """``transform`` on preprocessed pixels with the scan masks ``(n, H, W)`` (None: whole frame)
    brought onto the model grid exactly as the evaluation ``Preprocessor`` does."""
    if transform is None:
        return pixels
    from usjepa_fast.data.preprocess import resize_mask

    n, size = pixels.shape[0], pixels.shape[-1]
    if masks is None:
        small = torch.ones(n, size, size, dtype=torch.bool, device=pixels.device)
    else:
        small = resize_mask(masks.to(pixels.device), size)
    try:
        return transform(pixels, small, fid)
    except Exception as exc:  # noqa: BLE001 - re-raised by the consumer, see PixelTransformError
        raise PixelTransformError(exc) from exc


class FilePreparer:
    """Frames of one file -> chunks (runs in a worker thread; shared by all workers of a run)."""

    def __init__(
        self,
        info: Any,
        opts: EmbedOptions,
        device: torch.device,
        decoder: Any,
        reader: ImageReader | None = None,
        pixel_transform: PixelTransform | None = None,
    ) -> None:
        self.info = info
        self.opts = opts
        self.device = device
        self.decoder = decoder
        self.sampling = opts.sampling()
        self.reader: ImageReader = reader or (lambda fid, src: read_image(src, opts.scan_region))
        self.transform = pixel_transform
        self.chunk = max(1, opts.batch_size)
        self.gpu_pre = device.type == "cuda"
        self.cancel = threading.Event()  # set by the consumer when the run aborts
        # One credit per decoded frame waiting for inference: the queue is bounded in frames, not
        # messages, so an image folder (one frame per message) prefetches as deep as a video does.
        self.credits = threading.Semaphore(opts.prefetch * self.chunk)

    def _send(self, out: queue.Queue, chunk: Chunk) -> bool:
        """Put ``chunk`` once its frames have credits; False if the run was cancelled meanwhile."""
        for _ in range(chunk.rows):
            while not self.credits.acquire(timeout=0.1):
                if self.cancel.is_set():
                    return False
        out.put(chunk)
        return True

    def _keep(self, mask: np.ndarray | None) -> torch.Tensor | None:
        """``tokens="scan"``: the file's kept patches ``(k,)`` (no region: every patch); else None."""
        if self.opts.tokens != "scan":
            return None
        from usjepa_fast.data.scan_region import scan_patch_index

        info = self.info
        return scan_patch_index(mask, int(info.input_size), int(info.patch_size), self.opts.patch_coverage)

    def _pixels(self, images: list[np.ndarray], mask: np.ndarray | None, fid: int) -> tuple[torch.Tensor | None, Any]:
        """Same-shape gray frames -> ((n, 3, S, S) float32, None), or (None, raw) for the GPU consumer."""
        from usjepa_fast.data.preprocess import Preprocessor, eval_config, preprocess_batch

        masks = None
        if mask is not None:
            masks = torch.from_numpy(np.ascontiguousarray(mask)).unsqueeze(0).expand(len(images), -1, -1)
        if images[0].dtype != np.uint8:
            # 16-bit images: the per-item path keeps the full range for the percentile window
            pre = Preprocessor(eval_config(self.info))
            pixels = torch.stack([pre(im, mask)["image"] for im in images])
            return apply_pixel_transform(self.transform, pixels, masks, fid), None
        frames = torch.from_numpy(np.stack(images))  # (n, H, W) uint8
        if self.gpu_pre:
            # pinned host memory: the consumer's copy to the GPU is asynchronous and DMA-driven
            frames = frames.pin_memory()
            masks = masks.contiguous().pin_memory() if masks is not None else None
            return None, (frames, masks)
        info = self.info
        pixels = preprocess_batch(frames, masks, info.input_size, tuple(info.mean), tuple(info.std))
        return apply_pixel_transform(self.transform, pixels, masks, fid), None

    def run(self, fid: int, src: Source, out: queue.Queue) -> None:
        detector = (
            ChangeDetector(self.opts.redundancy_threshold, self.opts.redundancy_size)
            if self.opts.redundancy_threshold is not None
            else None
        )
        if src.kind == "image":
            image, mask = self.reader(fid, src)
            pixels, raw = self._pixels([image], mask, fid)
            if self._send(out, Chunk(fid, [(0, 0.0, -1)], pixels, raw, self._keep(mask))):
                out.put(End(fid))
            return
        if getattr(self.decoder, "on_device", False):
            self._run_device_clip(fid, src, out, detector)
            return
        mask: np.ndarray | None = None
        keep: torch.Tensor | None = None
        entries: list[tuple[int, float, int]] = []
        images: list[np.ndarray] = []
        shape: tuple[int, ...] | None = None

        def emit() -> bool:
            nonlocal entries, images
            pixels, raw = self._pixels(images, mask, fid) if images else (None, None)
            sent = self._send(out, Chunk(fid, entries, pixels, raw, keep))
            entries, images = [], []
            return sent

        for frame in self.decoder.frames(src.path, self.sampling):
            if self.cancel.is_set():
                return
            img = frame.image
            if shape is None:
                shape = img.shape
                # One scan-region detection per clip, on its first sampled frame; the same mask sets
                # the percentile window of every frame and the change detector's comparison area.
                mask = source_mask(src, img) if self.opts.scan_region else None
                keep = self._keep(mask)
                if detector is not None:
                    detector.reset(mask)
            elif img.shape != shape:
                raise DataError(
                    f"video {src.path} changes frame size mid-stream ({shape} -> {img.shape}); re-encode it"
                )
            dup = detector.check(frame.index, img) if detector is not None else -1
            entries.append((frame.index, float(frame.timestamp), dup))
            if dup < 0:
                images.append(img)
            # bound the chunk by frames to embed, and by entries so a long still segment still streams
            if (len(images) >= self.chunk or len(entries) >= 8 * self.chunk) and not emit():
                return
        if entries and not emit():
            return
        out.put(End(fid))

    def _run_device_clip(self, fid: int, src: Source, out: queue.Queue, detector: ChangeDetector | None) -> None:
        """A clip decoded on the GPU (``decoder.decode_clip``): change detection and preprocessing on
        the device; only the change detector's thumbnails reach the host (the scan region is the
        file's one region, ``data.clips.scan_mask``, cached)."""
        from usjepa_fast.data.preprocess import preprocess_batch

        if self.device.type != "cuda":
            raise UsfastError(f"--decoder {self.decoder.name} needs the inference backend on a CUDA device")
        clip = self.decoder.decode_clip(src.path, self.sampling)
        gray = clip.gray.to(self.device)  # (K, H, W) uint8
        mask_np = source_mask(src, gray[0].cpu().numpy()) if self.opts.scan_region else None
        mask = torch.from_numpy(mask_np).to(self.device) if mask_np is not None else None
        patches = self._keep(mask_np)
        keep, times = clip.indices, clip.timestamps
        dups = [-1] * len(keep)
        if detector is not None:
            detector.reset(mask_np)
            thumbs = block_thumbnails_torch(gray, detector.size)
            dups = [detector.check_thumb(idx, thumbs[j], tuple(gray.shape[1:])) for j, idx in enumerate(keep)]
        info = self.info
        for start in range(0, len(keep), self.chunk):
            if self.cancel.is_set():
                return
            span = range(start, min(len(keep), start + self.chunk))
            sel = [j for j in span if dups[j] < 0]
            entries = [(keep[j], float(times[j]), dups[j]) for j in span]
            pixels = None
            if sel:
                frames = gray[torch.as_tensor(sel, device=self.device)]
                masks = mask.unsqueeze(0).expand(len(sel), -1, -1) if mask is not None else None
                pixels = preprocess_batch(frames, masks, info.input_size, tuple(info.mean), tuple(info.std))
                pixels = apply_pixel_transform(self.transform, pixels, masks, fid)
            if not self._send(out, Chunk(fid, entries, pixels, None, patches)):
                return
        out.put(End(fid))


def decode_worker(prep: FilePreparer, todo: queue.Queue, out: queue.Queue) -> None:
    """Thread body: prepare files from ``todo`` until :data:`STOP`; a bad file becomes a :class:`Fail`."""
    while True:
        item = todo.get()
        if item is STOP or prep.cancel.is_set():
            out.put(STOP)
            return
        fid, src = item
        try:
            prep.run(fid, src, out)
        except PixelTransformError as exc:
            prep.cancel.set()
            out.put(Abort(exc.error))
        except (DataError, UsfastError) as exc:
            out.put(Fail(fid, str(exc)))
        except Exception as exc:  # noqa: BLE001 - a bad file must never stop the run; log and count it
            out.put(Fail(fid, f"{src.path}: unexpected {exc.__class__.__name__}: {exc}"))
