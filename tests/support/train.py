"""Tiny in-memory data and configs for training tests (CPU, seconds per run)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from usjepa_fast.config import apply_overrides, from_dict
from usjepa_fast.train.config import TrainConfig

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
