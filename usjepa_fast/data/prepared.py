"""A prepared corpus (``usfast prepare``) as a torch Dataset: one ``pread`` per frame, no decoding.

:class:`PreparedCorpus` reads ``corpus.json`` and the parts' indexes once into flat numpy arrays
(copy-on-write friendly: forked DataLoader workers share them) and serves frames by offset through
:class:`usjepa_fast.data.shards.FrameReader`. Items are member-major (the members of
``build_pretrain_corpus``: ``NAME[images]``, ``NAME[videos]``, ``NAME[ultrabench:train]``) and a
clip's frames are contiguous, so the one corpus sampler weights members by ``min(size, cap)`` from
``.sizes`` and a clip-aware sampler walks clips from ``.clip_offsets``.

Two ways to read it: with a :class:`Preprocessor` items are what the folder datasets give (``image
(3, S, S)``, ``scan_mask``, ``valid_patches``); without one (the fast path) items carry the stored
uint8 frame and its mask, :func:`collate_frames` pads a batch and
:func:`usjepa_fast.data.preprocess.preprocess_train_batch` finishes it on the step's device.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from usjepa_fast.data.media import stretch_to_uint8
from usjepa_fast.data.preprocess import Preprocessor, pad_frames
from usjepa_fast.data.sampler import DEFAULT_CAP, corpus_weights
from usjepa_fast.data.shards import FrameReader, read_part_index
from usjepa_fast.errors import DataError

CORPUS_FILE = "corpus.json"


def is_prepared_corpus(path: str | Path) -> bool:
    """True for a folder written by ``usfast prepare`` (complete or not)."""
    path = Path(path)
    return path.is_dir() and ((path / CORPUS_FILE).is_file() or (path / "prepare.json").is_file())


class PreparedCorpus(Dataset):
    """Frames of a prepared corpus. See the module doc and docs/ARCHITECTURE.md (data.prepared)."""

    def __init__(self, root: str | Path, transform: Preprocessor | None = None, cap: int = DEFAULT_CAP) -> None:
        self.root = Path(root)
        manifest_path = self.root / CORPUS_FILE
        if not manifest_path.is_file():
            if (self.root / "prepare.json").is_file():
                raise DataError(f"{self.root} is an unfinished prepare; rerun the same usfast prepare to complete it")
            raise DataError(f"{self.root} is not a prepared corpus (no {CORPUS_FILE}); run usfast prepare first")
        try:
            raw = manifest_path.read_bytes()
            manifest = json.loads(raw)
        except (OSError, ValueError):
            raise DataError(f"{manifest_path} cannot be read; rerun usfast prepare with --overwrite") from None
        if manifest.get("format") != "usfast-corpus" or manifest.get("version") != 1:
            raise DataError(f"{manifest_path} is not a usfast corpus of format version 1; prepare it again")
        if cap < 1:
            raise DataError(f"corpus cap={cap} must be >= 1")
        # Names this corpus exactly (corpus.json lists every part's frame count and every input): a
        # resumed run can refuse a corpus that was prepared again in between.
        self.fingerprint = hashlib.sha1(raw).hexdigest()[:16]
        self.options: dict[str, Any] = manifest["options"]
        self.members: list[dict[str, Any]] = manifest["members"]
        self.transform = transform
        self.cap = cap
        self.unreadable: list[tuple[str, str]] = [tuple(p) for p in manifest["unreadable"]]
        self.short: list[tuple[str, str]] = [tuple(p) for p in manifest.get("short", [])]  # ended early, kept
        units = manifest["units"]
        # Fixed-width numpy string arrays, not lists: forked DataLoader workers share them page by page
        # (touching a Python object's refcount would copy its page into every worker).
        self.unit_member = np.asarray(units["member"], dtype=np.int64)
        self.unit_paths = np.asarray(units["path"], dtype=str)
        self.unit_kinds = np.asarray(units["kind"], dtype=str)
        self.unit_labels = np.asarray(units["label"], dtype=np.int64)
        self.group_names, self.unit_group = np.unique(np.asarray(units["group"], dtype=str), return_inverse=True)
        self._load_parts(manifest["shards"])
        frames_per_unit = np.bincount(self.item_clip, minlength=len(self.unit_paths))
        if not np.array_equal(frames_per_unit, np.asarray(units["frames"])):
            raise DataError(f"{self.root}: the shard indexes disagree with {CORPUS_FILE}; prepare it again")
        self.clip_offsets = np.concatenate([[0], np.cumsum(frames_per_unit)]).astype(np.int64)  # (U + 1,)
        if not (np.diff(self.item_clip) >= 0).all():
            raise DataError(f"{self.root}: frames are not in unit order; prepare it again")
        self.item_groups = self.unit_group[self.item_clip]  # (N,) group ids
        self.item_member = self.unit_member[self.item_clip]  # (N,)
        # Mixed-corpus view: non-empty members in order (the folder path's members).
        sizes = np.bincount(self.item_member, minlength=len(manifest["members"]))
        self._members = [m for m in range(len(sizes)) if sizes[m] > 0]
        self.names: list[str] = [manifest["members"][m]["name"] for m in self._members]
        self.sizes: list[int] = [int(sizes[m]) for m in self._members]
        self.offsets: list[int] = np.cumsum([0, *self.sizes]).tolist()
        self.member_roots = [Path(m["root"]) for m in manifest["members"]]
        self._root_strs = [str(r) for r in self.member_roots]
        self.weights: np.ndarray = corpus_weights(self.sizes, cap)  # the sampler's rule, ∝ min(size, cap)
        self._source_of_member = {m: i for i, m in enumerate(self._members)}
        self._reader = FrameReader(self.root / "shards")

    def _load_parts(self, shards: list[dict[str, Any]]) -> None:
        """Flat per-frame arrays from every part's index (in corpus order)."""
        cols: dict[str, list[np.ndarray]] = {k: [] for k in ("part", "offset", "h", "w", "unit", "index", "t", "m")}
        self.part_files: list[str] = []
        mask_rows: list[np.ndarray] = []  # per part: (masks, 3) offset/h/w
        mask_base = 0
        for p, shard in enumerate(shards):
            index = read_part_index(self.root / "shards" / f"{shard['name']}.json")
            fr = index["frames"]
            n = len(fr["offset"])
            self.part_files.append(index["data"])
            cols["part"].append(np.full(n, p, dtype=np.int32))
            cols["offset"].append(np.asarray(fr["offset"], dtype=np.int64))
            cols["h"].append(np.asarray(fr["height"], dtype=np.int32))
            cols["w"].append(np.asarray(fr["width"], dtype=np.int32))
            cols["unit"].append(np.asarray(fr["unit"], dtype=np.int64))
            cols["index"].append(np.asarray(fr["frame_index"], dtype=np.int64))
            cols["t"].append(np.asarray(fr["timestamp"], dtype=np.float64))
            cols["m"].append(np.asarray(fr["mask"], dtype=np.int64) + mask_base)
            masks = np.asarray(index["masks"], dtype=np.int64).reshape(-1, 3)
            mask_rows.append(masks)
            mask_base += len(masks)
        cat = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in cols.items()}
        if not len(cat["offset"]):
            raise DataError(f"{self.root} holds no frames (every input was unreadable: see {CORPUS_FILE})")
        self.item_part = cat["part"].astype(np.int32)
        self.item_offset = cat["offset"].astype(np.int64)
        self.item_shape = np.stack([cat["h"], cat["w"]], axis=1).astype(np.int32)  # (N, 2)
        self.item_clip = cat["unit"].astype(np.int64)  # (N,) unit id
        self.item_frame_index = cat["index"].astype(np.int64)
        self.item_timestamp = cat["t"].astype(np.float64)
        self.item_mask = cat["m"].astype(np.int64)  # global mask id
        self._mask_table = np.concatenate(mask_rows) if mask_rows else np.zeros((0, 3), np.int64)

    # -- reading -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.item_offset)

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame ``i`` as stored: gray ``(h, w)`` uint8 and its scan mask ``(h, w)`` bool (read-only)."""
        data = self.part_files[self.item_part[i]]
        h, w = (int(v) for v in self.item_shape[i])
        gray = self._reader.read(data, int(self.item_offset[i]), h, w)
        mo, mh, mw = (int(v) for v in self._mask_table[self.item_mask[i]])
        return gray, self._reader.read_mask(data, mo, mh, mw)

    def path_of(self, unit: int) -> Path:
        """The input file unit ``unit`` was read from."""
        return self.member_roots[self.unit_member[unit]] / str(self.unit_paths[unit])

    def _path_str(self, unit: int) -> str:  # path_of as a string, without pathlib's per-call parsing
        return os.path.join(self._root_strs[self.unit_member[unit]], str(self.unit_paths[unit]))

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a corpus of {len(self)} frames")
        i = int(i) % len(self)
        gray, mask = self.read(i)
        unit = int(self.item_clip[i])
        item: dict[str, Any] = {
            "source": self._source_of_member[int(self.unit_member[unit])],
            "clip": unit,
            "group": str(self.group_names[self.unit_group[unit]]),
            "path": self._path_str(unit),
            "label": int(self.unit_labels[unit]),
            "frame_index": int(self.item_frame_index[i]),
            "timestamp": float(self.item_timestamp[i]),
        }
        if self.transform is None:
            item.update(image=gray, scan_mask=mask)
        else:
            item.update(self.transform(gray, mask))
        return item

    # -- the mixed-corpus view (for the one sampler) ------------------------------------------------------
    def locate(self, i: int) -> tuple[int, int]:
        """(member, index inside the member) of global item ``i``."""
        d = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return d, i - self.offsets[d]

    def summary(self) -> list[dict[str, Any]]:
        rows = zip(self.names, self.sizes, self.weights, strict=True)
        return [{"name": n, "size": s, "weight": float(w)} for n, s, w in rows]

    def member_datasets(self) -> list[tuple[str, Subset]]:
        """``(name, dataset)`` per non-empty member, in order: what ``MixedCorpus(datasets, names)``
        takes, so prepared members mix with raw folders under one ``min(size, cap)`` weighting."""
        return [(n, Subset(self, range(self.offsets[d], self.offsets[d + 1]))) for d, n in enumerate(self.names)]

    def clip_frames(self, unit: int) -> range:
        """The items of unit ``unit`` (a clip's frames, or an image's one), in frame order."""
        return range(int(self.clip_offsets[unit]), int(self.clip_offsets[unit + 1]))


def collate_frames(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Raw items (``image (h, w)`` gray, ``scan_mask (h, w)`` bool: a ``PreparedCorpus(transform=None)``
    or ``build_pretrain_corpus(preprocess=None)``) -> ``dict(frames (B, Hm, Wm) uint8, masks (B, Hm, Wm)
    bool, sizes (B, 2), source (B,)[, clip (B,)][, failed {path: reason}])`` for
    :func:`preprocess_train_batch` on the device (16-bit frames: ``media.stretch_to_uint8``)."""
    frames, masks, sizes = pad_frames(
        [stretch_to_uint8(np.asarray(it["image"])) for it in items], [it["scan_mask"] for it in items]
    )
    out: dict[str, Any] = {"frames": frames, "masks": masks, "sizes": sizes}
    for key in ("source", "clip"):
        if all(key in it for it in items):
            out[key] = torch.tensor([it[key] for it in items], dtype=torch.int64)
    failed = {p: r for it in items for p, r in (it.get("failed") or {}).items()}
    if failed:
        out["failed"] = failed
    return out
