"""UltraBench-format datasets as a torch Dataset.

A processed UltraBench directory holds JSON arrays of records, one per image, with paths relative to
the directory: ``image``, ``scan_mask`` (PNG, non-zero = scan region), an integer ``label`` and a
class name (``class``, or a task-specific key such as ``pathology``/``view``), and for most tasks a
``patient`` id. Two split layouts exist:

* ``train.json`` / ``validation.json`` / ``test.json``;
* the newer ``train_val.json`` / ``test.json``: the validation split is carved out of ``train_val``
  *by group* (patient), deterministically, so no patient appears in both.

Class names come from ``classes.json`` (a list in label order) when present, otherwise from the
(label, name) pairs of all split files together, so every split sees the same class list. Records
that cannot be used (image file missing, label missing or outside the class list, name contradicting
the label) are logged and counted in :attr:`UltraBenchDataset.skipped`, or raise with ``strict=True``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from usjepa_fast.data.media import read_image_gray
from usjepa_fast.data.preprocess import Preprocessor
from usjepa_fast.data.scan_region import load_mask
from usjepa_fast.errors import DataError

log = logging.getLogger("usfast")

SPLITS = ("train", "validation", "test")
# Keys that UltraBench's task scripts use for the class name, in order of preference.
CLASS_NAME_KEYS = ("class", "class_name", "label_name", "pathology", "view", "diagnosis")
GROUP_KEYS = ("patient", "patient_id", "group", "subject", "case")
VALIDATION_FRACTION = 0.15  # share of train_val groups that become validation (train_val layout)


def _read_json(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path} is not valid JSON (line {exc.lineno}: {exc.msg}); fix or regenerate the split file"
        ) from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{path} must hold a JSON array of objects (one per image)")
    return data


def is_ultrabench_dir(root: str | Path) -> bool:
    """True if ``root`` has UltraBench split files (``train.json`` or ``train_val.json`` and ``test.json``)."""
    root = Path(root)
    return root.is_dir() and (
        (root / "train.json").is_file() or (root / "train_val.json").is_file() or (root / "test.json").is_file()
    )


def _class_name(rec: dict[str, Any]) -> str | None:
    for key in CLASS_NAME_KEYS:
        value = rec.get(key)
        if isinstance(value, str):
            return value
    return None


def _group(rec: dict[str, Any]) -> str | None:
    for key in GROUP_KEYS:
        if rec.get(key) is not None:
            return str(rec[key])
    return None


def _stable_unit(text: str) -> float:
    """Deterministic hash of ``text`` into [0, 1) (no dependence on PYTHONHASHSEED)."""
    return int(hashlib.sha1(text.encode()).hexdigest()[:12], 16) / float(16**12)


def _split_train_val(records: list[dict[str, Any]], split: str, source: Path) -> list[dict[str, Any]]:
    """Carve ``validation`` out of ``train_val`` by group; records without a group split per image."""
    keyed = []
    for i, rec in enumerate(records):
        group = _group(rec)
        key = f"group:{group}" if group is not None else f"image:{rec.get('image', i)}"
        keyed.append((_stable_unit(key), rec))
    want_val = split == "validation"
    out = [rec for u, rec in keyed if (u < VALIDATION_FRACTION) == want_val]
    if not out:
        raise DataError(f"{source}: the {split} part of train_val.json is empty; it has too few patients to split")
    return out


def _infer_classes(root: Path, files: list[Path]) -> list[str]:
    classes_file = root / "classes.json"
    if classes_file.is_file():
        try:
            classes = json.loads(classes_file.read_text())
        except json.JSONDecodeError:
            raise DataError(
                f"{classes_file} is not valid JSON; it must be a list of class names in label order"
            ) from None
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes) or not classes:
            raise DataError(f"{classes_file} must be a non-empty JSON list of class names in label order")
        return classes
    names: dict[int, Counter] = {}
    for f in files:
        for rec in _read_json(f):
            label = rec.get("label")
            if isinstance(label, bool) or not isinstance(label, int) or label < 0:
                continue
            names.setdefault(label, Counter())[_class_name(rec) or f"class_{label}"] += 1
    if not names:
        raise DataError(f"{root}: no record has an integer 'label'; this is not a classification dataset")
    n = max(names) + 1
    # Gaps (a label never seen in any split) still get a name so label ids stay positional.
    return [names[i].most_common(1)[0][0] if i in names else f"class_{i}" for i in range(n)]


def load_record(image_path: str | Path, mask_path: str | Path | None) -> tuple[np.ndarray, np.ndarray]:
    """One UltraBench record's pixels: gray image ``(H, W)`` and scan mask ``(H, W)`` bool (the whole
    image when the record has no mask; a mask of another shape raises ``DataError`` naming both
    files). The one reader of records: dataset items and ``usfast embed DATASET`` both use it."""
    image = read_image_gray(image_path)
    if mask_path is None:
        return image, np.ones(image.shape, dtype=bool)
    mask = load_mask(mask_path)
    if mask.shape != image.shape:
        raise DataError(
            f"scan mask {mask_path} is {mask.shape}, image {image_path} is {image.shape}; re-export the mask"
        )
    return image, mask


class UltraBenchDataset(Dataset):
    """One split of an UltraBench-format dataset.

    Items: ``dict(image, scan_mask, valid_patches, label: int, group, path: str)``. With a
    ``transform`` (a :class:`Preprocessor`) ``image`` is ``(3, S, S)`` float32 and ``scan_mask`` /
    ``valid_patches`` are bool tensors; without one, ``image`` is the gray ``(H, W)`` numpy array,
    ``scan_mask`` bool ``(H, W)`` and there is no ``valid_patches`` (it depends on the model size).
    Records without a ``scan_mask`` get the
    whole image as region (the dataset's own mask is always preferred over detection).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Preprocessor | None = None,
        strict: bool = False,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transform = transform
        if not self.root.exists():
            raise DataError(f"dataset folder {self.root} does not exist; pass a processed UltraBench directory")
        if split not in SPLITS:
            raise DataError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
        if not is_ultrabench_dir(self.root):
            raise DataError(
                f"{self.root} has no train.json/validation.json/test.json or train_val.json; "
                "is it a processed UltraBench directory?"
            )
        direct = self.root / f"{split}.json"
        train_val = self.root / "train_val.json"
        split_files = [p for p in (self.root / f"{s}.json" for s in (*SPLITS, "train_val")) if p.is_file()]
        if direct.is_file():
            source, records = direct, _read_json(direct)
        elif split in ("train", "validation") and train_val.is_file():
            source, records = train_val, _split_train_val(_read_json(train_val), split, train_val)
        else:
            raise DataError(f"{self.root} has no {split}.json (nor train_val.json for train/validation)")
        self.source = source
        self.classes: list[str] = _infer_classes(self.root, split_files)
        self.skipped: Counter = Counter()

        paths, masks, labels, groups = [], [], [], []
        for i, rec in enumerate(records):
            reason = self._check(rec)
            if reason is not None:
                msg = f"{source} record {i}: {reason}"
                if strict:
                    raise DataError(msg + "; fix the record or pass strict=False to skip it")
                log.warning("skipping %s", msg)
                self.skipped[reason.split(" (")[0]] += 1
                continue
            paths.append(self.root / rec["image"])
            masks.append(self.root / rec["scan_mask"] if rec.get("scan_mask") else None)
            labels.append(int(rec["label"]))
            groups.append(_group(rec))
        if self.skipped:
            log.warning(
                "%s: skipped %d of %d records (%s)",
                source,
                sum(self.skipped.values()),
                len(records),
                ", ".join(f"{k}: {v}" for k, v in self.skipped.items()),
            )
        if not records:
            raise DataError(f"{source} holds no records; regenerate the split or choose another split")
        if not paths:
            raise DataError(
                f"{source} has no usable records (skipped: {dict(self.skipped)}); check the image paths and labels"
            )
        self.paths: list[Path] = paths
        self.mask_paths: list[Path | None] = masks
        self.labels: np.ndarray = np.asarray(labels, dtype=np.int64)
        self.groups: list[str | None] = groups

    def _check(self, rec: dict[str, Any]) -> str | None:
        """Why a record is unusable, or None."""
        image = rec.get("image")
        if not isinstance(image, str) or not image:
            return "no 'image' path"
        if not (self.root / image).is_file():
            return f"image file missing ({self.root / image})"
        mask = rec.get("scan_mask")
        if mask and not (self.root / mask).is_file():
            return f"scan mask file missing ({self.root / mask})"
        label = rec.get("label")
        if isinstance(label, bool) or not isinstance(label, int):
            return f"label missing or not an integer ({label!r})"
        if not 0 <= label < len(self.classes):
            return f"label outside the class list ({label} not in 0..{len(self.classes) - 1})"
        name = _class_name(rec)
        if name is not None and name != self.classes[label] and (self.root / "classes.json").is_file():
            return f"class name contradicts label ({name!r} vs {self.classes[label]!r} for {label})"
        return None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        """Gray image ``(H, W)`` and its scan mask ``(H, W)`` bool (raises DataError naming the file)."""
        return load_record(self.paths[idx], self.mask_paths[idx])

    def __getitem__(self, idx: int) -> dict[str, Any]:
        image, mask = self.load(idx)
        item: dict[str, Any] = {
            "label": int(self.labels[idx]),
            # "" rather than None so that torch's default collate accepts datasets without patients.
            "group": self.groups[idx] or "",
            "path": str(self.paths[idx]),
        }
        if self.transform is None:
            item.update(image=image, scan_mask=mask)
        else:
            item.update(self.transform(image, mask))
        return item

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts, strict=True)}
