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

Also here, because every writing command needs them before it computes anything: the output-path
checks (:func:`check_output_dir`, :func:`check_output_file`) and the exclusive folder lock
(:func:`folder_lock`) that keeps two jobs from writing one output folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from usjepa_fast.errors import LockedError, OutputPathError

log = logging.getLogger("usfast")

__all__ = [
    "FolderLock",
    "atomic_open",
    "atomic_path",
    "atomic_save_npy",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_output_dir",
    "check_output_file",
    "folder_lock",
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


# ----------------------------------------------------------------------------------------------
# output paths, checked before any compute


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _writable_dir(folder: Path, shown: Path, what: str) -> None:
    if not folder.is_dir():
        raise OutputPathError(
            f"{what} {shown}: {folder} is a file, not a folder, so {shown} cannot be created; choose another path"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} {shown}: folder {folder} is not writable by this user; choose another path")


def check_output_dir(path: str | Path, *, must_exist: bool = False, what: str = "output folder") -> Path:
    """Refuse, in one line, an output folder that cannot be written: it exists as a file; its nearest
    existing ancestor is a file (a path under a file) or not writable; it is missing though
    ``must_exist``. A missing folder is fine (the job creates it, parents too). Returns ``path``."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise OutputPathError(f"{what} {path} exists and is a file; choose a folder path")
        _writable_dir(path, path, what)
        return path
    if must_exist:
        raise OutputPathError(f"{what} {path} does not exist; check the path (nothing has been written there yet)")
    _writable_dir(_nearest_existing(path.parent), path, what)
    return path


def check_output_file(path: str | Path, *, what: str = "output file") -> Path:
    """Refuse, in one line, an output file that cannot be written: the path is a folder, an existing
    file is read-only, or its folder cannot be created or written (see :func:`check_output_dir`)."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{what} {path} is a folder; give a file name (e.g. {path / 'out'}{path.suffix})")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputPathError(f"{what} {path} exists and is not writable by this user; choose another path")
    _writable_dir(_nearest_existing(path.parent), path, what)
    return path


# ----------------------------------------------------------------------------------------------
# exclusive folder locks


def _process_start(pid: int) -> str:
    """The kernel's start time of ``pid`` (field 22 of /proc/PID/stat, clock ticks since boot): with
    the pid it identifies a process, so a recycled pid is not taken for the lock's holder. '' where
    /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


# lock file (resolved) -> the live lock object of this process (weak: a dropped lock is released by GC)
_held: weakref.WeakValueDictionary[str, FolderLock] = weakref.WeakValueDictionary()
_held_guard = threading.Lock()


class FolderLock:
    """An exclusive lock on an output folder: ``folder/<name>`` created with ``O_EXCL``, holding the
    holder's pid, host and start time. Use :func:`folder_lock`."""

    def __init__(self, folder: str | Path, purpose: str, name: str = ".usfast.lock") -> None:
        self.folder = Path(folder)
        self.path = self.folder / name
        self.purpose = purpose
        self.held = False
        self._key = ""
        self._token = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start": _process_start(os.getpid()),
            "purpose": purpose,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    # -- acquire ------------------------------------------------------------------------------
    def acquire(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        key = self._key = str(self.path.resolve())
        for _ in range(5):  # a takeover race with another process can need a retry
            if self._create():
                with _held_guard:
                    _held[key] = self
                self.held = True
                return self
            holder = self._read()
            if holder is None:
                continue  # released (or torn) between our create and read: try again
            reason = self._stale_reason(holder, key)
            if reason is None:
                raise LockedError(self._refusal(holder))
            self._take_over(holder, reason)
        raise LockedError(f"{self.path}: could not take the lock (another process keeps taking it); retry")

    def _create(self) -> bool:
        data = (json.dumps(self._token) + "\n").encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return True

    def _read(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"pid": -1, "host": "?", "start": "", "purpose": "?", "since": "?", "torn": True}
        return holder if isinstance(holder, dict) else {"pid": -1, "host": "?", "torn": True}

    def _stale_reason(self, holder: dict[str, Any], key: str) -> str | None:
        """Why ``holder`` no longer holds the lock, or None when it may (then we must not take it)."""
        if holder.get("torn"):
            return "its lock file is unreadable"
        pid, host = int(holder.get("pid", -1)), str(holder.get("host", ""))
        if host != socket.gethostname():
            return None  # another machine: its processes cannot be checked from here
        if pid == os.getpid():
            with _held_guard:
                live = _held.get(key)
            return None if live is not None and live.held else "this process left it behind"
        if not _pid_alive(pid):
            return f"process {pid} is no longer running"
        start = str(holder.get("start", ""))
        if start and _process_start(pid) and start != _process_start(pid):
            return f"process {pid} is no longer running (its pid now belongs to another process)"
        return None

    def _take_over(self, holder: dict[str, Any], reason: str) -> None:
        # Rename the stale file away (only one contender can), check it is the one we judged, retry.
        aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}-{secrets.token_hex(3)}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(aside.read_text())
        except (OSError, ValueError):
            moved = {"torn": True}
        same = all(moved.get(k) == holder.get(k) for k in ("pid", "host", "start", "since", "torn"))
        if not same:  # we moved a lock someone took meanwhile: put it back unless another exists now
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            return
        aside.unlink(missing_ok=True)
        log.warning(
            "%s: taking over the stale lock of %s (pid %s on %s since %s): %s",
            self.folder,
            holder.get("purpose", "?"),
            holder.get("pid", "?"),
            holder.get("host", "?"),
            holder.get("since", "?"),
            reason,
        )

    def _refusal(self, holder: dict[str, Any]) -> str:
        who = f"`{holder.get('purpose', '?')}` (pid {holder.get('pid', '?')} on {holder.get('host', '?')} since " + (
            f"{holder.get('since', '?')})"
        )
        if holder.get("host") != socket.gethostname():
            return (
                f"{self.folder} is locked by {who}; wait for that job or choose another output folder "
                f"(if it is gone, delete {self.path})"
            )
        return f"{self.folder} is being written by {who}; wait for it to finish or choose another output folder"

    # -- release ------------------------------------------------------------------------------
    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        with _held_guard:
            if _held.get(self._key) is self:
                del _held[self._key]
        holder = self._read()
        if holder is not None and all(holder.get(k) == self._token[k] for k in ("pid", "start", "since")):
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> FolderLock:
        return self.acquire() if not self.held else self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a lock object dropped without release (e.g. a Trainer never closed)
        with contextlib.suppress(Exception):
            self.release()


def folder_lock(folder: str | Path, purpose: str, name: str = ".usfast.lock") -> FolderLock:
    """An acquired exclusive lock on ``folder`` (created if missing) for ``purpose`` (e.g. ``"usfast
    embed"``): ``with folder_lock(out, "usfast embed"): ...`` or ``lock = folder_lock(...)`` and
    ``lock.release()``. A live holder is refused in one line (:class:`LockedError`); a stale lock
    (holder gone) is taken over with a warning. See docs/ARCHITECTURE.md, "Run folders"."""
    return FolderLock(folder, purpose, name).acquire()
