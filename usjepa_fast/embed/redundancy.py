"""Cheap change detector that skips near-duplicate frames of a still probe.

Ultrasound video is highly redundant: while the probe rests, consecutive frames differ only by
speckle noise and codec artefacts. :class:`ChangeDetector` downsamples each decoded gray frame by
block averaging (which also averages speckle away), and compares it with the *last embedded* frame's
thumbnail inside the scan region: if the mean absolute difference (in 0-255 gray levels) is below
``threshold`` the frame is marked redundant and the index points it at that embedded frame.
Comparing against the last *embedded* frame (not the previous frame) bounds the drift: a slow sweep
accumulates difference until it crosses the threshold and gets embedded.

Cost: one strided block-mean over the frame (about 0.1 ms for 256x256 in numpy), negligible next to
a ViT forward. Off by default (``threshold=None``) because it changes which frames are embedded.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def block_thumbnail(gray: np.ndarray, size: int = 32) -> np.ndarray:
    """``(H, W)`` any int/float dtype -> ``(h, w)`` float32 block means, ``max(h, w) <= size``.

    Frames smaller than ``size`` are returned as they are (as float32)."""
    h, w = gray.shape
    f = max(1, int(np.ceil(max(h, w) / size)))
    hh, ww = h // f, w // f
    if f == 1 or hh == 0 or ww == 0:
        return gray.astype(np.float32)
    block = gray[: hh * f, : ww * f].reshape(hh, f, ww, f)
    return block.mean(axis=(1, 3), dtype=np.float32)


def block_thumbnails_torch(gray: Any, size: int = 32) -> np.ndarray:
    """:func:`block_thumbnail` of ``(F, H, W)`` frames already on a (GPU) device: ``(F, h, w)`` float32
    numpy (only the thumbnails travel to the host)."""
    import torch.nn.functional as F

    h, w = gray.shape[-2:]
    f = max(1, int(np.ceil(max(h, w) / size)))
    hh, ww = h // f, w // f
    x = gray.float()
    if f == 1 or hh == 0 or ww == 0:
        return x.cpu().numpy()
    x = x[:, : hh * f, : ww * f].unsqueeze(1)
    return F.avg_pool2d(x, f, f).squeeze(1).cpu().numpy()


class ChangeDetector:
    """Decide per frame whether it is redundant with the last embedded frame of the same clip.

    ``threshold``: mean absolute gray-level difference (0-255 scale; 16-bit images are scaled to
    it) below which a frame counts as a duplicate. ``size``: thumbnail side.
    """

    def __init__(self, threshold: float, size: int = 32) -> None:
        if threshold < 0:
            raise ValueError(f"redundancy threshold {threshold} must be >= 0")
        self.threshold = float(threshold)
        self.size = size
        self._last: np.ndarray | None = None
        self._last_index = -1
        self._mask: np.ndarray | None = None
        self._region: np.ndarray | None = None

    def reset(self, scan_mask: np.ndarray | None = None) -> None:
        """Start a new clip; ``scan_mask (H, W)`` bool restricts the comparison to the anatomy."""
        self._last, self._last_index = None, -1
        self._region = scan_mask
        self._mask = None

    def _thumb(self, gray: np.ndarray) -> np.ndarray:
        t = block_thumbnail(gray, self.size)
        if gray.dtype == np.uint16:
            t = t * (255.0 / 65535.0)
        return t

    def check(self, frame_index: int, gray: np.ndarray) -> int:
        """Return ``-1`` if the frame must be embedded (and remember it), else the index of the
        embedded frame it duplicates."""
        return self.check_thumb(frame_index, self._thumb(gray), gray.shape)

    def check_thumb(self, frame_index: int, thumb: np.ndarray, frame_shape: tuple[int, ...]) -> int:
        """:meth:`check` on a precomputed :func:`block_thumbnail` (0-255 scale), e.g. from the GPU."""
        if self._mask is None and self._region is not None and self._region.shape == tuple(frame_shape):
            m = block_thumbnail(self._region.astype(np.float32), self.size) >= 0.5
            self._mask = m if m.any() else None
        if self._last is not None and self._last.shape == thumb.shape:
            diff = np.abs(thumb - self._last)
            mad = float(diff[self._mask].mean()) if self._mask is not None else float(diff.mean())
            if mad < self.threshold:
                return self._last_index
        self._last, self._last_index = thumb, frame_index
        return -1
