"""Tiny in-memory data and configs for the training tests (CPU, seconds per run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from usjepa_fast.config import apply_overrides, from_dict
from usjepa_fast.train.config import TrainConfig
from usjepa_fast.train.data import TensorImageDataset

SIZE = 32  # 8x8 grid of 4-px patches


def smooth_images(n: int, seed: int = 0) -> torch.Tensor:
    """Low-frequency random images (predictable from context, unlike white noise): (n, 3, S, S)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 1, 4, 4, generator=g)
    img = F.interpolate(coarse, size=(SIZE, SIZE), mode="bicubic", align_corners=False)
    return img.expand(-1, 3, -1, -1).contiguous()


def fan_validity(n: int) -> torch.Tensor:
    valid = torch.ones(n, SIZE // 4, SIZE // 4, dtype=torch.bool)
    valid[:, :, 0] = False  # left column outside the "scan region"
    return valid


def tiny_cfg(out_dir: Path, *overrides: str) -> TrainConfig:
    base = [
        f"data.image_size={SIZE}",
        "data.batch_size=8",
        "data.num_workers=0",
        "model.student=usjepa_vit_tiny",
        "model.embed_dim=32",
        "model.depth=2",
        "model.num_heads=2",
        "model.patch_size=4",
        "model.predictor=predictor_tiny",
        "model.predictor_embed_dim=32",
        "model.predictor_depth=1",
        "model.predictor_num_heads=2",
        "mask.min_keep=4",
        "optim.steps=10",
        "optim.warmup_steps=2",
        "optim.lr=2e-3",
        "run.compile=false",
        "run.progress=false",
        f"run.out_dir={out_dir}",
        "run.log_every=1",
        "run.ckpt_every=100",
        "run.val_every=100",
        "teacher.bf16=false",
        "run.precision=fp32",  # same numerics on every CPU (auto = bf16 on AMX/AVX512-BF16 ones)
    ]
    return from_dict(TrainConfig, apply_overrides({}, base + list(overrides)))


@pytest.fixture
def make_cfg():
    """tiny_cfg as a fixture (test modules here are not a package, so they cannot import conftest)."""
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
