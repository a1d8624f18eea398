"""What determines a frozen feature: the one fingerprint behind every feature cache key.

A feature of an image is a function of (1) the encoder weights and how the encoder reads pixels and
pools (source hash, timm architecture, input size, mean/std, pooling, width), (2) the runtime that
evaluates it (backend kind and precision: an fp16 TensorRT engine is not bitwise an fp32 PyTorch
model), (3) the preprocessing (percentile window inside the scan region, antialiased resize) and
(4) which output is kept (pooled vector vs tokens). :func:`feature_fields` lists exactly these;
:func:`feature_key` hashes them. The probe's feature cache is keyed by it, and an embed output
folder records it in ``embed.json`` (issue 14 makes resume refuse a folder whose fingerprint
differs, naming the differing fields from :func:`feature_fields`).

Anything else (probe preset, seeds, batch size, decode threads, device) does not change the
features beyond float noise and deliberately stays out of the key.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from usjepa_fast.errors import UsfastError

# Bump when the pixels an encoder sees change for the same file (percentile rule, resize filter...).
PREPROCESS_VERSION = 1
BACKEND_KINDS = ("torch", "onnx", "tensorrt")
PRECISIONS = ("fp32", "bf16", "fp16")


def encoder_fields(info: Any) -> dict[str, Any]:
    """The encoder part: weights identity + input geometry/normalisation + pooling + width."""
    fields = {
        "source_hash": str(getattr(info, "source_hash", "") or ""),
        "timm_name": str(getattr(info, "timm_name", "") or ""),
        "timm_kwargs": getattr(info, "timm_kwargs", {}) or {},
        "input_size": int(info.input_size),
        "mean": [round(float(v), 6) for v in info.mean],
        "std": [round(float(v), 6) for v in info.std],
        "pool": str(getattr(info, "pool", "") or ""),
        "width": int(getattr(info, "width", 0) or 0),
    }
    if not fields["source_hash"]:
        raise UsfastError(
            f"encoder {getattr(info, 'name', '?')} declares no source_hash; its features cannot be fingerprinted"
        )
    return fields


def backend_fields(runner: Any) -> dict[str, str]:
    """Backend kind and precision of an opened encoder/backend (``torch`` / ``fp32`` for a plain module).

    Backends name themselves ``<kind>-...-<precision>`` (``onnx-cpu-fp32``, ``torch-eager-cuda-bf16``,
    ``tensorrt-fp16``); a probe encoder that wraps a backend exposes it as ``.fn``. An explicit
    ``precision`` attribute wins over the name."""
    names = [getattr(runner, "backend_name", None), getattr(getattr(runner, "fn", None), "name", None)]
    names.append(getattr(runner, "name", None))
    name = next((n for n in names if isinstance(n, str) and n.split("-")[0] in BACKEND_KINDS), "")
    parts = name.split("-") if name else []
    kind = parts[0] if parts else "torch"
    precision = getattr(runner, "precision", None)
    if precision not in PRECISIONS:
        precision = parts[-1] if parts and parts[-1] in PRECISIONS else "fp32"
    return {"backend": kind, "precision": str(precision)}


def preprocess_fields(scan_region: bool = True) -> dict[str, Any]:
    """The pixel pipeline (``data.preprocess`` evaluation geometry)."""
    return {
        "version": PREPROCESS_VERSION,
        "percentiles": [2.0, 98.0],
        "geometry": "resize-antialias",
        "scan_region": bool(scan_region),
    }


def feature_fields(
    encoder: Any,
    *,
    scan_region: bool = True,
    tokens: str = "pooled",
    token_selection: str = "all",
    patch_coverage: float | None = None,
) -> dict[str, Any]:
    """Every field that determines the features; ``encoder``: an ``EncoderInfo``-like object, or an
    opened encoder/backend carrying ``.info`` (then its backend kind/precision count too).
    ``token_selection="scan"`` (only scan-region patches went through the encoder) adds the selection
    and its ``patch_coverage``; ``"all"`` adds nothing, so keys of whole-frame features never change."""
    info = getattr(encoder, "info", None)
    runner = encoder if info is not None else None
    info = info if info is not None else encoder
    fields = {
        "encoder": encoder_fields(info),
        **(backend_fields(runner) if runner is not None else {"backend": "torch", "precision": "fp32"}),
        "preprocess": preprocess_fields(scan_region),
        "tokens": tokens,
    }
    if token_selection != "all":
        fields["token_selection"] = {"mode": token_selection, "patch_coverage": float(patch_coverage or 0.0)}
    return fields


def digest(fields: dict[str, Any], length: int = 20) -> str:
    """Stable short hash of a fields dict (key order does not matter)."""
    blob = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def feature_key(
    encoder: Any,
    *,
    scan_region: bool = True,
    tokens: str = "pooled",
    token_selection: str = "all",
    patch_coverage: float | None = None,
) -> str:
    """``digest(feature_fields(...))``: the feature cache key of ``encoder`` (info or opened encoder)."""
    fields = feature_fields(
        encoder,
        scan_region=scan_region,
        tokens=tokens,
        token_selection=token_selection,
        patch_coverage=patch_coverage,
    )
    return digest(fields)
