"""The prepared-corpus shard format: raw uint8 frame blocks in a ``.bin``, committed by a ``.json`` index.

A *part* ``s-JJJJJJ-PPP`` (job ``J`` of the prepare plan, part ``P`` of that job) is two files:

* ``s-JJJJJJ-PPP.bin``: raw blocks in write order: frames (``h * w`` bytes of uint8 gray, row-major)
  and scan masks (``np.packbits`` of the ``h * w`` bools). A mask is written once per clip and part
  (a clip's frames share it), so a part is self-contained: a streaming reader needs nothing else.
* ``s-JJJJJJ-PPP.json``: the index, written **last** (temp file, fsync, rename): ``format``,
  ``version``, ``job``, ``part``, ``last`` (the job's final part), ``data`` (the ``.bin`` name),
  ``bytes``, ``masks`` (``[offset, h, w]`` each), ``frames`` (columns ``offset``, ``height``,
  ``width``, ``unit``, ``frame_index``, ``timestamp``, ``mask``) and, in the last part, the job's
  ``unreadable`` / ``short`` / ``dropped`` records. A part exists once its index does; a ``.bin``
  without one is the leftover of an interrupted job and is rewritten.

Why raw bytes in a memory-mappable file rather than WebDataset-style tar members of PNG (measured
in ``benchmarks/shard_format.py``, results in ``benchmarks/results/shard_format_cpu.txt``): the
trainer's CPU workers should only read bytes, and the GPU does the rest. A random frame here is one
``pread`` at a known offset, no decode: ~8x10^4 frames per CPU-second from the page cache (``mmap``
slicing is within 15% of it), vs ~1.5x10^3 for PNG members of a tar, ~50x fewer; sequential
streaming likewise (~5x10^4 vs ~1.2x10^3 frames/CPU-s), so a part streams from object storage with
no decode either (one GET per part, its index a second small one). The cost is size: raw frames
take ~3x the bytes of PNG (59 vs 20 MB per 1,000 frames of 256x256; 87 KB per 341x256 frame); that
is disk and network (2,000 frames/s of 341x256 are ~170 MB/s per GPU), not CPU. Per-frame zlib
(level 1) is 2.5x smaller than raw but 17x slower to read: not worth it for local disks.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from usjepa_fast.errors import DataError
from usjepa_fast.fileio import atomic_open, atomic_write_json

FORMAT = "usfast-shard"
VERSION = 1
FRAME_COLUMNS = ("offset", "height", "width", "unit", "frame_index", "timestamp", "mask")


def part_name(job: int, part: int) -> str:
    return f"s-{job:06d}-{part:03d}"


def is_temp_file(path: Path) -> bool:
    """A temp file of :mod:`usjepa_fast.fileio` (``.<name>.tmp-<pid>-<hex>``, left by a killed writer)."""
    return path.name.startswith(".") and ".tmp-" in path.name


class PartWriter:
    """Writes the parts of one job: ``set_mask`` before a clip's frames, ``add`` each frame, ``finish``.

    A part rolls over after ``shard_frames`` frames (the running clip's mask is written again at the
    start of the next part). Each part's ``.bin`` is renamed into place before its ``.json``.
    """

    def __init__(self, shard_dir: Path, job: int, shard_frames: int) -> None:
        if shard_frames < 1:
            raise DataError(f"shard_frames={shard_frames} must be >= 1")
        self.shard_dir = Path(shard_dir)
        self.job = job
        self.shard_frames = shard_frames
        self.parts: list[dict[str, Any]] = []  # committed: name, frames, bytes
        self._mask: np.ndarray | None = None
        self._stack: contextlib.ExitStack | None = None
        self._open()

    def _open(self) -> None:
        name = part_name(self.job, len(self.parts))
        self._stack = contextlib.ExitStack()
        self._fh = self._stack.enter_context(atomic_open(self.shard_dir / f"{name}.bin"))
        self._offset = 0
        self._masks: list[list[int]] = []
        self._mask_id: int | None = None  # the current mask's block in this part (None: not yet written)
        self._rows: dict[str, list] = {c: [] for c in FRAME_COLUMNS}

    def _write(self, data: bytes) -> int:
        offset = self._offset
        self._fh.write(data)
        self._offset += len(data)
        return offset

    def set_mask(self, mask: np.ndarray) -> None:
        """The scan mask ``(h, w)`` bool of the frames that follow (their clip's)."""
        self._mask = np.ascontiguousarray(mask, dtype=bool)
        self._mask_id = None

    def add(self, frame: np.ndarray, unit: int, frame_index: int, timestamp: float) -> None:
        """Append one gray ``(h, w)`` uint8 frame (its shape must equal the current mask's)."""
        if self._mask is None or frame.shape != self._mask.shape or frame.dtype != np.uint8:
            raise ValueError(f"frame {frame.shape} {frame.dtype} does not fit the current mask")
        if len(self._rows["offset"]) >= self.shard_frames:
            self._commit(last=False, extra={})
            self._open()
        if self._mask_id is None:
            h, w = self._mask.shape
            self._masks.append([self._write(np.packbits(self._mask.ravel()).tobytes()), h, w])
            self._mask_id = len(self._masks) - 1
        h, w = frame.shape
        row = (self._write(np.ascontiguousarray(frame).tobytes()), h, w, unit, frame_index, float(timestamp))
        for col, value in zip(FRAME_COLUMNS, (*row, self._mask_id), strict=True):
            self._rows[col].append(value)

    def _commit(self, last: bool, extra: dict[str, Any]) -> None:
        name = part_name(self.job, len(self.parts))
        assert self._stack is not None
        self._stack.close()  # fsync + rename the .bin
        self._stack = None
        index = {
            "format": FORMAT,
            "version": VERSION,
            "job": self.job,
            "part": len(self.parts),
            "last": last,
            "data": f"{name}.bin",
            "bytes": self._offset,
            "masks": self._masks,
            "frames": self._rows,
            **extra,
        }
        atomic_write_json(self.shard_dir / f"{name}.json", index, indent=None)  # the commit: written last
        self.parts.append({"name": name, "frames": len(self._rows["offset"]), "bytes": self._offset})

    def finish(self, **extra: Any) -> list[dict[str, Any]]:
        """Commit the last part (``extra``: the job's records, e.g. ``unreadable``); the parts' info."""
        self._commit(last=True, extra=extra)
        return self.parts

    def abort(self) -> None:
        """Drop the part being written (its temp file); committed parts stay."""
        if self._stack is not None:
            with contextlib.suppress(BaseException):
                self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)
            self._stack = None


