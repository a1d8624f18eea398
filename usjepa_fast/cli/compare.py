"""``usfast compare -e A -e B -d TASK1 -d TASK2``: the paper-format comparison table, plus curves."""

from __future__ import annotations

from pathlib import Path

import typer

from usjepa_fast.cli.partial import allow_partial_option
from usjepa_fast.cli.probe import CACHE_HELP, CALIBRATION_HELP, CLASS_WEIGHT_HELP, PRECISION_HELP, PRECISIONS
from usjepa_fast.cli.tokens import patch_coverage_option, tokens_option


def register(app: typer.Typer) -> None:
    @app.command("compare")
    def compare_cmd(
        encoder: list[str] = typer.Option(
            None,
            "--encoder",
            "-e",
            help="Encoder spec (repeatable): timm name, usfast run dir/.safetensors, checkpoint (+ --arch), "
            "zoo:NAME=PATH, random:SPEC[@seed], .onnx/.engine.",
        ),
        dataset: list[Path] = typer.Option(None, "--dataset", "-d", help="UltraBench directory (repeatable)."),
        name: list[str] = typer.Option(None, "--name", help="Row name per --encoder (repeatable)."),
        preset: str = typer.Option("paper", "--preset", help="paper or sweep."),
        class_weight: str = typer.Option("none", "--class-weight", help=CLASS_WEIGHT_HELP),
        seeds: str = typer.Option("0,1,2,3,4", "--seeds", help="Comma-separated probe seeds."),
        fewshot: str = typer.Option(None, "--fewshot", help="Label budgets in percent, e.g. 1,5,10,50,100."),
        robustness: bool = typer.Option(False, "--robustness", help="Also corrupt test images (all corruptions)."),
        corruptions: str = typer.Option("all", "--corruptions", help="With --robustness: subset, 'paper' or 'all'."),
        reference: Path = typer.Option(
            None, "--reference", help="Paper results CSV (model,TASK,...) appended to the markdown for context."
        ),
        out: Path = typer.Option(Path("compare_out"), "--out", "-o", help="Output directory."),
        cache: Path = typer.Option(None, "--cache", help=CACHE_HELP),
        batch_size: int = typer.Option(32, "--batch-size", "-b", help="Images per encoder call."),
        arch: str = typer.Option(None, "--arch", help="timm architecture of foreign/teacher checkpoints."),
        pool: str = typer.Option(None, "--pool", help="mean (default) or cls."),
        precision: str = typer.Option("fp32", "--precision", help=PRECISION_HELP),
        calibration: Path = typer.Option(None, "--calibration", help=CALIBRATION_HELP),
        device: str = typer.Option(None, "--device", help="Probe device: cpu or cuda (default: cuda when present)."),
        list_zoo: bool = typer.Option(False, "--list-zoo", help="Print the baseline model zoo and exit."),
        tokens: str = tokens_option(),
        patch_coverage: float = patch_coverage_option(),
        allow_partial: bool = allow_partial_option(),
    ) -> None:
        """Probe several encoders on several tasks: markdown + CSV table (mean ± std, best in bold), PNGs.

        \b
        Example:
          usfast compare -e runs/salt/student.safetensors -e random:vit_small_patch16_224 -d synth_data/ultrabench
        """
        from usjepa_fast.errors import UsfastError
        from usjepa_fast.models.zoo import zoo_table

        if list_zoo:
            typer.echo(zoo_table())
            return
        from usjepa_fast.cli.probe import _class_weight, _seeds
        from usjepa_fast.probe.compare import EvalConfig, compare
        from usjepa_fast.probe.corruptions import parse_corruptions
        from usjepa_fast.probe.fewshot import parse_fractions

        if not encoder or not dataset:
            raise UsfastError("pass at least one --encoder and one --dataset (or --list-zoo)")
        from usjepa_fast.cli.outputs import claim_output_dir
        from usjepa_fast.config import check_choice

        check_choice(precision, "--precision", PRECISIONS, what="compare option")
        with claim_output_dir(out, "usfast compare"):
            names = parse_corruptions(corruptions)
            cfg = EvalConfig(
                preset=preset,
                seeds=_seeds(seeds),
                fewshot=parse_fractions(fewshot) if fewshot else (),
                robustness=robustness,
                corruptions=names,
                batch_size=batch_size,
                device=device,
                class_weight=_class_weight(class_weight),
            )
            report = compare(
                encoder,
                dataset,
                out,
                cfg,
                names=name or None,
                cache_dir=cache,
                reference_csv=reference,
                arch=arch,
                pool=pool,
                precision=precision,
                calibration=calibration,
                tokens=tokens,
                patch_coverage=patch_coverage,
            )
            typer.echo(report.markdown)
            typer.echo(f"wrote {out}/ ({', '.join(sorted(report.files))})")
