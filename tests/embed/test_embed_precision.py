"""Precision: the auto rule per ISA / GPU, the fp32 parity gate (and its refusal of a broken path),
determinism of --backend auto (nothing timed, nothing written), int8 and OpenVINO backends."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from usjepa_fast import hardware
from usjepa_fast.embed import EmbedOptions, embed_folder, open_backend
from usjepa_fast.embed.backends import TorchBackend
from usjepa_fast.embed.openvino_backend import openvino_available
from usjepa_fast.embed.precision import (
    GatedBackend,
    PrecisionParityError,
    resolve_precision,
    simulated_gate_batch,
)
from usjepa_fast.errors import UsfastError
from usjepa_fast.hardware import CudaCaps, detect_cpu_caps

TINY = "vit_tiny_patch16_224"  # width 192: CPU auto keeps fp32 (below MIN_CPU_BF16_WIDTH)
SMALL = "vit_small_patch16_224"  # width 384: CPU auto picks bf16 where it is native
SIZE = 32
AVX2 = detect_cpu_caps("flags: sse2 avx f16c fma avx2\n", torch_caps={})
ZEN4 = detect_cpu_caps("flags: avx2 fma avx512f avx512bw avx512_vnni avx512_bf16\n", torch_caps={})
SPR = detect_cpu_caps(
    "flags: avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 avx512_fp16 amx_tile amx_bf16 amx_int8\n", torch_caps={}
)


def _gpu(major: int) -> CudaCaps:
    return CudaCaps(0, f"sm{major}0 GPU", (major, 0), 16.0, major >= 8, major >= 7, major >= 8)


@pytest.fixture
def as_cpu(monkeypatch):
    """Pretend this process runs on another CPU (the detection itself is tested in tests/test_hardware.py),
    without OpenVINO unless ``openvino=True`` (auto's runtime for bf16 when it is installed)."""
    from usjepa_fast.embed import openvino_backend

    def use(caps, openvino: bool = False):
        monkeypatch.setattr(hardware, "cpu_caps", lambda: caps)
        if not openvino:
            monkeypatch.setattr(openvino_backend, "openvino_available", lambda: False)

    return use


# ---------------------------------------------------------------------------------------------- the rule


def test_auto_rule_per_cpu_and_runtime() -> None:
    assert resolve_precision("auto", "torch", "cpu", AVX2).precision == "fp32"  # AVX2 only: stays fp32
    assert resolve_precision("auto", "openvino", "cpu", AVX2).precision == "fp32"
    for caps in (ZEN4, SPR):
        choice = resolve_precision("auto", "torch", "cpu", caps)
        assert choice.precision == "bf16" and choice.native and caps.isa in choice.reason
        assert resolve_precision("auto", "openvino", "cpu", caps).precision == "bf16"
        assert resolve_precision("auto", "onnx", "cpu", caps).precision == "fp32"  # ORT: no x86 bf16 kernels
    assert resolve_precision(None, "torch", "cpu", SPR).precision == "bf16"  # None means auto
    narrow = resolve_precision("auto", "torch", "cpu", SPR, width=192)
    assert narrow.precision == "fp32" and "width-192" in narrow.reason  # casts would cost more than they save
    assert resolve_precision("auto", "torch", "cpu", SPR, width=384).precision == "bf16"
    assert resolve_precision("bf16", "torch", "cpu", ZEN4, width=96).precision == "bf16"  # explicit wins
    assert resolve_precision("int8", "onnx", "cpu", ZEN4).native
    assert not resolve_precision("int8", "onnx", "cpu", AVX2).native
    assert not resolve_precision("bf16", "torch", "cpu", AVX2).native  # allowed, but emulated
    assert (
        resolve_precision("fp16", "torch", "cpu", SPR).native
        and not resolve_precision("fp16", "torch", "cpu", ZEN4).native
    )


def test_auto_rule_per_gpu() -> None:
    assert resolve_precision("auto", "torch", "cuda", _gpu(8)).precision == "bf16"
    assert resolve_precision("auto", "torch", "cuda", _gpu(7)).precision == "fp16"
    assert resolve_precision("auto", "torch", "cuda", _gpu(6)).precision == "fp32"
    assert resolve_precision("auto", "tensorrt", "cuda", _gpu(8)).precision == "fp16"
    assert resolve_precision("auto", "onnx", "cuda", _gpu(8)).precision == "fp16"


@pytest.mark.parametrize(
    ("precision", "runtime", "device", "needle"),
    [
        ("bf16", "onnx", "cpu", "no bf16 CPU kernels"),
        ("int8", "torch", "cpu", "use --backend onnx"),
        ("int8", "torch", "cuda", "CPU path"),
        ("bf16", "tensorrt", "cuda", "fp32 or fp16"),
        ("fp8", "torch", "cpu", "unknown precision"),
        ("auto", "openvino", "cuda", "runs on the CPU"),
        ("auto", "tensorrt", "cpu", "CUDA devices only"),
    ],
)
def test_impossible_combinations_are_one_line_errors(precision, runtime, device, needle) -> None:
    caps = _gpu(8) if device == "cuda" else ZEN4
    with pytest.raises(UsfastError, match=needle) as err:
        resolve_precision(precision, runtime, device, caps)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------- --backend auto


def test_auto_on_avx2_stays_fp32_deterministic_and_writes_nothing(as_cpu, tmp_path, monkeypatch, caplog) -> None:
    as_cpu(AVX2)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("USFAST_CACHE_DIR", str(tmp_path / "cache"))
    caplog.set_level(logging.INFO, logger="usfast")
    names = {open_backend(TINY, "auto", "cpu", img_size=SIZE, threads=1).name for _ in range(2)}
    assert names == {"torch-eager-cpu-fp32"}
    assert not (tmp_path / "home").exists() and not (tmp_path / "cache").exists()
    assert "img/s" not in caplog.text  # nothing was timed


def test_auto_on_a_bf16_cpu_picks_bf16_and_reports_the_gate(as_cpu, caplog) -> None:
    as_cpu(ZEN4)
    caplog.set_level(logging.INFO, logger="usfast")
    assert open_backend(TINY, "auto", "cpu", img_size=SIZE, threads=1).name == "torch-eager-cpu-fp32"
    b = open_backend(SMALL, "auto", "cpu", img_size=SIZE, threads=1)
    assert b.name == "torch-eager-cpu-bf16" and b.precision == "bf16" and b.gate is None
    assert "precision auto: bf16 picked (avx512_bf16" in caplog.text
    x = simulated_gate_batch(b.info, n=3, seed=7)
    out = b(x)
    assert out.shape == (3, 384) and out.dtype == torch.float32
    assert b.gate.passed and b.gate.cosine_min >= 0.999 and b.gate.batch == 3
    assert "on the first batch (3 frames)" in caplog.text
    ref = TorchBackend(b.encoder, "cpu", "fp32")(x)
    assert torch.nn.functional.cosine_similarity(out, ref).min() >= 0.999
    assert torch.equal(b(x), out)  # after the gate: the candidate alone, deterministic


def _corrupt_bf16(monkeypatch) -> None:
    """A deliberately broken reduced-precision path: the bf16 torch backend returns scrambled rows."""
    real = TorchBackend.__call__

    def broken(self, x):
        out = real(self, x)
        if self.precision == "bf16":
            out = out[:, torch.randperm(out.shape[1], generator=torch.Generator().manual_seed(0))]
        return out

    monkeypatch.setattr(TorchBackend, "__call__", broken)


def test_gate_refuses_a_broken_explicit_precision(monkeypatch) -> None:
    _corrupt_bf16(monkeypatch)
    b = open_backend(TINY, "torch", "cpu", img_size=SIZE, threads=1, precision="bf16")
    with pytest.raises(PrecisionParityError, match=r"cosine .* < 0.999 .*use --precision fp32") as err:
        b(torch.randn(4, 3, SIZE, SIZE))
    assert "\n" not in str(err.value) and b.gate is not None and not b.gate.passed


def test_auto_falls_back_to_fp32_when_its_pick_fails_the_open_time_check(as_cpu, monkeypatch, caplog) -> None:
    as_cpu(SPR)
    _corrupt_bf16(monkeypatch)
    b = open_backend(SMALL, "auto", "cpu", img_size=SIZE, threads=1)
    assert b.name == "torch-eager-cpu-fp32"
    assert "using fp32" in caplog.text and "< 0.999" in caplog.text


def test_embed_refuses_before_writing_any_feature(clips_copy, tmp_path, monkeypatch) -> None:
    _corrupt_bf16(monkeypatch)
    b = open_backend(TINY, "torch", "cpu", img_size=SIZE, threads=1, precision="bf16")
    out = tmp_path / "out"
    with pytest.raises(PrecisionParityError):
        embed_folder(clips_copy, out, b, options=EmbedOptions(batch_size=4, progress=False, part_rows=1))
    assert not list(out.rglob("*.npy")) and not (out / "index.csv").exists()


def test_gated_backend_with_any_reference() -> None:
    class Fake:
        info, name, device, precision = None, "fake-cpu-int8", torch.device("cpu"), "int8"

        def __init__(self, noise: float) -> None:
            self.noise = noise

        def __call__(self, x):
            return x.flatten(1) + self.noise * torch.randn_like(x.flatten(1))

    x = torch.randn(5, 3, 4, 4)
    ok = GatedBackend(Fake(1e-3), lambda t: t.flatten(1), "int8")
    assert torch.allclose(ok(x), x.flatten(1), atol=1e-2) and ok.gate.passed
    bad = GatedBackend(Fake(10.0), lambda t: t.flatten(1), "int8")
    with pytest.raises(PrecisionParityError):
        bad(x)
    nan = GatedBackend(Fake(float("nan")), lambda t: t.flatten(1), "int8")
    with pytest.raises(PrecisionParityError, match="-1.000000"):
        nan(x)


@pytest.fixture
def clips_copy(synth_root, tmp_path) -> Path:
    dst = tmp_path / "clips"
    shutil.copytree(synth_root / "clips", dst)
    return dst


# ---------------------------------------------------------------------------------------------- int8, OpenVINO


def test_openvino_missing_is_a_one_line_error_before_any_work(monkeypatch, tmp_path) -> None:
    from usjepa_fast.embed import openvino_backend
    from usjepa_fast.errors import BackendUnavailableError

    monkeypatch.setattr(openvino_backend, "openvino_available", lambda: False)
    with pytest.raises(BackendUnavailableError, match=r"usjepa-fast\[openvino\]"):
        open_backend(TINY, "openvino", "cpu", img_size=SIZE, cache_dir=tmp_path)
    assert not list(tmp_path.iterdir())  # nothing exported


def test_int8_needs_calibration_and_the_onnx_runtime() -> None:
    with pytest.raises(UsfastError, match="--calibration"):
        open_backend(TINY, "auto", "cpu", img_size=SIZE, precision="int8")
    with pytest.raises(UsfastError, match="ONNX Runtime"):
        open_backend(TINY, "torch", "cpu", img_size=SIZE, precision="int8", calibration=torch.zeros(8, 3, SIZE, SIZE))


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory) -> Path:
    from usjepa_fast.export import export_onnx

    out = tmp_path_factory.mktemp("fp32") / "tiny.onnx"
    return export_onnx(TINY, out, img_size=SIZE, exporter="torchscript").onnx_path


