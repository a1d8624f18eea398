"""The embedding output directory: atomic feature shards, per-part index, resume state, merge, load.

Layout (readable with numpy + csv/json alone; see the package docstring for the user-facing version)::

    OUT/
      fingerprint.json                the run fingerprint (embed.fingerprint.run_fields)   - first run
      embed.json                      run manifest (encoder, options, counts, failed files) - merge step
      index.csv                       one row per sampled frame, all ranks merged          - merge step
      files.csv                       one row per input: ok / partial / failed / pending   - merge step
      parts/r000-000000.npy           features (rows, D) float16|float32 of one part
      parts/r000-000000.csv           that part's rows: path, frame_index, timestamp, row, duplicate_of
      parts/r000-000000.json          commit marker: files in the part with size/mtime and their
                                      decoded / expected frame counts (written last)
      parts/failed-r000.json          files rank 0 could not read in its last run

A *part* holds whole source files only (a file's rows never straddle two parts), so "this file is
done" is exactly "a committed part lists it". Each of the three part files is written to a temporary
name and renamed (atomic on POSIX); the ``.json`` marker goes last, so a part without its marker is
an interrupted write and is deleted on the next run. Re-embedding a changed file writes a newer part;
the merge keeps, per source path, the rows of the most recently committed part that lists it.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from usjepa_fast.errors import UsfastError
from usjepa_fast.fileio import atomic_save_npy, atomic_write_text
from usjepa_fast.models.checkpoints import file_sha256

log = logging.getLogger("usfast")

FORMAT = "usfast-embed/1"
INDEX_COLUMNS = ("path", "frame_index", "timestamp", "shard", "row", "duplicate_of")
FILES_COLUMNS = ("path", "status", "index_rows", "frames_decoded", "frames_expected", "reason")
STATUSES = ("ok", "partial", "failed", "pending")
# what a part marker keeps per file beside its stamp (see FileStatus)
_STATUS_KEYS = ("status", "frames_decoded", "frames_expected", "note")
PART_COLUMNS = ("path", "frame_index", "timestamp", "row", "duplicate_of")
_PART_RE = re.compile(r"^r(\d{3,})-(\d{6,})\.json$")


# ----------------------------------------------------------------------------------------------
# source-file identity (resume / change detection)


@dataclass(frozen=True)
class FileStamp:
    """What identifies one version of a source file: size + mtime, optionally a content hash."""

    size: int
    mtime_ns: int
    sha256: str = ""  # filled only with change_check="hash"

    @classmethod
    def of(cls, path: Path, with_hash: bool = False) -> FileStamp:
        st = path.stat()
        digest = file_sha256(path) if with_hash else ""
        return cls(size=int(st.st_size), mtime_ns=int(st.st_mtime_ns), sha256=digest)

    def same_as(self, other: FileStamp, by_hash: bool) -> bool:
        if by_hash and self.sha256 and other.sha256:
            # touching a file (new mtime, same bytes) must not force a re-embed in hash mode
            return self.sha256 == other.sha256
        return self.size == other.size and self.mtime_ns == other.mtime_ns


# ----------------------------------------------------------------------------------------------
# rows


@dataclass
class FrameRow:
    """One sampled frame of a source file inside a part.

    ``row`` is the feature row in the part's ``.npy``; for a frame skipped as redundant it is the
    row of the representative frame and ``duplicate_of`` is that frame's index (``-1`` otherwise).
    Clip-level pooled rows use ``frame_index = -1`` and the clip's mean timestamp.
    """

    frame_index: int
    timestamp: float
    row: int
    duplicate_of: int = -1


@dataclass
class PartInfo:
    """A committed part as read back from its marker."""

    stem: str  # "r000-000012"
    rank: int
    seq: int
    committed_ns: int
    rows: int
    dim: int
    dtype: str
    files: dict[str, FileStamp] = field(default_factory=dict)
    status: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> FileStatus fields


@dataclass(frozen=True)
class FileStatus:
    """How completely one input was used: ``ok``, or ``partial`` when a clip decodes fewer frames
    than its container advertises (``frames_decoded < frames_expected``, from ``data.clips``)."""

    status: str = "ok"
    frames_decoded: int | None = None
    frames_expected: int | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.frames_decoded is not None:
            out["frames_decoded"] = int(self.frames_decoded)
        if self.frames_expected is not None:
            out["frames_expected"] = int(self.frames_expected)
        if self.note:
            out["note"] = self.note
        return out


def parts_dir(out_dir: Path) -> Path:
    return Path(out_dir) / "parts"


def _stamp_to_json(s: FileStamp) -> dict[str, Any]:
    out: dict[str, Any] = {"size": s.size, "mtime_ns": s.mtime_ns}
    if s.sha256:
        out["sha256"] = s.sha256
    return out


def read_parts(out_dir: Path) -> list[PartInfo]:
    """All committed parts (marker present and readable), oldest commit first."""
    pdir = parts_dir(out_dir)
    if not pdir.is_dir():
        return []
    parts = []
    for marker in pdir.iterdir():
        m = _PART_RE.match(marker.name)
        if not m:
            continue
        try:
            meta = json.loads(marker.read_text())
            files = {
                p: FileStamp(int(v["size"]), int(v["mtime_ns"]), str(v.get("sha256", "")))
                for p, v in meta["files"].items()
            }
            status = {p: {k: v[k] for k in _STATUS_KEYS if k in v} for p, v in meta["files"].items()}
            parts.append(
                PartInfo(
                    marker.stem,
                    int(m.group(1)),
                    int(m.group(2)),
                    int(meta["committed_ns"]),
                    int(meta["rows"]),
                    int(meta["dim"]),
                    str(meta["dtype"]),
                    files,
                    status,
                )
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # a marker is written atomically, so this is outside damage; ignoring it re-embeds its files
            log.warning("embed: ignoring unreadable part marker %s (%s)", marker, exc)
    parts.sort(key=lambda p: (p.committed_ns, p.rank, p.seq))
    return parts


def latest_stamps(parts: Sequence[PartInfo]) -> dict[str, tuple[FileStamp, PartInfo]]:
    """Per source path, its stamp in the most recently committed part that lists it."""
    latest: dict[str, tuple[FileStamp, PartInfo]] = {}
    for part in parts:  # oldest first, so later commits overwrite
        for path, stamp in part.files.items():
            latest[path] = (stamp, part)
    return latest


# ----------------------------------------------------------------------------------------------
# writer


class PartWriter:
    """Buffers whole files' features and rows; commits a part once ``part_rows`` rows are buffered or
    ``commit_every_s`` seconds have passed since the last commit (checked as each file finishes).

    One writer per rank; parts are named ``r{rank}-{seq}`` with ``seq`` continuing after the highest
    committed or orphaned one of this rank, so resumed runs never overwrite an earlier part.
    """

    def __init__(
        self,
        out_dir: Path,
        rank: int,
        dtype: str = "float16",
        part_rows: int = 8192,
        commit_every_s: float | None = None,
    ) -> None:
        if dtype not in ("float16", "float32"):
            raise UsfastError(f"embed dtype {dtype!r}; use float16 or float32")
        self.out_dir = Path(out_dir)
        self.rank = rank
        self.dtype = np.dtype(dtype)
        self.part_rows = max(1, part_rows)
        self.commit_every_s = commit_every_s
        self._last_commit = time.monotonic()
        self.pdir = parts_dir(self.out_dir)
        self.pdir.mkdir(parents=True, exist_ok=True)
        self._remove_orphans()
        self.seq = self._next_seq()
        self._feats: list[np.ndarray] = []
        self._rows: list[tuple[str, FrameRow]] = []
        self._files: dict[str, FileStamp] = {}
        self._status: dict[str, FileStatus] = {}
        self._n = 0
        self.committed: list[str] = []
        self.files_committed = 0  # source files in the parts this writer committed
        self.rows_committed = 0

    def _own(self) -> Iterable[Path]:
        prefix = f"r{self.rank:03d}-"
        return (p for p in self.pdir.iterdir() if p.name.startswith(prefix) or p.name.startswith("." + prefix))

    def _remove_orphans(self) -> None:
        """Delete this rank's leftovers of an interrupted commit (no marker, or temp files)."""
        own = list(self._own())
        committed = {p.stem for p in own if p.suffix == ".json" and not p.name.startswith(".")}
        for p in own:
            if p.name.startswith(".") or p.stem not in committed:
                log.info("embed: removing incomplete part file %s from an interrupted run", p.name)
                p.unlink(missing_ok=True)

    def _next_seq(self) -> int:
        seqs = [
            int(m.group(2))
            for p in self.pdir.iterdir()
            if (m := _PART_RE.match(p.name)) and int(m.group(1)) == self.rank
        ]
        return max(seqs, default=-1) + 1

    def add_file(
        self,
        path: str,
        stamp: FileStamp,
        features: np.ndarray,
        rows: Sequence[FrameRow],
        status: FileStatus | None = None,
    ) -> None:
        """Queue one finished source file: ``features (n, D)``, ``rows`` index into them (0..n-1);
        ``status`` (how completely it decoded) is recorded in the part marker."""
        if features.ndim != 2:
            raise ValueError(f"features for {path} must be (n, D), got {features.shape}")
        if self._feats and features.shape[1] != self._feats[0].shape[1]:
            raise ValueError(f"feature width changed within a run ({features.shape[1]} vs {self._feats[0].shape[1]})")
        for r in rows:
            if not 0 <= r.row < features.shape[0]:
                raise ValueError(f"row {r.row} of {path} outside its {features.shape[0]} features")
        offset = self._n
        self._feats.append(np.asarray(features, dtype=self.dtype))
        self._rows.extend((path, FrameRow(r.frame_index, r.timestamp, r.row + offset, r.duplicate_of)) for r in rows)
        self._files[path] = stamp
        self._status[path] = status or FileStatus()
        self._n += features.shape[0]
        due = self.commit_every_s is not None and time.monotonic() - self._last_commit >= self.commit_every_s
        if self._n >= self.part_rows or due:
            self.flush()

    @property
    def pending_files(self) -> int:
        """Finished files buffered but not yet committed."""
        return len(self._files)

    def flush(self) -> None:
        """Commit the buffered files as one part (no-op when nothing is buffered)."""
        if not self._files:
            return
        stem = f"r{self.rank:03d}-{self.seq:06d}"
        dim = self._feats[0].shape[1] if self._feats else 0
        feats = np.concatenate(self._feats, axis=0) if self._feats else np.zeros((0, dim), self.dtype)
        atomic_save_npy(self.pdir / f"{stem}.npy", feats)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(PART_COLUMNS)
        for path, r in self._rows:
            w.writerow((path, r.frame_index, _fmt_ts(r.timestamp), r.row, r.duplicate_of))
        atomic_write_text(self.pdir / f"{stem}.csv", buf.getvalue())
        marker = {
            "format": FORMAT,
            "committed_ns": time.time_ns(),
            "rows": int(feats.shape[0]),
            "dim": int(dim),
            "dtype": self.dtype.name,
            "files": {
                p: {**_stamp_to_json(s), **self._status.get(p, FileStatus()).to_json()} for p, s in self._files.items()
            },
        }
        atomic_write_text(self.pdir / f"{stem}.json", json.dumps(marker) + "\n")  # the commit point
        self.committed.append(stem)
        self.files_committed += len(self._files)
        self.rows_committed += int(feats.shape[0])
        self.seq += 1
        self._last_commit = time.monotonic()
        self._feats, self._rows, self._files, self._status, self._n = [], [], {}, {}, 0


