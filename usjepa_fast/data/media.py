"""Finding and reading ultrasound media files: images to grayscale numpy, extension tables.

Images inside the data layer are grayscale ``(H, W)`` arrays: ``uint8`` for 8-bit files and ``uint16``
for 16-bit ones (common for DICOM-derived PNG/TIFF exports), so that percentile rescaling later sees
the full dynamic range instead of a premature 8-bit quantisation.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from usjepa_fast.errors import DataError

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


def list_media(root: str | Path, kinds: Iterable[str] = ("image", "video")) -> list[Path]:
    """All media files under ``root`` (recursive, sorted, hidden files skipped).

    ``root`` may also be a single file. Raises :class:`DataError` if ``root`` does not exist; an
    existing folder with no media returns ``[]`` so that callers can word the error for their context.
    """
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in _KIND_EXTENSIONS]
    if unknown:
        raise DataError(f"unknown media kind(s) {unknown}; use 'image' and/or 'video'")
    exts = frozenset().union(*(_KIND_EXTENSIONS[k] for k in kinds))
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root} does not exist; pass an existing file or folder")
    if root.is_file():
        return [root] if root.suffix.lower() in exts else []
    found = [
        p
        for p in root.rglob("*")
        if p.suffix.lower() in exts
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and not p.name.lower().endswith(_IGNORED_SUFFIXES)
    ]
    return sorted(found)


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
