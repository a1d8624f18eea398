"""int8 quantization of a usfast fp32 ONNX export, calibrated on the user's frames, gated by parity.

ONNX Runtime runs int8 matmuls on VNNI (AVX512-VNNI / AVX-VNNI) and AMX-INT8; without them int8 is
emulated. Two methods (``onnxruntime.quantization``):

* ``static`` (default): QDQ graph, per-channel int8 weights, uint8 activations whose ranges are
  calibrated (MinMax) on real frames. Only MatMul/Gemm/Conv are quantized: LayerNorm, softmax and
  GELU stay fp32, which is where ViT activations have their outliers.
* ``dynamic``: int8 weights, activation scales computed per batch at run time (no calibration
  statistics, but measured here it drifts further from fp32: cosine ~0.998 on a ViT-S).

The frames are split: ``1 - holdout`` calibrate, the held-out rest (real frames the calibration never
saw) check the int8 graph against the fp32 graph; below ``min_cosine`` nothing is written and
:class:`ExportParityError` gives the figure. The sidecar keeps the encoder description with export
precision ``int8`` and a ``quantization`` block (method, frames, parity).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from usjepa_fast.errors import UsfastError
from usjepa_fast.export import onnx_export
from usjepa_fast.export.onnx_export import (
    ExportParityError,
    ParityReport,
    _ort_session,
    read_export_sidecar,
    sidecar_path_for,
    write_export_sidecar,
)

log = logging.getLogger("usfast")

METHODS = ("static", "dynamic")


@dataclass
class QuantizeResult:
    onnx_path: Path
    sidecar_path: Path
    parity: ParityReport  # int8 graph vs the fp32 graph on the held-out frames
    method: str
    calibration_frames: int
    holdout_frames: int
    seconds: float


def calibration_key(pixels: torch.Tensor | np.ndarray) -> str:
    """Content hash of a calibration tensor (part of the int8 graph's cache key)."""
    arr = np.ascontiguousarray(np.asarray(pixels, dtype=np.float32))
    h = hashlib.sha256(str(arr.shape).encode())
    h.update(arr.tobytes())
    return h.hexdigest()[:16]


class _Reader:
    """onnxruntime CalibrationDataReader over ``(N, 3, S, S)`` frames in small batches."""

    def __init__(self, pixels: np.ndarray, batch: int = 8) -> None:
        self._batches = [pixels[i : i + batch] for i in range(0, len(pixels), batch)]

    def get_next(self) -> dict[str, np.ndarray] | None:
        return {"pixels": self._batches.pop(0)} if self._batches else None

    def rewind(self) -> None:  # pragma: no cover - only some calibrators call it
        pass


def _parity(ref_sess, got_sess, x: np.ndarray) -> ParityReport:
    ref = np.concatenate([ref_sess.run(None, {"pixels": x[i : i + 16]})[0] for i in range(0, len(x), 16)])
    got = np.concatenate([got_sess.run(None, {"pixels": x[i : i + 16]})[0] for i in range(0, len(x), 16)])
    r, g = torch.from_numpy(ref.reshape(len(x), -1)), torch.from_numpy(got.reshape(len(x), -1))
    max_abs = float((g - r).abs().max())
    cos = float(torch.nn.functional.cosine_similarity(g, r, dim=1).min()) if torch.isfinite(g).all() else -1.0
    rel = max_abs / max(float(r.abs().max()), 1e-12)
    return ParityReport(max_abs, rel if np.isfinite(max_abs) else float("inf"), cos, len(x))


def quantize_onnx(
    onnx_path: str | Path,
    out_path: str | Path,
    calibration: torch.Tensor | np.ndarray,
    *,
    method: str = "static",
    holdout: float = 0.25,
    min_cosine: float | None = None,
    per_channel: bool = True,
    seed: int = 0,
) -> QuantizeResult:
    """Quantize the fp32 export ``onnx_path`` to int8 at ``out_path`` (+ sidecar); see the module doc.

    ``calibration``: ``(N, 3, S, S)`` float32 pixels preprocessed like embed's (see
    :func:`usjepa_fast.embed.calibration.calibration_pixels`), N >= 8; a few hundred frames of the
    data that will be embedded. ``min_cosine``: default
    :data:`usjepa_fast.export.onnx_export.REDUCED_PRECISION_MIN_COSINE`.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    t0 = time.perf_counter()
    if min_cosine is None:
        min_cosine = onnx_export.REDUCED_PRECISION_MIN_COSINE
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if method not in METHODS:
        raise UsfastError(f"unknown quantization method {method!r}; use static or dynamic")
    if out_path.suffix != ".onnx":
        raise UsfastError(f"int8 target {out_path} must end in .onnx")
    info, export = read_export_sidecar(sidecar_path_for(onnx_path))
    if export.get("precision", "fp32") != "fp32":
        raise UsfastError(f"{onnx_path.name} is a {export.get('precision')} export; int8 starts from the fp32 export")
    x = np.ascontiguousarray(np.asarray(calibration, dtype=np.float32))
    s = info.input_size
    if x.ndim != 4 or x.shape[1:] != (info.in_chans, s, s):
        raise UsfastError(f"calibration frames have shape {tuple(x.shape)}; expected (N, {info.in_chans}, {s}, {s})")
    if not 0.0 < holdout < 1.0 or len(x) < 8:
        raise UsfastError(f"int8 calibration needs >= 8 frames and 0 < holdout < 1 (got {len(x)}, {holdout})")
    order = np.random.default_rng(seed).permutation(len(x))
    n_hold = max(2, int(round(len(x) * holdout)))
    calib, check = x[order[n_hold:]], x[order[:n_hold]]

    out_path.parent.mkdir(parents=True, exist_ok=True)
    for name in ("onnxruntime.quantization", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)  # the quantizer warns about pre-processing at root
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".{out_path.stem}-q-") as tmpd:
        tmp = Path(tmpd)
        pre = tmp / "pre.onnx"
        try:
            # shape inference + constant folding: the quantizer needs typed, folded graphs
            quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=False)
        except Exception as exc:  # noqa: BLE001 - pre-processing is an aid; quantize the raw graph
            log.warning("int8: pre-processing skipped (%s)", str(exc).splitlines()[0][:200])
            pre = onnx_path
        q = tmp / "int8.onnx"
        try:
            if method == "static":
                quantize_static(
                    str(pre),
                    str(q),
                    _Reader(calib),
                    quant_format=QuantFormat.QDQ,
                    per_channel=per_channel,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    op_types_to_quantize=["MatMul", "Gemm", "Conv"],
                    calibrate_method=CalibrationMethod.MinMax,
                )
            else:
                quantize_dynamic(
                    str(pre),
                    str(q),
                    weight_type=QuantType.QInt8,
                    per_channel=per_channel,
                    op_types_to_quantize=["MatMul", "Gemm"],
                )
        except Exception as exc:  # noqa: BLE001 - ORT's quantizer raises many types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise UsfastError(f"int8 quantization of {onnx_path.name} failed ({first[:300]}); use fp32") from None
        report = _parity(_ort_session(onnx_path), _ort_session(q), check)
        if not report.cosine_min >= min_cosine:
            raise ExportParityError(
                f"int8 ({method}) graph of {onnx_path.name} differs from fp32 on {len(check)} held-out frames: "
                f"cosine {report.cosine_min:.6f} < {min_cosine}; nothing written - use fp32 or bf16"
                + (", or --quantize static" if method == "dynamic" else "")
            )
        final_tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
        os.replace(q, final_tmp)
        os.replace(final_tmp, out_path)
    block = dict(export)
    block.update(
        file=out_path.name,
        precision="int8",
        parity={
            "max_abs_err": report.max_abs_err,
            "rel_err": report.rel_err,
            "cosine_min": report.cosine_min,
            "batch": report.batch,
            "versus": "fp32 ONNX export on held-out calibration frames",
            "tolerance": {"cosine_min": min_cosine},
        },
        quantization={
            "method": method,
            "per_channel": per_channel,
            "calibration_frames": int(len(calib)),
            "holdout_frames": int(len(check)),
            "calibration_hash": calibration_key(x),
            "source": onnx_path.name,
        },
    )
    sidecar = sidecar_path_for(out_path)
    write_export_sidecar(info, sidecar, block)
    dt = time.perf_counter() - t0
    log.info(
        "int8: %s -> %s (%s, %d calibration frames; cosine %.6f vs fp32 on %d held-out frames, %.1fs)",
        onnx_path.name,
        out_path,
        method,
        len(calib),
        report.cosine_min,
        len(check),
        dt,
    )
    return QuantizeResult(out_path, sidecar, report, method, len(calib), len(check), dt)
