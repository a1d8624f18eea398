"""``usfast doctor``: what this machine can use (CPU ISA and precisions, CUDA, Triton, DALI, TensorRT, ONNX
Runtime, OpenVINO, PyAV codecs).

The checks are plain functions returning :class:`Check` rows so tests and other tools can call them
without the CLI; only :func:`register` touches typer.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import dataclass

import typer

# Decoders that matter for ultrasound archives (clinical exports, public datasets, screen recordings).
VIDEO_CODECS = ("h264", "hevc", "mpeg4", "mpeg2video", "vp8", "vp9", "av1", "mjpeg", "gif", "rawvideo", "ffv1")

_TRITON_PROBE = """
import torch, triton, triton.language as tl
@triton.jit
def _add(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=m) + tl.load(y_ptr + offs, mask=m), mask=m)
x = torch.arange(10, dtype=torch.float32); y = torch.ones(10); out = torch.empty(10)
_add[(1,)](x, y, out, 10, BLOCK=16)
assert torch.equal(out, x + 1)
print("ok")
"""


@dataclass
class Check:
    name: str
    ok: bool | None  # True usable, False not usable, None informational
    detail: str


def check_python() -> Check:
    from usjepa_fast import __version__

    return Check("usfast", None, f"{__version__} on Python {platform.python_version()} ({platform.platform()})")


def check_torch_cuda() -> list[Check]:
    import torch

    rows = [Check("torch", None, torch.__version__)]
    if not torch.cuda.is_available():
        built = torch.version.cuda or "none"
        rows.append(Check("CUDA", False, f"no CUDA device (torch built for CUDA {built}); everything runs on the CPU"))
        return rows
    from usjepa_fast.hardware import cuda_caps

    for i in range(torch.cuda.device_count()):
        caps = cuda_caps(torch.device("cuda", i))
        rows.append(Check(f"CUDA:{i}", True, caps.summary() if caps is not None else "?"))
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    rows.append(Check("cuDNN", cudnn is not None, str(cudnn)))
    rows.append(Check("bf16", torch.cuda.is_bf16_supported(), "bfloat16 autocast"))
    return rows


def check_triton(run_interpreter: bool = True) -> list[Check]:
    try:
        import triton
    except Exception as exc:  # noqa: BLE001 - any import failure means unusable
        return [
            Check("Triton", False, f"not importable ({exc.__class__.__name__}); fused kernels fall back to PyTorch")
        ]
    import torch

    rows = [
        Check(
            "Triton",
            torch.cuda.is_available(),
            f"{triton.__version__}; " + ("compiles for the CUDA device" if torch.cuda.is_available() else "no GPU"),
        )
    ]
    if run_interpreter:
        # The interpreter is selected when kernels are *defined*, so it must run in a fresh process.
        env = dict(os.environ, TRITON_INTERPRET="1")
        try:
            res = subprocess.run(
                [sys.executable, "-c", _TRITON_PROBE], env=env, capture_output=True, text=True, timeout=120
            )
            ok = res.returncode == 0 and res.stdout.strip().endswith("ok")
            tail = (res.stderr.strip().splitlines() or ["?"])[-1]
            detail = "TRITON_INTERPRET=1 runs kernels on the CPU" if ok else f"interpreter failed: {tail}"
        except subprocess.TimeoutExpired:
            ok, detail = False, "interpreter probe timed out"
        rows.append(Check("Triton interpreter", ok, detail))
    return rows


def check_dali() -> Check:
    try:
        import nvidia.dali as dali
    except Exception as exc:  # noqa: BLE001
        return Check("DALI", False, f"not installed ({exc.__class__.__name__}); pip install 'usjepa-fast[dali]'")
    import torch

    gpu = "GPU pipelines (NVDEC) available" if torch.cuda.is_available() else "CPU pipelines only (VP9/MJPEG decode)"
    return Check("DALI", True, f"{dali.__version__}; {gpu}")


def check_tensorrt() -> Check:
    try:
        import tensorrt
    except Exception as exc:  # noqa: BLE001
        return Check("TensorRT", False, f"not installed ({exc.__class__.__name__}); pip install 'usjepa-fast[gpu]'")
    return Check("TensorRT", True, tensorrt.__version__)


def check_onnxruntime() -> Check:
    try:
        import onnxruntime as ort
    except Exception as exc:  # noqa: BLE001
        return Check("ONNX Runtime", False, f"not importable ({exc.__class__.__name__})")
    import torch

    providers = ort.get_available_providers()
    # GPU providers are compiled into onnxruntime-gpu but only work with a CUDA device present.
    usable = [p for p in providers if p == "CPUExecutionProvider" or torch.cuda.is_available()]
    return Check("ONNX Runtime", True, f"{ort.__version__}; built {providers}; usable here {usable}")


def check_pyav() -> list[Check]:
    try:
        import av
    except Exception as exc:  # noqa: BLE001
        return [Check("PyAV", False, f"not importable ({exc.__class__.__name__}); video decoding unavailable")]
    decoders, encoders = [], []
    for name in VIDEO_CODECS:
        try:
            av.codec.Codec(name, "r")
            decoders.append(name)
        except Exception:  # noqa: BLE001 - codec not in this FFmpeg build
            pass
    for name in ("libx264", "libvpx-vp9", "mjpeg"):
        try:
            av.codec.Codec(name, "w")
            encoders.append(name)
        except Exception:  # noqa: BLE001
            pass
    missing = [c for c in VIDEO_CODECS if c not in decoders]
    rows = [
        Check(
            "PyAV",
            True,
            f"{av.__version__} (FFmpeg libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))})",
        ),
        Check(
            "PyAV decode",
            bool(decoders),
            ", ".join(decoders) + (f"  (missing: {', '.join(missing)})" if missing else ""),
        ),
        Check("PyAV encode", "libx264" in encoders, ", ".join(encoders) + "  (used by usfast synth)"),
    ]
    return rows


def check_cpu() -> list[Check]:
    """The CPU's ISA level and flags, and what they make native (bf16 / int8 / fp16)."""
    from usjepa_fast.hardware import cpu_caps

    caps = cpu_caps()
    rows = [
        Check("CPU", None, f"{caps.model_name}; ISA {caps.isa}; torch kernels {caps.torch_capability}"),
        Check(
            "CPU flags",
            None,
            caps.flags_line()
            + (f"  (sources disagree on: {', '.join(caps.disagreements)})" if caps.disagreements else ""),
        ),
        Check(
            "CPU bf16",
            caps.bf16_native,
            "native (AMX-BF16)"
            if caps.amx_bf16
            else "native (AVX512-BF16)"
            if caps.avx512_bf16
            else "emulated: fp32 is faster",
        ),
        Check(
            "CPU int8",
            caps.int8_native,
            "native ("
            + ", ".join(
                n
                for n, ok in (
                    ("AMX-INT8", caps.amx_int8),
                    ("AVX512-VNNI", caps.avx512_vnni),
                    ("AVX-VNNI", caps.avx_vnni),
                )
                if ok
            )
            + ")"
            if caps.int8_native
            else "no VNNI/AMX: int8 is emulated",
        ),
    ]
    return rows


