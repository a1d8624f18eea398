"""Finding and reading ultrasound media files: images to grayscale numpy, extension tables, DICOM kinds.

Images inside the data layer are grayscale ``(H, W)`` arrays: ``uint8`` for 8-bit files and ``uint16``
for 16-bit ones (common for DICOM-derived PNG/TIFF exports), so that percentile rescaling later sees
the full dynamic range instead of a premature 8-bit quantisation.

DICOM objects are media wherever a folder is read: a single-frame object is an image, a multi-frame
one (a cine loop) a clip, by its header (:func:`media_kind`, memoised per file state so a folder's
headers are read once per process however many readers list it).
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
MEDIA_KINDS = ("image", "video", "dicom")  # "dicom": every DICOM object, whatever its frame count
# Names written by usfast itself next to the data (cached scan masks, overlays) are not media to embed.
_IGNORED_SUFFIXES = (".scanmask.png",)


def _may_be_dicom(path: Path) -> bool:
    """Names a DICOM object may have: ``.dcm``/``.dicom``, no extension (``IM_0001``), or a numeric
    one (UID-named exports such as ``1.2.840.113619.2.55.3.5``)."""
    from usjepa_fast.data.dicom_header import DICOM_EXTENSIONS

    suffix = path.suffix.lower()
    return suffix in DICOM_EXTENSIONS or not suffix or suffix[1:].isdigit()


def is_dicom_file(path: str | Path) -> bool:
    """True for a DICOM object (by name, or the ``DICM`` preamble of an extensionless or
    numeric-suffix file; ``DICOMDIR`` is not media). Other names are never opened."""
    from usjepa_fast.data.dicom_header import DICOM_EXTENSIONS, is_dicom

    path = Path(path)
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return path.name.upper() != "DICOMDIR"
    return _may_be_dicom(path) and path.is_file() and is_dicom(path)  # is_file: never open a FIFO


_dicom_kinds: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> "image" | "video"


def dicom_media_kind(path: str | Path) -> str:
    """``"image"`` (single frame) or ``"video"`` (cine loop) of a DICOM object, from its header, memoised
    per path, size and mtime. Raises :class:`DataError` (one line, naming the file and, when pydicom is
    missing, the extra to install) when the header cannot be read."""
    from usjepa_fast.data.dicom_header import dicom_kind

    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise DataError(f"DICOM {path} cannot be opened ({exc.__class__.__name__}: {exc.strerror})") from None
    key = (str(path), st.st_size, st.st_mtime_ns)
    kind = _dicom_kinds.get(key)
    if kind is None:
        kind = dicom_kind(path)
        if len(_dicom_kinds) > 65_536:  # a bound, not an LRU: a process rarely lists more
            _dicom_kinds.clear()
        _dicom_kinds[key] = kind
    return kind


def media_kind(path: str | Path) -> str | None:
    """``"image"``, ``"video"`` or ``None``: from the extension (case-insensitive); a DICOM object by its
    header (single frame = image, cine = video; None when the header cannot be read)."""
    kind = media_kind_by_name(path)
    if kind is None and is_dicom_file(path):
        try:
            return dicom_media_kind(path)
        except DataError:
            return None
    return kind


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

    DICOM objects (:func:`is_dicom_file`: ``.dcm``/``.dicom``, or the ``DICM`` preamble of a file with no
    or a numeric extension; 132 bytes read per such file) are images when single-frame and clips
    (kind ``"video"``) when multi-frame, by their header; kind ``"dicom"`` takes every DICOM object.

    ``root`` may also be a single file. Symlinked files are followed, symlinked folders are not (as
    ``Path.rglob``). ``problems`` lists, with a reason, what would otherwise vanish silently: dangling
    symbolic links (with a media extension of ``kinds``, or no extension: it may have been a folder),
    symlink loops, non-regular files with a media extension (FIFO, socket, device), DICOM objects
    whose header cannot be read and sub-folders that cannot be listed. Raises :class:`DataError` if
    ``root`` does not exist; an existing folder with no media gives no files, so that callers can
    word the error for their context.
    """
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in MEDIA_KINDS]
    if unknown:
        raise DataError(f"unknown media kind(s) {unknown}; use 'image', 'video' and/or 'dicom'")
    exts = frozenset().union(*(_KIND_EXTENSIONS[k] for k in kinds if k != "dicom"))
    from usjepa_fast.data.dicom_header import DICOM_EXTENSIONS

    root = Path(root)
    if not root.exists():
        if root.is_symlink():
            raise DataError(f"{root} is a dangling symbolic link (target {os.readlink(root)} is missing); fix the link")
        raise DataError(f"{root} does not exist; pass an existing file or folder")
    files: list[Path] = []
    problems: list[MediaProblem] = []

    def offer_dicom(path: Path) -> None:
        """A DICOM object: kept when its kind is wanted; an unreadable header is a problem."""
        why = _unreadable_reason(path)
        if why is not None:
            problems.append(MediaProblem(path, why))
            return
        try:
            kind = dicom_media_kind(path)
        except DataError as exc:
            problems.append(MediaProblem(path, str(exc)))
            return
        if "dicom" in kinds or kind in kinds:
            files.append(path)

    if root.is_file():
        if root.suffix.lower() in exts:
            files.append(root)
        elif is_dicom_file(root):
            offer_dicom(root)
        return MediaListing(files, problems)

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
            elif suffix in DICOM_EXTENSIONS:
                if name.upper() != "DICOMDIR":
                    offer_dicom(path)
            elif not suffix and path.is_symlink() and not path.exists():
                problems.append(MediaProblem(path, _unreadable_reason(path) or "dangling symbolic link"))
            elif _may_be_dicom(path) and is_dicom_file(path):
                offer_dicom(path)
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
    """Read an image file as gray ``(H, W)``: ``uint8`` for 8-bit, ``uint16`` for 16-bit files; a DICOM
    object gives its first frame (:func:`usjepa_fast.data.dicom.read_dicom_gray`).

    Raises :class:`DataError` naming the file when it is missing, truncated or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path} does not exist; check the path (relative paths resolve from the dataset)")
    if media_kind_by_name(path) is None and is_dicom_file(path):
        from usjepa_fast.data.dicom import read_dicom_gray

        return read_dicom_gray(path)
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


def media_kind_by_name(path: str | Path) -> str | None:
    """``"image"`` / ``"video"`` from the extension alone (no file is opened; DICOM gives None)."""
    suffix = Path(path).suffix.lower()
    return "image" if suffix in IMAGE_EXTENSIONS else "video" if suffix in VIDEO_EXTENSIONS else None


def stretch_to_uint8(gray: np.ndarray) -> np.ndarray:
    """Gray -> ``uint8``: uint8 as is; other dtypes (16-bit images, DICOM) stretched linearly from their
    min..max to 0..255, keeping their window (what prepare stores, and what the training step's device
    preprocessing gets: it works on uint8)."""
    if gray.dtype == np.uint8:
        return gray
    lo, hi = float(gray.min()), float(gray.max())
    scaled = (gray.astype(np.float32) - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros(gray.shape, np.float32)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


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
