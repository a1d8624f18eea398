"""Plain folders of ultrasound media as torch Datasets: images, and video frames.

Both walk ``root`` recursively (hidden files and usfast's own ``*.scanmask.png`` sidecars skipped);
DICOM objects are images (single frame) or clips (cine) by their header. Entries that cannot be read
(dangling symlinks, unreadable DICOM headers, ...) are listed in ``.unreadable_files``. Scan masks
come from :func:`usjepa_fast.data.clips.scan_mask`, the one rule every command uses: ``scan_mask=
"auto"`` prefers a provided sidecar ``<stem>.scanmask.png`` (what ``usfast synth`` writes), then a
DICOM object's Ultrasound Regions, over the cached detection; ``"detect"`` ignores both and
``"none"`` uses the whole frame. Detected masks are cached in the cache dir (``cache_dir``, default
``$USFAST_CACHE_DIR`` or ``~/.cache/usfast``), never beside the data unless ``mask_cache="beside"``.

Labels: when every file sits below a first-level sub-folder, those folder names are the classes
(ImageNet-folder style) and ``label`` is the folder's index; otherwise ``label`` is -1.

Unreadable files: ``on_error="raise"`` (default) raises :class:`DataError` naming the file;
``on_error="skip"`` logs the file once, counts the item in ``.skipped`` and returns the first item of
the next file instead (carrying ``failed: {path: reason}``, so a trainer whose DataLoader workers
hit the failure still learns of it), so a long job never dies on one truncated file; only
``_MAX_FAILED_FILES`` consecutive unreadable *files* stop it, with an error naming them.
:meth:`report` gathers what a job summary lists: unreadable, short and failed files.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from usjepa_fast.data.clips import MASK_CACHE_MODES, ClipIndex, clip_indexes, scan_mask
from usjepa_fast.data.media import find_media, log_problems, read_image_gray
from usjepa_fast.data.preprocess import Preprocessor
from usjepa_fast.data.video import FrameSampling, PyAVDecoder, VideoDecoder, _Sampler, with_dicom
from usjepa_fast.errors import DataError

log = logging.getLogger("usfast")

SCAN_MASK_MODES = ("auto", "detect", "none")
_MAX_FAILED_FILES = 16  # consecutive unreadable files before on_error="skip" gives up


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
        mask_cache: str = "cache",
    ) -> None:
        self.root = Path(root)
        if scan_mask not in SCAN_MASK_MODES:
            raise DataError(f"scan_mask='{scan_mask}' is not one of {SCAN_MASK_MODES}")
        if on_error not in ("raise", "skip"):
            raise DataError(f"on_error='{on_error}' must be 'raise' or 'skip'")
        if mask_cache not in MASK_CACHE_MODES:
            raise DataError(f"mask_cache='{mask_cache}' is not one of {MASK_CACHE_MODES}")
        files, problems = find_media(self.root, kinds=(kind,))  # DataError if root is missing
        # path -> why it cannot be read (listing problems now; video datasets add clips that fail to index)
        self.unreadable_files: dict[str, str] = {str(p.path): p.reason for p in problems}
        log_problems(problems)
        if not files:
            extra = (
                f" ({len(problems)} unreadable entries, e.g. {problems[0].path}: {problems[0].reason})"
                if problems
                else ""
            )
            raise DataError(
                f"{self.root} contains no readable {kind} files{extra} ({kind} extensions: see "
                "usjepa_fast.data.media); point to a folder with media"
            )
        self.files: list[Path] = files
        self.classes, self._file_labels = _folder_classes(self.root, files)
        self.transform = transform
        self.scan_mask_mode = scan_mask
        self.cache_dir = cache_dir
        self.mask_cache = mask_cache
        self.on_error = on_error
        self.skipped: dict[int, str] = {}  # item index -> why (per process: DataLoader workers count their own)
        self.failed_files: dict[str, str] = {}  # file -> why, for files that failed while reading items
        self._masks: dict[Path, np.ndarray] = {}

    def _file_mask(self, path: Path) -> np.ndarray:
        """The file's scan mask from :func:`scan_mask` (memoised per dataset and process)."""
        mask = self._masks.get(path)
        if mask is None:
            mask = scan_mask(path, mode=self.scan_mask_mode, cache_dir=self.cache_dir, mask_cache=self.mask_cache)
            self._masks[path] = mask
        return mask

    def _mask_for(self, path: Path, shape: tuple[int, int]) -> np.ndarray:
        if self.scan_mask_mode == "none":
            return np.ones(shape, dtype=bool)
        mask = self._file_mask(path)
        if mask.shape != shape:
            raise DataError(f"scan mask for {path} is {mask.shape} but the frame is {shape}; re-encode the file")
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

    def _file_of(self, idx: int) -> Path:
        """The file item ``idx`` is read from."""
        raise NotImplementedError

    def _next_file_item(self, idx: int) -> int:
        """The first item of the file after item ``idx``'s file (wrapping round)."""
        raise NotImplementedError

    def __getitem__(self, idx: int) -> dict[str, Any]:
        if self.on_error == "raise":
            return self._load(idx)
        failed: list[Path] = []  # distinct files that failed in this call, in order
        j = idx
        for _ in range(len(self)):
            try:
                item = self._load(j)
            except DataError as exc:
                path = self._file_of(j)
                self.skipped[j] = str(exc)
                if str(path) not in self.failed_files:
                    self.failed_files[str(path)] = str(exc)
                    log.warning("skipping unreadable file: %s (%d files skipped so far)", exc, len(self.failed_files))
                if path not in failed:
                    failed.append(path)
                if len(failed) >= min(_MAX_FAILED_FILES, len(self.files)):
                    break
                j = self._next_file_item(j)
                continue
            if failed:  # a substitute: say which files it stands in for
                item["failed"] = {str(p): self.failed_files[str(p)] for p in failed}
            return item
        names = ", ".join(p.name for p in failed[:3]) + (f" and {len(failed) - 3} more" if len(failed) > 3 else "")
        raise DataError(
            f"{self.root}: {len(failed)} consecutive files are unreadable from item {idx} ({names}: "
            f"{self.failed_files[str(failed[0])]}); re-encode or remove them"
        )

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def report(self) -> dict[str, dict[str, str]]:
        """``unreadable`` (listing problems, clips that cannot be indexed), ``short`` (clips that ended
        before their container said) and ``failed`` (files that failed while reading items in this
        process): path -> one-line reason."""
        short = getattr(self, "short_clips", {})
        return {
            "unreadable": dict(self.unreadable_files),
            "short": {p: clip.describe(p) for p, clip in short.items()},
            "failed": dict(self.failed_files),
        }


