"""Probe tests: tiny encoders (timm ViT-Tiny at 32 px, random init) on the shared synthetic dataset."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class CountingEncoder(nn.Module):
    """Wraps a FrozenEncoder and counts forward calls / images, to prove cached features are reused."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.info = inner.info
        self.calls = 0
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.images += x.shape[0]
        return self.inner(x)


def tiny_encoder(seed: int = 0) -> CountingEncoder:
    from usjepa_fast.models.resolve import resolve_encoder

    return CountingEncoder(resolve_encoder("vit_tiny_patch16_224", img_size=32, seed=seed))


@pytest.fixture
def ultrabench(synth_root):
    return synth_root / "ultrabench"
