"""Training data: the mixed pretraining corpus split into train / validation hold-out.

The same sources are opened twice: with training augmentation (random resized crop + flip) for the
train split and without it for the validation split, so the validation loss measures the model and
not the augmentation draw. The hold-out is whole groups (clips, patients: ``data.split``), identical
on every rank and across resumes, and the same clips whether a folder is read raw or prepared.

``data.sources`` may name prepared corpora (``usfast prepare``), UltraBench directories and media
folders; clip members carry their clip ids so the sampler visits them clip by clip
(``data.frames_per_visit``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from usjepa_fast.errors import DataError
from usjepa_fast.train.config import DataConfig

log = logging.getLogger("usfast")


@dataclass
class PretrainData:
    """What :func:`build_pretrain_data` opens for a run."""

    train: Subset  # train items of the corpus, in corpus order (members contiguous)
    val: Subset | None  # the hold-out, eval preprocessing (None when val_fraction = 0)
    sizes: list[int]  # train items per non-empty member (what the sampler weights)
    clips: list[np.ndarray | None]  # per non-empty member: the clip of each train item (None: no clips)
    corpus: Any  # the train-side MixedCorpus (its report: unreadable / short / failed inputs)
    fingerprints: dict[str, str] = field(default_factory=dict)  # prepared corpus root -> fingerprint

    def report(self) -> dict[str, Any]:
        return self.corpus.report()


def build_pretrain_data(cfg: DataConfig, patch_size: int, seed: int) -> PretrainData:
    """Open ``cfg.sources`` for training: train / validation subsets split by group, member sizes and
    clips for :class:`~usjepa_fast.data.sampler.CorpusSampler`, the corpus fingerprints for resume."""
    from usjepa_fast.data.corpus import build_pretrain_corpus
    from usjepa_fast.data.preprocess import PreprocessConfig
    from usjepa_fast.data.sampler import clip_ids
    from usjepa_fast.data.split import corpus_groups, split_by_group
    from usjepa_fast.data.video import FrameSampling

    if not cfg.sources:
        raise DataError("data.sources is empty; set it in the config or pass --set 'data.sources=[/path/to/data]'")
    common = dict(
        image_size=cfg.image_size,
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
        patch_size=patch_size,
        patch_coverage=cfg.patch_coverage,
    )
    train_pp = PreprocessConfig(train=True, crop_scale=tuple(cfg.crop_scale), hflip=cfg.hflip, **common)
    eval_pp = PreprocessConfig(train=False, **common)
    sampling = FrameSampling(every_k=cfg.every_k, max_frames=cfg.max_frames_per_clip)
    opts = dict(cache_dir=cfg.cache_dir, mask_cache=cfg.mask_cache)
    sources = list(cfg.sources)
    corpus = build_pretrain_corpus(sources, train_pp, cfg.cap, sampling, **opts)
    n = len(corpus)
    if n < 2:
        raise DataError(f"data.sources {cfg.sources} hold {n} frame(s); pretraining needs at least 2")
    groups, members = corpus_groups(corpus)
    train_idx, val_idx = split_by_group(groups, cfg.val_fraction, seed, members)
    # train_idx is sorted, so each member's train items stay one contiguous block
    sizes, clips = [], []
    for d, ds in enumerate(corpus.datasets):
        local = train_idx[members[train_idx] == d] - corpus.offsets[d]
        if len(local):
            ids = clip_ids(ds)
            sizes.append(len(local))
            clips.append(None if ids is None else ids[local])
    val_ds = None
    if len(val_idx):
        eval_corpus = build_pretrain_corpus(sources, eval_pp, cfg.cap, sampling, **opts)
        if len(eval_corpus) != n:
            raise DataError(f"data.sources {cfg.sources} changed while opening them; retry")
        val_ds = Subset(eval_corpus, val_idx.tolist())
    held = len(np.unique(groups[val_idx])) if len(val_idx) else 0
    log.info(
        "pretraining corpus: %d frames (%d train, %d validation in %d held-out clips/groups)",
        n,
        len(train_idx),
        len(val_idx),
        held,
    )
    report = corpus.report()["counts"]
    if any(report.values()):
        log.warning(
            "pretraining inputs: %d unreadable (skipped), %d short clips (their frames kept); the run summary "
            "lists them",
            report["unreadable"],
            report["short"],
        )
    return PretrainData(Subset(corpus, train_idx.tolist()), val_ds, sizes, clips, corpus, dict(corpus.fingerprints))


def collate_pretrain(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack only what training needs (items may carry paths, labels or None groups); ``failed``
    (files an item stands in for) is merged into one dict."""
    images = torch.stack([it["image"] for it in items])  # (B, 3, S, S)
    out: dict[str, Any] = {"image": images}
    if all(it.get("valid_patches") is not None for it in items):
        out["valid_patches"] = torch.stack([torch.as_tensor(it["valid_patches"]) for it in items])  # (B, gh, gw)
    failed = {p: r for it in items for p, r in (it.get("failed") or {}).items()}
    if failed:
        out["failed"] = failed
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
