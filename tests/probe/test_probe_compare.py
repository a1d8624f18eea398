"""The comparison table on two tiny encoders and the synthetic task; paper-format tables; the demo call."""

from __future__ import annotations

import csv
import json
import re

import pytest
from support.probe import tiny_encoder

from usjepa_fast.errors import UsfastError
from usjepa_fast.probe.compare import EvalConfig, compare, probe_report
from usjepa_fast.probe.features import open_split
from usjepa_fast.probe.metrics import MeanStd
from usjepa_fast.probe.report import format_table, read_reference_table

CELL = re.compile(r"^\d+\.\d±\d+\.\d$")  # the paper CSV's cell format, e.g. 69.6±1.5


def test_compare_two_tiny_encoders_with_fewshot(ultrabench, tmp_path) -> None:
    a, b = tiny_encoder(seed=0), tiny_encoder(seed=1)
    cfg = EvalConfig(preset="sweep", seeds=(0, 1), fewshot=(0.25, 1.0), device="cpu")
    report = compare([a, b], [ultrabench], tmp_path / "out", cfg, names=["enc-a", "enc-b"])
    assert report.encoders == ["enc-a", "enc-b"] and len(report.tasks) == 1
    task = report.tasks[0]
    for name in (
        "linear_probe.md",
        "linear_probe.csv",
        "fewshot.csv",
        "results.json",
        "report.md",
        f"fewshot_{task}.png",
    ):
        assert report.files[name].is_file(), name
    with open(report.files["linear_probe.csv"]) as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["model", task]
    assert [r[0] for r in rows[1:]] == ["enc-a", "enc-b"]
    assert all(CELL.match(r[1]) for r in rows[1:]), rows
    md = report.files["linear_probe.md"].read_text()
    assert md.count("**") == 2 or md.count("**") == 4  # best in column bold (both when tied)
    results = json.loads(report.files["results.json"].read_text())["results"]
    assert len(results) == 2 and len(results[0]["test"]["per_seed"]) == 2
    fs = report.cell("enc-a", task).fewshot
    assert set(fs) == {0.25, 1.0} and len(fs[0.25].reports) == 2
    # the 100 % budget is the ordinary probe
    assert fs[1.0].summary().mean == report.cell("enc-a", task).test.summary().mean
    # each encoder embedded every split exactly once, although 2 seeds x 2 budgets were probed
    n_items = sum(len(open_split(ultrabench, s, a.info)) for s in ("train", "validation", "test"))
    assert a.images == n_items and b.images == n_items


def test_probe_report_runs_probe_and_robustness(ultrabench, tmp_path, capsys) -> None:
    a, b = tiny_encoder(seed=0), tiny_encoder(seed=2)
    report = probe_report(
        ultrabench,
        [a, b],
        tmp_path / "demo",
        names=["student", "random-init"],
        seeds=(0, 1),
        corruptions=("contrast", "speckle"),
    )
    printed = capsys.readouterr().out
    assert "Linear probe" in printed and "Robustness" in printed and "student" in printed
    task = report.tasks[0]
    rob = report.cell("student", task).robustness
    assert set(rob) == {"contrast", "speckle"} and set(rob["speckle"]) == {1, 2, 3}
    for name in (
        "robustness.csv",
        "robustness.md",
        f"robustness_{task}.png",
        "corruption_examples/overview.png",
        "corruption_examples/speckle.png",
    ):
        assert report.files[name].is_file(), name
    with open(report.files["robustness.csv"]) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * (1 + 2 * 3)  # per model: clean + 2 corruptions x 3 severities


