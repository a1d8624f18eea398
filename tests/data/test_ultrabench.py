"""UltraBench reader: both split layouts, groups, classes, and bad records."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from usjepa_fast.data.preprocess import PreprocessConfig, Preprocessor
from usjepa_fast.data.synth import CLASSES
from usjepa_fast.data.ultrabench import UltraBenchDataset, is_ultrabench_dir
from usjepa_fast.errors import DataError


@pytest.fixture
def ub_copy(synth_root, tmp_path):
    dst = tmp_path / "ub"
    shutil.copytree(synth_root / "ultrabench", dst)
    return dst


def test_reads_every_split_with_classes_groups_and_masks(synth_root) -> None:
    root = synth_root / "ultrabench"
    assert is_ultrabench_dir(root)
    total, groups = 0, {}
    for split in ("train", "validation", "test"):
        ds = UltraBenchDataset(root, split)
        records = json.loads((root / f"{split}.json").read_text())
        assert len(ds) == len(records) and ds.classes == list(CLASSES)
        assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [r["label"] for r in records]
        assert ds.groups == [r["patient"] for r in records]
        groups[split] = set(ds.groups)
        total += len(ds)
        item = ds[0]
        assert item["image"].dtype == np.uint8 and item["image"].ndim == 2
        assert item["scan_mask"].dtype == bool and item["scan_mask"].shape == item["image"].shape
        assert 0.2 < item["scan_mask"].mean() < 0.95  # a real region, not the whole frame
        assert item["label"] == records[0]["label"] and item["path"].endswith(records[0]["image"])
    assert total == 48
    # patients never straddle splits
    assert not (groups["train"] & groups["validation"]) and not (groups["train"] & groups["test"])


def test_transform_gives_model_inputs_and_collates(synth_root) -> None:
    ds = UltraBenchDataset(synth_root / "ultrabench", "train", Preprocessor(PreprocessConfig(image_size=64)))
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 64, 64)
    assert batch["valid_patches"].shape == (2, 4, 4) and batch["valid_patches"].dtype == torch.bool
    assert batch["label"].dtype == torch.int64


def test_train_val_layout_splits_by_group_deterministically(ub_copy) -> None:
    train = json.loads((ub_copy / "train.json").read_text())
    val = json.loads((ub_copy / "validation.json").read_text())
    merged = train + val
    (ub_copy / "train_val.json").write_text(json.dumps(merged))
    (ub_copy / "train.json").unlink()
    (ub_copy / "validation.json").unlink()
    tr = UltraBenchDataset(ub_copy, "train")
    va = UltraBenchDataset(ub_copy, "validation")
    assert len(tr) + len(va) == len(merged) and len(va) > 0
    assert not set(tr.groups) & set(va.groups)
    assert UltraBenchDataset(ub_copy, "validation").paths == va.paths  # deterministic
    assert len(UltraBenchDataset(ub_copy, "test")) > 0


def test_missing_files_and_bad_labels_are_skipped_and_counted(ub_copy, caplog) -> None:
    recs = json.loads((ub_copy / "test.json").read_text())
    n = len(recs)
    recs[0]["image"] = "images/does_not_exist.png"
    recs[1]["label"] = 7  # outside the class list
    recs[2]["label"] = "cyst"  # not an integer
    recs[3]["class"] = "cyst" if recs[3]["class"] != "cyst" else "normal"  # contradicts classes.json
    (ub_copy / "test.json").write_text(json.dumps(recs))
    with caplog.at_level(logging.WARNING, logger="usfast"):
        ds = UltraBenchDataset(ub_copy, "test")
    assert len(ds) == n - 4 and sum(ds.skipped.values()) == 4
    assert "does_not_exist.png" in caplog.text and "skipped 4 of" in caplog.text
    with pytest.raises(DataError, match="does_not_exist.png"):
        UltraBenchDataset(ub_copy, "test", strict=True)


def test_classes_inferred_without_classes_json(ub_copy) -> None:
    (ub_copy / "classes.json").unlink()
    assert UltraBenchDataset(ub_copy, "validation").classes == list(CLASSES)


def test_bad_dataset_roots(tmp_path, ub_copy) -> None:
    with pytest.raises(DataError, match="does not exist"):
        UltraBenchDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="UltraBench"):
        UltraBenchDataset(tmp_path / "empty")
    with pytest.raises(DataError, match="unknown split"):
        UltraBenchDataset(ub_copy, "val")
    (ub_copy / "test.json").write_text("[{broken")
    with pytest.raises(DataError, match="not valid JSON"):
        UltraBenchDataset(ub_copy, "test")
    (ub_copy / "test.json").write_text(json.dumps([{"image": "images/nope.png", "label": 0}]))
    with pytest.raises(DataError, match="no usable records"):
        UltraBenchDataset(ub_copy, "test")


def test_mask_shape_mismatch_is_a_clear_error(ub_copy) -> None:
    from PIL import Image

    ds = UltraBenchDataset(ub_copy, "train")
    Image.fromarray(np.ones((10, 10), np.uint8)).save(ds.mask_paths[0])
    with pytest.raises(DataError, match="re-export the mask"):
        ds[0]