@pytest.fixture(scope="module")
def calib(synth_root, fp32_onnx) -> torch.Tensor:
    from usjepa_fast.embed.calibration import calibration_pixels
    from usjepa_fast.export import read_export_sidecar

    info, _ = read_export_sidecar(fp32_onnx.with_suffix(".json"))
    return calibration_pixels(synth_root / "ultrabench", info, frames=40)


def test_calibration_frames_look_like_embed_inputs(synth_root, calib, fp32_onnx) -> None:
    from usjepa_fast.embed.calibration import calibration_pixels
    from usjepa_fast.export import read_export_sidecar

    assert calib.shape == (40, 3, SIZE, SIZE) and calib.dtype == torch.float32 and torch.isfinite(calib).all()
    assert calib.std() > 0.1  # real, windowed frames, not constants
    info, _ = read_export_sidecar(fp32_onnx.with_suffix(".json"))
    clips = calibration_pixels(synth_root / "clips", info, frames=12)
    assert clips.shape == (12, 3, SIZE, SIZE)  # 4 frames spread over each of the 3 clips
    with pytest.raises(UsfastError, match="no images or videos"):
        calibration_pixels(synth_root / "clips" / "clips.json", info)


@pytest.fixture(scope="module")
def int8_graph(fp32_onnx, calib, tmp_path_factory):
    from usjepa_fast.export.quantize import quantize_onnx

    # a random-init ViT-Ti quantizes anywhere from cosine 0.8 to 0.9998 depending on the CPU's int8
    # kernels: the plumbing is tested here, the figure of a real-sized model in benchmarks/embed_throughput.py
    return quantize_onnx(fp32_onnx, tmp_path_factory.mktemp("int8") / "int8.onnx", calib, min_cosine=0.5)


