"""Probe / few-shot / robustness for several encoders x tasks, and the paper-format comparison tables.

:func:`evaluate_task` runs everything for one (encoder, dataset) from cached features;
:func:`compare` loops encoders x datasets and writes into ``out_dir``::

    results.json              every number (per seed), chosen hyper-parameters, timings
    linear_probe.md / .csv    models x tasks, ``mean ± std`` macro F1 (%), best per column in bold (md);
                              the CSV uses the paper's own format (``model,TASK,...`` / ``69.6±1.5``)
    fewshot.md / .csv / fewshot_<task>.png            (with few-shot budgets)
    robustness.md / .csv / robustness_<task>.png      (with robustness)
    corruption_examples/<corruption>.png, overview.png (with robustness)

:func:`probe_report` is the one-call version for the demo (one dataset, a few encoder specs, probe
+ robustness, report printed and saved).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from usjepa_fast.errors import UsfastError
from usjepa_fast.probe.corruptions import CORRUPTIONS, PAPER_CORRUPTIONS, SEVERITIES, save_corruption_grids
from usjepa_fast.probe.features import (
    Corruption,
    Encoder,
    FeatureCache,
    MemorySplit,
    TaskFeatures,
    open_encoder,
    open_split,
    split_features,
    task_features,
)
from usjepa_fast.probe.fewshot import fewshot_indices
from usjepa_fast.probe.linear import (
    PAPER_SEEDS,
    LinearHeads,
    PaperConfig,
    Preset,
    ProbeScores,
    SweepConfig,
    train_probe,
)
from usjepa_fast.probe.metrics import MeanStd, mean_std

log = logging.getLogger("usfast")


@dataclass
class EvalConfig:
    """What to evaluate per (encoder, task)."""

    preset: Preset = "paper"  # "paper" (the US-JEPA protocol) or "sweep" (batched lr x wd heads)
    seeds: tuple[int, ...] = PAPER_SEEDS  # paper: five seeds, mean ± std
    fewshot: tuple[float, ...] = ()  # label budgets as fractions, e.g. (0.01, 0.05, 0.1, 0.5, 1.0); () = skip
    robustness: bool = False  # corrupt test images and re-score the clean-trained probes
    corruptions: tuple[str, ...] = tuple(CORRUPTIONS)
    severities: tuple[int, ...] = SEVERITIES
    corruption_seed: int = 0  # noise draws of the random corruptions
    batch_size: int = 32  # encoder batch size for feature extraction
    device: str | None = None  # probe device; None = CUDA when present
    standardize: bool = True  # z-score features with train statistics before the linear head

    def probe_config(self) -> PaperConfig | SweepConfig:
        return (
            PaperConfig(standardize=self.standardize)
            if self.preset == "paper"
            else SweepConfig(standardize=self.standardize)
        )


@dataclass
class TaskResult:
    """All numbers of one encoder on one task (fractions in [0, 1])."""

    encoder: str
    task: str
    classes: list[str]
    preset: str
    test: ProbeScores
    validation: ProbeScores
    hparams: dict
    fewshot: dict[float, ProbeScores] = field(default_factory=dict)
    robustness: dict[str, dict[int, ProbeScores]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "encoder": self.encoder,
            "task": self.task,
            "classes": self.classes,
            "preset": self.preset,
            "test": self.test.to_dict(),
            "validation": self.validation.to_dict(),
            "hparams": self.hparams,
            "fewshot": {f"{k:g}": v.to_dict() for k, v in sorted(self.fewshot.items())},
            "robustness": {c: {str(s): v.to_dict() for s, v in per.items()} for c, per in self.robustness.items()},
            "seconds": self.seconds,
        }


def _combine(scores: Sequence[ProbeScores]) -> ProbeScores:
    return ProbeScores(reports=[r for s in scores for r in s.reports], seeds=[sd for s in scores for sd in s.seeds])


def fewshot_scores(
    tf: TaskFeatures,
    fractions: Sequence[float],
    preset: Preset,
    seeds: Sequence[int],
    device: str | None = None,
    full: ProbeScores | None = None,
    config: PaperConfig | SweepConfig | None = None,
) -> dict[float, ProbeScores]:
    """Test scores per label budget; each seed trains on its own stratified subset (same seed)."""
    xtr, ytr = tf.xy("train")
    xva, yva = tf.xy("validation")
    xte, yte = tf.xy("test")
    out: dict[float, ProbeScores] = {}
    for frac in fractions:
        if frac >= 1.0 and full is not None:
            out[frac] = full  # the 100 % budget is the ordinary probe
            continue
        per_seed = []
        for seed in seeds:
            idx = fewshot_indices(ytr, frac, seed)
            heads = train_probe(xtr[idx], ytr[idx], xva, yva, tf.num_classes, preset, [seed], device, config)
            per_seed.append(heads.evaluate(xte, yte))
        out[frac] = _combine(per_seed)
    return out


def robustness_scores(
    encoder: Encoder,
    dataset_root: str | Path,
    heads: LinearHeads,
    corruptions: Sequence[str],
    severities: Sequence[int],
    cache: FeatureCache,
    batch_size: int = 32,
    seed: int = 0,
) -> dict[str, dict[int, ProbeScores]]:
    """Clean-trained heads scored on corrupted-test-image features (each cached like clean ones)."""
    out: dict[str, dict[int, ProbeScores]] = {}
    test = MemorySplit(open_split(dataset_root, "test", encoder.info))  # decoded once for all corruptions
    for name in corruptions:
        if name not in CORRUPTIONS:
            raise UsfastError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
        out[name] = {}
        for sev in severities:
            sf = split_features(
                encoder, dataset_root, "test", cache, batch_size, Corruption(name, int(sev), seed), dataset=test
            )
            out[name][int(sev)] = heads.evaluate(sf.x, sf.y)
    return out


def evaluate_task(
    encoder: Encoder | None,
    dataset_root: str | Path,
    cfg: EvalConfig | None = None,
    cache: FeatureCache | None = None,
    features: TaskFeatures | None = None,
) -> TaskResult:
    """Probe (+ few-shot, + robustness) of ``encoder`` on one dataset. ``features`` skips extraction
    (then ``encoder`` may be None unless robustness is asked for: corrupted images need the encoder)."""
    cfg = cfg or EvalConfig()
    if encoder is None and (features is None or cfg.robustness):
        raise UsfastError("robustness (and feature extraction) needs an encoder; pass --encoder")
    cache = cache or FeatureCache()
    t0 = time.perf_counter()
    tf = features if features is not None else task_features(encoder, dataset_root, cache, cfg.batch_size)
    pcfg = cfg.probe_config()
    t_feat = time.perf_counter() - t0
    xtr, ytr = tf.xy("train")
    xva, yva = tf.xy("validation")
    xte, yte = tf.xy("test")
    heads = train_probe(xtr, ytr, xva, yva, tf.num_classes, cfg.preset, cfg.seeds, cfg.device, pcfg)
    result = TaskResult(
        encoder=tf.encoder,
        task=tf.task,
        classes=tf.classes,
        preset=cfg.preset,
        test=heads.evaluate(xte, yte),
        validation=heads.evaluate(xva, yva),
        hparams=heads.hparams,
        seconds={"features": t_feat, "probe": heads.train_seconds},
    )
    if cfg.fewshot:
        t1 = time.perf_counter()
        result.fewshot = fewshot_scores(tf, cfg.fewshot, cfg.preset, cfg.seeds, cfg.device, result.test, pcfg)
        result.seconds["fewshot"] = time.perf_counter() - t1
    if cfg.robustness:
        t2 = time.perf_counter()
        result.robustness = robustness_scores(
            encoder, dataset_root, heads, cfg.corruptions, cfg.severities, cache, cfg.batch_size, cfg.corruption_seed
        )
        result.seconds["robustness"] = time.perf_counter() - t2
    log.info(
        "probe: %s on %s: test macro F1 %s (%s preset)",
        result.encoder,
        result.task,
        result.test.summary().fmt(),
        cfg.preset,
    )
    return result


# ----------------------------------------------------------------------------------------------
# tables


def _bold_best(cells: dict[str, dict[str, MeanStd]], columns: Sequence[str]) -> dict[tuple[str, str], bool]:
    """(row, column) -> is best in column, comparing means rounded as printed (ties all bold)."""
    best: dict[tuple[str, str], bool] = {}
    for col in columns:
        vals = {r: round(c[col].mean * 100, 1) for r, c in cells.items() if col in c and not math.isnan(c[col].mean)}
        top = max(vals.values()) if vals else None
        for r in cells:
            best[(r, col)] = top is not None and vals.get(r) == top
    return best


def format_table(
    cells: dict[str, dict[str, MeanStd]],
    columns: Sequence[str],
    row_header: str = "model",
    reference: dict[str, dict[str, str]] | None = None,
) -> tuple[str, str]:
    """``cells[row][column] -> MeanStd`` -> (markdown with best-per-column bold, CSV in the paper's format).

    ``reference`` rows (e.g. the paper's numbers, already formatted) are appended to the markdown
    below a separator row, for context; they never take part in the bolding.
    """
    best = _bold_best(cells, columns)
    md = [f"| {row_header} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row, per in cells.items():
        out = []
        for col in columns:
            text = per[col].fmt() if col in per else "n/a"
            out.append(f"**{text}**" if best[(row, col)] else text)
        md.append(f"| {row} | " + " | ".join(out) + " |")
    if reference:
        md.append("| *paper* |" + " |" * len(columns))
        for row, per in reference.items():
            md.append(f"| {row} (paper) | " + " | ".join(per.get(c, "n/a").replace("±", " ± ") for c in columns) + " |")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([row_header, *columns])
    for row, per in cells.items():
        w.writerow([row, *[per[c].fmt(sep="±") if c in per else "" for c in columns]])
    return "\n".join(md) + "\n", buf.getvalue()


def read_reference_table(path: str | Path) -> dict[str, dict[str, str]]:
    """The paper's results CSV (``model,AUL,...`` with ``64.3±0.6`` cells) -> {model: {TASK: cell}}."""
    path = Path(path)
    if not path.is_file():
        raise UsfastError(f"reference table {path} does not exist; pass the paper's CSV (model,TASK,...)")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "model" not in rows[0]:
        raise UsfastError(f"{path} must be a CSV with a 'model' column and one column per task")
    return {r["model"]: {k.upper(): v for k, v in r.items() if k != "model"} for r in rows}


# ----------------------------------------------------------------------------------------------
# compare


@dataclass
class CompareReport:
    """Everything :func:`compare` produced; ``files`` maps an artefact name to its path."""

    results: list[TaskResult]
    encoders: list[str]
    tasks: list[str]
    files: dict[str, Path] = field(default_factory=dict)
    markdown: str = ""

    def cell(self, encoder: str, task: str) -> TaskResult:
        for r in self.results:
            if r.encoder == encoder and r.task == task:
                return r
        raise KeyError((encoder, task))


def _unique_names(names: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


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
) -> CompareReport:
    """Evaluate every encoder spec on every dataset and write the tables / plots into ``out_dir``."""
    cfg = cfg or EvalConfig()
    if not encoders:
        raise UsfastError("no encoders to compare; pass at least one encoder spec")
    if not datasets:
        raise UsfastError("no datasets to compare on; pass at least one UltraBench directory")
    if names is not None and len(names) != len(encoders):
        raise UsfastError(f"{len(names)} names for {len(encoders)} encoders; give one name per encoder")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = FeatureCache(cache_dir if cache_dir is not None else out / "features")
    results: list[TaskResult] = []
    display: list[str] = []
    first_encoder: Encoder | None = None
    for i, spec in enumerate(encoders):
        enc = open_encoder(spec, arch=arch, pool=pool)
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


def write_report(
    results: list[TaskResult],
    out_dir: str | Path,
    cfg: EvalConfig,
    datasets: Sequence[str | Path] = (),
    example_encoder: Encoder | None = None,
    reference_csv: str | Path | None = None,
) -> CompareReport:
    """Tables (markdown + CSV), plots and ``results.json`` of finished :class:`TaskResult` s."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    display = list(dict.fromkeys(r.encoder for r in results))
    tasks = list(dict.fromkeys(r.task for r in results))
    report = CompareReport(results=results, encoders=display, tasks=tasks)

    cells = {e: {r.task: r.test.summary() for r in results if r.encoder == e} for e in display}
    reference = None
    if reference_csv is not None:
        ref = read_reference_table(reference_csv)
        upper = [t.upper() for t in tasks]
        reference = {
            m: {t: row[t.upper()] for t in tasks if t.upper() in row}
            for m, row in ref.items()
            if any(u in row for u in upper)
        }
    md, table_csv = format_table(cells, tasks, reference=reference)
    sections = [f"## Linear probe ({cfg.preset} preset, macro F1 %, mean ± std over {len(cfg.seeds)} seeds)\n", md]
    report.files["linear_probe.md"] = _write(out / "linear_probe.md", md)
    report.files["linear_probe.csv"] = _write(out / "linear_probe.csv", table_csv)

    from usjepa_fast.probe.plots import plot_fewshot, plot_robustness

    if cfg.fewshot:
        budgets = sorted(cfg.fewshot)
        cols = [f"{b * 100:g}%" for b in budgets]
        rows = [["model", "task", "budget", "macro_f1_mean", "macro_f1_std"]]
        for task in tasks:
            fs = {
                e: {c: r.fewshot[b].summary() for c, b in zip(cols, budgets, strict=True)}
                for e in display
                for r in results
                if r.encoder == e and r.task == task
            }
            md_fs, _ = format_table(fs, cols)
            sections += [f"## Few-shot on {task} (macro F1 %)\n", md_fs]
            curves = {e: {b: per[c] for c, b in zip(cols, budgets, strict=True)} for e, per in fs.items()}
            report.files[f"fewshot_{task}.png"] = plot_fewshot(curves, out / f"fewshot_{task}.png", f"few-shot: {task}")
            for e, per in fs.items():
                for c, b in zip(cols, budgets, strict=True):
                    rows.append([e, task, f"{b:g}", f"{per[c].mean:.4f}", f"{per[c].std:.4f}"])
        report.files["fewshot.csv"] = _write(out / "fewshot.csv", _csv(rows))

    if cfg.robustness:
        rows = [["model", "task", "corruption", "severity", "macro_f1_mean", "macro_f1_std"]]
        for task in tasks:
            cols = ["clean"] + [f"{c} s{s}" for c in cfg.corruptions for s in cfg.severities]
            tab: dict[str, dict[str, MeanStd]] = {}
            curves: dict[str, dict[str, dict[int, MeanStd]]] = {}
            clean: dict[str, MeanStd] = {}
            for r in results:
                if r.task != task:
                    continue
                clean[r.encoder] = r.test.summary()
                tab[r.encoder] = {"clean": clean[r.encoder]}
                curves[r.encoder] = {}
                c0 = clean[r.encoder]
                rows.append([r.encoder, task, "clean", "0", f"{c0.mean:.4f}", f"{c0.std:.4f}"])
                for c, per in r.robustness.items():
                    curves[r.encoder][c] = {s: v.summary() for s, v in per.items()}
                    for s, ms in curves[r.encoder][c].items():
                        tab[r.encoder][f"{c} s{s}"] = ms
                        rows.append([r.encoder, task, c, str(s), f"{ms.mean:.4f}", f"{ms.std:.4f}"])
            md_rb = _robustness_markdown(tab, cfg.corruptions, cfg.severities)
            sections += [f"## Robustness on {task} (macro F1 %, probe trained on clean features)\n", md_rb]
            report.files[f"robustness_{task}.png"] = plot_robustness(
                curves, clean, out / f"robustness_{task}.png", f"robustness: {task}"
            )
        report.files["robustness.csv"] = _write(out / "robustness.csv", _csv(rows))
        report.files["robustness.md"] = _write(out / "robustness.md", "\n".join(sections[-2 * len(tasks) :]))
        if example_encoder is not None and datasets:
            report.files.update(_save_examples(example_encoder, datasets[0], cfg, out / "corruption_examples"))

    report.markdown = "\n".join(sections)
    report.files["report.md"] = _write(out / "report.md", report.markdown)
    report.files["results.json"] = _write(
        out / "results.json",
        json.dumps(
            {"config": {**cfg.__dict__, "fewshot": list(cfg.fewshot)}, "results": [r.to_dict() for r in results]},
            indent=1,
            default=str,
        ),
    )
    return report


def _robustness_markdown(
    tab: dict[str, dict[str, MeanStd]], corruptions: Sequence[str], severities: Sequence[int]
) -> str:
    """One row per (model, corruption): clean, then severities; best per (corruption, severity) bold."""
    lines = [
        "| model | corruption | clean | " + " | ".join(f"s{s}" for s in severities) + " |",
        "|---|---|---|" + "---|" * len(severities),
    ]
    for c in corruptions:
        cols = [f"{c} s{s}" for s in severities]
        best = _bold_best(tab, cols)
        for model, per in tab.items():
            cells = []
            for col in cols:
                text = per[col].fmt() if col in per else "n/a"
                cells.append(f"**{text}**" if best[(model, col)] else text)
            lines.append(f"| {model} | {c} | {per['clean'].fmt()} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _csv(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _save_examples(encoder: Encoder, dataset_root: str | Path, cfg: EvalConfig, out: Path) -> dict[str, Path]:
    """Corruption example grids from the first test images, in the encoder's input geometry."""
    ds = open_split(dataset_root, "test", encoder.info)
    items = [ds[i] for i in range(min(4, len(ds)))]
    mean = torch.tensor([float(v) for v in encoder.info.mean]).view(1, -1, 1, 1)
    std = torch.tensor([float(v) for v in encoder.info.std]).view(1, -1, 1, 1)
    x01 = (torch.stack([it["image"] for it in items]) * std + mean).clamp(0, 1)
    m = torch.stack([torch.as_tensor(it["scan_mask"]) for it in items]).bool()
    paths = save_corruption_grids(x01, out, m, cfg.corruptions, seed=cfg.corruption_seed)
    return {f"corruption_examples/{p.name}": p for p in paths}


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
) -> CompareReport:
    """Demo entry point: probe + robustness of ``encoders`` on one UltraBench dataset; prints the report.

    Defaults keep it to about a minute on 2 CPU cores for tiny encoders (sweep preset, 3 seeds, the
    paper's three corruptions). Files land in ``out_dir`` (see :func:`compare`).
    """
    cfg = EvalConfig(
        preset=preset, seeds=tuple(seeds), fewshot=tuple(fewshot), robustness=True, corruptions=tuple(corruptions)
    )
    report = compare(encoders, [dataset_root], out_dir, cfg, names=names, cache_dir=cache_dir)
    if echo:
        print(report.markdown)
        print(f"report written to {Path(out_dir) / 'report.md'} (tables, CSVs, PNG plots, results.json)")
    return report


def summary_line(report: CompareReport) -> str:
    """``'encoder A 71.2 ± 1.0 | encoder B 40.3 ± 2.2'`` over the first task (for logs)."""
    task = report.tasks[0]
    return " | ".join(f"{e} {report.cell(e, task).test.summary().fmt()}" for e in report.encoders)


def mean_over_tasks(report: CompareReport, encoder: str) -> MeanStd:
    """Average macro F1 of ``encoder`` across tasks (std = across tasks)."""
    return mean_std([report.cell(encoder, t).test.summary().mean for t in report.tasks])


__all__ = [
    "CompareReport",
    "EvalConfig",
    "TaskResult",
    "compare",
    "evaluate_task",
    "fewshot_scores",
    "format_table",
    "mean_over_tasks",
    "probe_report",
    "read_reference_table",
    "robustness_scores",
    "summary_line",
]
