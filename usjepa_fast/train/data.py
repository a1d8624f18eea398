"""Training data: the mixed pretraining corpus split into train / validation hold-out.

The same sources are opened twice: with training augmentation (random resized crop + flip) for the
train split and without it for the validation split, so the validation loss measures the model and
not the augmentation draw. The split is a seeded permutation of corpus indices (first
``val_fraction`` = hold-out), identical on every rank and across resumes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from usjepa_fast.errors import DataError
from usjepa_fast.train.config import DataConfig

log = logging.getLogger("usfast")


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, val) index lists; at least one validation item when val_fraction > 0 and n >= 2."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919)).tolist()
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n >= 2:
        n_val = max(1, min(n_val, n - 1))
    return sorted(order[n_val:]), sorted(order[:n_val])


def build_pretrain_datasets(cfg: DataConfig, patch_size: int, seed: int) -> tuple[Dataset, Dataset | None, list[int]]:
    """(train dataset, validation dataset or None, train items per corpus member) from ``cfg.sources``.

    The train subset keeps the corpus order (members are contiguous), so the member sizes are all a
    :class:`~usjepa_fast.data.sampler.CorpusSampler` needs to weight the members by ``min(size, cap)``."""
    from usjepa_fast.data.corpus import build_pretrain_corpus
    from usjepa_fast.data.preprocess import PreprocessConfig
    from usjepa_fast.data.video import FrameSampling

    if not cfg.sources:
        raise DataError("data.sources is empty; set it in the config or pass --set 'data.sources=[/path/to/data]'")
    common = dict(image_size=cfg.image_size, mean=tuple(cfg.mean), std=tuple(cfg.std), patch_size=patch_size)
    train_pp = PreprocessConfig(train=True, crop_scale=tuple(cfg.crop_scale), hflip=cfg.hflip, **common)
    eval_pp = PreprocessConfig(train=False, **common)
    sampling = FrameSampling(every_k=cfg.every_k, max_frames=cfg.max_frames_per_clip)
    train_corpus = build_pretrain_corpus(list(cfg.sources), train_pp, cfg.cap, sampling)
    n = len(train_corpus)
    if n < 2:
        raise DataError(f"data.sources {cfg.sources} hold {n} frame(s); pretraining needs at least 2")
    train_idx, val_idx = split_indices(n, cfg.val_fraction, seed)
    # train_idx is sorted, so each member's train items stay one contiguous block
    members = np.searchsorted(np.asarray(train_corpus.offsets), np.asarray(train_idx), side="right") - 1
    train_sizes = np.bincount(members, minlength=len(train_corpus.datasets)).tolist()
    val_ds = None
    if val_idx:
        eval_corpus = build_pretrain_corpus(list(cfg.sources), eval_pp, cfg.cap, sampling)
        if len(eval_corpus) != n:
            raise DataError(f"data.sources {cfg.sources} changed while opening them; retry")
        val_ds = Subset(eval_corpus, val_idx)
    log.info("pretraining corpus: %d frames (%d train, %d validation)", n, len(train_idx), len(val_idx))
    return Subset(train_corpus, train_idx), val_ds, [n for n in train_sizes if n > 0]


def collate_pretrain(items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack only what training needs (items may carry paths, labels or None groups)."""
    images = torch.stack([it["image"] for it in items])  # (B, 3, S, S)
    out = {"image": images}
    if all(it.get("valid_patches") is not None for it in items):
        out["valid_patches"] = torch.stack([torch.as_tensor(it["valid_patches"]) for it in items])  # (B, gh, gw)
    return out


class TensorImageDataset(Dataset):
    """In-memory images ``(N, 3, S, S)`` (+ optional valid-patch grids): tests and benchmarks."""

    def __init__(self, images: torch.Tensor, valid_patches: torch.Tensor | None = None) -> None:
        self.images = images
        self.valid_patches = valid_patches

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"image": self.images[i]}
        if self.valid_patches is not None:
            item["valid_patches"] = self.valid_patches[i]
        return item
