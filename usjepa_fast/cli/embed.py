"""``usfast embed INPUT --encoder SPEC --out DIR``: features of every frame of a folder of videos/images."""

from __future__ import annotations

from pathlib import Path

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
        split: list[str] = typer.Option(None, "--split", help="UltraBench input: only these splits (repeatable)."),
        merge_only: bool = typer.Option(False, "--merge-only", help="Only merge the ranks' parts into index.csv."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
        tokens: str = tokens_option(),
        patch_coverage: float = patch_coverage_option(),
        allow_partial: bool = allow_partial_option(),
    ) -> None:
        """Embed every (sampled) frame into feature shards + index.csv; resumable, torchrun-shardable."""
        from usjepa_fast.embed import EmbedOptions, embed_folder, merge_outputs

        if merge_only:
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
            tokens=tokens,
            patch_coverage=patch_coverage,
        )
        kwargs = {"precision": precision, "compile": compile, "arch": arch, "pool": pool, "threads": threads}
        if calibration is not None:
            kwargs["calibration"] = calibration
        s = embed_folder(input_path, out, encoder, backend=backend, device=device, options=opts, backend_kwargs=kwargs)
        typer.echo(
            f"backend {s.backend}: {s.files_embedded} files embedded, {s.files_resumed} already done, "
            f"{s.files_failed} failed; {s.frames_embedded} frames embedded + {s.frames_duplicate} redundant "
            f"skipped in {s.seconds:.1f}s ({s.frames_per_s:.1f} frames/s)"
        )
        if s.failed:
            typer.echo("unreadable files (skipped):", err=True)
            for path, reason in sorted(s.failed.items()):
                typer.echo(f"  {path}: {reason}", err=True)
        if s.index_rows is not None:
            typer.echo(f"index: {out / 'index.csv'} ({s.index_rows} rows)")
