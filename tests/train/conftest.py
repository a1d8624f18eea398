"""Fixtures for the training tests (helpers live in ``support.train``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support.train import SIZE, fan_validity, smooth_images, tiny_cfg

from usjepa_fast.train.data import TensorImageDataset


@pytest.fixture
def make_cfg():
    """``support.train.tiny_cfg`` as a fixture."""
    return tiny_cfg


@pytest.fixture
def tiny_data() -> tuple[TensorImageDataset, TensorImageDataset]:
    imgs = smooth_images(48)
    valid = fan_validity(48)
    return TensorImageDataset(imgs[:40], valid[:40]), TensorImageDataset(imgs[40:], valid[40:])


@pytest.fixture
def random_teacher(tmp_path: Path) -> Path:
    """An export-ready frozen teacher of another width (48) than the tiny students (32)."""
    from usjepa_fast.models import create
    from usjepa_fast.models.frozen import save_export_ready

    torch.manual_seed(123)
    t = create("usjepa_vit_tiny", img_size=SIZE, patch_size=4, embed_dim=48, depth=1, num_heads=2)
    info = t.encoder_info("teacher", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return save_export_ready(t, info, tmp_path / "teacher" / "student.safetensors")
