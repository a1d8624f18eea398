"""Shared fixtures for embed tests: one tiny encoder opened once per session, on two backends."""

from __future__ import annotations

import pytest

TINY = "vit_tiny_patch16_224"
TINY_SIZE = 64  # 4x4 patches: the whole pipeline runs in milliseconds per frame


@pytest.fixture(scope="session")
def torch_backend():
    from usjepa_fast.embed import open_backend

    return open_backend(TINY, "torch", "cpu", img_size=TINY_SIZE, threads=1)


@pytest.fixture(scope="session")
def onnx_backend(tmp_path_factory):
    from usjepa_fast.embed import open_backend

    cache = tmp_path_factory.mktemp("onnx_cache")
    # the legacy exporter is ~10x faster to run than dynamo; test_export covers dynamo
    return open_backend(TINY, "onnx", "cpu", img_size=TINY_SIZE, threads=1, exporter="torchscript", cache_dir=cache)
