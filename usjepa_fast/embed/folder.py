"""``embed_folder`` (``usfast embed``): media files -> the embed engine -> an output directory; the merge.

One rank's run::

    files (this rank's share, minus already-embedded unchanged ones)
      -> embed engine (embed/engine.py) with a PartSink
      -> PartWriter (atomic parts, marker last) -> merge -> index.csv + embed.json

Re-running resumes: files whose latest committed part has the same stamp (size + mtime, or content
hash) are skipped; changed files are embedded again (the newest part wins in the merge).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from usjepa_fast.embed import store
from usjepa_fast.embed.engine import PartSink, open_runner, run_engine
from usjepa_fast.embed.options import EmbedOptions
from usjepa_fast.embed.sharding import assign_shares, barrier, env_rank_world
from usjepa_fast.embed.sources import Source, list_sources
from usjepa_fast.errors import ConfigError, DataError

log = logging.getLogger("usfast")


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

    @property
    def frames_per_s(self) -> float:
        """Sampled frames (embedded + skipped duplicates) per second of wall time."""
        return (self.frames_embedded + self.frames_duplicate) / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        d["frames_per_s"] = self.frames_per_s
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
) -> EmbedSummary:
    """Embed every image/video under ``input_path`` (folder, file, or UltraBench dir) into ``out_dir``.

    ``encoder``: a spec for :func:`usjepa_fast.embed.backends.open_backend` (timm name, checkpoint,
    ``.onnx``, ``.engine``) or an already opened backend. ``rank``/``world_size`` default to
    torchrun's environment; each rank embeds its deterministic share, and with ``merge=True`` rank 0
    writes ``index.csv`` after a barrier (without a process group, call :func:`merge_outputs`
    yourself once all ranks are done). Re-running resumes: unchanged files already committed are
    skipped. Options are validated before anything is opened.
    """
    opts = (options or EmbedOptions()).validate()
    out_dir = Path(out_dir)
    env_rank, env_world = env_rank_world()
    rank = env_rank if rank is None else rank
    world_size = env_world if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} outside world size {world_size}; use 0 <= rank < world_size")

    sources = list_sources(input_path, opts.kinds, opts.splits)
    if not sources:
        raise DataError(f"{input_path} holds no images or videos ({', '.join(opts.kinds)}); check the path")
    sizes = [s.path.stat().st_size for s in sources]
    mine = [sources[i] for i in assign_shares(sizes, world_size)[rank]]

    b = open_runner(encoder, backend, device, backend_kwargs, tokens=opts.tokens)
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
    writer = store.PartWriter(out_dir, rank, opts.dtype, opts.part_rows)
    if resumed:
        log.info("embed: %d of %d files already embedded (unchanged); resuming with %d", resumed, len(mine), len(todo))

    if todo:
        stats = run_engine(b, todo, opts, PartSink(writer, stamps))
        summary.files_embedded = stats.files_embedded
        summary.files_failed = stats.files_failed
        summary.failed = stats.failed
        summary.frames_embedded = stats.frames_embedded
        summary.frames_duplicate = stats.frames_duplicate
    writer.flush()
    store.write_failures(out_dir, rank, summary.failed)
    summary.seconds = time.perf_counter() - t0
    manifest = _manifest(b, opts, input_path)
    if merge:
        if world_size == 1:
            _, summary.index_rows = merge_outputs(out_dir, input_path, opts, manifest)
        elif barrier(world_size):
            if rank == 0:
                _, summary.index_rows = merge_outputs(out_dir, input_path, opts, manifest)
            barrier(world_size)  # nobody reads index.csv before rank 0 has written it
        else:
            log.warning(
                "embed: rank %d of %d finished without a process group; run "
                "`usfast embed --merge-only` once all ranks are done",
                rank,
                world_size,
            )
    if summary.failed:
        log.warning(
            "embed: %d file(s) could not be read and were skipped:\n  %s",
            len(summary.failed),
            "\n  ".join(f"{p}: {r}" for p, r in sorted(summary.failed.items())),
        )
    return summary


def _manifest(b: Any, opts: EmbedOptions, input_path: str | Path) -> dict[str, Any]:
    from usjepa_fast.embed.fingerprint import digest, feature_fields

    opts_d = asdict(opts)
    opts_d.pop("progress", None)
    fields = feature_fields(
        b, scan_region=opts.scan_region, token_selection=opts.tokens, patch_coverage=opts.patch_coverage
    )
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
) -> tuple[Path, int]:
    """The merge step: one ``index.csv`` (+ ``embed.json``) over every rank's parts.

    With ``input_path``, rows of files no longer in the input are dropped. Returns (index, rows)."""
    out_dir = Path(out_dir)
    keep = None
    if input_path is not None:
        opts = options or EmbedOptions()
        keep = [s.rel for s in list_sources(input_path, opts.kinds, opts.splits)]
    previous = {}
    if (out_dir / "embed.json").is_file():
        previous = json.loads((out_dir / "embed.json").read_text())
    kept_keys = ("encoder", "backend", "input", "options", "fingerprint")
    manifest = dict(manifest or {k: v for k, v in previous.items() if k in kept_keys})
    failed = store.read_failures(out_dir)
    manifest["failed"] = failed
    manifest["files_failed"] = len(failed)
    return store.merge_index(out_dir, keep, manifest)
