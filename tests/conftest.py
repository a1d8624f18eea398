"""Shared test set-up: GPU tests skip cleanly without CUDA; seeds and threads are fixed."""

from __future__ import annotations

import os

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _one_thread():
    """Test models are tiny: one intra-op thread beats two (and CI's two cores run other work too)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """usfast's default cache root (scan masks, clip indexes, ...) in a session temp dir, never ~/.cache."""
    previous = os.environ.get("USFAST_CACHE_DIR")
    os.environ["USFAST_CACHE_DIR"] = str(tmp_path_factory.mktemp("usfast-cache"))
    yield
    if previous is None:
        os.environ.pop("USFAST_CACHE_DIR", None)
    else:
        os.environ["USFAST_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory):
    """A small synthetic dataset shared by the whole session (data layer owns it; keep it stable).

    Returns the ``out_dir`` Path holding ``ultrabench/`` (48 images, 128 px, classes normal / cyst /
    solid_mass / hyperechoic_mass, UltraBench JSON splits + scan masks) and ``clips/`` (3 clips of 16
    frames at 128 px: ``clip_000.mp4`` H.264 with a still-probe segment, ``clip_001.webm`` VP9,
    ``clip_002.avi`` MJPEG, each with ``<stem>.scanmask.png`` and ``clips.json``).
    """
    from usjepa_fast.data.synth import synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(out, n_images=48, n_clips=3, image_size=128, seed=0, clip_frames=16)
    return out