class ImageFolderDataset(_FolderBase):
    """Every image under ``root`` (PNG/JPEG/BMP/TIFF, 8/16-bit, gray/RGB, single-frame DICOM; read as gray).

    Item: ``dict(image, scan_mask, valid_patches, label, group="", path)`` as for UltraBench.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Preprocessor | None = None,
        scan_mask: str = "auto",
        cache_dir: str | Path | None = None,
        on_error: str = "raise",
        mask_cache: str = "cache",
    ) -> None:
        super().__init__(root, "image", transform, scan_mask, cache_dir, on_error, mask_cache)
        self.paths = self.files
        self.labels = np.asarray(self._file_labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.files)

    def _file_of(self, idx: int) -> Path:
        return self.files[idx]

    def _next_file_item(self, idx: int) -> int:
        return (idx + 1) % len(self.files)

    def _load(self, idx: int) -> dict[str, Any]:
        path = self.files[idx]
        gray = read_image_gray(path)
        mask = self._mask_for(path, gray.shape)
        return self._finish(gray, mask, {"label": int(self.labels[idx]), "group": "", "path": str(path)})


class VideoFrameDataset(_FolderBase):
    """Sampled frames of every video under ``root`` as a map-style dataset over (clip, frame) pairs.

    The index comes from decoding: each clip's :func:`~usjepa_fast.data.clips.clip_index` (decoded
    once without pixel conversion, then cached by path/size/mtime) lists the frames that really
    decode, and the :class:`FrameSampling` rule is applied to their timestamps, so ``len()`` is exact
    and every item is readable. A clip that decodes fewer frames than its container lists is indexed
    with the frames it has (logged once; ``.short_clips``). Clips that cannot be decoded at all are
    logged, recorded in ``.skipped_clips`` and left out of the index.

    Random access decodes the clip's sampled frames once and keeps the last ``clip_cache`` clips in
    memory; iterate roughly clip by clip (or bound ``max_frames``) for speed on long videos.
    Multi-frame DICOM objects are clips too: indexed from their header, decoded by
    :class:`~usjepa_fast.data.dicom.DicomDecoder` (whatever ``decoder`` is given).
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
        mask_cache: str = "cache",
    ) -> None:
        super().__init__(root, "video", transform, scan_mask, cache_dir, on_error, mask_cache)
        self.sampling = sampling or FrameSampling()
        self.decoder: VideoDecoder = with_dicom(decoder or PyAVDecoder())  # DICOM cine -> the DICOM reader
        self.clip_cache = max(1, clip_cache)
        self._decoded: OrderedDict[Path, dict[int, tuple[float, np.ndarray]]] = OrderedDict()
        n_listed = len(self.files) + len(self.unreadable_files)  # entries found, readable or not
        index: list[tuple[int, int, float]] = []  # (file id, frame index, timestamp)
        clip_labels: list[int] = []
        kept_files: list[Path] = []
        self.clip_indexes: list[ClipIndex] = []
        self.short_clips: dict[str, ClipIndex] = {}
        self._file_starts: list[int] = []  # first item of each kept clip
        indexes = clip_indexes(self.files, self.decoder, cache_dir)  # decoded once per clip, then cached
        for path, label, clip in zip(self.files, self._file_labels, indexes, strict=True):
            if isinstance(clip, DataError):
                self.unreadable_files[str(path)] = str(clip)
                log.warning("skipping clip: %s", clip)
                continue
            picked = _Sampler(self.sampling).select_indices(list(clip.timestamps))
            if not picked:
                continue
            fid = len(kept_files)
            kept_files.append(path)
            clip_labels.append(label)
            self.clip_indexes.append(clip)
            if clip.shortfall or clip.stopped:
                self.short_clips[str(path)] = clip
            self._file_starts.append(len(index))
            index.extend((fid, i, clip.timestamps[i]) for i in picked)
        if self.unreadable_files:
            log.warning(
                "%s: %d of %d video entries unreadable and skipped", self.root, len(self.unreadable_files), n_listed
            )
        if not index:
            raise DataError(
                f"{self.root}: no decodable video frames (unreadable clips: {len(self.unreadable_files)}); "
                "check the files"
            )
        self.files = kept_files
        self.paths = kept_files
        self.index = index
        self.clip_labels = np.asarray(clip_labels, dtype=np.int64)
        self.labels = self.clip_labels[[f for f, _, _ in index]]

    @property
    def skipped_clips(self) -> dict[str, str]:
        """Clips left out of the index (path -> why): listing problems and clips that do not decode."""
        return self.unreadable_files

    def __len__(self) -> int:
        return len(self.index)

    def _file_of(self, idx: int) -> Path:
        return self.files[self.index[idx][0]]

    def _next_file_item(self, idx: int) -> int:
        fid = self.index[idx][0]
        return self._file_starts[(fid + 1) % len(self._file_starts)]

    def _clip_frames(self, path: Path) -> dict[int, tuple[float, np.ndarray]]:
        cached = self._decoded.get(path)
        if cached is not None:
            self._decoded.move_to_end(path)
            return cached
        frames: dict[int, tuple[float, np.ndarray]] = {}
        try:
            for f in self.decoder.frames(path, self.sampling):
                frames[f.index] = (f.timestamp, f.image)
        except DataError:
            if not frames:
                raise
            # A clip that ends early keeps what decoded (its index, built the same way, lists only that).
        self._decoded[path] = frames
        while len(self._decoded) > self.clip_cache:
            self._decoded.popitem(last=False)
        return frames

    def clip_mask(self, path: Path) -> np.ndarray:
        """Scan mask of one clip: :func:`usjepa_fast.data.clips.scan_mask`, the same array embed and
        ``usfast masks`` get for this file (``scan_mask="none"``: the whole frame)."""
        if self.scan_mask_mode == "none":
            frames = self._clip_frames(path)
            return np.ones(next(iter(frames.values()))[1].shape, dtype=bool)
        return self._file_mask(path)

    def _load(self, idx: int) -> dict[str, Any]:
        fid, frame_index, _ = self.index[idx]
        path = self.files[fid]
        frames = self._clip_frames(path)
        if frame_index not in frames:
            raise DataError(
                f"video {path} yielded no frame {frame_index} although its index lists it "
                "(the file changed since it was indexed?); re-encode it"
            )
        timestamp, gray = frames[frame_index]
        mask = self._mask_for(path, gray.shape)
        extra = {
            "label": int(self.clip_labels[fid]),
            "group": str(path),
            "path": str(path),
            "frame_index": frame_index,
            "timestamp": float(timestamp),
        }
        return self._finish(gray, mask, extra)
