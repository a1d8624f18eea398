"""ONNX export with the kept-token input ``keep (batch, tokens)``: dynamic token axis, parity with the
packed PyTorch path, sidecar, refusals, CLI; TensorRT kept-token engine on a GPU."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from usjepa_fast.errors import UsfastError
from usjepa_fast.export import export_onnx, verify_onnx
from usjepa_fast.models.kept_tokens import pad_keep, unpad_keep

TINY = "vit_tiny_patch16_224"
N = 4  # 32 px / patch 16: a 2x2 grid


@pytest.fixture(scope="module")
def encoder():
    from usjepa_fast.models.resolve import resolve_encoder

    return resolve_encoder(TINY, img_size=48, seed=1)  # 3x3 grid


def _rows(rows: list[list[int]], width: int) -> torch.Tensor:
    return torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.int64)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_keep_input_export_runs_any_token_count(encoder, tmp_path, exporter) -> None:
    res = export_onnx(encoder, tmp_path / "k.onnx", keep_input=True, exporter=exporter)
    assert res.parity.cosine_min > 0.9999
    sess = ort.InferenceSession(str(res.onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["pixels", "keep"]
    side = json.loads(res.sidecar_path.read_text())["export"]
    assert side["keep"]["max_tokens"] == 9 and side["keep"]["pad"] == -1 and side["keep"]["dtype"] == "int64"
    for rows, width in [([[0, 4, 8], [1], [2, 3, 5, 6, 7]], 5), ([list(range(9))], 9), ([[7], [3]], 1)]:
        keep = _rows(rows, width)
        x = torch.randn(len(rows), 3, 48, 48)
        got = sess.run(None, {"pixels": x.numpy(), "keep": keep.numpy()})[0]
        with torch.no_grad():
            ref = encoder(x, unpad_keep(keep))  # the packed PyTorch path
        np.testing.assert_allclose(got, ref.numpy(), rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # every patch kept = the dense encoder
        x = torch.randn(2, 3, 48, 48)
        full = np.broadcast_to(np.arange(9), (2, 9)).copy()
        np.testing.assert_allclose(
            sess.run(None, {"pixels": x.numpy(), "keep": full})[0], encoder(x).numpy(), rtol=1e-4, atol=1e-4
        )
    assert verify_onnx(res.onnx_path).cosine_min > 0.9999


def test_keep_input_refusals(encoder, tmp_path) -> None:
    from usjepa_fast.models.resolve import resolve_encoder

    with pytest.raises(UsfastError, match="pooled features only"):
        export_onnx(encoder, tmp_path / "a.onnx", keep_input=True, tokens=True, exporter="torchscript")
    conv = resolve_encoder("resnet10t", img_size=32)
    with pytest.raises(UsfastError, match="no kept-token input for resnet10t") as err:
        export_onnx(conv, tmp_path / "b.onnx", keep_input=True, exporter="torchscript")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "b.onnx").exists()


def test_cli_export_keep_input(tmp_path) -> None:
    from typer.testing import CliRunner

    from usjepa_fast.cli.main import app

    out = tmp_path / "cli.onnx"
    runner = CliRunner()
    args = ["export", TINY, "--img-size", "32", "--out", str(out), "--exporter", "torchscript", "--keep-input"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "cli.json").read_text())["export"]["keep"]["max_tokens"] == N
    res = runner.invoke(app, ["export", str(out), "--check"])
    assert res.exit_code == 0 and "vs PyTorch" in res.output
    res = runner.invoke(app, args[:-1] + ["--keep-input", "--precision", "int8"])
    assert isinstance(res.exception, UsfastError) and "--keep-input" in str(res.exception)


def test_pad_keep_is_the_export_form(encoder) -> None:
    from usjepa_fast.masking import RaggedIndex

    keep = RaggedIndex(torch.tensor([0, 4, 8, 2]), torch.tensor([3, 1]))
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x, pad_keep(keep)), encoder(x, keep), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_tensorrt_kept_token_engine_matches_onnxruntime(encoder, tmp_path) -> None:
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from usjepa_fast.embed import open_backend
    from usjepa_fast.export import build_engine, check_engine
    from usjepa_fast.masking import RaggedIndex

    onnx_path = export_onnx(encoder, tmp_path / "k.onnx", keep_input=True).onnx_path
    engine = build_engine(onnx_path, min_batch=1, opt_batch=4, max_batch=16, workspace_gib=1)
    assert check_engine(engine, onnx_path, batch=5)["cosine_min"] > 0.999
    b = open_backend(engine, "auto", tokens="scan")
    x = torch.randn(2, 3, 48, 48, device="cuda")
    keep = RaggedIndex(torch.tensor([0, 4, 8, 2]), torch.tensor([3, 1]))
    with torch.no_grad():
        ref = encoder.cuda()(x, keep.to("cuda"))
    torch.testing.assert_close(b(x, keep), ref, rtol=1e-3, atol=1e-3)
