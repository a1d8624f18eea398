"""Features for probing: computed once per (encoder, dataset split[, corruption]) and cached on disk.

Cache layout (``cache_dir`` defaults to ``$USFAST_CACHE_DIR/features`` or ``~/.cache/usfast/features``)::

    <cache_dir>/<encoder key>/<dataset key>-<split>[-<corruption>-s<severity>-r<seed>].npz
        X (N, D) float16 (float32 when a value exceeds fp16's range), y (N,) int64, paths (N,) str,
        meta (json string)

Features are stored as fp16 (half the disk; ~1e-3 relative rounding, far below probe noise) and a
freshly computed split is rounded the same way, so the first run and every cached rerun probe the
very same numbers; the probe itself runs in fp32.

The *encoder key* hashes the weights' ``source_hash`` and everything that changes the pixels the
encoder sees or how it pools (input size, mean/std, pool, width); the *dataset key* hashes the
resolved dataset root, the split and every item's (path, label, size, mtime). Anything else --
probe preset, seeds, few-shot budget -- reuses the same cached features, so an encoder runs over a
split exactly once (tested by counting forward calls). Files are written atomically (temp + rename).
The encoder key is :func:`usjepa_fast.embed.fingerprint.feature_key` (it also covers the backend
kind/precision and the preprocessing), and the features themselves come from the embed engine
(:func:`usjepa_fast.embed.embed_split`): one batching, one backend call path, one preprocessing for
``usfast embed`` and the probes. Test-time corruptions are applied by the engine's pixel hook on the
un-normalised [0, 1] pixels inside the scan mask (:class:`CorruptionTransform`).

Encoders: every spec form (timm name, usfast ``.safetensors`` / run dir, checkpoint + ``arch``,
``zoo:NAME=PATH`` paper baselines, ``random:SPEC[@seed]`` -- a random initialisation of SPEC's
architecture with its input size / normalisation / pooling, the "what did pretraining buy" row --
and ``.onnx`` / ``.engine`` files) opens through ``embed.backends.open_backend``, which hands the
torch-loadable ones to the one resolver, ``models.resolve.resolve_encoder``. An already-built
object with ``info`` and ``__call__((B, 3, S, S)) -> (B, D)`` is used as is (tests, notebooks).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from usjepa_fast.errors import UsfastError
from usjepa_fast.fileio import atomic_write_bytes

log = logging.getLogger("usfast")

SPLITS: tuple[str, ...] = ("train", "validation", "test")


def default_cache_dir() -> Path:
    """``<cache root>/features`` (the cache root is ``data.cache.cache_root``: ``$USFAST_CACHE_DIR``)."""
    from usjepa_fast.data.cache import cache_root

    return cache_root() / "features"


# ----------------------------------------------------------------------------------------------
# encoders


@dataclass
class Encoder:
    """A frozen encoder ready to embed: ``fn((B, 3, S, S) float32 on device) -> (B, D)``."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    info: Any  # EncoderInfo-like: name, input_size, mean, std, pool, width, source_hash
    device: torch.device
    name: str
    tokens: str = "all"  # "scan": only each image's scan-region patches go through the encoder
    patch_coverage: float = 0.5  # scan: share of a patch's pixels that must be scan region

    @property
    def key(self) -> str:
        from usjepa_fast.embed.fingerprint import feature_key

        # weights, input geometry, pooling, this runtime (backend/precision) and the token selection
        return feature_key(self, token_selection=self.tokens, patch_coverage=self.patch_coverage)

    @property
    def keep_unsupported(self) -> str | None:
        from usjepa_fast.embed.backends import keep_unsupported

        return keep_unsupported(self.fn)

    def options(self, batch_size: int) -> Any:
        """The embed engine's options for this encoder's features (its token selection)."""
        from usjepa_fast.embed.options import EmbedOptions

        return EmbedOptions(
            batch_size=batch_size, progress=False, tokens=self.tokens, patch_coverage=self.patch_coverage
        )

    def __call__(self, x: torch.Tensor, keep: Any = None) -> torch.Tensor:
        with torch.inference_mode():
            x = x.to(self.device, non_blocking=True)
            return (self.fn(x) if keep is None else self.fn(x, keep)).float()


