"""Plain folders of ultrasound media as torch Datasets: images, and video frames.

Both walk ``root`` recursively (hidden files and usfast's own ``*.scanmask.png`` sidecars skipped).
Scan masks, in order of preference: a provided sidecar ``<stem>.scanmask.png`` next to the media file
(what ``usfast synth`` writes), else automatic detection cached by :class:`ScanMaskCache` (``scan_mask=
"auto"``); ``"detect"`` ignores sidecars and ``"none"`` uses the whole frame.

Labels: when every file sits below a first-level sub-folder, those folder names are the classes
(ImageNet-folder style) and ``label`` is the folder's index; otherwise ``label`` is -1.

Unreadable files: ``on_error="raise"`` (default) raises :class:`DataError` naming the file;
``on_error="skip"`` logs it, counts it in ``.skipped`` and returns the next readable item instead, so
a long job never dies on one truncated file.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from usjepa_fast.data.media import list_media, read_image_gray
from usjepa_fast.data.preprocess import Preprocessor
from usjepa_fast.data.scan_region import ScanMaskCache, load_mask
from usjepa_fast.data.video import FrameSampling, PyAVDecoder, VideoDecoder, _Sampler, clip_timestamps
from usjepa_fast.errors import DataError

log = logging.getLogger("usfast")

SCAN_MASK_MODES = ("auto", "detect", "none")
_MAX_SKIP_TRIES = 16  # consecutive unreadable items before on_error="skip" gives up


def sidecar_mask_path(path: Path) -> Path:
    """Where a provided scan mask for media ``path`` lives: ``<stem>.scanmask.png`` beside it."""
    return path.with_name(f"{path.stem}.scanmask.png")


def _folder_classes(root: Path, files: list[Path]) -> tuple[list[str], list[int]]:
    if root.is_file():
        return [], [-1] * len(files)
    tops = [f.relative_to(root).parts for f in files]
    if tops and all(len(p) >= 2 for p in tops):
        classes = sorted({p[0] for p in tops})
        index = {c: i for i, c in enumerate(classes)}
        return classes, [index[p[0]] for p in tops]
    return [], [-1] * len(files)


class _FolderBase(Dataset):
    def __init__(
        self,
        root: str | Path,
        kind: str,
        transform: Preprocessor | None,
        scan_mask: str,
        cache_dir: str | Path | None,
        on_error: str,
    ) -> None:
        self.root = Path(root)
        if scan_mask not in SCAN_MASK_MODES:
            raise DataError(f"scan_mask='{scan_mask}' is not one of {SCAN_MASK_MODES}")
        if on_error not in ("raise", "skip"):
            raise DataError(f"on_error='{on_error}' must be 'raise' or 'skip'")
        files = list_media(self.root, kinds=(kind,))  # DataError if root is missing
        if not files:
            raise DataError(
                f"{self.root} contains no {kind} files ({kind} extensions: see usjepa_fast.data.media); "
                "point to a folder with media"
            )
        self.files: list[Path] = files
        self.classes, self._file_labels = _folder_classes(self.root, files)
        self.transform = transform
        self.scan_mask_mode = scan_mask
        self.mask_cache = ScanMaskCache(cache_dir)
        self.on_error = on_error
        self.skipped: dict[int, str] = {}  # item index -> why (per process: DataLoader workers count their own)
        self._masks: dict[Path, np.ndarray] = {}

    def _mask_for(self, path: Path, shape: tuple[int, int], frames_fn: Callable[[], np.ndarray]) -> np.ndarray:
        if self.scan_mask_mode == "none":
            return np.ones(shape, dtype=bool)
        mask = self._masks.get(path)
        if mask is None:
            side = sidecar_mask_path(path)
            if self.scan_mask_mode == "auto" and side.is_file():
                mask = load_mask(side)
            else:
                mask = self.mask_cache.get(path, frames_fn)
            if not mask.any():  # nothing detected (e.g. an all-black frame): whole frame
                mask = np.ones(shape, dtype=bool)
            self._masks[path] = mask
        if mask.shape != shape:
            raise DataError(f"scan mask for {path} is {mask.shape} but the frame is {shape}; delete the stale mask")
        return mask

    def _finish(self, gray: np.ndarray, mask: np.ndarray, extra: dict[str, Any]) -> dict[str, Any]:
        item = dict(extra)
        if self.transform is None:
            item.update(image=gray, scan_mask=mask)
        else:
            item.update(self.transform(gray, mask))
        return item

    def _load(self, idx: int) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, idx: int) -> dict[str, Any]:
        if self.on_error == "raise":
            return self._load(idx)
        n = len(self)
        for k in range(_MAX_SKIP_TRIES):
            j = (idx + k) % n
            try:
                return self._load(j)
            except DataError as exc:
                self.skipped[j] = str(exc)
                log.warning("skipping unreadable item %d: %s (%d skipped so far)", j, exc, len(self.skipped))
        raise DataError(
            f"{self.root}: {_MAX_SKIP_TRIES} consecutive unreadable items from index {idx}; check the folder"
        )

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)


class ImageFolderDataset(_FolderBase):
    """Every image under ``root`` (PNG/JPEG/BMP/TIFF, 8/16-bit, gray/RGB; read as gray).

    Item: ``dict(image, scan_mask, valid_patches, label, group="", path)`` as for UltraBench.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Preprocessor | None = None,
        scan_mask: str = "auto",
        cache_dir: str | Path | None = None,
        on_error: str = "raise",
    ) -> None:
        super().__init__(root, "image", transform, scan_mask, cache_dir, on_error)
        self.paths = self.files
        self.labels = np.asarray(self._file_labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, idx: int) -> dict[str, Any]:
        path = self.files[idx]
        gray = read_image_gray(path)
        mask = self._mask_for(path, gray.shape, lambda: gray)
        return self._finish(gray, mask, {"label": int(self.labels[idx]), "group": "", "path": str(path)})


