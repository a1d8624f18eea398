"""Output store: atomic parts, orphan cleanup, newest-part-wins merge, load with duplicates."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from usjepa_fast.embed import store
from usjepa_fast.errors import UsfastError


def _stamp(size: int = 10, mtime: int = 1) -> store.FileStamp:
    return store.FileStamp(size=size, mtime_ns=mtime)


def test_parts_merge_and_load_with_duplicates(tmp_path) -> None:
    w = store.PartWriter(tmp_path, rank=0, dtype="float32", part_rows=3)
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    rows_a = [store.FrameRow(0, 0.0, 0), store.FrameRow(1, 0.1, 0, duplicate_of=0), store.FrameRow(2, 0.2, 1)]
    w.add_file("a.mp4", _stamp(), a, rows_a)
    w.add_file("b.png", _stamp(), np.full((1, 4), 9, np.float32), [store.FrameRow(0, 0.0, 0)])  # commits a part
    assert w.committed == ["r000-000000"]
    w.flush()
    _, n = store.merge_index(tmp_path, manifest={"encoder": {"name": "x"}})
    assert n == 4
    X, rows = store.load(tmp_path)
    assert [r.path for r in rows] == ["a.mp4"] * 3 + ["b.png"]
    np.testing.assert_array_equal(X[0], a[0])
    np.testing.assert_array_equal(X[1], a[0])  # the duplicate carries its representative's features
    np.testing.assert_array_equal(X[2], a[1])
    assert rows[1].duplicate_of == 0 and rows[1].row == rows[0].row
    X2, rows2 = store.load(tmp_path, include_duplicates=False)
    assert len(rows2) == 3 and all(r.duplicate_of < 0 for r in rows2)
    manifest = json.loads((tmp_path / "embed.json").read_text())
    assert manifest["rows"] == 4 and manifest["files"] == 2 and manifest["dim"] == 4
    # readable without usfast: plain csv + numpy
    with open(tmp_path / "index.csv", newline="") as fh:
        raw = list(csv.DictReader(fh))
    assert tuple(raw[0]) == store.INDEX_COLUMNS
    np.testing.assert_array_equal(np.load(tmp_path / raw[3]["shard"])[int(raw[3]["row"])], X[3])


def test_interrupted_part_is_removed_and_seq_continues(tmp_path) -> None:
    w = store.PartWriter(tmp_path, rank=1, dtype="float16")
    w.add_file("a.png", _stamp(), np.ones((1, 2)), [store.FrameRow(0, 0.0, 0)])
    w.flush()
    pdir = store.parts_dir(tmp_path)
    # a crash between the .npy and the marker leaves an orphan; a temp file may also remain
    np.save(pdir / "r001-000001.npy", np.zeros((1, 2)))
    (pdir / ".r001-000002.csv.tmp-123").write_text("partial")
    # another rank's files are not ours to delete
    np.save(pdir / "r000-000000.npy", np.zeros((1, 2)))
    w2 = store.PartWriter(tmp_path, rank=1)
    assert not (pdir / "r001-000001.npy").exists() and not (pdir / ".r001-000002.csv.tmp-123").exists()
    assert (pdir / "r000-000000.npy").exists() and (pdir / "r001-000000.json").exists()
    assert w2.seq == 1
    assert [p.stem for p in store.read_parts(tmp_path)] == ["r001-000000"]


def test_newest_part_wins_and_keep_paths_filters(tmp_path) -> None:
    w = store.PartWriter(tmp_path, rank=0, dtype="float32")
    w.add_file("a.png", _stamp(mtime=1), np.zeros((1, 2)), [store.FrameRow(0, 0.0, 0)])
    w.add_file("gone.png", _stamp(), np.zeros((1, 2)), [store.FrameRow(0, 0.0, 0)])
    w.flush()
    w.add_file("a.png", _stamp(mtime=2), np.ones((1, 2)), [store.FrameRow(0, 0.0, 0)])
    w.flush()
    latest = store.latest_stamps(store.read_parts(tmp_path))
    assert latest["a.png"][0].mtime_ns == 2
    _, n = store.merge_index(tmp_path, keep_paths=["a.png"])
    X, rows = store.load(tmp_path)
    assert n == 1 and [r.path for r in rows] == ["a.png"] and X[0].tolist() == [1.0, 1.0]


def test_stamp_hash_mode_ignores_touch(tmp_path) -> None:
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc")
    s1 = store.FileStamp.of(f, with_hash=True)
    s2 = store.FileStamp(s1.size, s1.mtime_ns + 5, s1.sha256)
    assert s1.same_as(s2, by_hash=True) and not s1.same_as(s2, by_hash=False)


def test_load_errors_name_the_directory(tmp_path) -> None:
    with pytest.raises(UsfastError, match="index.csv"):
        store.load(tmp_path)
    with pytest.raises(ValueError):
        store.PartWriter(tmp_path, 0).add_file("a", _stamp(), np.zeros((1, 2)), [store.FrameRow(0, 0.0, 3)])
