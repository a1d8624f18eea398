"""The plan of a prepare run: which inputs become which corpus members, units and jobs.

Listing is cheap and runs on every (re)start: sources -> members -> *units* (one per input file or
UltraBench record, in a fixed order) plus the entries that cannot be read. Its fingerprint (options,
every unit's path, size and mtime, the problems) decides whether an existing output folder is the
same prepare (resume) or another one (refused). Estimating frame counts (container headers, DICOM
headers) and grouping units into *jobs* runs once and is stored in ``prepare.json``; estimates only
balance the jobs, they never decide what is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from usjepa_fast.data.media import find_media, log_problems, media_kind
from usjepa_fast.data.ultrabench import UltraBenchDataset, is_ultrabench_dir
from usjepa_fast.data.video import FrameSampling, PyAVDecoder, _Sampler
from usjepa_fast.errors import DataError

log = logging.getLogger("usfast")

PLAN_FORMAT = "usfast-prepare-plan"
PLAN_VERSION = 1
SCAN_MASK_MODES = ("auto", "detect", "none")
GROUP_BY = ("file", "folder")


@dataclass(frozen=True)
class PrepareOptions:
    """Everything that changes the bytes a prepare writes (workers, caches and progress do not)."""

    storage_size: int | None = 256  # short side of stored frames (never upscaled); None = native
    max_side: int | None = 1024  # cap on the long side (both modes); None = no cap
    every_k: int = 1  # video / cine sampling: keep every k-th frame (after fps)
    fps: float | None = None  # resample clips to this rate by timestamps; None = native
    max_frames: int | None = None  # at most this many frames per clip
    shard_frames: int = 4096  # frames per part (a job's output rolls over to a new part after this many)
    scan_mask: str = "auto"  # clips.scan_mask mode; "none" = whole frame
    group_by: str = "file"  # validation groups of folder inputs: the file, or its parent folder
    decoder: str = "auto"  # data.video.get_decoder name for video files

    def __post_init__(self) -> None:
        if self.storage_size is not None and self.storage_size < 8:
            raise DataError(f"storage size {self.storage_size} is too small; use >= 8 px or native")
        if self.max_side is not None and self.max_side < 8:
            raise DataError(f"max side {self.max_side} is too small; use >= 8 px or none")
        if self.shard_frames < 1:
            raise DataError(f"shard_frames={self.shard_frames} must be >= 1")
        if self.scan_mask not in SCAN_MASK_MODES:
            raise DataError(f"scan mask mode '{self.scan_mask}' is not one of {SCAN_MASK_MODES}")
        if self.group_by not in GROUP_BY:
            raise DataError(f"group_by '{self.group_by}' is not one of {GROUP_BY}")
        FrameSampling(every_k=self.every_k, fps=self.fps, max_frames=self.max_frames)  # validates them

    @property
    def sampling(self) -> FrameSampling:
        return FrameSampling(every_k=self.every_k, fps=self.fps, max_frames=self.max_frames)


@dataclass
class Unit:
    """One input of the corpus: a file (image, clip, DICOM object) or an UltraBench record."""

    member: int
    rel: str  # path relative to the member's source root (POSIX)
    kind: str  # "image" | "video" | "dicom" | "ultrabench"
    group: str  # validation group ("<source>/<clip, patient or folder>")
    label: int = -1  # UltraBench class index; -1 for folder inputs
    record: int = -1  # UltraBench: the record's index in the train split
    size: int = 0
    mtime_ns: int = 0
    est: int = 1  # estimated frames after sampling (balances jobs only)


@dataclass
class Listing:
    members: list[dict[str, str]]  # name, root, kind ("images" | "videos" | "ultrabench:train")
    units: list[Unit]
    problems: list[tuple[str, str]]  # (path, reason) of inputs that cannot be read
    jobs: list[tuple[int, int]] = field(default_factory=list)  # unit ranges [start, end)

    def fingerprint(self, options: PrepareOptions) -> str:
        h = hashlib.sha1(json.dumps(asdict(options), sort_keys=True).encode())
        for m in self.members:
            h.update(json.dumps(m, sort_keys=True).encode())
        for u in self.units:
            h.update(f"{u.member}|{u.rel}|{u.kind}|{u.group}|{u.label}|{u.record}|{u.size}|{u.mtime_ns}\n".encode())
        for p in self.problems:
            h.update(f"{p[0]}|{p[1]}\n".encode())
        return h.hexdigest()


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _group(source: str, rel: str, group_by: str) -> str:
    if group_by == "folder":
        parent = Path(rel).parent.as_posix()
        return f"{source}/{parent}" if parent != "." else f"{source}/{rel}"
    return f"{source}/{rel}"


def list_sources(sources: list[str | Path], options: PrepareOptions) -> Listing:
    """Members, units and unreadable entries of ``sources`` (no decoding; DICOM headers are read to
    tell images from cine loops)."""
    if not sources:
        raise DataError("no sources to prepare; pass UltraBench directories, media folders or files")
    members: list[dict[str, str]] = []
    units: list[Unit] = []
    problems: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for src in sources:
        root = Path(src).absolute()
        if not root.exists():
            raise DataError(f"prepare source {src} does not exist; fix the path")
        name = root.name or str(root)
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name}#{seen[name]}"
        if is_ultrabench_dir(root):
            ub = UltraBenchDataset(root, "train")
            members.append({"name": f"{name}[ultrabench:train]", "root": str(root), "kind": "ultrabench:train"})
            m = len(members) - 1
            for i, path in enumerate(ub.paths):
                rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()
                group = f"{name}/{ub.groups[i]}" if ub.groups[i] is not None else f"{name}/{rel}"
                units.append(Unit(m, rel, "ultrabench", group, int(ub.labels[i]), i, *_stat(path)))
            for reason, n in sorted(ub.skipped.items()):
                problems.append((str(ub.source), f"{n} record(s) skipped: {reason}"))
            continue
        files, found = find_media(root, ("image", "video", "dicom"))
        log_problems(found)
        problems += [(str(p.path), p.reason) for p in found]
        if not files and not found:
            raise DataError(f"prepare source {src} has no images, videos or DICOM files; remove it or fix the path")
        base = root if root.is_dir() else root.parent
        images, videos = [], []
        for path in files:
            kind = media_kind(path) or "dicom"
            if kind == "dicom":
                from usjepa_fast.data.dicom import dicom_kind

                try:
                    is_clip = dicom_kind(path) == "video"
                except DataError as exc:
                    problems.append((str(path), str(exc)))
                    continue
            else:
                is_clip = kind == "video"
            (videos if is_clip else images).append((path, kind))
        for label, picked in (("images", images), ("videos", videos)):
            if not picked:
                continue
            members.append({"name": f"{name}[{label}]", "root": str(base), "kind": label})
            m = len(members) - 1
            for path, kind in picked:
                rel = path.relative_to(base).as_posix()
                units.append(Unit(m, rel, kind, _group(name, rel, options.group_by), -1, -1, *_stat(path)))
    return Listing(members, units, sorted(problems))


def _estimate(unit: Unit, root: Path, sampling: FrameSampling) -> int:
    """Frames a unit will give after sampling, from headers (never decodes; a failure estimates 1 and
    leaves the verdict to the decoder)."""
    if unit.kind in ("image", "ultrabench"):
        return 1
    path = root / unit.rel
    try:
        if unit.kind == "dicom":
            from usjepa_fast.data.dicom import read_dicom_info

            return max(1, len(_Sampler(sampling).select_indices(list(read_dicom_info(path).timestamps))))
        info = PyAVDecoder(threads=1).probe(path)
    except DataError:
        return 1
    n = info.num_frames
    if sampling.fps is not None and info.fps > sampling.fps:
        n = math.ceil(n * sampling.fps / info.fps)
    n = math.ceil(n / sampling.every_k)
    return max(1, min(n, sampling.max_frames) if sampling.max_frames else n)


def plan_jobs(listing: Listing, options: PrepareOptions, workers: int = 1) -> None:
    """Fill in each unit's estimate and group consecutive units into jobs of about
    ``shard_frames`` estimated frames (a unit estimated at ``shard_frames`` or more is a job alone)."""
    roots = [Path(m["root"]) for m in listing.members]
    sampling = options.sampling

    def est(u: Unit) -> int:
        return _estimate(u, roots[u.member], sampling)

    if workers > 1 and len(listing.units) > 1:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="usfast-probe") as pool:
            estimates = list(pool.map(est, listing.units))
    else:
        estimates = [est(u) for u in listing.units]
    jobs: list[tuple[int, int]] = []
    start, total = 0, 0
    for i, (u, n) in enumerate(zip(listing.units, estimates, strict=True)):
        u.est = n
        if n >= options.shard_frames and i > start:  # a long clip starts its own job
            jobs.append((start, i))
            start, total = i, 0
        total += n
        if total >= options.shard_frames:
            jobs.append((start, i + 1))
            start, total = i + 1, 0
    if start < len(listing.units):
        jobs.append((start, len(listing.units)))
    listing.jobs = jobs


def plan_to_json(listing: Listing, options: PrepareOptions, fingerprint: str) -> dict[str, Any]:
    return {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "fingerprint": fingerprint,
        "options": asdict(options),
        "members": listing.members,
        "units": [asdict(u) for u in listing.units],
        "jobs": [list(j) for j in listing.jobs],
        "problems": [list(p) for p in listing.problems],
    }


def plan_from_json(raw: dict[str, Any], path: Path) -> tuple[Listing, PrepareOptions, str]:
    if not isinstance(raw, dict) or raw.get("format") != PLAN_FORMAT:
        raise DataError(f"{path} is not a usfast prepare plan; prepare into a new folder")
    if raw.get("version") != PLAN_VERSION:
        raise DataError(f"{path} is a plan of format version {raw.get('version')}; prepare into a new folder")
    listing = Listing(
        raw["members"],
        [Unit(**u) for u in raw["units"]],
        [tuple(p) for p in raw["problems"]],
        [tuple(j) for j in raw["jobs"]],
    )
    return listing, PrepareOptions(**raw["options"]), raw["fingerprint"]
