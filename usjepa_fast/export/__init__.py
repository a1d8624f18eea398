"""Deployable encoders: ONNX (verified in ONNX Runtime), TensorRT engines, and their JSON sidecars.

* :func:`export_onnx` - any encoder usfast loads -> ``model.onnx`` + ``model.json`` (refuses to write
  when ONNX Runtime disagrees with PyTorch beyond the stated tolerance).
* :func:`export_timm` - any encoder whose pooling timm reproduces -> a timm / Hugging Face folder
  (``model.safetensors`` + ``config.json``) that ``timm.create_model("local-dir:DIR", pretrained=True)``
  loads without usfast (checked before it is written).
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
from usjepa_fast.export.timm_format import TimmExportResult, export_timm

__all__ = [
    "DEFAULT_TOLERANCE",
    "ExportParityError",
    "ExportResult",
    "ParityReport",
    "TimmExportResult",
    "build_engine",
    "check_engine",
    "export_onnx",
    "export_timm",
    "read_export_sidecar",
    "sidecar_path_for",
    "tensorrt_available",
    "verify_onnx",
]
