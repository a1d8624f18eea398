"""Finding and reading ultrasound media files: images to grayscale numpy, extension tables.

Images inside the data layer are grayscale ``(H, W)`` arrays: ``uint8`` for 8-bit files and ``uint16``
for 16-bit ones (common for DICOM-derived PNG/TIFF exports), so that percentile rescaling later sees
the full dynamic range instead of a premature 8-bit quantisation.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from usjepa_fast.errors import DataError

log = logging.getLogger("usfast")

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
VIDEO_EXTENSIONS: frozenset[str] = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif", ".mpeg", ".mpg", ".m4v"})
_KIND_EXTENSIONS = {"image": IMAGE_EXTENSIONS, "video": VIDEO_EXTENSIONS}
# Names written by usfast itself next to the data (cached scan masks, overlays) are not media to embed.
_IGNORED_SUFFIXES = (".scanmask.png",)


def media_kind(path: str | Path) -> str | None:
    """``"image"``, ``"video"`` or ``None`` from the file extension (case-insensitive)."""
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    return None


class MediaProblem(NamedTuple):
    """An entry of an input folder that looks like media (or may hold media) but cannot be read."""

    path: Path
    reason: str  # one line, e.g. "dangling symbolic link (target /mnt/x.mp4 is missing)"


class MediaListing(NamedTuple):
    """What :func:`find_media` found: readable media files and the entries that cannot be read."""

    files: list[Path]
    problems: list[MediaProblem]


def find_media(root: str | Path, kinds: Iterable[str] = ("image", "video")) -> MediaListing:
    """Media files under ``root`` (recursive, sorted, hidden entries skipped) and the unreadable entries.

    ``root`` may also be a single file. Symlinked files are followed, symlinked folders are not (as
    ``Path.rglob``). ``problems`` lists, with a reason, what would otherwise vanish silently: dangling
    symbolic links (with a media extension of ``kinds``, or no extension: it may have been a folder),
    symlink loops, non-regular files with a media extension (FIFO, socket, device) and sub-folders
    that cannot be listed. Raises :class:`DataError` if ``root`` does not exist; an existing folder
    with no media gives no files, so that callers can word the error for their context.
    """
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in _KIND_EXTENSIONS]
    if unknown:
        raise DataError(f"unknown media kind(s) {unknown}; use 'image' and/or 'video'")
    exts = frozenset().union(*(_KIND_EXTENSIONS[k] for k in kinds))
    root = Path(root)
    if not root.exists():
        if root.is_symlink():
            raise DataError(f"{root} is a dangling symbolic link (target {os.readlink(root)} is missing); fix the link")
        raise DataError(f"{root} does not exist; pass an existing file or folder")
    if root.is_file():
        return MediaListing([root] if root.suffix.lower() in exts else [], [])
    files: list[Path] = []
    problems: list[MediaProblem] = []

    def unlistable(exc: OSError) -> None:
        where = Path(exc.filename) if exc.filename else root
        if where != root and any(part.startswith(".") for part in where.relative_to(root).parts):
            return
        problems.append(MediaProblem(where, f"folder cannot be listed ({exc.__class__.__name__}: {exc.strerror})"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unlistable):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        folder = Path(dirpath)
        for name in filenames:
            if name.startswith(".") or name.lower().endswith(_IGNORED_SUFFIXES):
                continue
            suffix = Path(name).suffix.lower()
            path = folder / name
            if suffix in exts:
                why = _unreadable_reason(path)
                if why is None:
                    files.append(path)
                else:
                    problems.append(MediaProblem(path, why))
            elif not suffix and path.is_symlink() and not path.exists():
                problems.append(MediaProblem(path, _unreadable_reason(path) or "dangling symbolic link"))
    return MediaListing(sorted(files), sorted(problems))


def _unreadable_reason(path: Path) -> str | None:
    """None for a readable regular file (or a symlink to one), else why it cannot be read."""
    try:
        st = path.stat()  # follows symlinks
    except FileNotFoundError:
        if path.is_symlink():
            return f"dangling symbolic link (target {os.readlink(path)} is missing)"
        return "vanished while listing"
    except OSError as exc:  # ELOOP, EACCES on a parent, ...
        return f"cannot be opened ({exc.__class__.__name__}: {exc.strerror})"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (FIFO, socket or device)"
    if not os.access(path, os.R_OK):
        return "permission denied"
    return None


_reported: set[tuple[str, str]] = set()  # (path, reason) already logged in this process


def log_problems(problems: Iterable[MediaProblem]) -> None:
    """Log each unreadable entry once per process (a folder is often listed by several readers)."""
    for problem in problems:
        key = (str(problem.path), problem.reason)
        if key not in _reported:
            _reported.add(key)
            log.warning("skipping unreadable input %s: %s", problem.path, problem.reason)


def list_media(root: str | Path, kinds: Iterable[str] = ("image", "video")) -> list[Path]:
    """The readable media files of :func:`find_media` (recursive, sorted, hidden files skipped).

    Each unreadable entry is logged once per process (warning); callers that count or list them
    (a job summary) use :func:`find_media` instead.
    """
    listing = find_media(root, kinds)
    log_problems(listing.problems)
    return listing.files


def to_gray(arr: np.ndarray) -> np.ndarray:
    """``(H, W)`` / ``(H, W, 1|3|4)`` array -> ``(H, W)`` gray of the same dtype (ITU-R 601 luma)."""
    if arr.ndim == 2:
        return arr
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"expected (H, W) or (H, W, C) image, got shape {arr.shape}")
    if arr.shape[2] <= 2:  # gray or gray+alpha
        return arr[..., 0]
    rgb = arr[..., :3].astype(np.float32)
    # Ultrasound RGB exports are mostly gray with coloured overlays; luma keeps the gray exact.
    gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    info = np.iinfo(arr.dtype) if np.issubdtype(arr.dtype, np.integer) else None
    if info is not None:
        return np.clip(np.rint(gray), info.min, info.max).astype(arr.dtype)
    return gray.astype(arr.dtype)


def read_image_gray(path: str | Path) -> np.ndarray:
    """Read an image file as gray ``(H, W)``: ``uint8`` for 8-bit, ``uint16`` for 16-bit files.

    Raises :class:`DataError` naming the file when it is missing, truncated or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path} does not exist; check the path (relative paths resolve from the dataset)")
    try:
        with Image.open(path) as img:
            img.load()  # force full decode now so truncation surfaces here, not later
            arr = _pil_to_gray(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(
            f"image {path} cannot be read ({exc.__class__.__name__}: {exc}); re-export or remove it"
        ) from None
    if arr.size == 0:
        raise DataError(f"image {path} is empty (0 pixels); re-export or remove it")
    return arr


def _pil_to_gray(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(img, dtype=np.uint16).copy()
    if mode in ("I", "F"):
        arr = np.asarray(img)
        # 32-bit PIL modes come from 16-bit PNG/TIFF; keep them 16-bit rather than crushing to 8.
        return np.clip(arr, 0, 65535).astype(np.uint16)
    if mode == "L":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode in ("1", "P", "PA", "LA", "CMYK", "YCbCr", "HSV", "RGBA", "RGBX"):
        img = img.convert("RGB") if mode != "LA" else img.convert("L")
    if img.mode == "L":
        return np.asarray(img, dtype=np.uint8).copy()
    arr = np.asarray(img)
    if arr.dtype != np.uint8 and arr.dtype != np.uint16:
        arr = arr.astype(np.uint8)
    return to_gray(arr)


def to_uint8(gray: np.ndarray) -> np.ndarray:
    """Gray array of any integer/float dtype -> ``uint8`` by its nominal range (16-bit: ``>> 8``)."""
    if gray.dtype == np.uint8:
        return gray
    if gray.dtype == np.uint16:
        return (gray >> 8).astype(np.uint8)
    if np.issubdtype(gray.dtype, np.floating):
        scale = 255.0 if float(np.nanmax(gray, initial=0.0)) <= 1.0 else 1.0
        return np.clip(np.rint(gray * scale), 0, 255).astype(np.uint8)
    return np.clip(gray, 0, 255).astype(np.uint8)