def encoder_key(info: Any) -> str:
    """Stable hash of what determines an encoder's features (weights, pixels in, pooling): the
    :mod:`usjepa_fast.embed.fingerprint` key of ``info`` on the default (torch fp32) runtime."""
    from usjepa_fast.embed.fingerprint import feature_key

    return feature_key(info)


def open_encoder(
    spec: Any,
    arch: str | None = None,
    pool: str | None = None,
    backend: str = "auto",
    device: torch.device | str | None = None,
    seed: int = 0,
    precision: str | None = "fp32",
    calibration: Any = None,
    tokens: str = "all",
    patch_coverage: float = 0.5,
) -> Encoder:
    """Open ``spec`` (see module doc) as an :class:`Encoder` on ``device`` (CUDA if present).

    A thin wrapper over :func:`usjepa_fast.embed.backends.open_backend`, so probe, robustness and
    compare take every spec form and choose backends in one place. ``backend="auto"`` here is the
    spec's own runtime -- PyTorch for torch-loadable specs, ONNX Runtime / TensorRT for ``.onnx`` /
    ``.engine`` files -- because features are computed once and cached: an on-the-fly ONNX export
    (what embed's CPU ``auto`` may do) would cost more than it saves. ``precision`` (default fp32,
    the paper's protocol; ``None`` = auto) / ``calibration`` (int8): as in ``open_backend``, whose
    parity gate checks anything but fp32; the feature cache key covers the backend's name and the
    machine, so reduced-precision features never come from an fp32 entry.
    ``tokens="scan"``: features of the scan-region patches only (``patch_coverage``: the coverage
    rule), refused in one line where the encoder cannot.
    """
    from usjepa_fast.embed.options import EmbedOptions

    EmbedOptions(tokens=tokens, patch_coverage=patch_coverage)  # one-line errors for bad values
    if isinstance(spec, Encoder):
        return spec
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(spec, (str, Path)):
        info = getattr(spec, "info", None)
        if info is None or not callable(spec):
            raise UsfastError("an encoder object must be callable on (B, 3, S, S) and carry an .info")
        if isinstance(spec, torch.nn.Module):
            spec = spec.to(dev).eval()
        name = str(getattr(info, "name", type(spec).__name__))
        enc = Encoder(fn=spec, info=info, device=dev, name=name, tokens=tokens, patch_coverage=patch_coverage)
        if tokens == "scan" and enc.keep_unsupported is not None:
            raise UsfastError(f"--tokens scan: {enc.keep_unsupported}; use --tokens all")
        return enc
    from usjepa_fast.embed.backends import open_backend
    from usjepa_fast.models.resolve import parse_encoder_spec

    if backend == "auto" and parse_encoder_spec(spec, arch).form != "runtime":
        backend = "torch"
    be = open_backend(
        str(spec),
        backend=backend,
        device=dev,
        arch=arch,
        pool=pool,
        seed=seed,
        precision=None if precision == "auto" else precision,
        calibration=calibration,
        tokens=tokens,
    )
    return Encoder(
        fn=be, info=be.info, device=be.device, name=str(be.info.name), tokens=tokens, patch_coverage=patch_coverage
    )


# ----------------------------------------------------------------------------------------------
# datasets


def open_split(dataset_root: str | Path, split: str, info: Any) -> Any:
    """UltraBench split preprocessed for this encoder (input size, mean/std it declares)."""
    from usjepa_fast.data.preprocess import Preprocessor, eval_config
    from usjepa_fast.data.ultrabench import UltraBenchDataset

    return UltraBenchDataset(dataset_root, split=split, transform=Preprocessor(eval_config(info)))


