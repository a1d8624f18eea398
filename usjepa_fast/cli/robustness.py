"""``usfast robustness DATASET --encoder SPEC``: macro F1 under test-time corruptions, severities 1-3."""

from __future__ import annotations

from pathlib import Path

import typer

from usjepa_fast.cli.partial import allow_partial_option
from usjepa_fast.cli.probe import CACHE_HELP, CALIBRATION_HELP, CLASS_WEIGHT_HELP, PRECISION_HELP, PRECISIONS
from usjepa_fast.cli.tokens import patch_coverage_option, tokens_option


def register(app: typer.Typer) -> None:
    @app.command("robustness")
    def robustness(
        dataset: Path = typer.Argument(..., help="UltraBench directory (train/validation/test JSON splits)."),
        encoder: list[str] = typer.Option(
            ...,
            "--encoder",
            "-e",
            help="Encoder spec (repeatable): timm name, usfast run dir/.safetensors, checkpoint (+ --arch), "
            "zoo:NAME=PATH, random:SPEC[@seed], .onnx/.engine.",
        ),
        name: list[str] = typer.Option(None, "--name", help="Row name per --encoder (repeatable)."),
        corruptions: str = typer.Option(
            "all", "--corruptions", help="Comma-separated subset, 'paper' (blur, contrast, speckle) or 'all'."
        ),
        severities: str = typer.Option("1,2,3", "--severities", help="Comma-separated severities (1-3)."),
        preset: str = typer.Option("paper", "--preset", help="paper or sweep (probe trained on clean features)."),
        class_weight: str = typer.Option("none", "--class-weight", help=CLASS_WEIGHT_HELP),
        seeds: str = typer.Option("0,1,2,3,4", "--seeds", help="Comma-separated probe seeds."),
        corruption_seed: int = typer.Option(0, "--corruption-seed", help="Noise draw of the random corruptions."),
        out: Path = typer.Option(Path("robustness_out"), "--out", "-o", help="Output directory."),
        cache: Path = typer.Option(None, "--cache", help=CACHE_HELP),
        arch: str = typer.Option(None, "--arch", help="timm architecture of a foreign/teacher checkpoint."),
        pool: str = typer.Option(None, "--pool", help="mean (default) or cls."),
        precision: str = typer.Option("fp32", "--precision", help=PRECISION_HELP),
        calibration: Path = typer.Option(None, "--calibration", help=CALIBRATION_HELP),
        batch_size: int = typer.Option(32, "--batch-size", "-b", help="Images per encoder call."),
        device: str = typer.Option(None, "--device", help="Probe device: cpu or cuda (default: cuda when present)."),
        tokens: str = tokens_option(),
        patch_coverage: float = patch_coverage_option(),
        allow_partial: bool = allow_partial_option(),
    ) -> None:
        """Train probes on clean features, score them on corrupted test images; tables, curves, examples.

        \b
        Example:
          usfast robustness synth_data/ultrabench -e runs/salt/student.safetensors --out robustness_out
        """
        from usjepa_fast.cli.outputs import claim_output_dir
        from usjepa_fast.config import check_choice

        check_choice(precision, "--precision", PRECISIONS, what="robustness option")
        with claim_output_dir(out, "usfast robustness"):
            from usjepa_fast.cli.probe import _class_weight, _seeds
            from usjepa_fast.errors import UsfastError
            from usjepa_fast.probe.compare import EvalConfig, compare
            from usjepa_fast.probe.corruptions import parse_corruptions

            names = parse_corruptions(corruptions)
            try:  # values and ranges: EvalConfig.validate
                sev = tuple(int(s) for s in severities.split(",") if s.strip())
            except ValueError:
                raise UsfastError(f"--severities {severities!r} must be comma-separated integers in 1-3") from None
            cfg = EvalConfig(
                preset=preset,
                seeds=_seeds(seeds),
                robustness=True,
                corruptions=names,
                severities=sev,
                corruption_seed=corruption_seed,
                batch_size=batch_size,
                device=device,
                class_weight=_class_weight(class_weight),
            )
            report = compare(
                encoder,
                [dataset],
                out,
                cfg,
                names=name or None,
                cache_dir=cache,
                arch=arch,
                pool=pool,
                precision=precision,
                calibration=calibration,
                tokens=tokens,
                patch_coverage=patch_coverage,
            )
            typer.echo(report.markdown)
            typer.echo(f"wrote {out}/ (robustness.md/.csv, robustness_*.png, corruption_examples/, results.json)")
