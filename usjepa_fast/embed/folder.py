"""``embed_folder`` (``usfast embed``): media files -> the embed engine -> an output directory; the merge.

One rank's run::

    check the output path -> lock the folder -> open the backend -> compare the run fingerprint
      -> files (this rank's share, minus already-embedded unchanged ones)
      -> embed engine (embed/engine.py) with a PartSink (+ each clip's decoded / advertised frames)
      -> PartWriter (atomic parts, marker last; committed by rows or by time)
      -> merge -> index.csv + files.csv + embed.json

Re-running resumes: when the folder's fingerprint (``embed.fingerprint.run_fields``: encoder, backend,
precision, machine, sampling, pooling, dtype, preprocessing, tokens, input, usfast version) equals
this run's, files whose latest committed part has the same stamp (size + mtime, or content hash)
are skipped and changed files are embedded again (the newest part wins in the merge); any other
fingerprint is refused in one line naming the differing fields (``overwrite=True`` starts fresh).
An interrupt (Ctrl-C, SIGTERM) commits the finished files before it propagates.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from usjepa_fast.embed import store
from usjepa_fast.embed.engine import PartSink, open_runner, run_engine
from usjepa_fast.embed.fingerprint import FINGERPRINT_FILE, check_fingerprint, run_fields, write_fingerprint
from usjepa_fast.embed.options import EmbedOptions
from usjepa_fast.embed.sharding import assign_shares, barrier, env_rank_world
from usjepa_fast.embed.sources import Source, list_sources
from usjepa_fast.errors import ConfigError, DataError, note_saved
from usjepa_fast.fileio import check_output_dir, folder_lock

log = logging.getLogger("usfast")

# what --overwrite removes from an output folder (embed's own files; nothing else in the folder)
_EMBED_FILES = ("index.csv", "files.csv", "embed.json", FINGERPRINT_FILE)


@dataclass
class EmbedSummary:
    out_dir: Path
    backend: str
    rank: int
    world_size: int
    files_total: int  # files in this rank's share
    files_embedded: int  # embedded in this run
    files_resumed: int  # already done by an earlier run (unchanged) and skipped
    files_failed: int
    failed: dict[str, str] = field(default_factory=dict)  # rel path -> reason
    frames_embedded: int = 0  # frames that went through the model
    frames_duplicate: int = 0  # sampled frames skipped as redundant (still in the index)
    seconds: float = 0.0
    index_rows: int | None = None  # after the merge (rank 0), else None
    partial: dict[str, str] = field(default_factory=dict)  # rel path -> what was missing (this run)
    counts: dict[str, int] | None = None  # files.csv statuses after the merge: ok/partial/failed/pending

    @property
    def frames_per_s(self) -> float:
        """Sampled frames (embedded + skipped duplicates) per second of wall time."""
        return (self.frames_embedded + self.frames_duplicate) / self.seconds if self.seconds > 0 else 0.0

    @property
    def outcome(self) -> str:
        """``ok`` (every input used whole), ``partial`` (some failed or partial), ``empty`` (0 rows)."""
        if self.index_rows == 0 or (self.index_rows is None and self.files_embedded + self.files_resumed == 0):
            return "empty"
        counts = self.counts or {"failed": self.files_failed, "partial": len(self.partial)}
        return "partial" if counts.get("failed", 0) or counts.get("partial", 0) else "ok"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        d["frames_per_s"] = self.frames_per_s
        d["outcome"] = self.outcome
        return d


def embed_folder(
    input_path: str | Path,
    out_dir: str | Path,
    encoder: Any,
    *,
    backend: str = "auto",
    device: str | torch.device | None = None,
    options: EmbedOptions | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    merge: bool = True,
    backend_kwargs: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> EmbedSummary:
    """Embed every image/video under ``input_path`` (folder, file, or UltraBench dir) into ``out_dir``.

    ``encoder``: a spec for :func:`usjepa_fast.embed.backends.open_backend` (timm name, checkpoint,
    ``.onnx``, ``.engine``) or an already opened backend. ``rank``/``world_size`` default to
    torchrun's environment; each rank embeds its deterministic share, and with ``merge=True`` rank 0
    writes ``index.csv`` after a barrier (without a process group, call :func:`merge_outputs`
    yourself once all ranks are done). Re-running resumes a folder of the same run fingerprint; a
    folder of another is refused unless ``overwrite`` (one process only). Options and the output
    path are validated before anything is opened; the folder is locked against a second writer.
    """
    opts = (options or EmbedOptions()).validate()
    out_dir = check_output_dir(Path(out_dir))
    env_rank, env_world = env_rank_world()
    rank = env_rank if rank is None else rank
    world_size = env_world if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} outside world size {world_size}; use 0 <= rank < world_size")
    if overwrite and world_size > 1:
        raise ConfigError("--overwrite runs in one process; empty the output folder before a torchrun embed")

    sources = list_sources(input_path, opts.kinds, opts.splits)
    if not sources:
        raise DataError(f"{input_path} holds no images or videos ({', '.join(opts.kinds)}); check the path")
    listing_failures: dict[str, str] = {}  # inputs the listing could not read (recorded as failed)

    # one process: the whole folder + rank 0's part space; a torchrun rank: its own part space
    locks = [folder_lock(out_dir, "usfast embed")] if world_size == 1 else []
    try:
        locks.append(folder_lock(out_dir, f"usfast embed (rank {rank})", name=f".usfast-r{rank:03d}.lock"))
        return _embed_locked(
            input_path,
            out_dir,
            encoder,
            sources,
            listing_failures,
            opts,
            backend,
            device,
            backend_kwargs,
            rank,
            world_size,
            merge,
            overwrite,
        )
    finally:
        for lock in reversed(locks):
            lock.release()


def _has_results(out_dir: Path) -> bool:
    return bool(store.read_parts(out_dir)) or (out_dir / "index.csv").is_file()


def clear_outputs(out_dir: Path) -> None:
    """``--overwrite``: remove embed's own files from ``out_dir`` (parts, index, manifests)."""
    shutil.rmtree(store.parts_dir(out_dir), ignore_errors=True)
    for name in _EMBED_FILES:
        (out_dir / name).unlink(missing_ok=True)
    log.info("embed: --overwrite: removed the earlier embeddings in %s", out_dir)


