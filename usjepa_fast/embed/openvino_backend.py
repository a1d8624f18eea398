"""OpenVINO CPU backend (optional extra: ``pip install openvino``) over a usfast ONNX export.

OpenVINO reads the exported ONNX graph directly and compiles it for the CPU; with
``INFERENCE_PRECISION_HINT=bf16`` it runs matmuls and convolutions in bf16 on AMX-BF16 /
AVX512-BF16 (its own kernels, not oneDNN's through PyTorch) and keeps the graph's float32 inputs and
outputs. Nothing is written to disk (no model cache is configured). Threads: one stream at latency
hint, ``INFERENCE_NUM_THREADS`` = the CPUs we may use, and no core pinning, so the decode threads of
the embed pipeline are not starved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from usjepa_fast.errors import BackendUnavailableError, UsfastError


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means unusable
        return False
    return True


def openvino_version() -> str | None:
    try:
        import openvino

        return str(openvino.__version__).split("-")[0]
    except Exception:  # noqa: BLE001
        return None


class OpenVinoBackend:
    """Callable ``(B, 3, S, S) float32 -> (B, D) float32`` over an ONNX export, on the CPU."""

    def __init__(self, onnx_path: str | Path, precision: str = "fp32", threads: int | None = None) -> None:
        if not openvino_available():
            raise BackendUnavailableError(
                "--backend openvino needs OpenVINO; pip install 'usjepa-fast[openvino]' (CPU only)"
            )
        import openvino as ov

        from usjepa_fast.embed.backends import available_cpus
        from usjepa_fast.export.onnx_export import read_export_sidecar, sidecar_path_for

        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise UsfastError(f"ONNX file {onnx_path} does not exist; export one with `usfast export`")
        self.info, self.export = read_export_sidecar(sidecar_path_for(onnx_path))
        if self.export.get("precision", "fp32") != "fp32":
            raise UsfastError(
                f"{onnx_path.name} is a {self.export.get('precision')} export; OpenVINO takes the fp32 export "
                "and lowers precision itself (--precision bf16)"
            )
        if precision not in ("fp32", "bf16", "fp16"):
            raise UsfastError(f"OpenVINO precision {precision!r}; use fp32, bf16 or fp16")
        self.device = torch.device("cpu")
        self.precision = precision
        config = {
            "INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}[precision],
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": int(threads or available_cpus()),
            "ENABLE_CPU_PINNING": False,
        }
        try:
            core = ov.Core()
            self.compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", config)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises its own RuntimeErrors
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise UsfastError(f"OpenVINO cannot compile {onnx_path} ({first[:300]}); use --backend onnx") from None
        self.request = self.compiled.create_infer_request()
        self.name = f"openvino-cpu-{precision}"
        self.source = onnx_path
        from usjepa_fast.embed.backends import export_keep_input

        self.keep_input, self.keep_unsupported = export_keep_input(self.export, Path(onnx_path))

    def __call__(self, x: torch.Tensor, keep: Any = None) -> torch.Tensor:
        from usjepa_fast.embed.backends import all_keep, padded_keep

        if keep is not None and not self.keep_input:
            raise UsfastError(f"kept tokens (--tokens scan): {self.keep_unsupported}")
        x = x.detach().to("cpu", torch.float32).contiguous()
        feeds: dict[Any, np.ndarray] = {0: x.numpy()}
        if self.keep_input:  # a dynamic token axis: OpenVINO reshapes per call
            feeds[1] = all_keep(self.info, x.shape[0]) if keep is None else padded_keep(keep)
        out = self.request.infer(feeds)
        # the request reuses its output buffer on the next call: copy before handing it out
        return torch.from_numpy(np.array(out[0], dtype=np.float32, copy=True))
