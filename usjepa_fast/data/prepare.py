"""``usfast prepare``: decode every source once into shards of uint8 frames, for training at GPU speed.

Random access to a video folder decodes a whole clip per sample (the sampler shuffles frames over
all clips), which is 10^2-10^3x slower than a GPU step needs. :func:`prepare_corpus` decodes each
input once, applies the frame sampling, takes the one scan region of the file
(:func:`usjepa_fast.data.clips.scan_mask`; an UltraBench record's own mask; DICOM regions), resizes
frames and masks to the storage size and writes them as raw uint8 blocks into parts
(:mod:`usjepa_fast.data.shards`), with a per-frame index (member, unit = clip or image, frame index,
timestamp; groups and labels in the unit table). :class:`usjepa_fast.data.prepared.PreparedCorpus`
reads the result; a random frame is one ``pread``.

Work is planned once (:mod:`usjepa_fast.data.prepare_plan`, ``prepare.json``): units in a fixed
order, grouped into jobs of about ``shard_frames`` frames. Jobs run on worker processes; a job's
bytes depend on its units and the options only, so the output is the same whatever the worker
count. A part counts once its index is written (last); a job counts once its last part is; an
interrupted prepare reruns only the jobs that are not done, from scratch, so no frame is duplicated
or lost. ``corpus.json`` is written after every job is done. Inputs that cannot be read are never
replaced by others: listing problems, files that do not decode and skipped UltraBench records are
counted per member and listed with their reasons.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing as mp
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from usjepa_fast.data.media import stretch_to_uint8
from usjepa_fast.data.prepare_plan import (
    Listing,
    PrepareOptions,
    Unit,
    list_sources,
    plan_from_json,
    plan_jobs,
    plan_to_json,
)
from usjepa_fast.data.shards import PartWriter, is_temp_file, job_parts, remove_job
from usjepa_fast.data.video import FrameSampling
from usjepa_fast.errors import DataError
from usjepa_fast.fileio import atomic_write_json

log = logging.getLogger("usfast")

CORPUS_FORMAT = "usfast-corpus"
CORPUS_VERSION = 1
PLAN_FILE, CORPUS_FILE, SHARD_DIR = "prepare.json", "corpus.json", "shards"


@dataclass
class PrepareSummary:
    """What :func:`prepare_corpus` wrote (or found already written)."""

    out_dir: Path
    members: list[dict[str, Any]]  # name, kind, root, units, frames, unreadable
    frames: int
    shards: int  # parts
    bytes: int  # of the parts' data files
    unreadable: list[tuple[str, str]]  # (path, reason): every input that gave no frame
    short: list[tuple[str, str]] = field(default_factory=list)  # clips that ended early (their frames kept)
    dropped_frames: int = 0  # frames whose size differed from their clip's scan mask
    jobs: int = 0
    jobs_resumed: int = 0  # done by an earlier run
    frames_written: int = 0  # by this run
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process and its workers
    workers: int = 1

    @property
    def frames_per_cpu_s(self) -> float:
        """Frames written by this run per CPU-second (this process and its workers)."""
        return self.frames_written / self.cpu_seconds if self.cpu_seconds > 0 else 0.0


# --------------------------------------------------------------------------------------------------
# storage geometry
# --------------------------------------------------------------------------------------------------


def storage_shape(h: int, w: int, storage_size: int | None, max_side: int | None) -> tuple[int, int]:
    """The stored ``(h, w)`` of a native ``(h, w)`` frame: short side ``storage_size`` (never upscaled;
    None = native), long side at most ``max_side``; aspect ratio kept."""
    scale = 1.0
    if storage_size is not None:
        scale = min(1.0, storage_size / min(h, w))
    if max_side is not None and max(h, w) * scale > max_side:
        scale = max_side / max(h, w)
    if scale >= 1.0:
        return h, w
    return max(1, round(h * scale)), max(1, round(w * scale))


def store_frame(gray: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A native gray frame -> stored uint8 ``shape`` (PIL bilinear, antialiased when shrinking; 16-bit
    frames stretched linearly from their min..max to 0..255 first, keeping their window)."""
    gray = stretch_to_uint8(gray)
    if gray.shape == shape:
        return np.ascontiguousarray(gray)
    return np.asarray(Image.fromarray(gray).resize((shape[1], shape[0]), Image.BILINEAR))


