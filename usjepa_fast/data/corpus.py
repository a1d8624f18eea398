"""Mixed pretraining corpus: several datasets sampled with weight proportional to min(size, cap).

US-JEPA pretrains on ~49 public datasets of very different sizes; sampling each in proportion to
``min(len, cap)`` (cap = 50,000 frames in the paper) keeps one huge video collection from drowning
the small image datasets while still giving big datasets more draws than tiny ones. The sampling
itself (quotas, permutation streams inside each dataset, resume, rank shards) is
:class:`usjepa_fast.data.sampler.CorpusSampler` (``CorpusSampler.from_corpus(corpus)``).
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from usjepa_fast.data.folders import ImageFolderDataset, VideoFrameDataset
from usjepa_fast.data.media import list_media
from usjepa_fast.data.preprocess import PreprocessConfig, Preprocessor
from usjepa_fast.data.sampler import DEFAULT_CAP, corpus_weights
from usjepa_fast.data.ultrabench import UltraBenchDataset, is_ultrabench_dir
from usjepa_fast.data.video import FrameSampling, get_decoder
from usjepa_fast.errors import DataError

log = logging.getLogger("usfast")

PRETRAIN_KEYS = ("image", "scan_mask", "valid_patches")


class MixedCorpus(Dataset):
    """Concatenation of ``datasets`` with per-dataset sampling weights ``∝ min(len, cap)``.

    Indexing is global (dataset 0's items first). Items keep only ``keys`` (default: the keys every
    pretraining item has, so batches from different datasets collate) plus ``source`` (the dataset
    index); pass ``keys=None`` to return items unchanged.
    """

    def __init__(
        self,
        datasets: Sequence[Dataset],
        names: Sequence[str] | None = None,
        cap: int = DEFAULT_CAP,
        keys: Sequence[str] | None = PRETRAIN_KEYS,
    ) -> None:
        if not datasets:
            raise DataError("the pretraining corpus is empty; pass at least one dataset/folder")
        if cap < 1:
            raise DataError(f"corpus cap={cap} must be >= 1")
        self.datasets = list(datasets)
        self.names = list(names) if names is not None else [f"dataset_{i}" for i in range(len(datasets))]
        if len(self.names) != len(self.datasets):
            raise ValueError(f"{len(self.names)} names for {len(self.datasets)} datasets")
        self.sizes = [len(d) for d in self.datasets]
        for name, size in zip(self.names, self.sizes, strict=True):
            if size == 0:
                raise DataError(f"corpus member '{name}' is empty; remove it from the sources")
        self.cap = cap
        self.keys = tuple(keys) if keys is not None else None
        self.offsets = np.cumsum([0, *self.sizes]).tolist()
        self.weights: np.ndarray = corpus_weights(self.sizes, cap)  # sampling probability per dataset

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, idx: int) -> tuple[int, int]:
        """Global index -> (dataset index, index inside it)."""
        if not 0 <= idx < len(self):
            raise IndexError(f"index {idx} out of range for a corpus of {len(self)}")
        d = bisect.bisect_right(self.offsets, idx) - 1
        return d, idx - self.offsets[d]

    def __getitem__(self, idx: int) -> dict[str, Any]:
        d, local = self.locate(int(idx))
        item = self.datasets[d][local]
        if self.keys is not None:
            missing = [k for k in self.keys if k not in item]
            if missing:
                raise DataError(
                    f"corpus member '{self.names[d]}' items lack {missing}; give every member a Preprocessor"
                )
            item = {k: item[k] for k in self.keys}
        item["source"] = d
        return item

    def summary(self) -> list[dict[str, Any]]:
        rows = zip(self.names, self.sizes, self.weights, strict=True)
        return [{"name": n, "size": s, "weight": float(w)} for n, s, w in rows]


def build_pretrain_corpus(
    sources: list[str],
    preprocess: PreprocessConfig,
    cap: int = DEFAULT_CAP,
    sampling: FrameSampling | None = None,
    decoder: str = "auto",
    scan_mask: str = "auto",
    cache_dir: str | Path | None = None,
    on_error: str = "skip",
) -> MixedCorpus:
    """A :class:`MixedCorpus` from paths: each source is auto-detected as an UltraBench directory (its
    ``train`` split, never test), or a folder of images and/or videos (both become separate members).

    Every item holds ``image (3, S, S)``, ``scan_mask (S, S)``, ``valid_patches (S/p, S/p)`` and
    ``source``. Unreadable files are skipped with a warning (``on_error="skip"``) so that a long
    pretraining run does not die on one bad file.
    """
    if not sources:
        raise DataError("no pretraining sources given; pass UltraBench directories or media folders")
    transform = Preprocessor(preprocess)
    sampling = sampling or FrameSampling()
    datasets: list[Dataset] = []
    names: list[str] = []
    for src in sources:
        root = Path(src)
        if not root.exists():
            raise DataError(f"pretraining source {root} does not exist; fix the path")
        if is_ultrabench_dir(root):
            split = "train"
            datasets.append(UltraBenchDataset(root, split, transform))
            names.append(f"{root.name}[ultrabench:{split}]")
            continue
        has_images = bool(list_media(root, ("image",)))
        has_videos = bool(list_media(root, ("video",)))
        if not has_images and not has_videos:
            raise DataError(f"pretraining source {root} has no images or videos; remove it or fix the path")
        if has_images:
            datasets.append(
                ImageFolderDataset(root, transform, scan_mask=scan_mask, cache_dir=cache_dir, on_error=on_error)
            )
            names.append(f"{root.name}[images]")
        if has_videos:
            datasets.append(
                VideoFrameDataset(
                    root,
                    sampling,
                    get_decoder(decoder),
                    transform,
                    scan_mask=scan_mask,
                    cache_dir=cache_dir,
                    on_error=on_error,
                )
            )
            names.append(f"{root.name}[videos]")
    corpus = MixedCorpus(datasets, names, cap=cap)
    for row in corpus.summary():
        log.info("corpus member %s: %d items, weight %.3f", row["name"], row["size"], row["weight"])
    return corpus
