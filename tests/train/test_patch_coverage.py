"""``data.patch_coverage``: the share of a patch that must be scan region for USrc to draw there in
training (one rule with embed's ``--patch-coverage``: ``data.scan_region.coverage_validity``)."""

from __future__ import annotations

import pytest

from usjepa_fast.errors import ConfigError
from usjepa_fast.train.config import load_train_config
from usjepa_fast.train.data import build_pretrain_data


def _valid_counts(ub, coverage: float) -> list[int]:
    cfg = load_train_config(
        "salt_tiny_cpu", [f"data.sources=[{ub}]", f"data.patch_coverage={coverage}", "data.hflip=false"]
    )
    cfg.data.crop_scale = (1.0, 1.0)  # whole frames: the grids of both runs cover the same pixels
    data = build_pretrain_data(cfg.data, cfg.model.patch_size, seed=0)
    return [int(data.train[i]["valid_patches"].sum()) for i in range(8)]


def test_training_coverage_decides_the_usrc_patches(synth_root) -> None:
    ub = synth_root / "ultrabench"
    touches, half, full = (_valid_counts(ub, c) for c in (0.0, 0.5, 1.0))
    assert all(t >= h >= f > 0 for t, h, f in zip(touches, half, full, strict=True))
    assert sum(touches) > sum(half) > sum(full)  # fan borders: the rule changes real patches


def test_training_coverage_is_range_checked() -> None:
    with pytest.raises(ConfigError, match="data.patch_coverage"):
        load_train_config("salt_tiny_cpu", ["data.patch_coverage=1.5"])