def store_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A native scan mask -> ``shape`` by nearest neighbour (a stored pixel is in the region when the
    native pixel under its centre is)."""
    if mask.shape == shape:
        return np.ascontiguousarray(mask, dtype=bool)
    small = Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.NEAREST)
    return np.asarray(small) > 127


# --------------------------------------------------------------------------------------------------
# one job (runs in a worker process)
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _ultrabench(root: str):  # -> UltraBenchDataset (one per worker and root: its JSON is read once)
    from usjepa_fast.data.ultrabench import UltraBenchDataset

    return UltraBenchDataset(root, "train")


def _unit_frames(
    unit: Unit, root: Path, options: PrepareOptions, decoder, cache_dir: str | None, mask_cache: str
) -> tuple[np.ndarray | None, Iterator[tuple[int, float, np.ndarray]]]:
    """``(native scan mask or None = whole frame, iterator of (frame index, timestamp, gray))``.
    Raises DataError when the unit cannot be read at all."""
    from usjepa_fast.data.clips import frames_with_scan_mask, scan_mask

    path = root / unit.rel
    if unit.kind == "ultrabench":
        gray, mask = _ultrabench(str(root)).load(unit.record)
        return mask, iter([(0, 0.0, gray)])
    if unit.kind == "video" and options.scan_mask != "none" and _one_pass(path, options, decoder):
        read = frames_with_scan_mask(path, options.sampling, cache_dir=cache_dir, mask_cache=mask_cache)
        if read.frames is not None:
            return read.mask, _replay(read.frames, read.stopped)
        return read.mask, ((f.index, f.timestamp, f.image) for f in decoder.frames(path, options.sampling))
    mask = None
    if options.scan_mask != "none":
        mask = scan_mask(path, mode=options.scan_mask, cache_dir=cache_dir, mask_cache=mask_cache)
    if unit.kind == "image":
        from usjepa_fast.data.media import read_image_gray

        return mask, iter([(0, 0.0, read_image_gray(path))])
    if unit.kind == "dicom":
        from usjepa_fast.data.dicom import DicomDecoder

        frames = DicomDecoder().frames(path, options.sampling)
    else:
        frames = decoder.frames(path, options.sampling)
    return mask, ((f.index, f.timestamp, f.image) for f in frames)


def _one_pass(path: Path, options: PrepareOptions, decoder) -> bool:
    """A PyAV clip whose region must be detected: one decoding pass gives its frames and its mask
    (``clips.frames_with_scan_mask``) instead of one for the mask's spread frames and one for the frames."""
    from usjepa_fast.data.clips import declared_mask_source
    from usjepa_fast.data.video import PyAVDecoder, base_decoder

    return isinstance(base_decoder(decoder), PyAVDecoder) and declared_mask_source(path, options.scan_mask) is None


def _replay(frames: list, stopped: str | None) -> Iterator[tuple[int, float, np.ndarray]]:
    """Frames read already, then the decoding error that ended them early (a short clip keeps them)."""
    yield from frames
    if stopped is not None:
        raise DataError(stopped)


def _write_unit(
    writer: PartWriter, uid: int, mask: np.ndarray | None, frames, options: PrepareOptions
) -> tuple[int, int, str | None]:
    """Resize and append a unit's frames: ``(kept, dropped, why decoding stopped or None)``."""
    kept = dropped = 0
    shape = None
    try:
        for index, timestamp, gray in frames:
            if shape is None:  # the first frame fixes the clip's geometry (mask None: the whole frame)
                mask = np.ones(gray.shape, bool) if mask is None else mask
                shape = storage_shape(*mask.shape, options.storage_size, options.max_side)
                writer.set_mask(store_mask(mask, shape))
            if gray.shape != mask.shape:  # a clip whose frame size changes mid-stream: not this clip's region
                dropped += 1
                continue
            writer.add(store_frame(gray, shape), uid, int(index), float(timestamp))
            kept += 1
    except DataError as exc:
        return kept, dropped, str(exc)
    return kept, dropped, None


