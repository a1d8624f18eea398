"""GPU paths of embed (skipped without CUDA): torch bf16, ORT CUDA/TensorRT provider, DALI NVDEC."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from usjepa_fast.embed import EmbedOptions, embed_folder, load, open_backend

pytestmark = pytest.mark.gpu

TINY = "vit_tiny_patch16_224"


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture()
def clips(synth_root, tmp_path):
    dst = tmp_path / "clips"
    shutil.copytree(synth_root / "clips", dst)
    return dst


def _embed(clips, out, backend, **kw):
    s = embed_folder(clips, out, backend, options=EmbedOptions(batch_size=8, progress=False, dtype="float32", **kw))
    assert s.files_failed == 0, s.failed
    return load(out)


def test_gpu_backends_match_cpu(clips, tmp_path) -> None:
    cpu = open_backend(TINY, "torch", "cpu", img_size=64)
    X_cpu, rows = _embed(clips, tmp_path / "cpu", cpu)
    gpu = open_backend(TINY, "torch", "cuda", img_size=64, precision="bf16")
    assert gpu.name == "torch-eager-cuda-bf16"
    X_gpu, rows_gpu = _embed(clips, tmp_path / "gpu", gpu)  # uint8 frames pinned, preprocessed on the GPU
    assert [(r.path, r.frame_index) for r in rows] == [(r.path, r.frame_index) for r in rows_gpu]
    assert _cos(X_cpu, X_gpu).min() > 0.99
    ort_gpu = open_backend(TINY, "onnx", "cuda", img_size=64, cache_dir=tmp_path / "cache")
    assert ort_gpu.name.startswith("onnx-") and ort_gpu.device.type == "cuda"
    X_ort, _ = _embed(clips, tmp_path / "ort", ort_gpu)
    assert _cos(X_cpu, X_ort).min() > 0.999


def test_dali_gpu_decoder_keeps_frames_on_device(clips, tmp_path) -> None:
    pytest.importorskip("nvidia.dali")
    gpu = open_backend(TINY, "torch", "cuda", img_size=64)
    X_dali, rows_dali = _embed(clips, tmp_path / "dali", gpu, decoder="dali-gpu", redundancy_threshold=1.0)
    X_pyav, rows_pyav = _embed(clips, tmp_path / "pyav", gpu, redundancy_threshold=1.0)
    assert [(r.path, r.frame_index) for r in rows_dali] == [(r.path, r.frame_index) for r in rows_pyav]
    assert _cos(X_dali, X_pyav).min() > 0.99
    assert any(r.duplicate_of >= 0 for r in rows_dali)  # change detection ran on GPU thumbnails


def test_auto_on_gpu_uses_a_gpu_backend(tmp_path) -> None:
    b = open_backend(TINY, "auto", img_size=64, cache_dir=tmp_path)
    assert b.device.type == "cuda" and b.name.split("-")[0] in ("tensorrt", "torch")
    assert b(torch.randn(2, 3, 64, 64, device="cuda")).shape == (2, 192)