def _fmt_ts(t: float) -> str:
    return "" if t is None or (isinstance(t, float) and math.isnan(t)) else f"{t:.6f}"


# ----------------------------------------------------------------------------------------------
# failures


def write_failures(out_dir: Path, rank: int, failures: dict[str, str]) -> None:
    """Record the files this rank could not read in this run (replaces its previous list)."""
    pdir = parts_dir(out_dir)
    pdir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(pdir / f"failed-r{rank:03d}.json", json.dumps(failures, indent=1, sort_keys=True) + "\n")


def read_failures_of(out_dir: Path, rank: int) -> dict[str, str]:
    """The failure list rank ``rank`` wrote in its last run ({} when none)."""
    path = parts_dir(out_dir) / f"failed-r{rank:03d}.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        log.warning("embed: unreadable failure list %s ignored", path)
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def read_failures(out_dir: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    pdir = parts_dir(out_dir)
    if pdir.is_dir():
        for p in sorted(pdir.glob("failed-r*.json")):
            try:
                out.update(json.loads(p.read_text()))
            except (OSError, ValueError):
                log.warning("embed: unreadable failure list %s ignored", p)
    return out


# ----------------------------------------------------------------------------------------------
# merge and load


@dataclass
class IndexRow:
    """One row of ``index.csv``; ``shard`` is relative to the output directory."""

    path: str
    frame_index: int
    timestamp: float
    shard: str
    row: int
    duplicate_of: int


def _read_part_rows(out_dir: Path, stem: str) -> list[tuple[str, FrameRow]]:
    with open(parts_dir(out_dir) / f"{stem}.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        return [
            (
                r["path"],
                FrameRow(
                    int(r["frame_index"]),
                    float(r["timestamp"]) if r["timestamp"] else math.nan,
                    int(r["row"]),
                    int(r["duplicate_of"]),
                ),
            )
            for r in reader
        ]


@dataclass
class FileEntry:
    """One row of ``files.csv``: how one input was used."""

    path: str
    status: str  # ok | partial | failed | pending
    index_rows: int = 0
    frames_decoded: int | None = None
    frames_expected: int | None = None
    reason: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class MergeResult:
    index: Path
    rows: int
    files: list[FileEntry]

    @property
    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATUSES, 0)
        for f in self.files:
            out[f.status] = out.get(f.status, 0) + 1
        return out