def run_job(
    out_dir: str,
    job: int,
    first: int,
    units: list[Unit],
    roots: list[str],
    options: PrepareOptions,
    decode_threads: int,
    cache_dir: str | None,
    mask_cache: str,
) -> dict[str, Any]:
    """Decode ``units`` (global unit ids ``first, first + 1, ...``) into the parts of ``job``."""
    from usjepa_fast.data.video import get_decoder

    t0 = time.process_time()
    decoder = get_decoder(options.decoder, threads=decode_threads)
    writer = PartWriter(Path(out_dir) / SHARD_DIR, job, options.shard_frames)
    unreadable: list[list] = []  # [unit, path, reason]: gave no frame
    short: list[list] = []  # [unit, path, reason]: ended early, frames kept
    dropped: list[list] = []  # [unit, path, frames]: frames of another size than the clip's mask
    try:
        for uid, unit in enumerate(units, start=first):
            root = Path(roots[unit.member])
            path = str(root / unit.rel)
            try:
                mask, frames = _unit_frames(unit, root, options, decoder, cache_dir, mask_cache)
            except DataError as exc:  # cannot be opened, or its scan region cannot be found
                kept, n_dropped, error = 0, 0, str(exc)
            else:
                kept, n_dropped, error = _write_unit(writer, uid, mask, frames, options)
            if kept == 0:
                reason = error or (
                    f"all {n_dropped} frames differ in size from its scan mask" if n_dropped else "no frame decoded"
                )
                unreadable.append([uid, path, reason])
                log.warning("prepare: skipping unreadable input %s: %s", path, reason)
                continue
            if error is not None:
                short.append([uid, path, error])
                log.warning("prepare: %s ended early after %d frames; keeping them (%s)", path, kept, error)
            if n_dropped:
                dropped.append([uid, path, n_dropped])
        parts = writer.finish(unreadable=unreadable, short=short, dropped=dropped)
    except BaseException:
        writer.abort()
        raise
    return {"job": job, "parts": parts, "cpu": time.process_time() - t0}


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------


_OURS = {PLAN_FILE, CORPUS_FILE, SHARD_DIR, ".usfast.lock"}  # + the folder lock of `usfast prepare` (fileio)


def _check_out_dir(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"prepare output {out} is a file; pass a folder")
    entries = {p.name for p in out.iterdir()}
    if entries and PLAN_FILE not in entries and not entries <= _OURS:
        raise DataError(f"prepare output {out} is not empty and not a usfast corpus; choose a new or empty folder")


def _clear(out: Path) -> None:
    """Delete what an earlier prepare wrote in ``out`` (and nothing else)."""
    for name in _OURS:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def _load_or_plan(
    out: Path, sources: list[str | Path], options: PrepareOptions, workers: int, overwrite: bool
) -> Listing:
    import json

    listing = list_sources(sources, options)  # before anything is deleted: bad sources cost nothing
    fingerprint = listing.fingerprint(options)
    plan_path = out / PLAN_FILE
    if overwrite:
        _clear(out)
    if plan_path.is_file():
        try:
            raw = json.loads(plan_path.read_text())
        except (OSError, ValueError):
            raise DataError(f"{plan_path} cannot be read; pass overwrite (--overwrite) to start again") from None
        stored, stored_options, stored_fp = plan_from_json(raw, plan_path)
        if stored_fp != fingerprint:
            what = "options" if stored_options != options else "sources (files added, removed or changed)"
            raise DataError(
                f"{out} holds a prepare of other {what}; prepare into a new folder or pass overwrite (--overwrite)"
            )
        return stored
    plan_jobs(listing, options, workers)
    out.mkdir(parents=True, exist_ok=True)
    (out / SHARD_DIR).mkdir(exist_ok=True)
    atomic_write_json(plan_path, plan_to_json(listing, options, fingerprint), indent=None)  # before any shard
    return listing


