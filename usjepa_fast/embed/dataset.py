"""Features of a labelled UltraBench split in memory (for probes), with loading overlapped with inference."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from usjepa_fast.errors import DataError

log = logging.getLogger("usfast")


def embed_split(
    encoder: Any,
    dataset_root: str | Path,
    split: str,
    *,
    backend: str = "auto",
    device: str | torch.device | None = None,
    batch_size: int = 32,
    backend_kwargs: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(X (N, D) float32, y (N,) int64)`` for every record of ``split`` (dataset order).

    ``encoder``: a spec for :func:`~usjepa_fast.embed.backends.open_backend` or an opened backend.
    Pixels are exactly the dataset's evaluation items (:class:`~usjepa_fast.data.preprocess.Preprocessor`
    with the encoder's size/mean/std and the dataset's scan masks), so probe features match what
    training and evaluation see. A thread loads and preprocesses batch i+1 while batch i runs.
    """
    from usjepa_fast.data.preprocess import PreprocessConfig, Preprocessor
    from usjepa_fast.data.ultrabench import UltraBenchDataset
    from usjepa_fast.embed.backends import Backend, open_backend

    b: Backend = (
        encoder if isinstance(encoder, Backend) else open_backend(encoder, backend, device, **(backend_kwargs or {}))
    )
    info = b.info
    pre = Preprocessor(
        PreprocessConfig(
            image_size=info.input_size, mean=tuple(info.mean), std=tuple(info.std), patch_size=info.patch_size
        )
    )
    ds = UltraBenchDataset(dataset_root, split, transform=pre)
    n = len(ds)
    if batch_size < 1:
        raise DataError(f"batch size {batch_size} must be >= 1")

    def load(start: int) -> torch.Tensor:
        return torch.stack([ds[i]["image"] for i in range(start, min(n, start + batch_size))])  # (B, 3, S, S)

    feats: list[np.ndarray] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="usfast-load") as pool:
        nxt = pool.submit(load, 0)
        for start in range(0, n, batch_size):
            x = nxt.result()
            if start + batch_size < n:
                nxt = pool.submit(load, start + batch_size)
            feats.append(b(x).detach().float().cpu().numpy())
    X = np.concatenate(feats, axis=0) if feats else np.zeros((0, info.width), np.float32)
    log.info("embed: %s/%s: %d images -> %s features with %s", Path(dataset_root).name, split, n, X.shape, b.name)
    return X.astype(np.float32, copy=False), ds.labels.copy()