def test_int8_quantization_is_gated_and_recorded(fp32_onnx, calib, int8_graph, tmp_path) -> None:
    import json

    from usjepa_fast.export import ExportParityError
    from usjepa_fast.export.quantize import quantize_onnx

    refused = tmp_path / "refused.onnx"
    with pytest.raises(ExportParityError, match="held-out frames: cosine"):
        quantize_onnx(fp32_onnx, refused, calib, min_cosine=0.9999999)
    assert not list(tmp_path.iterdir())  # nothing written, no temp files left
    side = json.loads(int8_graph.sidecar_path.read_text())
    assert side["export"]["precision"] == "int8" and side["export"]["quantization"]["calibration_frames"] == 30
    assert side["export"]["parity"]["cosine_min"] == pytest.approx(int8_graph.parity.cosine_min)
    b = open_backend(int8_graph.onnx_path, "auto", "cpu", threads=1)
    assert b.name == "onnx-cpu-int8" and b(calib[:4]).shape == (4, 192)


def test_int8_backend_from_an_fp32_export_is_cached_and_gated(fp32_onnx, calib, int8_graph, tmp_path, monkeypatch):
    from usjepa_fast.export import onnx_export, quantize

    calls = []

    def prequantized(src, target, pixels, **kw):  # the fixture's graph stands in for a fresh quantization
        calls.append(target)
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(int8_graph.onnx_path, target)
        shutil.copy(int8_graph.sidecar_path, Path(target).with_suffix(".json"))

    monkeypatch.setattr(quantize, "quantize_onnx", prequantized)
    # how close int8 gets depends on the CPU's int8 kernels (0.8 to 0.9998 on this tiny random ViT):
    # a threshold no int8 graph reaches makes the refusal independent of the machine
    monkeypatch.setattr(onnx_export, "REDUCED_PRECISION_MIN_COSINE", 0.99999999)
    kw = dict(precision="int8", calibration=calib, threads=1, cache_dir=tmp_path)
    b = open_backend(fp32_onnx, "onnx", "cpu", **kw)
    assert b.name == "onnx-cpu-int8" and isinstance(b, GatedBackend) and b.gate is None
    # the quantizer accepted it (min_cosine 0.5, lenient on purpose); the first-batch gate still refuses
    with pytest.raises(PrecisionParityError, match="precision int8 on onnx-cpu-int8: cosine"):
        b(calib[:4])
    assert b.gate.cosine_min < 0.99999999 and b.gate.min_cosine == 0.99999999
    open_backend(fp32_onnx, "onnx", "cpu", **kw)
    assert len(calls) == 1 and calls[0].parent == tmp_path / "onnx"  # cached by graph + frames, in cache_dir


