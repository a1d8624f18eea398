"""Calibration frames for int8: a few hundred frames of the user's own data, preprocessed as embed does.

Frames are spread over the inputs (every file contributes, clips evenly sampled), and each goes
through the same steps as ``embed_folder``'s CPU path: the file's scan region (its own mask, else
detected on the first frame), the percentile window inside it, resize and normalisation with the
encoder's mean/std (:func:`usjepa_fast.data.preprocess.preprocess_batch`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from usjepa_fast.errors import DataError, UsfastError

log = logging.getLogger("usfast")


def calibration_pixels(
    path: str | Path, info: Any, frames: int = 256, scan_region: bool = True, per_clip: int | None = None
) -> torch.Tensor:
    """``(N, 3, S, S)`` float32, N <= ``frames``, from a media folder / file / UltraBench dir."""
    from usjepa_fast.data.preprocess import preprocess_batch
    from usjepa_fast.data.video import FrameSampling, PyAVDecoder
    from usjepa_fast.embed.sources import list_sources, read_image, source_mask

    sources = list_sources(path)
    if not sources:
        raise DataError(f"calibration input {path} holds no images or videos; pass a folder of your own frames")
    videos = [s for s in sources if s.kind == "video"]
    images = [s for s in sources if s.kind == "image"]
    # images: an even stride over the files; clips: the rest of the budget shared among them
    take_images = images[:: max(1, len(images) // max(1, frames if not videos else frames // 2))]
    budget_clips = max(0, frames - len(take_images))
    per_clip = per_clip or (max(1, budget_clips // len(videos)) if videos else 0)
    batches: list[torch.Tensor] = []
    n = 0

    def add(gray: list[np.ndarray], mask: np.ndarray | None) -> None:
        nonlocal n
        frames_t = torch.from_numpy(np.stack([g.astype(np.uint8) if g.dtype != np.uint8 else g for g in gray]))
        masks = None if mask is None else torch.from_numpy(np.ascontiguousarray(mask)).expand(len(gray), -1, -1)
        batches.append(preprocess_batch(frames_t, masks, info.input_size, tuple(info.mean), tuple(info.std)))
        n += len(gray)

    for src in take_images:
        if n >= frames:
            break
        try:
            img, mask = read_image(src, scan_region)
        except DataError as exc:
            log.warning("calibration: skipped %s (%s)", src.rel, exc)
            continue
        if img.dtype != np.uint8:
            img = (img.astype(np.float32) / max(1.0, float(img.max())) * 255.0).astype(np.uint8)
        add([img], mask)
    decoder = PyAVDecoder(threads=1)
    for src in videos:
        if n >= frames:
            break
        try:
            info_v = decoder.probe(src.path)
            every_k = max(1, (info_v.num_frames or per_clip) // per_clip)
            clip = [f.image for f in decoder.frames(src.path, FrameSampling(every_k=every_k, max_frames=per_clip))]
        except DataError as exc:
            log.warning("calibration: skipped %s (%s)", src.rel, exc)
            continue
        if clip:
            clip = clip[: frames - n]
            add(clip, source_mask(src, clip[0]) if scan_region else None)
    if n < 8:
        raise UsfastError(f"calibration input {path} gave {n} frames; int8 needs at least 8 (a few hundred is best)")
    log.info("calibration: %d frames from %d files of %s", n, len(take_images) + len(videos), path)
    return torch.cat(batches)[:frames]