def _pool(workers: int) -> ProcessPoolExecutor:
    # forkserver: workers fork from a clean server that never ran threads (FFmpeg / OpenMP pools of
    # this process are not fork-safe); the preload imports the data layer there once.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["usjepa_fast.data.prepare"])
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx)


def _run_jobs(
    out: Path,
    listing: Listing,
    pending: list[int],
    options: PrepareOptions,
    workers: int,
    cache_dir: str | None,
    mask_cache: str,
    progress: Callable[[int, int], None] | None,
) -> float:
    """Run ``pending`` jobs; returns (the worker processes' CPU seconds, frames written)."""
    roots = [m["root"] for m in listing.members]
    units = listing.units
    inline = workers <= 1 or len(pending) <= 1
    threads = 0 if inline else 1  # FFmpeg frame threads: all cores for one process, else one per worker

    def args(j: int) -> tuple:
        start, end = listing.jobs[j]
        return (str(out), j, start, units[start:end], roots, options, threads, cache_dir, mask_cache)

    cpu, done, frames = 0.0, 0, 0
    if inline:
        for j in pending:
            result = run_job(*args(j))
            frames += sum(p["frames"] for p in result["parts"])
            done += 1
            if progress:
                progress(done, len(pending))
        return 0.0, frames  # ran in this process: its own CPU time counts it
    with _pool(workers) as pool:
        queue = list(pending)
        running = {pool.submit(run_job, *args(queue.pop(0))) for _ in range(min(len(queue), 2 * workers))}
        try:
            while running:
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    result = fut.result()  # re-raises a worker's error (done jobs stay done)
                    cpu += result["cpu"]
                    frames += sum(p["frames"] for p in result["parts"])
                    done += 1
                    if progress:
                        progress(done, len(pending))
                    if queue:
                        running.add(pool.submit(run_job, *args(queue.pop(0))))
        except BaseException:
            for fut in running:
                fut.cancel()
            raise
    return cpu, frames


def _finalize(out: Path, listing: Listing, options: PrepareOptions) -> dict[str, Any]:
    """``corpus.json`` from the plan and the committed parts (written last: the corpus is complete)."""
    shard_dir = out / SHARD_DIR
    frames_per_unit = np.zeros(len(listing.units), dtype=np.int64)
    shards, unreadable, short, dropped = [], [], [], 0
    for j in range(len(listing.jobs)):
        parts = job_parts(shard_dir, j)
        if parts is None:
            raise DataError(f"{out}: job {j} is not done; rerun usfast prepare to resume")
        for part in parts:
            units = np.asarray(part["frames"]["unit"], dtype=np.int64)
            frames_per_unit += np.bincount(units, minlength=len(listing.units))
            shards.append({"name": Path(part["data"]).stem, "frames": len(units), "bytes": part["bytes"]})
        last = parts[-1]
        unreadable += [(p, r) for _, p, r in last.get("unreadable", [])]
        short += [(p, r) for _, p, r in last.get("short", [])]
        dropped += sum(n for _, _, n in last.get("dropped", []))
    member_of = np.asarray([u.member for u in listing.units], dtype=np.int64)
    failed_units = {p for p, _ in unreadable}
    members = []
    for m, info in enumerate(listing.members):
        in_m = member_of == m
        roots_failed = sum(
            1 for u in np.flatnonzero(in_m) if str(Path(info["root"]) / listing.units[u].rel) in failed_units
        )
        members.append(
            {**info, "units": int(in_m.sum()), "frames": int(frames_per_unit[in_m].sum()), "unreadable": roots_failed}
        )
    all_unreadable = sorted([tuple(p) for p in listing.problems] + unreadable)
    manifest = {
        "format": CORPUS_FORMAT,
        "version": CORPUS_VERSION,
        "options": asdict(options),
        "members": members,
        "units": {
            "member": member_of.tolist(),
            "path": [u.rel for u in listing.units],
            "kind": [u.kind for u in listing.units],
            "group": [u.group for u in listing.units],
            "label": [u.label for u in listing.units],
            "frames": frames_per_unit.tolist(),
        },
        "shards": shards,
        "frames": int(frames_per_unit.sum()),
        "bytes": int(sum(s["bytes"] for s in shards)),
        "unreadable": [list(p) for p in all_unreadable],
        "short": [list(p) for p in short],
        "dropped_frames": int(dropped),
    }
    atomic_write_json(out / CORPUS_FILE, manifest, indent=1)
    return manifest


