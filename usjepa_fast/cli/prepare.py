"""``usfast prepare SOURCES... -o CORPUS``: decode videos, images, DICOM and UltraBench train splits once
into shards of uint8 frames with their scan masks (resumable; rerun the same command to resume)."""

from __future__ import annotations

from pathlib import Path

import typer

from usjepa_fast.errors import DataError


def _storage_size(text: str) -> int | None:
    if text.strip().lower() == "native":
        return None
    try:
        return int(text)
    except ValueError:
        raise DataError(f"--storage-size '{text}' must be a number of pixels (short side) or 'native'") from None


def register(app: typer.Typer) -> None:
    @app.command("prepare")
    def prepare(
        sources: list[Path] = typer.Argument(
            ..., help="UltraBench dirs (their train split), folders or files of videos, images and DICOM."
        ),
        out: Path = typer.Option(..., "--out", "-o", help="Corpus folder to write (rerunning resumes it)."),
        storage_size: str = typer.Option(
            "256", "--storage-size", help="Short side of stored frames in px (never upscaled), or 'native'."
        ),
        max_side: int = typer.Option(1024, "--max-side", help="Cap on the long side of stored frames (0 = none)."),
        every_k: int = typer.Option(1, "--every-k", help="Clips: keep every k-th frame."),
        fps: float = typer.Option(None, "--fps", help="Clips: resample to this frame rate (by timestamps)."),
        max_frames: int = typer.Option(None, "--max-frames", help="Clips: at most this many frames each."),
        workers: int = typer.Option(1, "--workers", "-j", help="Decoding processes."),
        shard_frames: int = typer.Option(4096, "--shard-frames", help="Frames per shard part."),
        scan_mask: str = typer.Option(
            "auto", "--scan-mask", help="auto (provided/DICOM regions, else detected), detect, or none (whole frame)."
        ),
        group_by: str = typer.Option(
            "file", "--group-by", help="Validation groups of folder inputs: file (clip/image) or folder (patient dirs)."
        ),
        decoder: str = typer.Option("auto", "--decoder", help="Video decoder: auto/pyav or dali (CPU: VP9/MJPEG)."),
        cache_dir: Path = typer.Option(None, "--cache-dir", help="usfast's data cache (default $USFAST_CACHE_DIR)."),
        mask_cache: str = typer.Option(
            "cache", "--mask-cache", help="Detected scan masks: cache (the cache dir) or beside (next to the data)."
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace a corpus of other sources/options."),
    ) -> None:
        """Decode every source once into frame shards + scan masks + a per-frame index, for `usfast train`.

        \b
        Example:
          usfast prepare clips/ dicom/ -o corpus/
        """
        from usjepa_fast.cli.outputs import claim_output_dir

        with claim_output_dir(out, "usfast prepare"):
            from usjepa_fast.data.prepare import prepare_corpus
            from usjepa_fast.data.video import FrameSampling

            def progress(done: int, total: int) -> None:
                typer.echo(f"  jobs {done}/{total}", err=True)

            s = prepare_corpus(
                list(sources),
                out,
                storage_size=_storage_size(storage_size),
                max_side=max_side or None,
                sampling=FrameSampling(every_k=every_k, fps=fps, max_frames=max_frames),
                workers=workers,
                shard_frames=shard_frames,
                scan_mask=scan_mask,
                group_by=group_by,
                decoder=decoder,
                cache_dir=cache_dir,
                mask_cache=mask_cache,
                overwrite=overwrite,
                progress=progress,
            )
            for m in s.members:
                typer.echo(
                    f"  {m['name']}: {m['frames']} frames from {m['units']} inputs ({m['unreadable']} unreadable)"
                )
            rate = f"{s.frames_per_cpu_s:.0f} frames per CPU-second" if s.frames_written else "nothing to do"
            typer.echo(
                f"prepared {s.frames} frames in {s.shards} shards ({s.bytes / 2**20:.1f} MiB) at {out}; "
                f"{s.jobs - s.jobs_resumed} of {s.jobs} jobs run now in {s.seconds:.1f}s ({rate})"
            )
            if s.short:
                typer.echo(f"{len(s.short)} clip(s) ended early (their decoded frames are kept):", err=True)
                for path, reason in s.short:
                    typer.echo(f"  {path}: {reason}", err=True)
            if s.dropped_frames:
                typer.echo(
                    f"{s.dropped_frames} frame(s) dropped: their size differs from their clip's scan mask", err=True
                )
            if s.unreadable:
                typer.echo(f"{len(s.unreadable)} unreadable input(s) (skipped):", err=True)
                for path, reason in s.unreadable:
                    typer.echo(f"  {path}: {reason}", err=True)
            if s.frames == 0:
                raise DataError(f"no frame could be prepared from {', '.join(map(str, sources))}; see the list above")
