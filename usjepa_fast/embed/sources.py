"""What to embed: media files of a folder or the images of an UltraBench dataset, and their frames.

A :class:`Source` is one input file with the path recorded in the index (relative to the input
root, POSIX separators, so an output directory stays valid when the data moves) and, for
UltraBench records, the dataset's own scan mask (always preferred over detection). UltraBench
records are read exactly as :class:`~usjepa_fast.data.ultrabench.UltraBenchDataset` reads them, so
``usfast embed DATASET`` and the probe see the same pixels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("usfast")


@dataclass(frozen=True)
class Source:
    path: Path  # absolute/real path to read
    rel: str  # key in the index (relative to the input root)
    kind: str  # "image" | "video"
    mask_path: Path | None = None  # dataset-provided scan mask (UltraBench) or ``<stem>.scanmask.png``
    label: int | None = None  # UltraBench class index (None for folders)
    record: bool = False  # an UltraBench record: read by ``data.ultrabench.load_record`` (dataset
    #   semantics: no mask = whole image, a mask of the wrong shape = unreadable record)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def list_sources(
    root: str | Path, kinds: tuple[str, ...] = ("image", "video"), splits: tuple[str, ...] | None = None
) -> list[Source]:
    """Sources under ``root``: an UltraBench directory (images of ``splits``, default all present
    splits, with their masks) or any folder/file of media (recursive, sorted)."""
    from usjepa_fast.data.media import list_media, media_kind
    from usjepa_fast.data.ultrabench import is_ultrabench_dir

    root = Path(root)
    if is_ultrabench_dir(root):
        return ultrabench_sources(root, splits)
    files = list_media(root, kinds)
    base = root if root.is_dir() else root.parent
    return [Source(p, _rel(p, base), media_kind(p) or "image", sibling_mask(p)) for p in files]


def sibling_mask(path: Path) -> Path | None:
    """A user-provided scan mask ``<stem>.scanmask.png`` beside a media file (preferred over detection)."""
    candidate = path.with_name(path.stem + ".scanmask.png")
    return candidate if candidate.is_file() else None


def ultrabench_sources(root: Path, splits: tuple[str, ...] | None = None) -> list[Source]:
    from usjepa_fast.data.ultrabench import SPLITS, UltraBenchDataset

    wanted = splits or tuple(
        s
        for s in SPLITS
        if (root / f"{s}.json").is_file() or (s in ("train", "validation") and (root / "train_val.json").is_file())
    )
    seen: dict[str, Source] = {}
    for split in wanted:
        ds = UltraBenchDataset(root, split)
        for p, m, y in zip(ds.paths, ds.mask_paths, ds.labels, strict=True):
            rel = _rel(p, root)
            seen.setdefault(rel, Source(p, rel, "image", m, int(y), record=True))
    return [seen[k] for k in sorted(seen)]


def read_image(src: Source, scan_region: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """An image source's gray pixels ``(H, W)`` (uint8/uint16) and its scan region ``(H, W)`` bool
    (None with ``scan_region=False``, or when detection finds nothing: then the whole frame counts)."""
    if src.record:
        from usjepa_fast.data.ultrabench import load_record

        image, mask = load_record(src.path, src.mask_path)
        return image, (mask if scan_region else None)
    from usjepa_fast.data.media import read_image_gray

    image = read_image_gray(src.path)
    return image, (source_mask(src, image) if scan_region else None)


def source_mask(src: Source, frame: np.ndarray) -> np.ndarray | None:
    """The scan region of a source for frames shaped like ``frame``; None = the whole frame.

    :func:`usjepa_fast.data.clips.scan_mask`, the one rule of every command: its own mask file first
    (an UltraBench record's, or ``<stem>.scanmask.png``), a DICOM object's B-mode regions, else the
    cached detection (a clip on spread frames, an image on ``frame`` itself), so embed, training and
    ``usfast masks`` agree on every file.
    """
    from usjepa_fast.data.clips import scan_mask

    mask = scan_mask(src.path, provided=src.mask_path, image=frame if src.kind == "image" else None)
    if mask.shape == frame.shape:
        return None if mask.all() else mask
    log.warning(
        "scan region of %s is %s but its frames are %s; using the whole frame", src.path, mask.shape, frame.shape
    )
    return None
