"""``usfast export ENCODER --out model.onnx``: ONNX (parity-checked in ONNX Runtime) and TensorRT engines."""

from __future__ import annotations

from pathlib import Path

import typer

from usjepa_fast.cli.partial import allow_partial_option


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        encoder: str = typer.Argument(
            ...,
            help="timm name, usfast run dir/.safetensors, checkpoint (+ --arch), zoo:NAME=PATH, random:SPEC[@seed]; "
            "with --check an .engine/.onnx to verify.",
        ),
        out: Path = typer.Option(Path("model.onnx"), "--out", "-o", help="ONNX file to write (sidecar: <stem>.json)."),
        arch: str = typer.Option(None, "--arch", help="timm architecture of a foreign/teacher checkpoint."),
        pool: str = typer.Option(None, "--pool", help="mean (default: mean of patch tokens) or cls."),
        img_size: int = typer.Option(None, "--img-size", help="Input side for timm names/teachers (default: model's)."),
        precision: str = typer.Option(
            "fp32",
            "--precision",
            help="fp32, fp16 (fp16 weights/compute, fp32 I/O) or int8 (CPU/ONNX Runtime; needs --calibration).",
        ),
        calibration: Path = typer.Option(
            None, "--calibration", help="int8: folder/file of your own frames to calibrate on (a few hundred)."
        ),
        calibration_frames: int = typer.Option(256, "--calibration-frames", help="int8: frames taken from it."),
        quantize: str = typer.Option("static", "--quantize", help="int8: static (calibrated QDQ) or dynamic."),
        tokens: bool = typer.Option(False, "--tokens/--no-tokens", help="Also output patch tokens (B, N, D)."),
        keep_input: bool = typer.Option(
            False,
            "--keep-input",
            help="ViTs: add the kept-token input keep (batch, tokens) int64 (patch indices, -1 padded) so ONNX "
            "Runtime / TensorRT run scan-region tokens only (usfast embed --tokens scan).",
        ),
        exporter: str = typer.Option("dynamo", "--exporter", help="dynamo (torch.export) or torchscript (legacy)."),
        tensorrt: bool = typer.Option(False, "--tensorrt", help="Also build a TensorRT engine (<stem>.engine)."),
        max_batch: int = typer.Option(128, "--max-batch", help="TensorRT profile: largest batch."),
        opt_batch: int = typer.Option(32, "--opt-batch", help="TensorRT profile: batch to tune for."),
        check: bool = typer.Option(False, "--check", help="Verify an existing .onnx (vs PyTorch) or .engine (vs ORT)."),
        seed: int = typer.Option(0, "--seed", help="Seed of a random-init timm model."),
        fmt: str = typer.Option(
            "onnx", "--format", help="onnx, or timm: a folder (--out DIR) timm.create_model('local-dir:DIR') loads."
        ),
        allow_partial: bool = allow_partial_option(),
    ) -> None:
        """Export an encoder to ONNX (+ TensorRT) or a timm folder, refusing outputs that drift from PyTorch.

        \b
        Examples:
          usfast export runs/salt/student.safetensors --out student.onnx
          usfast export --check student.onnx
        """
        from usjepa_fast.cli.outputs import claim_output_file
        from usjepa_fast.errors import UsfastError
        from usjepa_fast.fileio import check_output_dir

        _check_options(
            fmt, precision, quantize, exporter, pool, img_size, calibration_frames, max_batch, opt_batch, keep_input
        )
        if not check and fmt == "timm":  # the output path is checked before any model is opened
            check_output_dir(out, what="--out")
        elif not check:
            claim_output_file(out)
        from usjepa_fast.export import build_engine, check_engine, export_onnx, verify_onnx

        if check:
            path = Path(encoder)
            if path.suffix in (".engine", ".plan"):
                figures = check_engine(path)
                typer.echo(
                    f"{path.name} vs ONNX Runtime: rel err {figures['rel_err']:.2e}, "
                    f"cosine {figures['cosine_min']:.6f} - OK"
                )
            elif path.suffix == ".onnx":
                report = verify_onnx(path)
                typer.echo(f"{path.name} vs PyTorch: rel err {report.rel_err:.2e}, cosine {report.cosine_min:.6f}")
            else:
                raise UsfastError(f"--check takes an .onnx or .engine file, got {path}")
            return
        if fmt == "timm":
            from usjepa_fast.export import export_timm

            if tensorrt or tokens or keep_input or precision != "fp32":
                raise UsfastError(
                    "--format timm writes the fp32 encoder; drop --tensorrt / --tokens / --keep-input / --precision"
                )
            res = export_timm(encoder, out, arch=arch, pool=pool, img_size=img_size, seed=seed)
            typer.echo(
                f"wrote {res.out_dir}/ (model.safetensors + config.json, {res.info.pool} pooling, width "
                f"{res.info.width}; timm local-dir vs usfast: rel err {res.parity.rel_err:.1e}); load it with "
                f"timm.create_model('local-dir:{res.out_dir}', pretrained=True)"
            )
            return
        if precision == "int8":
            _export_int8(
                encoder, out, arch, pool, img_size, tokens, exporter, seed, calibration, calibration_frames, quantize
            )
            return
        if calibration is not None:
            raise UsfastError("--calibration is for --precision int8")
        result = export_onnx(
            encoder,
            out,
            arch=arch,
            pool=pool,
            img_size=img_size,
            precision=precision,
            tokens=tokens,
            keep_input=keep_input,
            exporter=exporter,
            seed=seed,
        )
        p = result.parity
        typer.echo(
            f"wrote {result.onnx_path} + {result.sidecar_path.name} ({result.info.pool} pooling, width "
            f"{result.info.width}, {precision}; ORT vs PyTorch rel err {p.rel_err:.1e}, cosine {p.cosine_min:.6f})"
        )
        if tensorrt:
            engine = build_engine(result.onnx_path, opt_batch=min(opt_batch, max_batch), max_batch=max_batch)
            figures = check_engine(engine, result.onnx_path)
            typer.echo(
                f"wrote {engine} (vs ONNX Runtime: rel err {figures['rel_err']:.1e}, "
                f"cosine {figures['cosine_min']:.6f})"
            )


