"""Media discovery (with unreadable entries reported) and image reading: formats, bit depths, colour, bad files."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from PIL import Image

from usjepa_fast.data import media
from usjepa_fast.data.media import find_media, list_media, read_image_gray, to_gray
from usjepa_fast.errors import DataError


def _gray(h: int = 20, w: int = 30) -> np.ndarray:
    return (np.arange(h * w, dtype=np.uint32).reshape(h, w) * 7 % 256).astype(np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".jpg"])
def test_8bit_gray_formats_round_trip(tmp_path, suffix) -> None:
    g = _gray()
    path = tmp_path / f"a{suffix}"
    Image.fromarray(g).save(path, **({"quality": 100} if suffix == ".jpg" else {}))
    out = read_image_gray(path)
    assert out.dtype == np.uint8 and out.shape == g.shape
    tol = 12 if suffix == ".jpg" else 0  # JPEG is lossy
    assert np.abs(out.astype(int) - g).max() <= tol


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_gray_keeps_16_bits(tmp_path, suffix) -> None:
    g16 = (np.arange(20 * 30, dtype=np.uint32).reshape(20, 30) * 97 % 65536).astype(np.uint16)
    path = tmp_path / f"a{suffix}"
    Image.fromarray(g16).save(path)
    out = read_image_gray(path)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, g16)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tiff"])
def test_rgb_is_converted_to_luma(tmp_path, suffix) -> None:
    g = _gray()
    rgb = np.stack([g, g, g], axis=-1)
    rgb[0, 0] = (255, 0, 0)  # a coloured overlay pixel
    path = tmp_path / f"a{suffix}"
    Image.fromarray(rgb).save(path, **({"quality": 100} if suffix == ".jpg" else {}))
    out = read_image_gray(path)
    assert out.shape == g.shape and out.dtype == np.uint8
    if suffix != ".jpg":
        np.testing.assert_array_equal(out[1:, 1:], g[1:, 1:])  # gray pixels stay exact
        assert out[0, 0] == round(0.299 * 255)


def test_to_gray_rgba_and_shapes() -> None:
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., :3] = 100
    assert to_gray(rgba).shape == (4, 5) and (to_gray(rgba) == 100).all()
    with pytest.raises(ValueError):
        to_gray(np.zeros((2, 2, 7), np.uint8))


def test_list_media_recursive_sorted_and_filters(tmp_path) -> None:
    (tmp_path / "b" / "c").mkdir(parents=True)
    for p in ["z.png", "b/a.JPG", "b/c/v.mp4", "notes.txt", ".hidden.png", "x.scanmask.png"]:
        (tmp_path / p).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in list_media(tmp_path)] == ["b/a.JPG", "b/c/v.mp4", "z.png"]
    assert [p.name for p in list_media(tmp_path, kinds=("video",))] == ["v.mp4"]
    assert list_media(tmp_path / "z.png") == [tmp_path / "z.png"]
    with pytest.raises(DataError, match="unknown media kind"):
        list_media(tmp_path, kinds=("audio",))


def test_missing_and_empty(tmp_path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        list_media(tmp_path / "nope")
    assert list_media(tmp_path) == []
    with pytest.raises(DataError, match="does not exist"):
        read_image_gray(tmp_path / "nope.png")


def test_truncated_and_bogus_images_raise_naming_the_file(tmp_path) -> None:
    rng = np.random.default_rng(0)
    good = tmp_path / "good.png"
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    bogus = tmp_path / "bogus.jpg"
    bogus.write_bytes(b"this is not a jpeg")
    for bad in (truncated, bogus):
        with pytest.raises(DataError, match=bad.name) as info:
            read_image_gray(bad)
        assert "\n" not in str(info.value)


def test_find_media_lists_unreadable_entries_with_a_reason(tmp_path, caplog, monkeypatch) -> None:
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / ".hidden").mkdir()
    Image.fromarray(_gray()).save(root / "a.png")
    (root / "sub" / "b.mp4").write_bytes(b"not really a video")  # readable as a file: the decoder reports it
    (root / "gone.mp4").symlink_to(tmp_path / "deleted.mp4")  # a dangling symlink with a media extension
    (root / "gone_folder").symlink_to(tmp_path / "deleted_folder")  # no extension: may have held media
    (root / "gone.txt").symlink_to(tmp_path / "deleted.txt")  # not media: ignored as any .txt is
    (root / ".hidden" / "gone.mp4").symlink_to(tmp_path / "x.mp4")  # hidden: skipped
    (root / "loop.png").symlink_to(root / "loop.png")  # a symlink loop
    os.mkfifo(root / "pipe.mp4")
    (root / "ok_link.png").symlink_to(root / "a.png")  # a good symlink is followed
    files, problems = find_media(root)
    assert [p.relative_to(root).as_posix() for p in files] == ["a.png", "ok_link.png", "sub/b.mp4"]
    why = {p.path.name: p.reason for p in problems}
    assert sorted(why) == ["gone.mp4", "gone_folder", "loop.png", "pipe.mp4"]
    assert why["gone.mp4"].startswith("dangling symbolic link") and "deleted.mp4" in why["gone.mp4"]
    assert "dangling" in why["gone_folder"] and "not a regular file" in why["pipe.mp4"]
    assert "cannot be opened" in why["loop.png"]
    videos = find_media(root, ("video",))
    assert [p.path.name for p in videos.problems] == ["gone.mp4", "gone_folder", "pipe.mp4"]
    # list_media keeps its contract (the readable files) and logs each problem once per process
    monkeypatch.setattr(media, "_reported", set())
    with caplog.at_level(logging.WARNING, logger="usfast"):
        assert list_media(root) == files
        assert list_media(root) == files
    assert sum("gone.mp4" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(DataError, match="dangling symbolic link"):
        find_media(root / "gone.mp4")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders whatever their permissions")
def test_find_media_reports_folders_it_cannot_list(tmp_path) -> None:
    root = tmp_path / "in"
    (root / "locked").mkdir(parents=True)
    Image.fromarray(_gray()).save(root / "locked" / "a.png")
    (root / "locked").chmod(0)
    try:
        files, problems = find_media(root)
    finally:
        (root / "locked").chmod(0o755)
    assert files == [] and [p.path.name for p in problems] == ["locked"]
    assert "cannot be listed" in problems[0].reason
