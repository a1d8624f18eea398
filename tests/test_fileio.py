"""The one atomic-write helper: temp file in the same folder, fsync, rename, umask-respecting mode."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch

from usjepa_fast.fileio import (
    atomic_open,
    atomic_path,
    atomic_save_npy,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    replace_file,
    temp_name,
)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_writes_land_whole_with_the_umask_mode(tmp_path, umask) -> None:
    atomic_write_bytes(tmp_path / "a.bin", b"abc")
    atomic_write_text(tmp_path / "sub" / "b.txt", "héllo")  # parent folders are created
    atomic_write_json(tmp_path / "c.json", {"x": 1, "p": tmp_path})
    atomic_save_npy(tmp_path / "d.npy", np.arange(6, dtype=np.float16).reshape(2, 3))
    with atomic_open(tmp_path / "e.pt") as fh:
        torch.save({"w": torch.ones(2)}, fh)
    assert (tmp_path / "a.bin").read_bytes() == b"abc"
    assert (tmp_path / "sub" / "b.txt").read_text(encoding="utf-8") == "héllo"
    text = (tmp_path / "c.json").read_text()
    assert text.endswith("}\n") and json.loads(text) == {"x": 1, "p": str(tmp_path)}
    np.testing.assert_array_equal(np.load(tmp_path / "d.npy"), np.arange(6).reshape(2, 3))
    assert torch.load(tmp_path / "e.pt")["w"].tolist() == [1.0, 1.0]
    for name in ("a.bin", "sub/b.txt", "c.json", "d.npy", "e.pt"):
        assert _mode(tmp_path / name) == 0o644, name  # not mkstemp's 0600
    os.umask(0o027)
    atomic_write_bytes(tmp_path / "f.bin", b"x")
    assert _mode(tmp_path / "f.bin") == 0o640  # the umask decides, as for a plain open()


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path) -> None:
    target = tmp_path / "state.pt"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError, match="killed"), atomic_open(target) as fh:
        fh.write(b"half of the new")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_atomic_path_for_libraries_that_write_by_name(tmp_path, umask) -> None:
    target = tmp_path / "model.onnx"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".onnx" and tmp.name.startswith(".")
        assert not target.exists()
        tmp.write_bytes(b"graph")
    assert target.read_bytes() == b"graph" and _mode(target) == 0o644
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.write_bytes(b"bad graph")
        raise ValueError("parity check failed")
    assert target.read_bytes() == b"graph" and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_temp_names_are_hidden_unique_and_committable(tmp_path) -> None:
    a, b = temp_name(tmp_path / "x.npy"), temp_name(tmp_path / "x.npy")
    assert a != b and a.name.startswith(".x.npy.tmp-") and a.parent == tmp_path
    assert temp_name(tmp_path / "m.onnx", keep_suffix=True).suffix == ".onnx"
    a.write_bytes(b"done")
    replace_file(a, tmp_path / "x.npy")
    assert (tmp_path / "x.npy").read_bytes() == b"done" and not a.exists()


def test_exported_student_is_group_readable(tmp_path, umask) -> None:
    from usjepa_fast.models.frozen import save_export_ready
    from usjepa_fast.models.resolve import resolve_encoder

    enc = resolve_encoder("vit_tiny_patch16_224", img_size=32, seed=0)
    path = save_export_ready(enc.model, enc.info, tmp_path / "student.safetensors")
    assert _mode(path) == 0o644 and _mode(path.with_suffix(".json")) == 0o644
    again = resolve_encoder(str(path))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(again(x), enc(x))


def test_non_durable_writes_are_still_atomic(tmp_path, umask) -> None:
    target = tmp_path / "cache" / "entry.json"
    with atomic_path(target, durable=False) as tmp:
        tmp.write_text("{}")
    assert target.read_text() == "{}" and _mode(target) == 0o644
    from usjepa_fast.data.cache import publish

    assert publish(tmp_path / "c2" / "x.png", lambda p: p.write_bytes(b"png"))
    assert (tmp_path / "c2" / "x.png").read_bytes() == b"png"
    assert [p.name for p in (tmp_path / "c2").iterdir()] == ["x.png"]
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o500)
    try:
        if os.access(tmp_path / "ro", os.W_OK):  # root ignores folder permissions
            return
        assert not publish(tmp_path / "ro" / "y.png", lambda p: p.write_bytes(b"png"))
    finally:
        os.chmod(tmp_path / "ro", 0o700)


def test_non_durable_open_leaves_no_temp_on_error(tmp_path) -> None:
    target = tmp_path / "features.npz"
    atomic_write_bytes(target, b"v1", durable=False)
    with pytest.raises(OSError), atomic_open(target, durable=False) as fh:
        fh.write(b"v2 partial")
        raise OSError("disk full")
    assert target.read_bytes() == b"v1" and [p.name for p in tmp_path.iterdir()] == ["features.npz"]
