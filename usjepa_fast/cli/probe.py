"""``usfast probe DATASET --encoder SPEC``: linear probe (paper protocol or sweep), optional few-shot."""

from __future__ import annotations

from pathlib import Path

import typer

from usjepa_fast.cli.partial import allow_partial_option
from usjepa_fast.cli.tokens import patch_coverage_option, tokens_option


def _seeds(text: str) -> tuple[int, ...]:
    from usjepa_fast.errors import UsfastError

    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise UsfastError(f"--seeds {text!r} must be comma-separated integers, e.g. 0,1,2,3,4") from None
    if not seeds:
        raise UsfastError("--seeds needs at least one seed")
    return seeds


def _class_weight(text: str) -> str | None:
    """``--class-weight none|balanced`` -> None | "balanced"."""
    from usjepa_fast.errors import UsfastError

    value = text.strip().lower()
    if value not in ("none", "balanced"):
        raise UsfastError(f"--class-weight {text!r}: use none (the paper's protocol) or balanced")
    return None if value == "none" else value


CLASS_WEIGHT_HELP = (
    "none (default; the paper's protocol) or balanced: cross-entropy weighted N / (C * n_c) per class "
    "(scikit-learn's class_weight='balanced'), for either preset; shown in every table title."
)
PRECISION_HELP = (
    "Encoder runtime precision: fp32 (default, the paper's protocol), auto (fastest the hardware runs "
    "natively), bf16, fp16 or int8 (ONNX Runtime on CPU, needs --calibration); anything but fp32 must "
    "match fp32 features (cosine >= 0.999) on the first batch. Cached features are keyed by it."
)
CALIBRATION_HELP = "int8: folder/file of your own frames to calibrate on (a few hundred)."
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
CACHE_HELP = (
    "Feature cache (default: $USFAST_CACHE_DIR/features or ~/.cache/usfast/features, shared by probe, "
    "robustness and compare: features are keyed by the encoder's weights and the dataset's files, so "
    "a second command over the same encoder and dataset reuses them instead of re-embedding)."
)


def register(app: typer.Typer) -> None:
    @app.command("probe")
    def probe(
        dataset: Path = typer.Argument(..., help="UltraBench directory (train/validation/test JSON splits)."),
        encoder: str = typer.Option(
            None,
            "--encoder",
            "-e",
            help="timm name, usfast run dir/.safetensors, checkpoint (+ --arch), zoo:NAME=PATH, random:SPEC[@seed], "
            ".onnx/.engine.",
        ),
        features: Path = typer.Option(
            None, "--features", help="Precomputed `usfast embed` output over DATASET (instead of --encoder)."
        ),
        preset: str = typer.Option(
            "paper",
            "--preset",
            help="paper (US-JEPA protocol: 5 seeds, mean ± std) or sweep (an L2 path of heads picked on validation, "
            "~20-40x faster; deterministic, so seeds only change few-shot subsets).",
        ),
        class_weight: str = typer.Option("none", "--class-weight", help=CLASS_WEIGHT_HELP),
        seeds: str = typer.Option("0,1,2,3,4", "--seeds", help="Comma-separated seeds (mean ± std over them)."),
        fewshot: str = typer.Option(None, "--fewshot", help="Label budgets in percent, e.g. 1,5,10,50,100."),
        out: Path = typer.Option(Path("probe_out"), "--out", "-o", help="Output directory for tables/plots."),
        cache: Path = typer.Option(None, "--cache", help=CACHE_HELP),
        name: str = typer.Option(None, "--name", help="Row name in the table (default: the encoder's name)."),
        arch: str = typer.Option(None, "--arch", help="timm architecture of a foreign/teacher checkpoint."),
        pool: str = typer.Option(None, "--pool", help="mean (default) or cls."),
        precision: str = typer.Option("fp32", "--precision", help=PRECISION_HELP),
        calibration: Path = typer.Option(None, "--calibration", help=CALIBRATION_HELP),
        batch_size: int = typer.Option(32, "--batch-size", "-b", help="Images per encoder call."),
        device: str = typer.Option(None, "--device", help="cpu or cuda (default: cuda when present)."),
        standardize: bool = typer.Option(True, "--standardize/--raw", help="z-score features with train stats."),
        tokens: str = tokens_option(),
        patch_coverage: float = patch_coverage_option(),
        allow_partial: bool = allow_partial_option(),
    ) -> None:
        """Train linear heads on frozen features and report macro F1 / accuracy / balanced accuracy.

        \b
        Example:
          usfast probe synth_data/ultrabench -e runs/salt/student.safetensors --out probe_out
        """
        from usjepa_fast.cli.outputs import claim_output_dir
        from usjepa_fast.config import check_choice

        check_choice(precision, "--precision", PRECISIONS, what="probe option")
        with claim_output_dir(out, "usfast probe"):
            from usjepa_fast.errors import UsfastError
            from usjepa_fast.probe.evaluate import EvalConfig, evaluate_task
            from usjepa_fast.probe.features import FeatureCache, open_encoder, task_features_from_embed_dir
            from usjepa_fast.probe.fewshot import parse_fractions
            from usjepa_fast.probe.report import write_report

            if (encoder is None) == (features is None):
                raise UsfastError("pass exactly one of --encoder SPEC or --features EMBED_DIR")
            if preset not in ("paper", "sweep"):
                raise UsfastError(f"--preset {preset!r}: use paper or sweep")
            cfg = EvalConfig(
                preset=preset,
                seeds=_seeds(seeds),
                fewshot=parse_fractions(fewshot) if fewshot else (),
                batch_size=batch_size,
                device=device,
                standardize=standardize,
                class_weight=_class_weight(class_weight),
            )
            if features is not None:
                tf = task_features_from_embed_dir(features, dataset)
                result = evaluate_task(None, dataset, cfg, features=tf)
            else:
                enc = open_encoder(
                    encoder,
                    arch=arch,
                    pool=pool,
                    device=device,
                    precision=precision,
                    calibration=calibration,
                    tokens=tokens,
                    patch_coverage=patch_coverage,
                )
                result = evaluate_task(enc, dataset, cfg, FeatureCache(cache))
            if name:
                result.encoder = name
            report = write_report([result], out, cfg, [dataset])
            typer.echo(report.markdown)
            per_class = result.test.to_dict()["per_class_f1_mean"]
            typer.echo(
                "per-class F1 (%): "
                + ", ".join(f"{c} {v * 100:.1f}" for c, v in zip(result.classes, per_class, strict=True))
            )
            acc, bacc = result.test.summary("accuracy"), result.test.summary("balanced_accuracy")
            sizes = result.sizes
            typer.echo(
                f"accuracy {acc.fmt()} | balanced accuracy {bacc.fmt()} | images train {sizes['train']} / "
                f"validation {sizes['validation']} / test {sizes['test']} | probe {result.seconds['probe']:.2f}s"
            )
            typer.echo(f"wrote {out}/ (report.md, linear_probe.md/.csv, results.json)")