def read_part_index(path: Path) -> dict[str, Any]:
    """A part's index (raises :class:`DataError` naming the file when it is not a usfast shard index)."""
    try:
        index = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"shard index {path} cannot be read ({exc.__class__.__name__}); rerun usfast prepare") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DataError(f"{path} is not a usfast shard index; rerun usfast prepare")
    if index.get("version") != VERSION:
        raise DataError(f"shard {path} has format version {index.get('version')}, this usfast reads {VERSION}")
    return index


def job_parts(shard_dir: Path, job: int) -> list[dict[str, Any]] | None:
    """The committed part indexes of ``job`` when it is done (parts 0..P all there, P marked last),
    else None."""
    parts = []
    for p in range(10**3):
        path = Path(shard_dir) / f"{part_name(job, p)}.json"
        if not path.is_file():
            return None
        try:
            index = read_part_index(path)
            complete = (Path(shard_dir) / index["data"]).stat().st_size == index["bytes"]
        except (DataError, OSError, KeyError, TypeError):
            return None
        if not complete:  # its data file is missing or was cut short: the job is redone
            return None
        parts.append(index)
        if index.get("last"):
            return parts
    return None


def remove_job(shard_dir: Path, job: int) -> None:
    """Delete every file of ``job`` (an interrupted one, about to be redone)."""
    prefix = f"s-{job:06d}-"
    for path in Path(shard_dir).glob(f"*{prefix}*"):
        if path.name.startswith(prefix) or (is_temp_file(path) and path.name[1:].startswith(prefix)):
            path.unlink(missing_ok=True)


def _unpack_mask(packed: bytes | np.ndarray, h: int, w: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=h * w)
    return bits.reshape(h, w).astype(bool)


def mask_nbytes(h: int, w: int) -> int:
    return (h * w + 7) // 8