def _embed_locked(
    input_path: str | Path,
    out_dir: Path,
    encoder: Any,
    sources: list[Source],
    listing_failures: dict[str, str],
    opts: EmbedOptions,
    backend: str,
    device: str | torch.device | None,
    backend_kwargs: dict[str, Any] | None,
    rank: int,
    world_size: int,
    merge: bool,
    overwrite: bool,
) -> EmbedSummary:
    sizes = [s.path.stat().st_size for s in sources]
    mine = [sources[i] for i in assign_shares(sizes, world_size)[rank]]

    b = open_runner(encoder, backend, device, backend_kwargs, tokens=opts.tokens)
    fields = run_fields(b, opts, input_path)
    if overwrite:
        clear_outputs(out_dir)
    if not check_fingerprint(out_dir, fields, has_results=_has_results(out_dir)):
        write_fingerprint(out_dir, fields)
    t0 = time.perf_counter()

    # resume: skip files whose latest committed part has the same stamp
    by_hash = opts.change_check == "hash"
    previous = store.latest_stamps(store.read_parts(out_dir))
    todo: list[Source] = []
    stamps: list[store.FileStamp] = []
    resumed = 0
    for src in mine:
        stamp = store.FileStamp.of(src.path, with_hash=by_hash)
        old = previous.get(src.rel)
        if old is not None and old[0].same_as(stamp, by_hash):
            resumed += 1
            continue
        if old is not None:
            log.info("embed: %s changed since it was embedded; embedding it again", src.rel)
        todo.append(src)
        stamps.append(stamp)
    summary = EmbedSummary(out_dir, b.name, rank, world_size, len(mine), 0, resumed, 0)
    writer = store.PartWriter(out_dir, rank, opts.dtype, opts.part_rows, opts.commit_every_s)
    if resumed:
        log.info("embed: %d of %d files already embedded (unchanged); resuming with %d", resumed, len(mine), len(todo))

    statuses = _ClipStatuses(todo)
    sink = PartSink(writer, stamps, statuses.status_of)
    manifest = _manifest(b, opts, input_path, fields)
    prev_failures = store.read_failures_of(out_dir, rank)
    try:
        if todo:
            stats = run_engine(b, todo, opts, sink)
            summary.files_embedded = stats.files_embedded
            summary.frames_embedded = stats.frames_embedded
            summary.frames_duplicate = stats.frames_duplicate
        writer.flush()
    except KeyboardInterrupt as exc:
        writer.flush()  # the finished files are committed; the unfinished ones are embedded next time
        _record_failures(out_dir, rank, prev_failures, listing_failures, sink)
        if world_size == 1:
            merge_outputs(out_dir, input_path, opts, manifest, lock=False)
        left = len(todo) - len(sink.added) - len(sink.failed)
        text = (
            f"{writer.files_committed} file(s) ({writer.rows_committed} rows) committed to {out_dir} in this run, "
            f"{left} still to do; rerun the same command to resume"
        )
        log.warning("embed interrupted: %s", text)
        raise note_saved(exc, text) from None
    finally:
        statuses.close()
    summary.failed = _record_failures(out_dir, rank, prev_failures, listing_failures, sink)
    summary.files_failed = len(summary.failed)
    summary.partial = statuses.partial
    summary.seconds = time.perf_counter() - t0
    if merge:
        result = None
        if world_size == 1:
            result = merge_outputs(out_dir, input_path, opts, manifest, lock=False, full=True)
        elif barrier(world_size):
            if rank == 0:
                result = merge_outputs(out_dir, input_path, opts, manifest, full=True)
            barrier(world_size)  # nobody reads index.csv before rank 0 has written it
        else:
            log.warning(
                "embed: rank %d of %d finished without a process group; run "
                "`usfast embed --merge-only` once all ranks are done",
                rank,
                world_size,
            )
        if result is not None:
            summary.index_rows, summary.counts = result.rows, result.counts
    if summary.failed:
        log.warning(
            "embed: %d file(s) could not be read and were skipped:\n  %s",
            len(summary.failed),
            "\n  ".join(f"{p}: {r}" for p, r in sorted(summary.failed.items())),
        )
    if summary.partial:
        log.warning(
            "embed: %d clip(s) decoded only partially (their decoded frames are embedded):\n  %s",
            len(summary.partial),
            "\n  ".join(f"{p}: {r}" for p, r in sorted(summary.partial.items())),
        )
    return summary


