"""Mixed pretraining corpus: several datasets sampled with weight proportional to min(size, cap).

US-JEPA pretrains on ~49 public datasets of very different sizes; sampling each in proportion to
``min(len, cap)`` (cap = 50,000 frames in the paper) keeps one huge video collection from drowning
the small image datasets while still giving big datasets more draws than tiny ones. The sampling
itself (quotas, permutation streams inside each dataset, resume, rank shards) is
:class:`usjepa_fast.data.sampler.CorpusSampler` (``CorpusSampler.from_corpus(corpus)``).

:func:`build_pretrain_corpus` turns ``data.sources`` into members: prepared corpora (``usfast
prepare``: their members, read by ``pread``), UltraBench train splits and media folders (images and
single-frame DICOM; clips and cine DICOM), with the same member names and item order whether a
folder is read raw or prepared, so the one sampler and the group split treat both alike.
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
from usjepa_fast.data.media import find_media, log_problems, media_kind
from usjepa_fast.data.prepared import PreparedCorpus, is_prepared_corpus
from usjepa_fast.data.preprocess import PreprocessConfig, Preprocessor
from usjepa_fast.data.sampler import DEFAULT_CAP, corpus_weights
from usjepa_fast.data.ultrabench import UltraBenchDataset, is_ultrabench_dir
from usjepa_fast.data.video import FrameSampling, get_decoder
from usjepa_fast.errors import DataError

log = logging.getLogger("usfast")

PRETRAIN_KEYS = ("image", "scan_mask", "valid_patches")
RAW_KEYS = ("image", "scan_mask")  # preprocess=None: gray frames + masks for the device path


class MixedCorpus(Dataset):
    """Concatenation of ``datasets`` with per-dataset sampling weights ``∝ min(len, cap)``.

    Indexing is global (dataset 0's items first). Items keep only ``keys`` (default: the keys every
    pretraining item has, so batches from different datasets collate) plus ``source`` (the dataset
    index) and, on an item that stands in for unreadable files, ``failed``; pass ``keys=None`` to
    return items unchanged. ``problems`` (path -> reason): unreadable entries of the sources' listings.
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
        self.problems: dict[str, str] = {}  # unreadable listing entries of the sources (path -> reason)
        self.fingerprints: dict[str, str] = {}  # prepared corpus root -> PreparedCorpus.fingerprint

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
            item = {k: item[k] for k in self.keys} | ({"failed": item["failed"]} if "failed" in item else {})
        item["source"] = d
        return item

    def summary(self) -> list[dict[str, Any]]:
        rows = zip(self.names, self.sizes, self.weights, strict=True)
        return [{"name": n, "size": s, "weight": float(w)} for n, s, w in rows]

    def report(self) -> dict[str, Any]:
        """What a job summary lists about the inputs: ``unreadable`` (listing problems, files that cannot
        be indexed, inputs a prepare skipped, UltraBench records skipped), ``short`` (clips that ended
        before their container said, frames kept), ``failed`` (files that failed while reading items in
        this process), each path -> reason, and their counts."""
        unreadable, short, failed = dict(self.problems), {}, {}
        seen: set[int] = set()
        for ds in self.datasets:
            base = getattr(ds, "dataset", None)
            if isinstance(base, PreparedCorpus):
                if id(base) not in seen:
                    seen.add(id(base))
                    unreadable.update(base.unreadable)
                    short.update(base.short)
            elif hasattr(ds, "report"):  # folder datasets
                r = ds.report()
                unreadable.update(r["unreadable"])
                short.update(r["short"])
                failed.update(r["failed"])
            elif isinstance(ds, UltraBenchDataset):
                unreadable.update({f"{ds.source}: {why}": f"{n} record(s) skipped" for why, n in ds.skipped.items()})
        return {
            "unreadable": unreadable,
            "short": short,
            "failed": failed,
            "counts": {"unreadable": len(unreadable), "short": len(short), "failed": len(failed)},
        }