def test_format_table_bolds_best_per_column_and_ties() -> None:
    cells = {
        "A": {"T1": MeanStd(0.701, 0.01), "T2": MeanStd(0.50, 0.02)},
        "B": {"T1": MeanStd(0.6, 0.0), "T2": MeanStd(0.5004, 0.03)},  # T2 ties at 50.0 as printed
    }
    md, table_csv = format_table(cells, ["T1", "T2"])
    lines = md.splitlines()
    assert lines[2] == "| A | **70.1 ± 1.0** | **50.0 ± 2.0** |"
    assert lines[3] == "| B | 60.0 ± 0.0 | **50.0 ± 3.0** |"
    assert table_csv.splitlines() == ["model,T1,T2", "A,70.1±1.0,50.0±2.0", "B,60.0±0.0,50.0±3.0"]


def test_reference_table_round_trip(tmp_path) -> None:
    path = tmp_path / "paper.csv"
    path.write_text("model,AUL,MMOTU\nURFM,71.5±1.1,42.7±0.4\nUS-JEPA,69.6±1.5,52.2±0.2\n")
    ref = read_reference_table(path)
    assert ref["US-JEPA"]["MMOTU"] == "52.2±0.2"
    md, _ = format_table({"ours": {"MMOTU": MeanStd(0.5, 0.01)}}, ["MMOTU"], reference=ref)
    assert "| US-JEPA (paper) | 52.2 ± 0.2 |" in md
    with pytest.raises(UsfastError):
        read_reference_table(tmp_path / "missing.csv")


def test_compare_rejects_bad_arguments(ultrabench, tmp_path) -> None:
    with pytest.raises(UsfastError):
        compare([], [ultrabench], tmp_path)
    with pytest.raises(UsfastError):
        compare([tiny_encoder()], [ultrabench], tmp_path, names=["a", "b"])


def test_reports_show_split_sizes_balanced_accuracy_per_class_f1_and_class_weighting(ultrabench, tmp_path) -> None:
    enc = tiny_encoder(seed=0)
    cfg = EvalConfig(preset="sweep", seeds=(0, 1), device="cpu", class_weight="balanced")
    report = compare([enc], [ultrabench], tmp_path / "out", cfg, names=["enc"])
    task = report.tasks[0]
    result = report.cell("enc", task)
    sizes = {s: len(open_split(ultrabench, s, enc.info)) for s in ("train", "validation", "test")}
    assert result.sizes == sizes
    assert [sum(v) for v in result.class_counts.values()] == [sizes[s] for s in result.class_counts]
    assert result.class_weight == "balanced" and result.hparams["class_weight"] == "balanced"
    md = report.markdown
    assert "sweep preset, class-weight balanced" in md  # the weighting is named in the table title
    assert "deterministic" in md  # and the sweep's ± is not passed off as a spread over seeds
    details = report.files["details.md"].read_text()
    n_tr, n_va, n_te = sizes["train"], sizes["validation"], sizes["test"]
    assert f"| enc | {task} | {n_tr} / {n_va} / {n_te} |" in details
    assert "balanced acc." in details and "(n=" in details
    # the synthetic task's validation split has a handful of images per class: the report says so
    assert f"validation split has {n_va} images" in details
    with open(report.files["details.csv"]) as fh:
        rows = list(csv.DictReader(fh))
    assert [r["class"] for r in rows] == result.classes
    assert {r["n_validation"] for r in rows} == {str(n_va)} and {r["class_weight"] for r in rows} == {"balanced"}
    bacc = result.test.summary("balanced_accuracy").mean
    assert float(rows[0]["balanced_accuracy_mean"]) == pytest.approx(bacc, abs=1e-4)
    per_class = result.test.to_dict()["per_class_f1_mean"]
    assert [float(r["class_f1_mean"]) for r in rows] == pytest.approx(per_class, abs=1e-4)
    saved = json.loads(report.files["results.json"].read_text())
    assert saved["config"]["class_weight"] == "balanced"
    assert saved["results"][0]["sizes"] == sizes and saved["results"][0]["class_weight"] == "balanced"


def test_class_weight_is_checked_up_front() -> None:
    with pytest.raises(UsfastError, match="class weight"):
        EvalConfig(class_weight="inverse")
