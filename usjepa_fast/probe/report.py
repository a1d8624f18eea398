"""Writing an evaluation up: tables (markdown + CSV), plots, ``results.json`` and ``report.md``.

:func:`write_report` turns finished :class:`~usjepa_fast.probe.evaluate.TaskResult` s into files in
``out_dir``::

    results.json              every number (per seed), split sizes, class counts, chosen hyper-parameters, timings
    linear_probe.md / .csv    models x tasks, ``mean ± std`` macro F1 (%), best per column in bold (md);
                              the CSV uses the paper's own format (``model,TASK,...`` / ``69.6±1.5``)
    details.md / .csv         per (model, task): train / validation / test sizes, macro F1, balanced
                              accuracy, accuracy and per-class F1 with each class's test support, so a
                              reader sees when a number rests on a handful of images
    fewshot.md / .csv / fewshot_<task>.png            (with few-shot budgets)
    robustness.md / .csv / robustness_<task>.png      (with robustness)
    corruption_examples/<corruption>.png, overview.png (with robustness)

Table titles name the preset and, when on, the class weighting. The evaluation itself lives in
:mod:`usjepa_fast.probe.evaluate`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from usjepa_fast.errors import UsfastError
from usjepa_fast.fileio import atomic_write_text
from usjepa_fast.probe.corruptions import save_corruption_grids
from usjepa_fast.probe.evaluate import EvalConfig, TaskResult
from usjepa_fast.probe.features import Encoder, open_split
from usjepa_fast.probe.metrics import MeanStd, mean_std

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


def _bold_cells(
    row: str, per: dict[str, MeanStd], columns: Sequence[str], best: dict[tuple[str, str], bool]
) -> list[str]:
    """One row's formatted cells (``'n/a'`` when missing), the column's best in bold."""
    out = []
    for col in columns:
        text = per[col].fmt() if col in per else "n/a"
        out.append(f"**{text}**" if best[(row, col)] else text)
    return out


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
        md.append(f"| {row} | " + " | ".join(_bold_cells(row, per, columns, best)) + " |")
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
# the report


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


def _write(path: Path, text: str) -> Path:
    return atomic_write_text(path, text)  # a report is whole or absent, never cut mid-table


def details_table(results: Sequence[TaskResult]) -> tuple[str, str]:
    """Per (model, task): split sizes, macro F1, balanced accuracy, accuracy, per-class F1 with test support.

    Returns (markdown, CSV). Per-class F1 is the mean over seeds; ``n=`` is the class's test count, so
    a reader sees that one image of a 12-image class moves its F1 by several points.
    """
    md = [
        "| model | task | train / val / test | macro F1 | balanced acc. | accuracy | per-class F1 (test n) |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [
        [
            "model",
            "task",
            "class_weight",
            "n_train",
            "n_validation",
            "n_test",
            "macro_f1_mean",
            "macro_f1_std",
            "balanced_accuracy_mean",
            "balanced_accuracy_std",
            "accuracy_mean",
            "accuracy_std",
            "val_macro_f1_mean",
            "class",
            "test_support",
            "class_f1_mean",
        ]
    ]
    for r in results:
        test = r.test.to_dict()
        per_class = test["per_class_f1_mean"]
        support = r.class_counts.get("test", [0] * len(r.classes))
        sizes = " / ".join(str(r.sizes.get(s, "?")) for s in ("train", "validation", "test"))
        cls_text = ", ".join(
            f"{c} {f * 100:.1f} (n={n})" for c, f, n in zip(r.classes, per_class, support, strict=True)
        )
        m, b, a = (r.test.summary(k) for k in ("macro_f1", "balanced_accuracy", "accuracy"))
        md.append(f"| {r.encoder} | {r.task} | {sizes} | {m.fmt()} | {b.fmt()} | {a.fmt()} | {cls_text} |")
        v = r.validation.summary()
        for c, f, n in zip(r.classes, per_class, support, strict=True):
            rows.append(
                [
                    r.encoder,
                    r.task,
                    r.class_weight or "none",
                    *(str(r.sizes.get(s, "")) for s in ("train", "validation", "test")),
                    *(f"{x:.4f}" for x in (m.mean, m.std, b.mean, b.std, a.mean, a.std, v.mean)),
                    c,
                    str(n),
                    f"{f:.4f}",
                ]
            )
    return "\n".join(md) + "\n", _csv(rows)


def small_split_notes(results: Sequence[TaskResult]) -> list[str]:
    """One line per task whose validation or test split is small enough that single images move F1."""
    notes = []
    for task in dict.fromkeys(r.task for r in results):
        r = next(x for x in results if x.task == task)
        for split in ("validation", "test"):
            counts = [n for n in r.class_counts.get(split, []) if n > 0]
            if not counts or min(counts) >= 30:
                continue
            # One more correct image of the smallest class moves its recall by 1/n, i.e. macro F1 by
            # about 1 / (n * C) (more when precision moves with it).
            step = 100.0 / (min(counts) * len(r.classes))
            notes.append(
                f"- {task}: {split} split has {sum(counts)} images, smallest class {min(counts)}: one image "
                f"moves macro F1 by ~{step:.1f} points or more"
            )
    return notes


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
    spread = (
        "deterministic: one head for every seed, so ± is 0"
        if cfg.preset == "sweep"
        else f"mean ± std over {len(cfg.seeds)} seeds"
    )
    sections = [f"## Linear probe ({cfg.describe()}, macro F1 %, {spread})\n", md]
    report.files["linear_probe.md"] = _write(out / "linear_probe.md", md)
    report.files["linear_probe.csv"] = _write(out / "linear_probe.csv", table_csv)
    md_det, det_csv = details_table(results)
    notes = small_split_notes(results)
    sections += [
        "## Split sizes, balanced accuracy and per-class F1 (test, %, mean over seeds)\n",
        md_det + ("\n" + "\n".join(notes) + "\n" if notes else ""),
    ]
    report.files["details.md"] = _write(out / "details.md", sections[-1])
    report.files["details.csv"] = _write(out / "details.csv", det_csv)

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
            sections += [f"## Few-shot on {task} ({cfg.describe()}, macro F1 %)\n", md_fs]
            curves = {e: {b: per[c] for c, b in zip(cols, budgets, strict=True)} for e, per in fs.items()}
            report.files[f"fewshot_{task}.png"] = plot_fewshot(curves, out / f"fewshot_{task}.png", f"few-shot: {task}")
            for e, per in fs.items():
                for c, b in zip(cols, budgets, strict=True):
                    rows.append([e, task, f"{b:g}", f"{per[c].mean:.4f}", f"{per[c].std:.4f}"])
        report.files["fewshot.csv"] = _write(out / "fewshot.csv", _csv(rows))
        report.files["fewshot.md"] = _write(out / "fewshot.md", "\n".join(sections[-2 * len(tasks) :]))

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
            sections += [
                f"## Robustness on {task} ({cfg.describe()}, macro F1 %, probe trained on clean features)\n",
                md_rb,
            ]
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
            {"config": asdict(cfg), "results": [r.to_dict() for r in results]},
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
            cells = _bold_cells(model, per, cols, best)
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


def summary_line(report: CompareReport) -> str:
    """``'encoder A 71.2 ± 1.0 | encoder B 40.3 ± 2.2'`` over the first task (for logs)."""
    task = report.tasks[0]
    return " | ".join(f"{e} {report.cell(e, task).test.summary().fmt()}" for e in report.encoders)


def mean_over_tasks(report: CompareReport, encoder: str) -> MeanStd:
    """Average macro F1 of ``encoder`` across tasks (std = across tasks)."""
    return mean_std([report.cell(encoder, t).test.summary().mean for t in report.tasks])


__all__ = [
    "CompareReport",
    "details_table",
    "format_table",
    "mean_over_tasks",
    "read_reference_table",
    "small_split_notes",
    "summary_line",
    "write_report",
]
