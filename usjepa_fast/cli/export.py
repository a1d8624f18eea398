"""``usfast export ENCODER --out model.onnx``: ONNX (parity-checked in ONNX Runtime) and TensorRT engines."""

from __future__ import annotations

from pathlib import Path

import typer


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
        precision: str = typer.Option("fp32", "--precision", help="fp32 or fp16 (fp16 weights/compute, fp32 I/O)."),
        tokens: bool = typer.Option(False, "--tokens/--no-tokens", help="Also output patch tokens (B, N, D)."),
        exporter: str = typer.Option("dynamo", "--exporter", help="dynamo (torch.export) or torchscript (legacy)."),
        tensorrt: bool = typer.Option(False, "--tensorrt", help="Also build a TensorRT engine (<stem>.engine)."),
        max_batch: int = typer.Option(128, "--max-batch", help="TensorRT profile: largest batch."),
        opt_batch: int = typer.Option(32, "--opt-batch", help="TensorRT profile: batch to tune for."),
        check: bool = typer.Option(False, "--check", help="Verify an existing .onnx (vs PyTorch) or .engine (vs ORT)."),
        seed: int = typer.Option(0, "--seed", help="Seed of a random-init timm model."),
    ) -> None:
        """Export an encoder to ONNX (+ TensorRT), refusing outputs that drift from PyTorch."""
        from usjepa_fast.errors import UsfastError
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
        result = export_onnx(
            encoder,
            out,
            arch=arch,
            pool=pool,
            img_size=img_size,
            precision=precision,
            tokens=tokens,
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
