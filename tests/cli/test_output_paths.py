"""Every command that writes refuses an unwritable output path in one line with exit 2, before any
compute (issue 14): a path under a file stands in for a read-only folder (the tests may run as root)."""

from __future__ import annotations

import sys

import pytest

from usjepa_fast.cli import main as cli_main


def _run(argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["usfast", *argv])
    with pytest.raises(SystemExit) as info:
        cli_main.main()
    return int(info.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["embed", "{src}", "-e", "vit_tiny_patch16_224", "-o", "{bad}"],
        ["train", "pixel_teacher_tiny_cpu", "--out", "{bad}"],
        ["probe", "{src}", "-e", "vit_tiny_patch16_224", "--out", "{bad}"],
        ["robustness", "{src}", "-e", "vit_tiny_patch16_224", "--out", "{bad}"],
        ["compare", "-e", "vit_tiny_patch16_224", "-d", "{src}", "--out", "{bad}"],
        ["synth", "--out", "{bad}"],
        ["masks", "{src}", "--out", "{bad}/preview.png"],
        ["export", "vit_tiny_patch16_224", "--out", "{bad}/model.onnx"],
        ["export", "vit_tiny_patch16_224", "--format", "timm", "--out", "{bad}"],
        ["prepare", "{src}", "-o", "{bad}"],
        ["demo", "--out", "{bad}"],
    ],
    ids=lambda a: "-".join(a[:1] + [x for x in a if x == "timm"]),
)
def test_output_path_error_is_one_line_exit_2(argv, tmp_path, monkeypatch, capsys) -> None:
    src = tmp_path / "src"
    src.mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    bad = a_file / "out"
    args = [x.format(src=src, bad=bad) for x in argv]
    code, err = _run(args, monkeypatch, capsys)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("INFO ", "WARNING "))]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("usfast: error: ") and "is a file, not a folder" in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["export", "vit_tiny_patch16_224", "--precision", "fp64"], "--precision='fp64' is invalid; use fp32 | fp16"),
        (["export", "vit_tiny_patch16_224", "--exporter", "onnxscript"], "--exporter='onnxscript' is invalid"),
        (["export", "vit_tiny_patch16_224", "--opt-batch", "300"], "--opt-batch=300 is invalid; use an integer in"),
        (["probe", "{src}", "-e", "vit_tiny_patch16_224", "--seeds", ""], "seeds"),
        (["robustness", "{src}", "-e", "vit_tiny_patch16_224", "--corruptions", "snow"], "snow"),
    ],
)
def test_bad_option_values_are_one_line_exit_2_before_any_work(argv, words, tmp_path, monkeypatch, capsys) -> None:
    src = tmp_path / "src"
    src.mkdir()
    monkeypatch.chdir(tmp_path)
    code, err = _run([x.format(src=src) for x in argv], monkeypatch, capsys)
    assert code == 2 and err.startswith("usfast: error: ") and words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "model.onnx").exists()