class FrameReader:
    """Random access to the blocks of a corpus's parts: one ``pread`` per block, on an LRU of open
    files (so a corpus of thousands of parts never exhausts file descriptors). Fork-safe: a forked
    DataLoader worker reopens its own files."""

    def __init__(self, shard_dir: Path, max_open: int = 64, mask_cache: int = 256) -> None:
        self.shard_dir = Path(shard_dir)
        self.max_open = max_open
        self._files: OrderedDict[str, int] = OrderedDict()
        self._masks: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._mask_cache = mask_cache
        self._pid = os.getpid()

    def _fd(self, data: str) -> int:
        if self._pid != os.getpid():  # forked: the parent's descriptors are shared, not ours to keep
            self._files.clear()
            self._masks.clear()
            self._pid = os.getpid()
        fd = self._files.get(data)
        if fd is not None:
            self._files.move_to_end(data)
            return fd
        try:
            fd = os.open(self.shard_dir / data, os.O_RDONLY)
        except OSError as exc:
            raise DataError(
                f"shard {self.shard_dir / data} cannot be opened ({exc.strerror}); rerun usfast prepare"
            ) from None
        self._files[data] = fd
        while len(self._files) > self.max_open:
            _, old = self._files.popitem(last=False)
            os.close(old)
        return fd

    def _pread(self, data: str, offset: int, n: int, out: np.ndarray) -> None:
        got = os.preadv(self._fd(data), [out], offset)
        if got != n:
            raise DataError(f"shard {self.shard_dir / data} is truncated at byte {offset}; rerun usfast prepare")

    def read(self, data: str, offset: int, h: int, w: int) -> np.ndarray:
        """The frame block at ``offset`` of part file ``data``: ``(h, w)`` uint8 (a fresh, writable array)."""
        out = np.empty((h, w), dtype=np.uint8)
        self._pread(data, offset, h * w, out)
        return out

    def read_mask(self, data: str, offset: int, h: int, w: int) -> np.ndarray:
        """The mask block at ``offset``: ``(h, w)`` bool (decoded once, kept in a small LRU; do not modify)."""
        key = (data, offset)
        mask = self._masks.get(key)
        if mask is None:
            packed = np.empty(mask_nbytes(h, w), dtype=np.uint8)
            self._pread(data, offset, packed.size, packed)
            mask = _unpack_mask(packed, h, w)
            self._masks[key] = mask
            while len(self._masks) > self._mask_cache:
                self._masks.popitem(last=False)
        else:
            self._masks.move_to_end(key)
        return mask

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd in self._files.values():
                os.close(fd)
        self._files.clear()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


@dataclass(frozen=True)
class StreamedFrame:
    """A frame of :func:`iter_part`: the gray image and mask plus its index row."""

    image: np.ndarray  # (h, w) uint8
    mask: np.ndarray  # (h, w) bool
    unit: int
    frame_index: int
    timestamp: float


def _read_exact(stream: BinaryIO, n: int, name: str, at: int) -> bytes:
    parts, left = [], n
    while left:
        data = stream.read(left)
        if not data:
            raise DataError(f"shard stream of {name} ended at byte {at + n - left}; it is truncated")
        parts.append(data)
        left -= len(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def iter_part(stream: BinaryIO, index: dict[str, Any]) -> Iterator[StreamedFrame]:
    """Frames of one part read front to back from a binary stream (a local file, an HTTP/object-store
    body; wrap an unbuffered one in ``io.BufferedReader``): no seek, no decode. ``index`` is the
    part's ``.json``."""
    cols = index["frames"]
    name = str(index.get("data"))
    blocks = sorted(
        [(o, "m", i) for i, (o, _, _) in enumerate(index["masks"])]
        + [(o, "f", i) for i, o in enumerate(cols["offset"])]
    )
    pos = 0  # stream position
    masks: dict[int, np.ndarray] = {}
    for offset, kind, i in blocks:
        if kind == "m":
            _, h, w = index["masks"][i]
            n = mask_nbytes(h, w)
        else:
            h, w = cols["height"][i], cols["width"][i]
            n = h * w
        if offset > pos:  # blocks are written back to back; tolerate a gap by skipping it
            _read_exact(stream, offset - pos, name, pos)
        block = _read_exact(stream, n, name, offset)
        pos = offset + n
        if kind == "m":
            masks[i] = _unpack_mask(block, h, w)
        else:
            image = np.frombuffer(block, dtype=np.uint8).reshape(h, w)
            yield StreamedFrame(
                image, masks[cols["mask"][i]], cols["unit"][i], cols["frame_index"][i], cols["timestamp"][i]
            )
