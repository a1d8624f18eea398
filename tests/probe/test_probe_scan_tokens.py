"""``usfast probe --tokens scan``: probe features from scan-region patches only, cached apart."""

from __future__ import annotations

import numpy as np
import pytest

from usjepa_fast.embed import EmbedOptions, MemorySink, run_engine
from usjepa_fast.embed.sources import list_sources
from usjepa_fast.errors import UsfastError
from usjepa_fast.probe.features import FeatureCache, open_encoder, split_features


def test_probe_scan_features_are_the_embed_scan_features(ultrabench, tmp_path) -> None:
    whole = open_encoder("vit_tiny_patch16_224", device="cpu")
    scan = open_encoder("vit_tiny_patch16_224", device="cpu", tokens="scan", patch_coverage=0.5)
    assert scan.key != whole.key  # cached apart
    cache = FeatureCache(tmp_path / "cache")
    feats = split_features(scan, ultrabench, "test", cache, batch_size=8)
    sources = list_sources(ultrabench, splits=("test",))
    sink = MemorySink()
    run_engine(scan.fn, sources, EmbedOptions(batch_size=8, progress=False, tokens="scan"), sink)
    by_path = {s.rel: sink.features[i][0] for i, s in enumerate(sources)}
    assert len(feats.paths) == len(sources) > 0
    for path, row in zip(feats.paths, feats.x, strict=True):
        key = next(k for k in by_path if str(path).endswith(k))
        np.testing.assert_allclose(row, by_path[key], rtol=2e-3, atol=1e-4)  # the cache stores fp16
    plain = split_features(whole, ultrabench, "test", cache, batch_size=8)
    assert not np.allclose(plain.x, feats.x, atol=1e-3)
    with pytest.raises(UsfastError, match="--tokens all"):
        open_encoder("resnet10t", device="cpu", tokens="scan")