def dataset_key(dataset: Any, split: str) -> str:
    """Hash of the split's identity: root, split, and every item's path/label/size/mtime."""
    h = hashlib.sha256()
    root = getattr(dataset, "root", None)
    h.update(f"{Path(root).resolve() if root is not None else ''}|{split}|".encode())
    for p, label in zip(dataset.paths, np.asarray(dataset.labels).tolist(), strict=True):
        try:
            st = os.stat(p)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"{p}|{label}|{stamp}\n".encode())
    return h.hexdigest()[:20]


# ----------------------------------------------------------------------------------------------
# extraction


@dataclass
class Corruption:
    """A test-time corruption applied to the un-normalised [0, 1] image inside the scan mask."""

    name: str
    severity: int
    seed: int = 0

    @property
    def tag(self) -> str:
        return f"{self.name}-s{self.severity}-r{self.seed}"


@dataclass
class SplitFeatures:
    x: np.ndarray  # (N, D) float32
    y: np.ndarray  # (N,) int64
    paths: list[str] = field(default_factory=list)
    skipped: int = 0
    from_cache: bool = False


class CorruptionTransform:
    """The embed engine's pixel transform for a :class:`Corruption`: un-normalise to [0, 1], corrupt
    inside the scan mask, re-normalise. One noise stream per dataset item (seeded by the item's index),
    so the corrupted pixels do not depend on batching, decode threads or the backend."""

    def __init__(self, corruption: Corruption, info: Any) -> None:
        from usjepa_fast.probe.corruptions import CORRUPTIONS, SEVERITIES

        if corruption.name not in CORRUPTIONS:
            raise UsfastError(f"unknown corruption {corruption.name!r}; choose from {', '.join(CORRUPTIONS)}")
        if corruption.severity not in SEVERITIES:
            raise UsfastError(f"corruption severity {corruption.severity} must be one of {list(SEVERITIES)}")
        self.c = corruption
        self.mean = torch.tensor([float(v) for v in info.mean]).view(1, -1, 1, 1)
        self.std = torch.tensor([float(v) for v in info.std]).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor, scan_mask: torch.Tensor, index: int) -> torch.Tensor:
        from usjepa_fast.probe.corruptions import corrupt

        mean, std = self.mean.to(x.device), self.std.to(x.device)
        x01 = (x * std + mean).clamp(0.0, 1.0)  # (n, 3, S, S) in [0, 1]
        seeds = [self.c.seed * 1_000_003 + index] * x.shape[0]
        x01 = corrupt(x01, self.c.name, self.c.severity, scan_mask, seed=seeds)
        return (x01 - mean) / std


class MemorySplit:
    """A split whose decoded records (gray image + scan mask) are read once and kept in memory:
    robustness re-embeds the test split once per corruption and severity, and decoding the files
    every time would dominate. Works wherever a split is expected (``split_features(dataset=...)``)."""

    def __init__(self, dataset: Any) -> None:
        self.root = getattr(dataset, "root", None)
        self.paths = list(dataset.paths)
        self.mask_paths = list(dataset.mask_paths)
        self.labels = np.asarray(dataset.labels)
        self._source = dataset
        self._records: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i not in self._records:  # errors propagate each time, so skips are counted per pass
            self._records[i] = self._source.load(i)
        return self._records[i]


