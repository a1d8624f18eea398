"""Fixtures for the data-layer tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.media import CONTAINERS, moving_frames, write_clip


@pytest.fixture
def clip_folder(tmp_path: Path) -> Path:
    """A folder with one 12-frame clip in each of mp4/avi/mov/mkv/webm/gif (one in a sub-folder)."""
    root = tmp_path / "clips"
    (root / "sub").mkdir(parents=True)
    for i, suffix in enumerate(CONTAINERS):
        folder = root / "sub" if suffix == ".mkv" else root
        write_clip(folder / f"c{i}{suffix}", moving_frames(seed=i))
    return root
