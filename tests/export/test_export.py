"""ONNX export: parity with PyTorch in ONNX Runtime, dynamic batch, sidecar, refusal, fp16, CLI;
TensorRT: clear message without it, engine-vs-ORT check on a GPU."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from usjepa_fast.errors import BackendUnavailableError, UsfastError
from usjepa_fast.export import ExportParityError, export_onnx, read_export_sidecar, verify_onnx
from usjepa_fast.export.tensorrt import tensorrt_available

TINY = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def encoder():
    from usjepa_fast.models.resolve import resolve_encoder

    return resolve_encoder(TINY, img_size=32)


def _ort(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_onnx_parity_dynamic_batch_tokens_and_sidecar(encoder, tmp_path) -> None:
    res = export_onnx(encoder, tmp_path / "m.onnx", tokens=True, exporter="torchscript")
    assert res.parity.rel_err < 1e-4 and res.parity.cosine_min > 0.99999
    sess = _ort(res.onnx_path)
    assert [o.name for o in sess.get_outputs()] == ["pooled", "tokens"]
    for batch in (1, 7):  # neither is the traced batch size (2)
        x = torch.randn(batch, 3, 32, 32)
        pooled, tokens = sess.run(None, {"pixels": x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(pooled, encoder(x).numpy(), rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(tokens, encoder.forward_tokens(x).numpy(), rtol=1e-4, atol=1e-4)
    side = json.loads(res.sidecar_path.read_text())
    assert res.sidecar_path.name == "m.json"
    assert side["input_size"] == 32 and side["in_chans"] == 3 and side["pool"] == "mean" and side["width"] == 192
    assert len(side["mean"]) == 3 and len(side["std"]) == 3
    assert side["source_hash"] == f"random-init:{TINY}:0"
    assert side["export"]["precision"] == "fp32" and side["export"]["outputs"] == ["pooled", "tokens"]
    assert side["export"]["parity"]["tolerance"]["rel_err"] == 1e-4
    info, export = read_export_sidecar(res.sidecar_path)
    assert info == encoder.info and export["kind"] == "onnx"
    # the recorded source rebuilds the same encoder, so re-verification needs only the files
    assert verify_onnx(res.onnx_path).cosine_min > 0.99999


def test_dynamo_fp16_export(encoder, tmp_path) -> None:
    res = export_onnx(encoder, tmp_path / "h.onnx", precision="fp16", exporter="dynamo")
    sess = _ort(res.onnx_path)
    assert sess.get_inputs()[0].type == "tensor(float)" and sess.get_outputs()[0].type == "tensor(float)"
    import onnx

    model = onnx.load(str(res.onnx_path))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)  # fp16 weights
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        ref = encoder(x)
    got = torch.from_numpy(sess.run(None, {"pixels": x.numpy()})[0])
    assert torch.nn.functional.cosine_similarity(got, ref).min() > 0.999
    assert res.exporter == "dynamo" and json.loads(res.sidecar_path.read_text())["export"]["precision"] == "fp16"


def test_export_refuses_to_write_beyond_tolerance(encoder, tmp_path) -> None:
    target = tmp_path / "bad.onnx"
    # fp16 rounding (~1e-3) exceeds a 1e-9 relative tolerance: nothing may be written
    with pytest.raises(ExportParityError, match="beyond tolerance") as exc:
        export_onnx(encoder, target, precision="fp16", exporter="torchscript", tolerance=(1e-9, 0.0))
    assert len(str(exc.value).splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_export_user_errors(tmp_path) -> None:
    with pytest.raises(UsfastError, match=r"\.onnx"):
        export_onnx(TINY, tmp_path / "m.bin")
    with pytest.raises(UsfastError, match="neither an existing file nor a timm model"):
        export_onnx("no_such_model_xyz", tmp_path / "m.onnx")
    with pytest.raises(UsfastError, match="sidecar"):
        read_export_sidecar(tmp_path / "missing.json")
    (tmp_path / "student.safetensors").write_bytes(b"")
    with pytest.raises(UsfastError, match="overwrite"):
        export_onnx(TINY, tmp_path / "student.onnx")


def test_onnx_backend_runs_an_export(encoder, tmp_path) -> None:
    from usjepa_fast.embed import open_backend

    path = export_onnx(encoder, tmp_path / "m.onnx", exporter="torchscript").onnx_path
    b = open_backend(path, "auto", "cpu", threads=1, cache_dir=tmp_path / "cache")
    assert b.name == "onnx-cpu-fp32" and b.info.width == 192
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(b(x), encoder(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(UsfastError, match="ONNX file"):
        open_backend(path, "torch", "cpu")


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is usable here")
def test_tensorrt_missing_gives_a_clear_message(tmp_path) -> None:
    from usjepa_fast.export import build_engine

    with pytest.raises(BackendUnavailableError, match="TensorRT|CUDA"):
        build_engine(tmp_path / "m.onnx")
    from usjepa_fast.embed import open_backend

    with pytest.raises(BackendUnavailableError, match="TensorRT"):
        open_backend(TINY, "tensorrt", "cpu")


def test_cli_export_and_check(tmp_path) -> None:
    from typer.testing import CliRunner

    from usjepa_fast.cli.main import app

    out = tmp_path / "cli.onnx"
    runner = CliRunner()
    res = runner.invoke(app, ["export", TINY, "--img-size", "32", "--out", str(out), "--exporter", "torchscript"])
    assert res.exit_code == 0, res.output
    assert out.is_file() and (tmp_path / "cli.json").is_file() and "cosine" in res.output
    res = runner.invoke(app, ["export", str(out), "--check"])
    assert res.exit_code == 0 and "vs PyTorch" in res.output


@pytest.mark.gpu
def test_tensorrt_engine_matches_onnxruntime(encoder, tmp_path) -> None:
    pytest.importorskip("tensorrt")
    from usjepa_fast.embed import open_backend
    from usjepa_fast.export import build_engine, check_engine

    for precision in ("fp32", "fp16"):
        onnx_path = export_onnx(encoder, tmp_path / f"{precision}.onnx", precision=precision).onnx_path
        engine = build_engine(onnx_path, min_batch=1, opt_batch=4, max_batch=16, workspace_gib=1)
        assert (tmp_path / "timing.cache").is_file()
        figures = check_engine(engine, onnx_path, batch=5)
        assert figures["cosine_min"] > 0.999
        b = open_backend(engine, "auto")
        assert b.name == f"tensorrt-{precision}"
        assert b(torch.randn(3, 3, 32, 32, device="cuda")).shape == (3, 192)


def test_export_student_and_teacher_checkpoints(encoder, tmp_path) -> None:
    from usjepa_fast.models.checkpoints import file_sha256
    from usjepa_fast.models.frozen import save_export_ready

    student = save_export_ready(encoder.model, encoder.info, tmp_path / "run" / "student.safetensors")
    res = export_onnx(student, tmp_path / "exp" / "student.onnx", exporter="torchscript")
    assert res.info.source_hash == file_sha256(student) and res.info.width == 192
    teacher = tmp_path / "teacher.pt"
    torch.save({"model": encoder.model.state_dict()}, teacher)
    res_t = export_onnx(teacher, tmp_path / "exp" / "teacher.onnx", arch=TINY, img_size=32, exporter="torchscript")
    assert res_t.info.source_hash == file_sha256(teacher) and res_t.info.timm_name == TINY
    x = torch.randn(2, 3, 32, 32).numpy()
    a = _ort(res.onnx_path).run(None, {"pixels": x})[0]
    b = _ort(res_t.onnx_path).run(None, {"pixels": x})[0]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)  # same weights, two checkpoint formats


def test_a_write_failure_is_a_path_error_not_an_exporter_hint(encoder, tmp_path, monkeypatch) -> None:
    """Issue 14: an I/O error while writing the graph names the path and never suggests --exporter;
    a failing cleanup does not replace it."""
    from pathlib import Path

    from usjepa_fast.errors import OutputPathError
    from usjepa_fast.export import onnx_export

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx_export, "_run_exporter", no_space)
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: (_ for _ in ()).throw(PermissionError(13, "x")))
    with pytest.raises(OutputPathError, match="No space left on device") as info:
        export_onnx(encoder, tmp_path / "m.onnx", exporter="torchscript")
    assert "--exporter" not in str(info.value) and "m.onnx" in str(info.value)
