"""``usfast masks``: --n counts frames (spread over a single clip too), the mask is the file's one scan
mask (what training uses) with its source, and unreadable entries are listed."""

from __future__ import annotations

import logging

import numpy as np
from support.media import moving_frames, write_clip
from typer.testing import CliRunner

from usjepa_fast.cli.main import app
from usjepa_fast.data.clips import find_scan_mask, spread_frames
from usjepa_fast.data.folders import VideoFrameDataset
from usjepa_fast.masking.preview import load_preview_frames


def test_n_means_frames_for_a_single_clip_and_masks_are_trainings(tmp_path) -> None:
    frames = moving_frames(n=20)
    frames[:6] = 0  # black leading frames: a first-frame rule would find nothing
    (tmp_path / "data").mkdir()
    clip = write_clip(tmp_path / "data" / "c.mp4", frames)
    got = load_preview_frames(clip, 4)
    assert len(got) == 4
    spread = spread_frames(clip, 4)
    assert [name for name, *_ in got] == [f"c.mp4#{f.index}" for f in spread]
    assert len({f.index for f in spread}) == 4 and spread[-1].index > 10  # spread over the clip
    training = VideoFrameDataset(tmp_path / "data").clip_mask(clip)
    for (_, gray, mask, source), f in zip(got, spread, strict=True):
        np.testing.assert_array_equal(gray, f.image)
        np.testing.assert_array_equal(mask, training)
        assert source == find_scan_mask(clip)[1] == "detected"
    out = tmp_path / "p.png"
    res = CliRunner().invoke(app, ["masks", str(clip), "--out", str(out), "--n", "4", "--image-size", "64"])
    assert res.exit_code == 0, res.output
    assert out.stat().st_size > 5_000
    assert list((tmp_path / "data").iterdir()) == [clip]  # nothing written beside the data


def test_folder_preview_lists_dangling_links_and_spreads_n_over_files(tmp_path, caplog) -> None:
    root = tmp_path / "d"
    root.mkdir()
    for i in range(2):
        write_clip(root / f"c{i}.mp4", moving_frames(n=12, seed=i))
    (root / "gone.mp4").symlink_to(tmp_path / "missing.mp4")
    with caplog.at_level(logging.WARNING, logger="usfast"):
        got = load_preview_frames(root, 5)
    assert len(got) == 5 and {name.split("#")[0] for name, *_ in got} == {"c0.mp4", "c1.mp4"}
    assert "gone.mp4" in caplog.text and "dangling" in caplog.text