class FeatureCache:
    """On-disk ``.npz`` cache of split features keyed by encoder key + dataset key (+ corruption)."""

    def __init__(self, cache_dir: str | Path | None = None) -> None:
        self.dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    def path(self, enc_key: str, ds_key: str, split: str, corruption: Corruption | None) -> Path:
        tag = f"-{corruption.tag}" if corruption is not None else ""
        return self.dir / enc_key / f"{ds_key}-{split}{tag}.npz"

    def load(self, path: Path) -> SplitFeatures | None:
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                return SplitFeatures(
                    x=z["X"].astype(np.float32, copy=False),
                    y=z["y"].astype(np.int64, copy=False),
                    paths=[str(p) for p in z["paths"]],
                    skipped=int(meta.get("skipped", 0)),
                    from_cache=True,
                )
        except (OSError, ValueError, KeyError) as exc:  # a torn/corrupt file: recompute, don't crash
            log.warning("probe: feature cache %s unreadable (%s); recomputing", path, exc)
            return None

    def save(self, path: Path, feats: SplitFeatures, meta: dict[str, Any]) -> None:
        buf = io.BytesIO()
        np.savez(
            buf,
            X=stored_features(feats.x),
            y=feats.y,
            paths=np.asarray(feats.paths, dtype=str),
            meta=np.asarray(json.dumps({**meta, "skipped": feats.skipped})),
        )
        # a cache: entries are validated on load and recomputed when torn, so no fsync (durable=False)
        atomic_write_bytes(path, buf.getvalue(), durable=False)


FP16_MAX = float(np.finfo(np.float16).max)


def stored_features(x: np.ndarray) -> np.ndarray:
    """The cache's storage form of ``x (N, D)``: float16, or float32 if any value is out of fp16 range."""
    x = np.asarray(x, dtype=np.float32)
    if x.size and (not np.isfinite(x).all() or float(np.abs(x).max()) >= FP16_MAX):
        return x
    return x.astype(np.float16)


def split_features(
    encoder: Encoder,
    dataset_root: str | Path,
    split: str,
    cache: FeatureCache | None = None,
    batch_size: int = 32,
    corruption: Corruption | None = None,
    dataset: Any | None = None,
) -> SplitFeatures:
    """Features of one split, from the cache or computed through the embed engine
    (:func:`usjepa_fast.embed.embed_split`) and then cached. ``dataset``: an already opened split
    (e.g. :class:`MemorySplit`) instead of opening ``dataset_root`` again. Unreadable records are
    logged, counted (``skipped``) and left out."""
    from usjepa_fast.embed.dataset import embed_split
    from usjepa_fast.embed.fingerprint import feature_key

    cache = cache or FeatureCache()
    dataset = dataset if dataset is not None else open_split(dataset_root, split, encoder.info)
    enc_key = encoder.key if isinstance(encoder, Encoder) else feature_key(encoder)
    path = cache.path(enc_key, dataset_key(dataset, split), split, corruption)
    hit = cache.load(path)
    if hit is not None:
        return hit
    transform = CorruptionTransform(corruption, encoder.info) if corruption is not None else None
    opts = encoder.options(batch_size) if isinstance(encoder, Encoder) else None
    emb = embed_split(
        encoder, dataset_root, split, batch_size=batch_size, dataset=dataset, pixel_transform=transform, options=opts
    )
    x = stored_features(emb.x).astype(np.float32)  # what a cached rerun will read back
    feats = SplitFeatures(x=x, y=emb.y, paths=emb.paths, skipped=len(emb.failed))
    if feats.skipped:
        log.warning("probe: %d of %d items could not be read and were skipped", feats.skipped, len(dataset))
    log.info(
        "probe: embedded %s/%s with %s (%d items)%s",
        dataset_root,
        split,
        encoder.name,
        feats.x.shape[0],
        f" [{corruption.tag}]" if corruption else "",
    )
    cache.save(
        path,
        feats,
        {
            "encoder": encoder.name,
            "encoder_key": enc_key,
            "dataset": str(dataset_root),
            "split": split,
            "corruption": corruption.tag if corruption else None,
        },
    )
    return feats


