"""Probe precision (issue 14): the cache key covers backend name and machine, features are cached
as fp16, and a cached rerun reads exactly what the first run probed."""

from __future__ import annotations

import numpy as np

from usjepa_fast.probe.features import FeatureCache, open_encoder, split_features, stored_features


def test_precision_changes_the_cache_key_and_fp16_cache_is_exact(synth_root, tmp_path) -> None:
    root = synth_root / "ultrabench"
    enc32 = open_encoder("vit_tiny_patch16_224", device="cpu", precision="fp32")
    enc16 = open_encoder("vit_tiny_patch16_224", device="cpu", precision="bf16")
    assert enc32.key != enc16.key  # bf16 features never come from an fp32 entry
    cache = FeatureCache(tmp_path / "cache")
    first = split_features(enc32, root, "test", cache, batch_size=16)
    again = split_features(enc32, root, "test", cache, batch_size=16)
    assert again.from_cache and not first.from_cache
    assert first.x.dtype == again.x.dtype == np.float32 and np.array_equal(first.x, again.x)
    (entry,) = (tmp_path / "cache").rglob("*.npz")
    with np.load(entry) as z:
        assert z["X"].dtype == np.float16


def test_out_of_range_features_stay_float32() -> None:
    assert stored_features(np.array([[1.0, 7e4]])).dtype == np.float32
    assert stored_features(np.array([[1.0, np.nan]])).dtype == np.float32
    assert stored_features(np.zeros((0, 4))).dtype == np.float16
