"""What to embed: media files of a folder or the images of an UltraBench dataset, and their frames.

A :class:`Source` is one input file with the path recorded in the index (relative to the input
root, POSIX separators, so an output directory stays valid when the data moves) and, for
UltraBench records, the dataset's own scan mask (always preferred over detection). UltraBench
records are read exactly as :class:`~usjepa_fast.data.ultrabench.UltraBenchDataset` reads them, so
``usfast embed DATASET`` and the probe see the same pixels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

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
    # what outputs may record about the file besides its path (DICOM: sop_instance_uid, rows, columns,
    # region_source; never a patient tag); {} for other files
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


# the DICOM header fields an embed output may carry (issue 13's default): data.dicom.safe_metadata's
# non-identifying fields minus what the index has already (frame index) or does not need
DICOM_META_FIELDS = ("sop_instance_uid", "rows", "columns", "region_source")


class SourceListing(NamedTuple):
    sources: list[Source]
    problems: dict[str, str]  # unreadable listing entries: path relative to the input -> reason


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def find_sources(
    root: str | Path, kinds: tuple[str, ...] = ("image", "video"), splits: tuple[str, ...] | None = None
) -> SourceListing:
    """Sources under ``root`` and its unreadable entries: an UltraBench directory (images of ``splits``,
    default all present splits, with their masks) or any folder/file of media (``data.media.find_media``:
    recursive, sorted, DICOM by its header; dangling links and other unreadable entries in
    ``problems``, keyed like the index). DICOM sources carry :data:`DICOM_META_FIELDS` in ``meta``."""
    from usjepa_fast.data.media import find_media, is_dicom_file, log_problems, media_kind
    from usjepa_fast.data.ultrabench import is_ultrabench_dir

    root = Path(root)
    if is_ultrabench_dir(root):
        return SourceListing(ultrabench_sources(root, splits), {})
    listing = find_media(root, kinds)
    log_problems(listing.problems)
    base = root if root.is_dir() else root.parent
    sources = []
    for p in listing.files:
        meta = _dicom_meta(p) if media_kind(p) is not None and is_dicom_file(p) else {}
        sources.append(Source(p, _rel(p, base), media_kind(p) or "image", sibling_mask(p), meta=meta))
    return SourceListing(sources, {_rel(pr.path, base): pr.reason for pr in listing.problems})


def _dicom_meta(path: Path) -> dict[str, Any]:
    """The allow-listed header fields of a DICOM source; ``region_source`` is the source of the mask
    :func:`source_mask` will use (the header's regions, a provided mask, or ``"detected"``)."""
    from usjepa_fast.data.clips import declared_mask_source
    from usjepa_fast.data.dicom import safe_metadata

    safe = safe_metadata(path)
    meta = {k: safe[k] for k in DICOM_META_FIELDS}
    meta["region_source"] = declared_mask_source(path) or "detected"
    return meta


def list_sources(
    root: str | Path, kinds: tuple[str, ...] = ("image", "video"), splits: tuple[str, ...] | None = None
) -> list[Source]:
    """:func:`find_sources`'s sources (its problems are logged)."""
    return find_sources(root, kinds, splits).sources


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