def dataset_features(
    spec: Any,
    dataset_root: str | Path,
    split: str,
    cache_dir: str | Path | None = None,
    arch: str | None = None,
    pool: str | None = None,
    batch_size: int = 32,
    device: torch.device | str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Contract entry point: ``(X (N, D) float32, y (N,) int64)`` for one split, cached."""
    encoder = open_encoder(spec, arch=arch, pool=pool, device=device)
    feats = split_features(encoder, dataset_root, split, FeatureCache(cache_dir), batch_size)
    return feats.x, feats.y


# ----------------------------------------------------------------------------------------------
# a task = the three splits of one dataset for one encoder


@dataclass
class TaskFeatures:
    """Train / validation / test features of one dataset under one encoder."""

    task: str
    encoder: str
    classes: list[str]
    splits: dict[str, SplitFeatures]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def xy(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in self.splits:
            raise UsfastError(f"task {self.task} has no '{split}' split features")
        s = self.splits[split]
        return s.x, s.y


def task_name(dataset_root: str | Path) -> str:
    """Display name of a dataset: its folder name, or the parent's when the folder is ``ultrabench``."""
    p = Path(dataset_root).resolve()
    return p.parent.name if p.name.lower() == "ultrabench" and p.parent.name else p.name


def dataset_classes(dataset_root: str | Path, split: str = "train") -> list[str]:
    from usjepa_fast.data.ultrabench import UltraBenchDataset

    return list(UltraBenchDataset(dataset_root, split=split, transform=None).classes)


def task_features(
    encoder: Encoder,
    dataset_root: str | Path,
    cache: FeatureCache | None = None,
    batch_size: int = 32,
    splits: Sequence[str] = SPLITS,
) -> TaskFeatures:
    """All splits of ``dataset_root`` under ``encoder`` (each from the cache when possible)."""
    cache = cache or FeatureCache()
    feats = {s: split_features(encoder, dataset_root, s, cache, batch_size) for s in splits}
    return TaskFeatures(
        task=task_name(dataset_root),
        encoder=encoder.name,
        classes=dataset_classes(dataset_root, splits[0]),
        splits=feats,
    )


def task_features_from_embed_dir(
    embed_dir: str | Path, dataset_root: str | Path, splits: Sequence[str] = SPLITS
) -> TaskFeatures:
    """Labelled splits from a ``usfast embed`` output directory run over the dataset's images.

    Rows are matched to dataset items by image path (relative to the dataset root, as ``usfast embed
    DATASET`` writes them, or absolute); a dataset item missing from the embed output is an error
    that names it (re-run embed over the dataset).
    """
    from usjepa_fast.data.ultrabench import UltraBenchDataset
    from usjepa_fast.embed.store import load as embed_load

    x_all, rows = embed_load(embed_dir)
    by_path: dict[str, int] = {}
    for i, r in enumerate(rows):
        for key in (r.path, str(Path(r.path).resolve())):
            by_path.setdefault(key, i)
    out: dict[str, SplitFeatures] = {}
    classes: list[str] = []
    for split in splits:
        ds = UltraBenchDataset(dataset_root, split=split, transform=None)
        classes = classes or list(ds.classes)
        idx = []
        root = Path(dataset_root).resolve()
        for p in ds.paths:
            keys = (str(p), str(Path(p).resolve()))
            if Path(p).resolve().is_relative_to(root):  # embed writes paths relative to its input folder
                keys += (Path(p).resolve().relative_to(root).as_posix(),)
            hit = next((by_path[k] for k in keys if k in by_path), None)
            if hit is None:
                raise UsfastError(
                    f"{p} ({split}) has no features in {embed_dir}; run `usfast embed` over {dataset_root}"
                )
            idx.append(hit)
        out[split] = SplitFeatures(
            x=np.ascontiguousarray(x_all[idx], dtype=np.float32),
            y=np.asarray(ds.labels, dtype=np.int64),
            paths=[str(p) for p in ds.paths],
            from_cache=True,
        )
    return TaskFeatures(task=task_name(dataset_root), encoder=Path(embed_dir).name, classes=classes, splits=out)