def _check_options(
    fmt: str,
    precision: str,
    quantize: str,
    exporter: str,
    pool: str | None,
    img_size: int | None,
    calibration_frames: int,
    max_batch: int,
    opt_batch: int,
    keep_input: bool = False,
) -> None:
    """Every option's value and range, before any model is opened (``ConfigError`` naming the flag)."""
    from usjepa_fast.config import check_choice, check_int
    from usjepa_fast.errors import UsfastError
    from usjepa_fast.models.specs import POOLS

    what = "export option"
    check_choice(fmt, "--format", ("onnx", "timm"), what=what)
    if precision == "auto":
        raise UsfastError("export writes one precision; choose --precision fp32, fp16 or int8")
    check_choice(precision, "--precision", ("fp32", "fp16", "int8"), what=what)
    if keep_input and precision == "int8":
        raise UsfastError("--keep-input is for fp32 / fp16 exports (int8 is calibrated on whole frames)")
    check_choice(quantize, "--quantize", ("static", "dynamic"), what=what)
    check_choice(exporter, "--exporter", ("dynamo", "torchscript"), what=what)
    if pool is not None:
        check_choice(pool, "--pool", POOLS, what=what)
    if img_size is not None:
        check_int(img_size, "--img-size", 16, what=what)
    check_int(calibration_frames, "--calibration-frames", 1, what=what)
    check_int(max_batch, "--max-batch", 1, what=what)
    check_int(opt_batch, "--opt-batch", 1, max_batch, what=what, extra="(<= --max-batch)")


def _export_int8(
    encoder: str,
    out: Path,
    arch: str | None,
    pool: str | None,
    img_size: int | None,
    tokens: bool,
    exporter: str,
    seed: int,
    calibration: Path | None,
    frames: int,
    method: str,
) -> None:
    """fp32 export (parity-gated) to a temporary folder beside ``out``, then int8 quantization of it
    calibrated on the user's frames (gated against the fp32 graph on held-out frames)."""
    import tempfile

    from usjepa_fast.embed.calibration import calibration_pixels
    from usjepa_fast.errors import UsfastError
    from usjepa_fast.export import export_onnx
    from usjepa_fast.export.quantize import quantize_onnx

    if calibration is None:
        raise UsfastError("--precision int8 needs --calibration DIR (a few hundred frames of your own data)")
    if tokens:
        raise UsfastError("int8 exports carry pooled features only; drop --tokens")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}-fp32-") as tmp:
        fp32 = export_onnx(
            encoder,
            Path(tmp) / f"{out.stem}-fp32.onnx",
            arch=arch,
            pool=pool,
            img_size=img_size,
            exporter=exporter,
            seed=seed,
        )
        pixels = calibration_pixels(calibration, fp32.info, frames=frames)
        res = quantize_onnx(fp32.onnx_path, out, pixels, method=method)
    p = res.parity
    typer.echo(
        f"wrote {res.onnx_path} + {res.sidecar_path.name} (int8 {res.method}, {res.calibration_frames} calibration "
        f"frames; vs fp32 on {res.holdout_frames} held-out frames: cosine {p.cosine_min:.6f}, rel err {p.rel_err:.1e})"
    )
