"""`usfast export --precision int8 --calibration DIR`: calibrated on the user's frames, refused in one
line (nothing written) when the int8 graph misses the parity gate; flag validation."""

from __future__ import annotations

from typer.testing import CliRunner

from usjepa_fast.cli.main import app
from usjepa_fast.errors import UsfastError
from usjepa_fast.export import ExportParityError

runner = CliRunner()
TINY = ["vit_tiny_patch16_224", "--img-size", "32", "--exporter", "torchscript"]


def test_int8_export_refused_by_the_gate_writes_nothing(synth_root, tmp_path, monkeypatch) -> None:
    from usjepa_fast.export import onnx_export

    # int8 fidelity depends on the CPU's int8 kernels (cosine 0.8 to 0.9998 for this tiny random ViT):
    # a threshold no int8 graph reaches makes the refusal the same on every machine
    monkeypatch.setattr(onnx_export, "REDUCED_PRECISION_MIN_COSINE", 0.99999999)
    out = tmp_path / "m" / "int8.onnx"
    args = ["export", *TINY, "--out", str(out), "--precision", "int8"]
    args += ["--calibration", str(synth_root / "ultrabench"), "--calibration-frames", "24"]
    res = runner.invoke(app, args)
    # (CliRunner calls the app directly; the console entry point turns UsfastError into exit 2)
    assert isinstance(res.exception, ExportParityError), res.output
    msg = str(res.exception)
    assert msg.startswith("int8 (static) graph of int8-fp32.onnx") and "cosine" in msg and "\n" not in msg
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert not [p for p in out.parent.iterdir()]  # the temporary fp32 export is gone too


def test_int8_flags_are_validated(tmp_path) -> None:
    out = ["--out", str(tmp_path / "a.onnx")]
    for extra, needle in (
        (["--precision", "int8"], "needs --calibration"),
        (["--calibration", str(tmp_path)], "--calibration is for --precision int8"),
        (["--precision", "auto"], "one precision"),
    ):
        res = runner.invoke(app, ["export", *TINY, *out, *extra])
        assert isinstance(res.exception, UsfastError) and needle in str(res.exception), res.output
    assert not list(tmp_path.iterdir())
