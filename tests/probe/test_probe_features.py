"""Features are computed once per (encoder, split) and reused from the cache: no second encoder pass."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import tiny_encoder

from usjepa_fast.errors import DataError, UsfastError
from usjepa_fast.probe.features import (
    Corruption,
    FeatureCache,
    dataset_features,
    dataset_key,
    extract_features,
    open_encoder,
    open_split,
    split_features,
    task_features,
)


def test_second_request_reuses_cached_features(ultrabench, tmp_path) -> None:
    counting = tiny_encoder(seed=0)
    enc = open_encoder(counting, device="cpu")
    cache = FeatureCache(tmp_path / "cache")
    first = task_features(enc, ultrabench, cache, batch_size=16)
    n_items = sum(s.x.shape[0] for s in first.splits.values())
    assert counting.images == n_items and counting.calls > 0
    assert first.num_classes == 4 and first.classes[0] == "normal"
    assert first.splits["train"].x.shape[1] == 192 and first.splits["train"].x.dtype == np.float32
    calls = counting.calls

    # A new handle on the same weights, another probe preset/few-shot later: all from the cache.
    again = task_features(open_encoder(counting, device="cpu"), ultrabench, cache, batch_size=8)
    assert counting.calls == calls, "the encoder ran again although its features were cached"
    for split in ("train", "validation", "test"):
        assert again.splits[split].from_cache
        np.testing.assert_array_equal(again.splits[split].x, first.splits[split].x)
        np.testing.assert_array_equal(again.splits[split].y, first.splits[split].y)

    # The contract entry point reads the same cache.
    x, y = dataset_features(counting, ultrabench, "test", cache_dir=tmp_path / "cache")
    assert counting.calls == calls
    np.testing.assert_array_equal(x, first.splits["test"].x)


def test_corrupted_and_other_encoders_get_their_own_entries(ultrabench, tmp_path) -> None:
    a, b = tiny_encoder(seed=0), tiny_encoder(seed=1)
    ea, eb = open_encoder(a, device="cpu"), open_encoder(b, device="cpu")
    assert ea.key != eb.key
    cache = FeatureCache(tmp_path)
    clean = split_features(ea, ultrabench, "test", cache)
    corr = split_features(ea, ultrabench, "test", cache, corruption=Corruption("speckle", 3))
    assert not np.allclose(clean.x, corr.x)
    calls = a.calls
    split_features(ea, ultrabench, "test", cache, corruption=Corruption("speckle", 3))
    assert a.calls == calls
    other = split_features(eb, ultrabench, "test", cache)
    assert b.calls > 0 and not np.allclose(other.x, clean.x)


def test_dataset_key_tracks_file_changes(ultrabench) -> None:
    enc = tiny_encoder(seed=0)
    ds = open_split(ultrabench, "test", enc.info)
    before = dataset_key(ds, "test")
    assert before == dataset_key(open_split(ultrabench, "test", enc.info), "test")
    assert before != dataset_key(ds, "validation")
    path = ds.paths[0]
    st = os.stat(path)
    try:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        assert dataset_key(ds, "test") != before  # an edited image invalidates the cached features
    finally:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_encoder_objects_need_info() -> None:
    with pytest.raises(UsfastError, match="info"):
        open_encoder(lambda x: x, device="cpu")


class _FlakyDataset:
    """Six synthetic items; item 2 is 'corrupt on disk' and raises DataError like a broken PNG."""

    root = "flaky"

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(6, 3, 32, 32, generator=g)
        self.paths = [f"img{i}.png" for i in range(6)]
        self.labels = np.arange(6) % 2

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> dict:
        if i == 2:
            raise DataError(f"{self.paths[i]} is truncated")
        return {
            "image": self.images[i],
            "scan_mask": torch.ones(32, 32, dtype=torch.bool),
            "label": int(i % 2),
            "path": self.paths[i],
        }


def test_unreadable_items_are_skipped_and_counted() -> None:
    counting = tiny_encoder(seed=0)
    feats = extract_features(open_encoder(counting, device="cpu"), _FlakyDataset(), batch_size=4)
    assert feats.skipped == 1 and feats.x.shape == (5, 192)
    assert feats.paths == ["img0.png", "img1.png", "img3.png", "img4.png", "img5.png"]
    assert feats.y.tolist() == [0, 1, 1, 0, 1]


def test_features_from_a_usfast_embed_directory(ultrabench, tmp_path) -> None:
    from usjepa_fast.embed import embed_folder
    from usjepa_fast.models.frozen import save_export_ready
    from usjepa_fast.models.resolve import resolve_encoder
    from usjepa_fast.probe.features import task_features_from_embed_dir

    enc = resolve_encoder("vit_tiny_patch16_224", img_size=32, seed=4)
    student = save_export_ready(enc.model, enc.info, tmp_path / "student.safetensors")
    embed_folder(ultrabench, tmp_path / "emb", str(student), backend="torch", device="cpu")
    tf = task_features_from_embed_dir(tmp_path / "emb", ultrabench)
    ours = task_features(open_encoder(str(student), device="cpu"), ultrabench, FeatureCache(tmp_path / "c"))
    for split in ("train", "validation", "test"):
        np.testing.assert_array_equal(tf.splits[split].y, ours.splits[split].y)
        # same pixels, same encoder: embed's features == the probe's own extraction (fp16 storage)
        np.testing.assert_allclose(tf.splits[split].x, ours.splits[split].x, atol=2e-2, rtol=2e-2)