class VideoFrameDataset(_FolderBase):
    """Sampled frames of every video under ``root`` as a map-style dataset over (clip, frame) pairs.

    The index is built without decoding: each clip's packet timestamps are read from the container
    (demux only) and the :class:`FrameSampling` rule is applied to them, so ``len()`` is exact and
    matches what the decoder yields. Clips that cannot be opened are logged, counted in
    ``.skipped_clips`` and left out of the index.

    Random access decodes the clip's sampled frames once and keeps the last ``clip_cache`` clips in
    memory; iterate roughly clip by clip (or bound ``max_frames``) for speed on long videos.
    Item: ``dict(image, scan_mask, valid_patches, label, group=<clip path>, path, frame_index, timestamp)``.
    """

    def __init__(
        self,
        root: str | Path,
        sampling: FrameSampling | None = None,
        decoder: VideoDecoder | None = None,
        transform: Preprocessor | None = None,
        scan_mask: str = "auto",
        cache_dir: str | Path | None = None,
        on_error: str = "raise",
        clip_cache: int = 2,
    ) -> None:
        super().__init__(root, "video", transform, scan_mask, cache_dir, on_error)
        self.sampling = sampling or FrameSampling()
        self.decoder: VideoDecoder = decoder or PyAVDecoder()
        self.clip_cache = max(1, clip_cache)
        self._decoded: OrderedDict[Path, dict[int, tuple[float, np.ndarray]]] = OrderedDict()
        self.skipped_clips: dict[str, str] = {}
        index: list[tuple[int, int, float]] = []  # (file id, frame index, timestamp)
        clip_labels: list[int] = []
        kept_files: list[Path] = []
        for path, label in zip(self.files, self._file_labels, strict=True):
            try:
                times = clip_timestamps(path)
            except DataError as exc:
                self.skipped_clips[str(path)] = str(exc)
                log.warning("skipping clip: %s", exc)
                continue
            fid = len(kept_files)
            kept_files.append(path)
            clip_labels.append(label)
            for i in _Sampler(self.sampling).select_indices(times):
                index.append((fid, i, times[i]))
        if self.skipped_clips:
            log.warning("%s: %d of %d clips skipped (unreadable)", self.root, len(self.skipped_clips), len(self.files))
        if not index:
            raise DataError(
                f"{self.root}: no decodable video frames (skipped clips: {len(self.skipped_clips)}); check the files"
            )
        self.files = kept_files
        self.paths = kept_files
        self.index = index
        self.clip_labels = np.asarray(clip_labels, dtype=np.int64)
        self.labels = self.clip_labels[[f for f, _, _ in index]]

    def __len__(self) -> int:
        return len(self.index)

    def _clip_frames(self, path: Path) -> dict[int, tuple[float, np.ndarray]]:
        cached = self._decoded.get(path)
        if cached is not None:
            self._decoded.move_to_end(path)
            return cached
        frames = {f.index: (f.timestamp, f.image) for f in self.decoder.frames(path, self.sampling)}
        self._decoded[path] = frames
        while len(self._decoded) > self.clip_cache:
            self._decoded.popitem(last=False)
        return frames

    def clip_mask(self, path: Path, frames: dict[int, tuple[float, np.ndarray]] | None = None) -> np.ndarray:
        """Scan mask of one clip (provided sidecar, cache, or temporal detection on its sampled frames)."""
        frames = frames if frames is not None else self._clip_frames(path)
        shape = next(iter(frames.values()))[1].shape

        def stack_fn() -> np.ndarray:  # (T, H, W), only called on a cache miss
            images = [img for _, img in list(frames.values())[:64]]
            if len(images) < 8:
                # Sparse sampling (e.g. max_frames=1) leaves no motion to see: decode a short run
                # of consecutive frames for the detector instead.
                images = [f.image for f in self.decoder.frames(path, FrameSampling(max_frames=48))]
            return np.stack(images)

        return self._mask_for(path, shape, stack_fn)

    def _load(self, idx: int) -> dict[str, Any]:
        fid, frame_index, _ = self.index[idx]
        path = self.files[fid]
        frames = self._clip_frames(path)
        if frame_index not in frames:
            raise DataError(f"video {path} ended before frame {frame_index} (truncated?); re-encode it")
        timestamp, gray = frames[frame_index]
        mask = self.clip_mask(path, frames)
        extra = {
            "label": int(self.clip_labels[fid]),
            "group": str(path),
            "path": str(path),
            "frame_index": frame_index,
            "timestamp": float(timestamp),
        }
        return self._finish(gray, mask, extra)