@pytest.mark.skipif(not openvino_available(), reason="OpenVINO not installed (optional: pip install openvino)")
def test_auto_on_a_bf16_cpu_uses_openvino_when_installed(as_cpu, tmp_path, caplog) -> None:
    from usjepa_fast.embed.backends import auto_runtime

    as_cpu(ZEN4, openvino=True)
    caplog.set_level(logging.INFO, logger="usfast")
    assert auto_runtime("cpu", "auto", 384) == "openvino" and auto_runtime("cpu", "auto", 192) == "torch"
    assert auto_runtime("cpu", "fp32", 384) == "torch" and auto_runtime("cpu", "int8", 384) == "onnx"
    b = open_backend(SMALL, "auto", "cpu", img_size=SIZE, threads=1, exporter="torchscript", cache_dir=tmp_path)
    assert b.name == "openvino-cpu-bf16" and isinstance(b, GatedBackend)
    assert f"cached at {tmp_path}" in caplog.text  # the one folder it writes to, named
    x = simulated_gate_batch(b.info, n=2, seed=3)
    assert b(x).shape == (2, 384) and b.gate.passed


@pytest.mark.skipif(not openvino_available(), reason="OpenVINO not installed (optional: pip install openvino)")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_openvino_backend_matches_fp32(fp32_onnx, calib, precision) -> None:
    b = open_backend(fp32_onnx, "openvino", "cpu", threads=1, precision=precision)
    assert b.name == f"openvino-cpu-{precision}"
    out = b(calib[:5])
    ref = open_backend(fp32_onnx, "onnx", "cpu", threads=1)(calib[:5])
    assert out.shape == ref.shape and torch.nn.functional.cosine_similarity(out, ref).min() >= 0.999
    if precision == "bf16":
        assert b.gate.passed


@pytest.mark.gpu
def test_auto_on_gpu_follows_the_device_caps(tmp_path) -> None:
    caps = hardware.cuda_caps()
    b = open_backend(TINY, "torch", "cuda", img_size=SIZE)
    assert b.precision == ("bf16" if caps.bf16 else "fp16" if caps.fp16 else "fp32")
    x = torch.randn(4, 3, SIZE, SIZE)
    assert b(x).shape == (4, 192)
    if b.precision != "fp32":
        assert b.gate.passed and b.gate.cosine_min >= 0.999