def prepare_corpus(
    sources: list[str | Path],
    out_dir: str | Path,
    *,
    storage_size: int | None = 256,
    max_side: int | None = 1024,
    sampling: FrameSampling | None = None,
    workers: int = 1,
    shard_frames: int = 4096,
    scan_mask: str = "auto",
    group_by: str = "file",
    decoder: str = "auto",
    cache_dir: str | Path | None = None,
    mask_cache: str = "cache",
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> PrepareSummary:
    """Decode ``sources`` (UltraBench dirs -> their train split; folders / files of images, videos and
    DICOM) once into a prepared corpus at ``out_dir``; resumes an interrupted run of the same sources
    and options. ``sampling``: a :class:`~usjepa_fast.data.video.FrameSampling` for clips (default
    every frame). See the module doc and docs/ARCHITECTURE.md (data.prepare)."""
    t0, c0 = time.perf_counter(), time.process_time()
    sampling = sampling or FrameSampling()
    options = PrepareOptions(
        storage_size=storage_size,
        max_side=max_side,
        every_k=sampling.every_k,
        fps=sampling.fps,
        max_frames=sampling.max_frames,
        shard_frames=shard_frames,
        scan_mask=scan_mask,
        group_by=group_by,
        decoder=decoder,
    )
    if workers < 1:
        raise DataError(f"workers={workers} must be >= 1")
    from usjepa_fast.data.clips import MASK_CACHE_MODES

    if mask_cache not in MASK_CACHE_MODES:
        raise DataError(f"mask_cache={mask_cache!r} is not one of {MASK_CACHE_MODES}")
    out = Path(out_dir)
    _check_out_dir(out)
    listing = _load_or_plan(out, sources, options, workers, overwrite)
    shard_dir = out / SHARD_DIR
    for leftover in shard_dir.iterdir():
        if is_temp_file(leftover):  # a part a killed worker was writing
            leftover.unlink(missing_ok=True)
    pending = [j for j in range(len(listing.jobs)) if job_parts(shard_dir, j) is None]
    for j in pending:
        remove_job(shard_dir, j)  # an interrupted job is redone from scratch
    resumed = len(listing.jobs) - len(pending)
    if pending or not (out / CORPUS_FILE).is_file():
        log.info(
            "prepare: %d jobs (%d done before), %d units, %d workers",
            len(listing.jobs),
            resumed,
            len(listing.units),
            workers,
        )
        cache = None if cache_dir is None else str(cache_dir)
        cpu, written = _run_jobs(out, listing, pending, options, workers, cache, mask_cache, progress)
        manifest = _finalize(out, listing, options)
    else:
        import json

        cpu, written = 0.0, 0
        manifest = json.loads((out / CORPUS_FILE).read_text())
    own_cpu = time.process_time() - c0
    return PrepareSummary(
        out_dir=out,
        members=manifest["members"],
        frames=manifest["frames"],
        shards=len(manifest["shards"]),
        bytes=manifest["bytes"],
        unreadable=[tuple(p) for p in manifest["unreadable"]],
        short=[tuple(p) for p in manifest["short"]],
        dropped_frames=manifest["dropped_frames"],
        jobs=len(listing.jobs),
        jobs_resumed=resumed,
        frames_written=written,
        seconds=time.perf_counter() - t0,
        cpu_seconds=own_cpu + cpu,
        workers=workers,
    )
