"""`usfast doctor`, `usfast synth` and the data stages of `usfast demo`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from usjepa_fast.cli.doctor import check_pyav, check_triton, collect_checks, format_checks
from usjepa_fast.cli.main import app

runner = CliRunner()


def test_doctor_lists_every_backend() -> None:
    result = runner.invoke(app, ["doctor", "--quick"])
    assert result.exit_code == 0, result.output
    for name in ("torch", "CUDA", "Triton", "DALI", "TensorRT", "ONNX Runtime", "PyAV decode"):
        assert name in result.output
    rows = {r.name: r for r in collect_checks(run_interpreter=False)}
    assert rows["ONNX Runtime"].ok and "CPUExecutionProvider" in rows["ONNX Runtime"].detail
    assert "h264" in rows["PyAV decode"].detail.split("(")[0] and "vp9" in rows["PyAV decode"].detail
    assert format_checks(list(rows.values())).count("\n") == len(rows) - 1


def test_doctor_shows_the_isa_and_the_auto_precision_per_backend() -> None:
    from usjepa_fast.embed.precision import resolve_precision
    from usjepa_fast.hardware import cpu_caps

    rows = {r.name: r for r in collect_checks(run_interpreter=False)}
    caps = cpu_caps()
    assert f"ISA {caps.isa}" in rows["CPU"].detail and rows["CPU flags"].detail == caps.flags_line()
    assert rows["CPU bf16"].ok == caps.bf16_native and rows["CPU int8"].ok == caps.int8_native
    auto = rows["auto precision (cpu)"].detail
    assert f"torch {resolve_precision('auto', 'torch', 'cpu').precision}" in auto and "onnx fp32" in auto
    detail = rows["auto backend"].detail
    assert torch_cuda() or (detail.startswith("ViT-S and wider: ") and "narrower than 256: torch fp32" in detail)
    assert "OpenVINO" in rows


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_pyav_codecs_reported() -> None:
    decode = next(r for r in check_pyav() if r.name == "PyAV decode")
    for codec in ("h264", "mpeg4", "vp9", "mjpeg", "gif"):
        assert codec in decode.detail


def test_triton_interpreter_probe_runs_a_kernel() -> None:
    pytest.importorskip("triton", reason="Triton is not installed: there is no interpreter to probe")
    rows = {r.name: r for r in check_triton(run_interpreter=True)}
    assert not rows["Triton"].detail.startswith("not importable"), rows["Triton"].detail
    assert rows["Triton interpreter"].ok, rows["Triton interpreter"].detail


def test_synth_command(tmp_path) -> None:
    out = tmp_path / "s"
    args = ["synth", "--out", str(out), "--n-images", "8", "--n-clips", "1", "--size", "64", "--clip-frames", "4"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote 8 images and 1 clips" in result.output
    assert len(list((out / "ultrabench" / "images").glob("*.png"))) == 8
    assert (out / "clips" / "clip_000.mp4").is_file()


def test_synth_bad_size_is_a_one_line_error(tmp_path) -> None:
    result = runner.invoke(app, ["synth", "--out", str(tmp_path), "--size", "63", "--n-images", "1"])
    assert result.exit_code != 0 and "even" in str(result.exception)


def test_demo_data_stages(tmp_path) -> None:
    out = tmp_path / "demo"
    data_stages = ["synth", "ultrabench", "folders", "scan_regions", "corpus"]
    args = ["demo", "--out", str(out), "--n-images", "16", "--n-clips", "3", "--size", "96"]
    args += [arg for name in data_stages for arg in ("--stage", name)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "demo_summary.json").read_text())
    assert list(summary) == data_stages
    assert summary["scan_regions"]["image_iou_mean"] >= 0.9
    assert summary["ultrabench"]["train"]["n"] + summary["ultrabench"]["test"]["n"] <= 16
    assert (out / "scan_regions.png").is_file()
    bad = runner.invoke(app, ["demo", "--out", str(out), "--stage", "nope"])
    assert bad.exit_code != 0 and "unknown demo stage" in str(bad.exception)


def test_demo_whole_pipeline_tiny(tmp_path) -> None:
    """`usfast demo` end to end (train, export, embed, evaluate) at a size that runs in a test."""
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--n-images", "64", "--n-clips", "2", "--size", "128"]
    args += ["--teacher-steps", "3", "--student-steps", "3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "demo_summary.json").read_text())
    assert list(summary)[-4:] == ["train", "export", "embed", "evaluate"]
    assert (out / "runs" / "student" / "student.safetensors").is_file()
    assert summary["export"]["cosine_min"] > 0.9999
    assert summary["embed"]["index_rows"] == summary["embed"]["matrix_shape"][0] > 0
    assert set(summary["evaluate"]["macro_f1"]) == {"SALT student", "random init"}
    ev = summary["evaluate"]
    assert ev["task"] == "synthetic_lesions" and ev["test_images"] > 0  # the task is named, not "data"
    assert ev["caveat"].startswith("Caveat: ") and f"{ev['test_images']} test images" in ev["caveat"]
    assert ev["caveat"] in (out / "eval" / "report.md").read_text() and ev["caveat"] in result.output
    assert (out / "eval" / "report.md").is_file()