def _record_failures(
    out_dir: Path, rank: int, previous: dict[str, str], listing: dict[str, str], sink: PartSink
) -> dict[str, str]:
    """This rank's failure list after a run: this run's failures, plus earlier ones of files this run
    did not attempt (an interrupted run), never a file that this run embedded."""
    attempted = set(sink.added) | set(sink.failed)
    failures = {p: r for p, r in previous.items() if p not in attempted and p not in listing}
    failures.update(listing)
    failures.update(sink.failed)
    store.write_failures(out_dir, rank, failures)
    return failures


class _ClipStatuses:
    """Decoded vs advertised frames of every clip of a run (``data.clips.clip_index``: decoded once
    without pixel conversion, cached in the data cache), computed on one thread ahead of the engine,
    so a file's status is ready when it finishes."""

    def __init__(self, todo: list[Source]) -> None:
        self.partial: dict[str, str] = {}
        self._futures: dict[str, Future] = {}
        clips = [s for s in todo if s.kind == "video" and _is_container(s.path)]
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usfast-clipindex") if clips else None
        for src in clips:
            self._futures[src.rel] = self._pool.submit(_clip_index, src.path)

    def status_of(self, fid: int, src: Source) -> store.FileStatus:
        future = self._futures.get(src.rel)
        if future is None:
            return store.FileStatus("ok", 1, 1) if src.kind == "image" else store.FileStatus("ok")
        index = future.result()
        if index is None:  # not indexable although the engine decoded it: nothing to compare with
            return store.FileStatus("ok")
        if index.shortfall or index.stopped:
            note = index.describe(src.rel)
            self.partial[src.rel] = note
            return store.FileStatus("partial", index.num_frames, index.listed, note)
        return store.FileStatus("ok", index.num_frames, index.listed)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _is_container(path: Path) -> bool:
    from usjepa_fast.data.media import VIDEO_EXTENSIONS

    return path.suffix.lower() in VIDEO_EXTENSIONS


def _clip_index(path: Path) -> Any:
    from usjepa_fast.data.clips import clip_index
    from usjepa_fast.errors import UsfastError

    try:
        return clip_index(path)
    except UsfastError:
        return None


def _manifest(b: Any, opts: EmbedOptions, input_path: str | Path, fields: dict[str, Any]) -> dict[str, Any]:
    from usjepa_fast.embed.fingerprint import digest

    opts_d = asdict(opts)
    opts_d.pop("progress", None)
    return {
        "encoder": b.info.to_json(),
        "backend": b.name,
        "input": str(Path(input_path).resolve()),
        "options": opts_d,
        "fingerprint": {"key": digest(fields), "fields": fields},
    }


def merge_outputs(
    out_dir: str | Path,
    input_path: str | Path | None = None,
    options: EmbedOptions | None = None,
    manifest: dict[str, Any] | None = None,
    *,
    lock: bool = True,
    full: bool = False,
) -> Any:
    """The merge step: one ``index.csv`` + ``files.csv`` (+ ``embed.json``) over every rank's parts.

    With ``input_path``, rows of files no longer in the input are dropped and inputs not embedded yet
    are listed as ``pending``. Takes the folder lock unless the caller holds it (``lock=False``).
    Returns ``(index, rows)``, or the whole :class:`~usjepa_fast.embed.store.MergeResult` with
    ``full=True``."""
    out_dir = check_output_dir(Path(out_dir), must_exist=True, what="embed output folder")
    held = folder_lock(out_dir, "usfast embed --merge-only") if lock else None
    try:
        inputs = None
        if input_path is not None:
            opts = options or EmbedOptions()
            inputs = [
                (s.rel, dict(getattr(s, "meta", None) or {})) for s in list_sources(input_path, opts.kinds, opts.splits)
            ]
        previous: dict[str, Any] = {}
        if (out_dir / "embed.json").is_file():
            previous = json.loads((out_dir / "embed.json").read_text())
        kept_keys = ("encoder", "backend", "input", "options", "fingerprint")
        manifest = dict(manifest or {k: v for k, v in previous.items() if k in kept_keys})
        if "fingerprint" not in manifest and (out_dir / FINGERPRINT_FILE).is_file():
            manifest["fingerprint"] = json.loads((out_dir / FINGERPRINT_FILE).read_text())
        failed = store.read_failures(out_dir)
        manifest["failed"] = failed
        manifest["files_failed"] = len(failed)
        result = store.merge(out_dir, inputs, manifest, failed)
    finally:
        if held is not None:
            held.release()
    return result if full else (result.index, result.rows)