def merge_index(
    out_dir: Path, keep_paths: Iterable[str] | None = None, manifest: dict[str, Any] | None = None
) -> tuple[Path, int]:
    """:func:`merge` restricted to ``keep_paths``; returns (index path, number of rows)."""
    inputs = None if keep_paths is None else [(p, {}) for p in keep_paths]
    res = merge(out_dir, inputs, manifest)
    return res.index, res.rows


def merge(
    out_dir: Path,
    inputs: Sequence[tuple[str, dict[str, Any]]] | None = None,
    manifest: dict[str, Any] | None = None,
    failures: dict[str, str] | None = None,
) -> MergeResult:
    """Write ``index.csv``, ``files.csv`` (+ ``embed.json``) from all committed parts of all ranks.

    Per source path, rows come from the latest committed part listing it (older parts of re-embedded
    files are ignored). ``inputs``: ``(path, meta)`` of the current input listing, so files deleted
    since an earlier run drop out and files not embedded yet show as ``pending``; None = every
    committed file. ``failures`` (default: every rank's failure list): an input that failed in its
    latest attempt is ``failed`` and keeps no rows, even if an older version of it was embedded.
    """
    out_dir = Path(out_dir)
    parts = read_parts(out_dir)
    latest = latest_stamps(parts)
    failures = read_failures(out_dir) if failures is None else dict(failures)
    wanted = {p for p, _ in inputs} if inputs is not None else None
    owner = {p: part.stem for p, (_, part) in latest.items() if (wanted is None or p in wanted) and p not in failures}
    by_part: dict[str, list[str]] = {}
    for path, stem in owner.items():
        by_part.setdefault(stem, []).append(path)
    grouped: dict[str, list[IndexRow]] = {}
    status: dict[str, dict[str, Any]] = {}
    dims = set()
    for part in parts:
        if part.stem not in by_part:
            continue
        dims.add(part.dim)
        mine = set(by_part[part.stem])
        for path in mine:
            status[path] = part.status.get(path, {})
        for path, r in _read_part_rows(out_dir, part.stem):
            if path in mine:
                grouped.setdefault(path, []).append(
                    IndexRow(path, r.frame_index, r.timestamp, f"parts/{part.stem}.npy", r.row, r.duplicate_of)
                )
    if len(dims) > 1:
        raise UsfastError(
            f"{out_dir} holds parts of different feature widths {sorted(dims)}; "
            "embed each encoder into its own output directory"
        )
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(INDEX_COLUMNS)
    n = 0
    for path in sorted(grouped):
        for r in grouped[path]:  # part order == frame order within a file
            w.writerow((r.path, r.frame_index, _fmt_ts(r.timestamp), r.shard, r.row, r.duplicate_of))
            n += 1
    index_path = out_dir / "index.csv"
    atomic_write_text(index_path, buf.getvalue())
    files = _file_entries(inputs, owner, grouped, status, failures)
    write_files_manifest(out_dir, files)
    result = MergeResult(index_path, n, files)
    if manifest is not None:
        manifest = dict(manifest)
        counts = result.counts
        manifest.update(
            format=FORMAT,
            rows=n,
            files=len(grouped),
            dim=dims.pop() if dims else 0,
            counts=counts,
            complete=counts["pending"] == 0,
        )
        atomic_write_text(out_dir / "embed.json", json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return result


def _file_entries(
    inputs: Sequence[tuple[str, dict[str, Any]]] | None,
    owner: dict[str, str],
    grouped: dict[str, list[IndexRow]],
    status: dict[str, dict[str, Any]],
    failures: dict[str, str],
) -> list[FileEntry]:
    metas = dict(inputs) if inputs is not None else {}
    paths = set(metas) | set(failures) | (set(owner) if inputs is None else set())
    out = []
    for path in sorted(paths):
        meta = dict(metas.get(path) or {})
        if path in failures:
            out.append(FileEntry(path, "failed", reason=failures[path], meta=meta))
        elif path in owner:
            st = status.get(path, {})
            out.append(
                FileEntry(
                    path,
                    str(st.get("status", "ok")),
                    len(grouped.get(path, [])),
                    st.get("frames_decoded"),
                    st.get("frames_expected"),
                    str(st.get("note", "")),
                    meta,
                )
            )
        else:
            out.append(FileEntry(path, "pending", meta=meta))
    return out


def write_files_manifest(out_dir: Path, files: Sequence[FileEntry]) -> Path:
    """``files.csv``: :data:`FILES_COLUMNS`, then every ``Source.meta`` key any input has (a key equal to
    a fixed column gets a ``meta_`` prefix)."""
    meta_keys = sorted({k for f in files for k in f.meta})
    header = list(FILES_COLUMNS) + [f"meta_{k}" if k in FILES_COLUMNS else k for k in meta_keys]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for f in files:
        cells = [
            f.path,
            f.status,
            f.index_rows,
            "" if f.frames_decoded is None else f.frames_decoded,
            "" if f.frames_expected is None else f.frames_expected,
            f.reason,
        ]
        w.writerow(cells + ["" if f.meta.get(k) is None else f.meta[k] for k in meta_keys])
    path = Path(out_dir) / "files.csv"
    atomic_write_text(path, buf.getvalue())
    return path


def read_files_manifest(out_dir: str | Path) -> list[dict[str, str]]:
    """``files.csv`` rows as dicts (strings), in path order."""
    path = Path(out_dir) / "files.csv"
    if not path.is_file():
        raise UsfastError(f"{path} does not exist; run `usfast embed` (or its merge step) first")
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def read_index(out_dir: str | Path) -> list[IndexRow]:
    index = Path(out_dir) / "index.csv"
    if not index.is_file():
        raise UsfastError(f"{index} does not exist; run `usfast embed` to completion (or its merge step) first")
    with open(index, newline="") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != INDEX_COLUMNS:
            raise UsfastError(f"{index} has columns {reader.fieldnames}, expected {list(INDEX_COLUMNS)}")
        return [
            IndexRow(
                r["path"],
                int(r["frame_index"]),
                float(r["timestamp"]) if r["timestamp"] else math.nan,
                r["shard"],
                int(r["row"]),
                int(r["duplicate_of"]),
            )
            for r in reader
        ]


def load(
    out_dir: str | Path, include_duplicates: bool = True, dtype: np.dtype | str = np.float32
) -> tuple[np.ndarray, list[IndexRow]]:
    """Read an embed output directory: ``(features (N, D), index rows)`` aligned row by row.

    ``include_duplicates=True``: every sampled frame, frames skipped as redundant carry their
    representative's features; ``False``: only frames that were actually embedded.
    """
    out_dir = Path(out_dir)
    rows = read_index(out_dir)
    if not include_duplicates:
        rows = [r for r in rows if r.duplicate_of < 0]
    shards: dict[str, np.ndarray] = {}
    for r in rows:
        if r.shard not in shards:
            try:
                shards[r.shard] = np.load(out_dir / r.shard, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise UsfastError(
                    f"feature shard {out_dir / r.shard} is unreadable ({exc}); re-run usfast embed"
                ) from None
    if not rows:
        dim = next(iter(shards.values())).shape[1] if shards else 0
        return np.zeros((0, dim), dtype=dtype), rows
    dim = next(iter(shards.values())).shape[1]
    out = np.empty((len(rows), dim), dtype=dtype)
    # gather shard by shard (one fancy-index per shard instead of one read per row)
    by_shard: dict[str, tuple[list[int], list[int]]] = {}
    for i, r in enumerate(rows):
        dst, src = by_shard.setdefault(r.shard, ([], []))
        dst.append(i)
        src.append(r.row)
    for shard, (dst, src) in by_shard.items():
        out[np.asarray(dst)] = np.asarray(shards[shard][np.asarray(src)], dtype=dtype)
    return out, rows
