"""Features are computed once per (encoder, split) and reused from the cache: no second encoder pass."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from support.probe import tiny_encoder

from usjepa_fast.errors import UsfastError
from usjepa_fast.probe.features import (
    Corruption,
    FeatureCache,
    dataset_features,
    dataset_key,
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


def test_probe_features_equal_the_encoder_on_the_dataset_items(ultrabench, tmp_path) -> None:
    """Engine extraction == running the encoder by hand on UltraBenchDataset + Preprocessor items."""
    from usjepa_fast.data.preprocess import PreprocessConfig, Preprocessor
    from usjepa_fast.data.ultrabench import UltraBenchDataset

    counting = tiny_encoder(seed=2)
    info = counting.info
    feats = split_features(open_encoder(counting, device="cpu"), ultrabench, "test", FeatureCache(tmp_path), 5)
    pre = Preprocessor(PreprocessConfig(image_size=info.input_size, mean=info.mean, std=info.std, patch_size=16))
    ds = UltraBenchDataset(ultrabench, "test", transform=pre)
    with torch.inference_mode():
        ref = torch.cat([counting.inner(ds[i]["image"][None]) for i in range(len(ds))]).numpy()
    assert feats.x.shape == ref.shape and feats.skipped == 0
    np.testing.assert_allclose(feats.x, ref, rtol=1e-3, atol=1e-4)  # the cache stores fp16 (<= 4.9e-4 rel rounding)
    np.testing.assert_array_equal(feats.y, ds.labels)
    assert feats.paths == [str(p) for p in ds.paths]


def test_corrupted_features_do_not_depend_on_batching(ultrabench, tmp_path) -> None:
    """One noise stream per dataset item: batch size 3 and 16 give the same corrupted features, and
    they equal corrupting each preprocessed item by hand (un-normalise, corrupt in the mask)."""
    from usjepa_fast.probe.corruptions import corrupt

    enc = open_encoder(tiny_encoder(seed=0), device="cpu")
    c = Corruption("speckle", 2, seed=5)
    a = split_features(enc, ultrabench, "test", FeatureCache(tmp_path / "a"), 3, corruption=c)
    b = split_features(enc, ultrabench, "test", FeatureCache(tmp_path / "b"), 16, corruption=c)
    np.testing.assert_allclose(a.x, b.x, rtol=1e-3, atol=1e-5)  # fp16-rounded: at most one fp16 step apart
    ds = open_split(ultrabench, "test", enc.info)
    mean = torch.tensor(enc.info.mean).view(1, 3, 1, 1)
    std = torch.tensor(enc.info.std).view(1, 3, 1, 1)
    rows = []
    for i in range(len(ds)):
        item = ds[i]
        x01 = (item["image"][None] * std + mean).clamp(0, 1)
        x01 = corrupt(x01, "speckle", 2, item["scan_mask"][None], seed=[5 * 1_000_003 + i])
        rows.append(enc((x01 - mean) / std))
    np.testing.assert_allclose(a.x, torch.cat(rows).numpy(), rtol=1e-3, atol=1e-4)  # fp16 cache rounding


def test_unreadable_items_are_skipped_and_counted(ultrabench, tmp_path) -> None:
    import shutil

    from usjepa_fast.data.ultrabench import UltraBenchDataset

    root = tmp_path / "ub"
    shutil.copytree(ultrabench, root)
    ds = UltraBenchDataset(root, "test")
    ds.paths[2].write_bytes(b"\x89PNG truncated")  # a broken file on disk
    counting = tiny_encoder(seed=0)
    feats = split_features(open_encoder(counting, device="cpu"), root, "test", FeatureCache(tmp_path / "c"), 4)
    n = len(ds)
    assert feats.skipped == 1 and feats.x.shape == (n - 1, 192) and counting.images == n - 1
    assert feats.paths == [str(p) for i, p in enumerate(ds.paths) if i != 2]
    np.testing.assert_array_equal(feats.y, np.delete(ds.labels, 2))
    again = split_features(open_encoder(counting, device="cpu"), root, "test", FeatureCache(tmp_path / "c"), 4)
    assert again.from_cache and again.skipped == 1


def test_memory_split_decodes_each_record_once(ultrabench, tmp_path) -> None:
    from usjepa_fast.probe.features import MemorySplit

    enc = open_encoder(tiny_encoder(seed=0), device="cpu")
    split = MemorySplit(open_split(ultrabench, "test", enc.info))
    loads = []
    original = split._source.load
    split._source.load = lambda i: loads.append(i) or original(i)
    clean = split_features(enc, ultrabench, "test", FeatureCache(tmp_path), dataset=split)
    noisy = split_features(
        enc, ultrabench, "test", FeatureCache(tmp_path), corruption=Corruption("gaussian_blur", 1), dataset=split
    )
    assert sorted(loads) == list(range(len(split))) and not np.allclose(clean.x, noisy.x)


def test_a_failing_corruption_stops_the_run_instead_of_skipping_files(ultrabench, tmp_path, monkeypatch) -> None:
    from usjepa_fast.probe import features

    enc = open_encoder(tiny_encoder(seed=0), device="cpu")

    def broken(self, x, mask, index):
        raise RuntimeError("bug in a corruption")

    monkeypatch.setattr(features.CorruptionTransform, "__call__", broken)
    with pytest.raises(RuntimeError, match="bug in a corruption"):
        split_features(enc, ultrabench, "test", FeatureCache(tmp_path), corruption=Corruption("speckle", 1))
    with pytest.raises(UsfastError, match="unknown corruption"):
        split_features(enc, ultrabench, "test", FeatureCache(tmp_path), corruption=Corruption("blur", 1))


def test_cache_key_is_the_embed_fingerprint(ultrabench) -> None:
    from usjepa_fast.embed.fingerprint import feature_fields, feature_key

    enc = open_encoder(tiny_encoder(seed=0), device="cpu")
    fields = feature_fields(enc)
    assert fields["backend"] == "torch" and fields["precision"] == "fp32" and fields["tokens"] == "pooled"
    assert fields["encoder"]["source_hash"] == enc.info.source_hash
    assert feature_key(enc) == feature_key(enc.info) == enc.key


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
