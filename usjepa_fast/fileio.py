"""Atomic file writes: the one place usfast writes a file that a reader (or a resume) may see.

Every helper writes to a hidden temporary file in the *same folder* as the target (``.<name>.tmp-
<pid>-<random>``; a rename is atomic only within one file system), flushes and ``fsync``s it,
renames it over the target and ``fsync``s the folder, so a kill at any point leaves either the old
file or the complete new one, never a torn one. The temporary file is created with mode ``0o666``
minus the process umask, which is what a plain ``open(path, "w")`` gives (``0644`` under the usual
``022``): ``tempfile.mkstemp``'s ``0600`` would leak into the final file (an exported
``student.safetensors`` unreadable to the rest of a team). On any error the temporary file is
removed and the target is untouched.

Leftover temporary files of a killed process start with ``.`` and contain ``.tmp-``; resumable
writers (embed parts, checkpoints) already ignore or clean hidden files.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = [
    "atomic_open",
    "atomic_path",
    "atomic_save_npy",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "replace_file",
    "temp_name",
]


def temp_name(path: str | Path, keep_suffix: bool = False) -> Path:
    """A fresh hidden temporary name beside ``path`` (unique per process and call). ``keep_suffix``:
    end in ``path``'s suffix too (``.x.tmp-1-ab12.onnx``), for libraries that dispatch on it."""
    path = Path(path)
    tag = f"tmp-{os.getpid()}-{secrets.token_hex(4)}"
    if keep_suffix:
        return path.with_name(f".{path.stem}.{tag}{path.suffix}")
    return path.with_name(f".{path.name}.{tag}")


def _fsync_dir(folder: Path) -> None:
    # Durability of the rename itself; not every platform/file system allows opening a folder.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _commit(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def replace_file(tmp: str | Path, path: str | Path, *, durable: bool = True) -> Path:
    """Commit a finished temporary file (see :func:`temp_name`) onto ``path``: fsync, rename, fsync
    the folder. For writers that must keep their own temporary (e.g. to validate it first).
    ``durable=False`` skips the fsyncs (still atomic for readers; a crash may lose the file)."""
    tmp, path = Path(tmp), Path(path)
    if not durable:
        os.replace(tmp, path)
        return path
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    _commit(tmp, path)
    return path


@contextlib.contextmanager
def atomic_open(path: str | Path, *, durable: bool = True) -> Iterator[BinaryIO]:
    """``with atomic_open(p) as fh: torch.save(obj, fh)``: a binary handle whose bytes replace ``p``
    atomically when the block exits normally (nothing changes at ``p`` if it raises).

    ``durable=False`` skips the fsyncs: readers still see the old or the whole new file, but a
    machine crash may lose the write. For caches that validate entries on read and recompute."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    # O_EXCL: never write through someone else's file; 0o666: the kernel applies the umask.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        if durable:
            _commit(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path, *, durable: bool = True) -> Iterator[Path]:
    """For libraries that write by file name (ONNX, PIL, ``Path.write_text``): yields a temporary
    path beside ``path``; when the block exits normally the file there is fsync'ed and renamed onto
    ``path``. ``durable=False``: no fsync, for caches whose entries are validated on read and simply
    recomputed when a crash lost them (thousands of small entries; fsync would dominate)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path, keep_suffix=True)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # reserve the name, umask mode
    try:
        yield tmp
        replace_file(tmp, path, durable=durable)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes, *, durable: bool = True) -> Path:
    """Replace ``path`` with ``data`` atomically (``durable``: see :func:`atomic_open`). Returns ``path``."""
    with atomic_open(path, durable=durable) as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """``obj`` as JSON (one trailing newline); ``default=str`` keeps paths and enums writable."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, default=str) + "\n")


def atomic_save_npy(path: str | Path, array: np.ndarray) -> Path:
    """``np.save`` format (no pickles), atomically."""
    with atomic_open(path) as fh:  # streamed: no second in-memory copy of a large part
        np.save(fh, np.asarray(array), allow_pickle=False)
    return Path(path)