def check_openvino() -> Check:
    from usjepa_fast.embed.openvino_backend import openvino_version

    version = openvino_version()
    if version is None:
        return Check("OpenVINO", False, "not installed (optional CPU backend); pip install 'usjepa-fast[openvino]'")
    return Check("OpenVINO", True, f"{version}; --backend openvino (CPU, reads the ONNX export)")


def check_auto_precision() -> list[Check]:
    """What ``--precision auto`` resolves to per backend on each device here (the rule, no timing)."""
    import torch

    from usjepa_fast.embed.openvino_backend import openvino_available
    from usjepa_fast.embed.precision import MIN_CPU_BF16_WIDTH, resolve_precision
    from usjepa_fast.errors import UsfastError

    devices = [torch.device("cpu")] + ([torch.device("cuda", 0)] if torch.cuda.is_available() else [])
    rows = []
    for dev in devices:
        parts = []
        for runtime in ("torch", "onnx", "openvino", "tensorrt"):
            if runtime == "openvino" and not openvino_available():
                continue
            try:
                choice = resolve_precision("auto", runtime, dev)
            except UsfastError:
                continue  # the runtime does not run on this device
            parts.append(f"{runtime} {choice.precision}")
        note = f"  (CPU: fp32 for models narrower than {MIN_CPU_BF16_WIDTH})" if dev.type == "cpu" else ""
        rows.append(Check(f"auto precision ({dev.type})", None, "; ".join(parts) + note))
    from usjepa_fast.embed.backends import auto_runtime

    dev = devices[-1]
    wide, narrow = MIN_CPU_BF16_WIDTH * 2, MIN_CPU_BF16_WIDTH // 2
    parts = []
    for label, width in (("ViT-S and wider", wide), (f"narrower than {MIN_CPU_BF16_WIDTH}", narrow)):
        runtime = auto_runtime(dev, "auto", width)
        pick = resolve_precision("auto", runtime, dev, width=width)
        parts.append(f"{label}: {runtime} {pick.precision} ({pick.reason})")
        if dev.type == "cuda":
            break
    rows.append(Check("auto backend", None, "; ".join(parts)))
    return rows


def collect_checks(run_interpreter: bool = True) -> list[Check]:
    """Every check, in display order."""
    rows = [check_python(), *check_cpu(), *check_torch_cuda(), *check_triton(run_interpreter)]
    rows += [check_dali(), check_tensorrt(), check_onnxruntime(), check_openvino(), *check_pyav()]
    rows += check_auto_precision()
    return rows


def format_checks(rows: list[Check]) -> str:
    mark = {True: "ok ", False: "-- ", None: "   "}
    width = max(len(r.name) for r in rows)
    return "\n".join(f"{mark[r.ok]} {r.name:<{width}}  {r.detail}" for r in rows)


def register(app: typer.Typer) -> None:
    @app.command("doctor")
    def doctor(
        quick: bool = typer.Option(False, "--quick", help="Skip the Triton-interpreter probe (a subprocess)."),
    ) -> None:
        """Show what this machine can use: CPU ISA, CUDA, Triton, DALI, TensorRT, ONNX Runtime, OpenVINO, PyAV
        codecs, and the precision `auto` picks per backend.

        \b
        Example:
          usfast doctor
        """
        typer.echo(format_checks(collect_checks(run_interpreter=not quick)))
