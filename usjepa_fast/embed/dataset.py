"""Features of a labelled UltraBench split in memory, through the embed engine (the probe's one entry point).

:func:`embed_split` turns every record of a split into a source, reads it exactly as
:class:`~usjepa_fast.data.ultrabench.UltraBenchDataset` does (its own scan masks; no mask = the whole
image) and runs the same engine as ``usfast embed`` with an in-memory sink: same batching, same
backend object, same preprocessing. Records that cannot be read are logged, counted and left out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from usjepa_fast.embed.decode import PixelTransform
from usjepa_fast.embed.engine import MemorySink, open_runner, run_engine
from usjepa_fast.embed.options import EmbedOptions
from usjepa_fast.embed.sources import Source

log = logging.getLogger("usfast")


@dataclass
class SplitEmbedding:
    """Features of the readable records of one split, in dataset order."""

    x: np.ndarray  # (N, D) float32
    y: np.ndarray  # (N,) int64 labels
    paths: list[str]  # (N,) image paths
    index: np.ndarray  # (N,) int64: dataset index of each row
    failed: dict[str, str] = field(default_factory=dict)  # image path -> reason (skipped records)
    backend: str = ""


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def embed_split(
    encoder: Any,
    dataset_root: str | Path,
    split: str,
    *,
    backend: str = "auto",
    device: str | torch.device | None = None,
    batch_size: int = 32,
    backend_kwargs: dict[str, Any] | None = None,
    dataset: Any | None = None,
    pixel_transform: PixelTransform | None = None,
    options: EmbedOptions | None = None,
) -> SplitEmbedding:
    """Features of every record of ``split`` (see the module doc).

    ``encoder``: a spec for :func:`~usjepa_fast.embed.backends.open_backend` or an opened
    backend/encoder (``.info``, ``.name``, ``.device``, callable). ``dataset``: an already opened
    split with ``paths``, ``mask_paths``, ``labels`` and ``load(i) -> (gray, mask)`` (e.g. the probe's
    in-memory ``MemorySplit``); by default ``UltraBenchDataset(dataset_root, split)``.
    ``pixel_transform(pixels (n, 3, S, S), scan masks (n, S, S), item index) -> pixels`` runs on the
    preprocessed pixels of each item (test-time corruptions). ``options``: engine options (decode
    workers, prefetch...); ``batch_size`` applies when they are not given.
    """
    from usjepa_fast.data.ultrabench import UltraBenchDataset

    # progress on: a bar on a terminal, a log line every USFAST_PROGRESS_S otherwise (probe, robustness
    # and compare extract features through here; a large split takes minutes)
    opts = options if options is not None else EmbedOptions(batch_size=batch_size, progress=True)
    opts.validate()
    ds = dataset if dataset is not None else UltraBenchDataset(dataset_root, split, transform=None)
    b = open_runner(encoder, backend, device, backend_kwargs, tokens=opts.tokens)
    root = Path(dataset_root)
    labels = np.asarray(ds.labels, dtype=np.int64)
    sources = [
        Source(Path(p), _rel(Path(p), root), "image", m, int(y), record=True)
        for p, m, y in zip(ds.paths, ds.mask_paths, labels, strict=True)
    ]
    scan_region = opts.scan_region

    def reader(fid: int, src: Source) -> tuple[np.ndarray, np.ndarray | None]:
        image, mask = ds.load(fid)
        return image, (mask if scan_region else None)

    sink = MemorySink()
    stats = run_engine(b, sources, opts, sink, reader=reader, pixel_transform=pixel_transform)
    kept = sorted(sink.features)
    width = int(getattr(b.info, "width", 0) or 0)
    x = np.concatenate([sink.features[i] for i in kept]) if kept else np.zeros((0, width), np.float32)
    failed = {str(sources[i].path): reason for i, reason in sorted(sink.failed.items())}
    if failed:
        log.warning(
            "embed: %d of %d records of %s/%s could not be read and were skipped",
            len(failed),
            len(ds),
            root.name,
            split,
        )
    log.info(
        "embed: %s/%s: %d images -> %s features with %s (%.1fs)",
        root.name,
        split,
        len(kept),
        x.shape,
        b.name,
        stats.seconds,
    )
    return SplitEmbedding(
        x=np.ascontiguousarray(x, dtype=np.float32),
        y=labels[kept] if kept else np.zeros(0, np.int64),
        paths=[str(sources[i].path) for i in kept],
        index=np.asarray(kept, dtype=np.int64),
        failed=failed,
        backend=b.name,
    )
