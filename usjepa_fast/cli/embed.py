"""``usfast embed INPUT --encoder SPEC --out DIR``: features of every frame of a folder of videos/images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from usjepa_fast.cli.partial import allow_partial_option
from usjepa_fast.cli.tokens import patch_coverage_option, tokens_option


def register(app: typer.Typer) -> None:
    @app.command("embed")
    def embed(
        input_path: Path = typer.Argument(
            ..., help="Folder (recursive) of videos/images, one file, or UltraBench dir."
        ),
        encoder: str = typer.Option(
            ...,
            "--encoder",
            "-e",
            help="timm name, usfast run dir/.safetensors, checkpoint (+ --arch), zoo:NAME=PATH, random:SPEC[@seed], "
            ".onnx or .engine.",
        ),
        out: Path = typer.Option(..., "--out", "-o", help="Output directory (re-running resumes it)."),
        backend: str = typer.Option(
            "auto",
            "--backend",
            help="auto (a rule by hardware: TensorRT on a GPU when installed, else torch), torch, onnx, "
            "openvino (CPU, optional extra) or tensorrt.",
        ),
        device: str = typer.Option(None, "--device", help="cpu or cuda[:i] (default: cuda when present)."),
        precision: str = typer.Option(
            "auto",
            "--precision",
            help="auto (fastest the hardware runs natively: bf16 on AMX/AVX512-BF16 CPUs and Ampere+ GPUs, "
            "else fp32), fp32, bf16, fp16 or int8 (CPU, ONNX Runtime, needs --calibration). Anything but fp32 "
            "must match fp32 features (cosine >= 0.999) on the first batch.",
        ),
        calibration: Path = typer.Option(
            None, "--calibration", help="int8: folder/file of your own frames to calibrate on (a few hundred)."
        ),
        compile: bool = typer.Option(False, "--compile", help="torch backend: torch.compile the encoder."),
        arch: str = typer.Option(None, "--arch", help="timm architecture of a foreign/teacher checkpoint."),
        pool: str = typer.Option(None, "--pool", help="mean (default) or cls."),
        batch_size: int = typer.Option(32, "--batch-size", "-b", help="Frames per inference call."),
        every_k: int = typer.Option(1, "--every-k", help="Keep every k-th frame."),
        fps: float = typer.Option(None, "--fps", help="Resample clips to this frame rate."),
        max_frames: int = typer.Option(None, "--max-frames", help="At most this many frames per clip."),
        clip_pool: bool = typer.Option(False, "--clip-pool", help="One row per clip: mean of its frame features."),
        skip_redundant: float = typer.Option(
            None,
            "--skip-redundant",
            help="Skip frames whose mean abs. difference (0-255, 32px thumbnail, scan "
            "region) to the last embedded frame is below this, e.g. 1.5. Off by default.",
        ),
        scan_region: bool = typer.Option(
            True, "--scan-region/--whole-frame", help="Intensity window + change detector inside the scan region."
        ),
        dtype: str = typer.Option("float16", "--dtype", help="Stored features: float16 or float32."),
        decoder: str = typer.Option("auto", "--decoder", help="auto/pyav, dali (CPU: VP9/MJPEG), dali-gpu (NVDEC)."),
        workers: int = typer.Option(None, "--workers", help="Decode threads (default: by CPU count/GPU)."),
        threads: int = typer.Option(None, "--threads", help="Inference CPU threads (default: all usable CPUs)."),
        change_check: str = typer.Option("mtime", "--change-check", help="Re-embed changed files by mtime or hash."),
        commit_every_s: float = typer.Option(
            60.0,
            "--commit-every-s",
            help="Commit finished files at least this often (seconds; a part holds whole files).",
        ),
        commit_rows: int = typer.Option(8192, "--commit-rows", help="... or once this many feature rows are buffered."),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Start fresh: delete earlier embeddings in --out made with other settings."
        ),
        split: list[str] = typer.Option(None, "--split", help="UltraBench input: only these splits (repeatable)."),
        merge_only: bool = typer.Option(False, "--merge-only", help="Only merge the ranks' parts into index.csv."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
        tokens: str = tokens_option(),
        patch_coverage: float = patch_coverage_option(),
        allow_partial: bool = allow_partial_option(),
    ) -> None:
        """Embed every (sampled) frame into feature shards + index.csv + files.csv; resumable, torchrun-shardable.

        Re-running the same command resumes; other settings (encoder, backend, precision, sampling,
        pooling, dtype, ...) are refused unless --overwrite. Exit status: 0 every input embedded
        whole, 3 some inputs failed or decoded partially (see OUT/files.csv), 4 nothing embedded,
        130/143 interrupted (finished files are committed; rerun to resume).

        \b
        Example:
          usfast embed clips/ -e runs/salt/student.safetensors -o emb/ --every-k 2 --skip-redundant 1.5
        """
        from usjepa_fast.embed import EmbedOptions, embed_folder, merge_outputs

        if merge_only:  # merge_outputs checks that --out exists and locks it
            index, rows = merge_outputs(out, input_path)
            typer.echo(f"merged {rows} rows into {index}")
            return
        opts = EmbedOptions(
            batch_size=batch_size,
            every_k=every_k,
            fps=fps,
            max_frames=max_frames,
            clip_pool=clip_pool,
            redundancy_threshold=skip_redundant,
            scan_region=scan_region,
            dtype=dtype,
            decoder=decoder,
            decode_workers=workers,
            change_check=change_check,
            progress=progress,
            splits=tuple(split) if split else None,
            part_rows=commit_rows,
            commit_every_s=commit_every_s,
            tokens=tokens,
            patch_coverage=patch_coverage,
        )
        if pool is not None:
            from usjepa_fast.config import check_choice
            from usjepa_fast.models.specs import POOLS

            check_choice(pool, "--pool", POOLS, what="embed option")
        kwargs = {"precision": precision, "compile": compile, "arch": arch, "pool": pool, "threads": threads}
        if calibration is not None:
            kwargs["calibration"] = calibration
        s = embed_folder(
            input_path,
            out,
            encoder,
            backend=backend,
            device=device,
            options=opts,
            backend_kwargs=kwargs,
            overwrite=overwrite,
        )
        typer.echo(
            f"backend {s.backend}: {s.files_embedded} files embedded, {s.files_resumed} already done, "
            f"{s.files_failed} failed; {s.frames_embedded} frames embedded + {s.frames_duplicate} redundant "
            f"skipped in {s.seconds:.1f}s ({s.frames_per_s:.1f} frames/s)"
        )
        if s.failed:
            typer.echo("unreadable files (skipped):", err=True)
            for path, reason in sorted(s.failed.items()):
                typer.echo(f"  {path}: {reason}", err=True)
        if s.partial:
            typer.echo("partially decoded clips (their decoded frames are embedded):", err=True)
            for _path, note in sorted(s.partial.items()):
                typer.echo(f"  {note}", err=True)
        if s.index_rows is not None:
            typer.echo(f"index: {out / 'index.csv'} ({s.index_rows} rows); per-input status: {out / 'files.csv'}")
        raise typer.Exit(exit_status(s))


def exit_status(s: Any) -> int:
    """0 / EXIT_PARTIAL / EXIT_NO_OUTPUT for an embed summary, after printing which (one line)."""
    from usjepa_fast.errors import EXIT_NO_OUTPUT, EXIT_OK, EXIT_PARTIAL

    counts = s.counts or {
        "ok": s.files_embedded + s.files_resumed - len(s.partial),
        "partial": len(s.partial),
        "failed": s.files_failed,
        "pending": 0,
    }
    tally = ", ".join(f"{counts.get(k, 0)} {k}" for k in ("ok", "partial", "failed", "pending") if counts.get(k))
    outcome = s.outcome
    if outcome == "empty":
        typer.echo(f"done: {tally or 'no input'}; nothing was embedded -> exit {EXIT_NO_OUTPUT}", err=True)
        return EXIT_NO_OUTPUT
    if outcome == "partial":
        typer.echo(
            f"done: {tally}; some inputs failed or decoded partially (see files.csv) -> exit {EXIT_PARTIAL}", err=True
        )
        return EXIT_PARTIAL
    typer.echo(f"done: {tally}")
    return EXIT_OK
