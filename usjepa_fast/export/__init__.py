"""Deployable encoders: ONNX (verified in ONNX Runtime), TensorRT engines, and their JSON sidecars.

* :func:`export_onnx` - any encoder usfast loads -> ``model.onnx`` + ``model.json`` (refuses to write
  when ONNX Runtime disagrees with PyTorch beyond the stated tolerance).
* :func:`build_engine` / :func:`check_engine` - TensorRT 10/11 engine from that ONNX, and its
  comparison against ONNX Runtime (needs ``tensorrt`` and a CUDA GPU).
"""

from usjepa_fast.export.onnx_export import (
    DEFAULT_TOLERANCE,
    ExportParityError,
    ExportResult,
    ParityReport,
    export_onnx,
    read_export_sidecar,
    sidecar_path_for,
    verify_onnx,
)
from usjepa_fast.export.tensorrt import build_engine, check_engine, tensorrt_available

__all__ = [
    "DEFAULT_TOLERANCE",
    "ExportParityError",
    "ExportResult",
    "ParityReport",
    "build_engine",
    "check_engine",
    "export_onnx",
    "read_export_sidecar",
    "sidecar_path_for",
    "tensorrt_available",
    "verify_onnx",
]