def build_pretrain_corpus(
    sources: list[str],
    preprocess: PreprocessConfig | None,
    cap: int = DEFAULT_CAP,
    sampling: FrameSampling | None = None,
    decoder: str = "auto",
    scan_mask: str = "auto",
    cache_dir: str | Path | None = None,
    on_error: str = "skip",
    mask_cache: str = "cache",
) -> MixedCorpus:
    """A :class:`MixedCorpus` from paths: each source is auto-detected as a prepared corpus (``usfast
    prepare``: its members), an UltraBench directory (its ``train`` split, never test), or a folder of
    media (images and single-frame DICOM -> ``NAME[images]``, clips and cine DICOM -> ``NAME[videos]``).

    With a :class:`PreprocessConfig` every item holds ``image (3, S, S)``, ``scan_mask (S, S)``,
    ``valid_patches (S/p, S/p)`` and ``source``; with ``None`` (the device path) ``image (h, w)`` gray
    and ``scan_mask (h, w)`` bool as stored or decoded, for ``prepared.collate_frames`` and
    ``preprocess_train_batch`` on the step's device. Unreadable files are skipped with a warning
    (``on_error="skip"``) so that a long pretraining run does not die on one bad file; the listings'
    problems are kept in ``.problems`` and everything is in :meth:`MixedCorpus.report`. Detected scan
    masks are cached in ``cache_dir`` (default the user cache), beside the data only with
    ``mask_cache="beside"``.
    """
    if not sources:
        raise DataError("no pretraining sources given; pass prepared corpora, UltraBench directories or media folders")
    transform = Preprocessor(preprocess) if preprocess is not None else None
    sampling = sampling or FrameSampling()
    datasets: list[Dataset] = []
    names: list[str] = []
    problems: dict[str, str] = {}
    fingerprints: dict[str, str] = {}
    folder = dict(scan_mask=scan_mask, cache_dir=cache_dir, on_error=on_error, mask_cache=mask_cache)
    for src in sources:
        root = Path(src)
        if not root.exists():
            raise DataError(f"pretraining source {root} does not exist; fix the path")
        if is_prepared_corpus(root):
            prepared = PreparedCorpus(root, transform, cap)
            stored = prepared.options.get("storage_size")
            if preprocess is not None and stored is not None and stored < preprocess.image_size:
                log.warning(
                    "prepared corpus %s stores frames at short side %d px < data.image_size=%d: crops are "
                    "upsampled; prepare it again with --storage-size %d or more",
                    root,
                    stored,
                    preprocess.image_size,
                    preprocess.image_size,
                )
            for name, member in prepared.member_datasets():
                datasets.append(member)
                names.append(name)
            fingerprints[str(root.resolve())] = prepared.fingerprint
            continue
        if is_ultrabench_dir(root):
            split = "train"
            datasets.append(UltraBenchDataset(root, split, transform))
            names.append(f"{root.name}[ultrabench:{split}]")
            continue
        listing = find_media(root)  # one listing: DICOM objects are images or clips by their header
        log_problems(listing.problems)
        problems.update({str(p.path): p.reason for p in listing.problems})
        kinds = {media_kind(p) for p in listing.files}
        if not kinds:
            extra = f" ({len(listing.problems)} unreadable entries)" if listing.problems else ""
            raise DataError(f"pretraining source {root} has no images or videos{extra}; remove it or fix the path")
        if "image" in kinds:
            datasets.append(ImageFolderDataset(root, transform, **folder))
            names.append(f"{root.name}[images]")
        if "video" in kinds:
            datasets.append(VideoFrameDataset(root, sampling, get_decoder(decoder), transform, **folder))
            names.append(f"{root.name}[videos]")
    corpus = MixedCorpus(datasets, names, cap=cap, keys=PRETRAIN_KEYS if transform is not None else RAW_KEYS)
    corpus.problems, corpus.fingerprints = problems, fingerprints
    for row in corpus.summary():
        log.info("corpus member %s: %d items, weight %.3f", row["name"], row["size"], row["weight"])
    return corpus
