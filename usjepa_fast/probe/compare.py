"""Probe / few-shot / robustness for several encoders x tasks: the paper-format comparison.

:func:`compare` loops encoders x datasets through :func:`~usjepa_fast.probe.evaluate.evaluate_task`
(evaluation: :mod:`usjepa_fast.probe.evaluate`) and hands the results to
:func:`~usjepa_fast.probe.report.write_report` (tables, CSVs, plots, ``results.json``,
``report.md``: :mod:`usjepa_fast.probe.report`). :func:`probe_report` is the one-call version for
the demo (one dataset, a few encoder specs, probe + robustness, report printed and saved).

Features are cached in ``cache_dir``; the default is the user-level cache shared with ``usfast
probe`` and ``usfast robustness`` (``$USFAST_CACHE_DIR/features`` or ``~/.cache/usfast/features``): the
cache key covers the encoder's weights and the dataset's files, so every command over the same
encoder and dataset reuses one set of features.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from usjepa_fast.errors import UsfastError
from usjepa_fast.probe.corruptions import PAPER_CORRUPTIONS
from usjepa_fast.probe.evaluate import EvalConfig, TaskResult, evaluate_task
from usjepa_fast.probe.features import Encoder, FeatureCache, open_encoder
from usjepa_fast.probe.linear import Preset
from usjepa_fast.probe.report import CompareReport, write_report


def _unique_names(names: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def compare(
    encoders: Sequence[Any],
    datasets: Sequence[str | Path],
    out_dir: str | Path,
    cfg: EvalConfig | None = None,
    names: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
    reference_csv: str | Path | None = None,
    arch: str | None = None,
    pool: str | None = None,
    precision: str | None = "fp32",
    calibration: Any = None,
    tokens: str = "all",
    patch_coverage: float = 0.5,
) -> CompareReport:
    """Evaluate every encoder spec on every dataset and write the tables / plots into ``out_dir``.

    ``cache_dir=None`` uses the shared feature cache (see the module doc). ``precision`` /
    ``calibration``: the runtime precision of every spec (``probe.features.open_encoder``).
    ``tokens="scan"``: every encoder embeds scan-region patches only (``patch_coverage``).
    """
    cfg = cfg or EvalConfig()
    if not encoders:
        raise UsfastError("no encoders to compare; pass at least one encoder spec")
    if not datasets:
        raise UsfastError("no datasets to compare on; pass at least one UltraBench directory")
    if names is not None and len(names) != len(encoders):
        raise UsfastError(f"{len(names)} names for {len(encoders)} encoders; give one name per encoder")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = FeatureCache(cache_dir)
    results: list[TaskResult] = []
    display: list[str] = []
    first_encoder: Encoder | None = None
    for i, spec in enumerate(encoders):
        enc = open_encoder(
            spec,
            arch=arch,
            pool=pool,
            precision=precision,
            calibration=calibration,
            tokens=tokens,
            patch_coverage=patch_coverage,
        )
        first_encoder = first_encoder or enc
        label = names[i] if names is not None else enc.name
        display.append(label)
        for root in datasets:
            res = evaluate_task(enc, root, cfg, cache)
            res.encoder = label
            results.append(res)
    display = _unique_names(display)
    k = 0
    for label in display:  # results were appended encoder-major
        for _ in datasets:
            results[k].encoder = label
            k += 1
    return write_report(results, out, cfg, datasets, first_encoder, reference_csv)


def probe_report(
    dataset_root: str | Path,
    encoders: Sequence[Any],
    out_dir: str | Path,
    names: Sequence[str] | None = None,
    preset: Preset = "sweep",
    seeds: Sequence[int] = (0, 1, 2),
    corruptions: Sequence[str] = PAPER_CORRUPTIONS,
    fewshot: Sequence[float] = (),
    cache_dir: str | Path | None = None,
    echo: bool = True,
    class_weight: str | None = None,
) -> CompareReport:
    """Demo entry point: probe + robustness of ``encoders`` on one UltraBench dataset; prints the report.

    Defaults keep it to about a minute on 2 CPU cores for tiny encoders (sweep preset, 3 seeds, the
    paper's three corruptions). Files land in ``out_dir`` (see :mod:`usjepa_fast.probe.report`).
    """
    cfg = EvalConfig(
        preset=preset,
        seeds=tuple(seeds),
        fewshot=tuple(fewshot),
        robustness=True,
        corruptions=tuple(corruptions),
        class_weight=class_weight,
    )
    report = compare(encoders, [dataset_root], out_dir, cfg, names=names, cache_dir=cache_dir)
    if echo:
        print(report.markdown)
        print(f"report written to {Path(out_dir) / 'report.md'} (tables, CSVs, PNG plots, results.json)")
    return report


# EvalConfig / TaskResult / CompareReport are re-exported: callers build an EvalConfig for compare().
__all__ = ["CompareReport", "EvalConfig", "TaskResult", "compare", "probe_report"]
