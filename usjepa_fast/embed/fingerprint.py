"""What determines a frozen feature: the one fingerprint behind every feature cache key.

A feature of an image is a function of (1) the encoder weights and how the encoder reads pixels and
pools (source hash, timm architecture, input size, mean/std, pooling, width), (2) the runtime that
evaluates it (backend kind and precision: an fp16 TensorRT engine is not bitwise an fp32 PyTorch
model), (3) the preprocessing (percentile window inside the scan region, antialiased resize) and
(4) which output is kept (pooled vector vs tokens). :func:`feature_fields` lists exactly these,
plus the backend's full name and :func:`usjepa_fast.hardware.machine_key` (bf16 on AMX and on
AVX512-BF16 round differently; an int8 graph is not an fp32 one); :func:`feature_key` hashes them.
The probe's feature cache is keyed by it.

An output folder's *run fingerprint* (:func:`run_fields`) adds what decides which rows exist and how
they are stored (frame sampling, clip pooling, redundancy skipping, dtype, the input, the usfast
version). ``OUT/fingerprint.json`` records it before the first part is written; a later run resumes
only when its fields are equal (:func:`check_fingerprint`), otherwise it is refused in one line
naming each differing field (:class:`FingerprintError`), or started fresh with ``overwrite``.

Anything else (probe preset, seeds, batch size, decode threads, commit cadence) does not change the
features beyond float noise and deliberately stays out of both.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from usjepa_fast.errors import UsfastError

# Bump when the pixels an encoder sees change for the same file (percentile rule, resize filter...).
PREPROCESS_VERSION = 1
BACKEND_KINDS = ("torch", "onnx", "tensorrt")
PRECISIONS = ("fp32", "bf16", "fp16", "int8")


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
    """Backend kind, precision, full name and machine of an opened encoder/backend (``torch`` /
    ``fp32`` for a plain module).

    Backends name themselves ``<kind>-...-<precision>`` (``onnx-cpu-fp32``, ``torch-eager-cuda-bf16``,
    ``tensorrt-fp16``); a probe encoder that wraps a backend exposes it as ``.fn``. An explicit
    ``precision`` attribute wins over the name. ``machine`` is :func:`usjepa_fast.hardware.machine_key`
    of the runner's device."""
    names = [getattr(runner, "backend_name", None), getattr(getattr(runner, "fn", None), "name", None)]
    names.append(getattr(runner, "name", None))
    name = next((n for n in names if isinstance(n, str) and n.split("-")[0] in BACKEND_KINDS), "")
    parts = name.split("-") if name else []
    kind = parts[0] if parts else "torch"
    precision = getattr(runner, "precision", None)
    if precision not in PRECISIONS:
        precision = parts[-1] if parts and parts[-1] in PRECISIONS else "fp32"
    return {
        "backend": kind,
        "precision": str(precision),
        "backend_name": name or f"{kind}-{precision}",
        "machine": machine_fields(getattr(runner, "device", None)),
    }


def machine_fields(device: Any = None) -> str:
    """:func:`usjepa_fast.hardware.machine_key` (ISA, CPU model, torch version; GPU on CUDA)."""
    from usjepa_fast.hardware import machine_key

    try:
        return machine_key(device)
    except (RuntimeError, ValueError, TypeError):  # an unusual device string: the CPU facts still count
        return machine_key(None)


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
        **backend_fields(runner),  # no runner (an EncoderInfo): torch fp32 on this machine
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


# ----------------------------------------------------------------------------------------------
# run fingerprint of an output folder

FINGERPRINT_FILE = "fingerprint.json"


class FingerprintError(UsfastError):
    """An output folder holds results of other settings than this run's."""


def run_fields(backend: Any, opts: Any, input_path: str | Path | None) -> dict[str, Any]:
    """Every field that decides an embed output folder's rows: :func:`feature_fields` of the opened
    ``backend`` + sampling, clip pooling, redundancy skipping, storage dtype, token selection, the
    resolved input and the usfast version (``opts``: an :class:`~usjepa_fast.embed.options.EmbedOptions`)."""
    from usjepa_fast import __version__

    fields = feature_fields(
        backend,
        scan_region=bool(opts.scan_region),
        token_selection=opts.tokens,
        patch_coverage=opts.patch_coverage,
    )
    fields.update(
        sampling={"every_k": opts.every_k, "fps": opts.fps, "max_frames": opts.max_frames},
        clip_pool=bool(opts.clip_pool),
        redundancy={"threshold": opts.redundancy_threshold, "size": opts.redundancy_size},
        dtype=str(opts.dtype),
        input=str(Path(input_path).resolve()) if input_path is not None else None,
        usfast=__version__,
    )
    return fields


def diff_fields(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` for every leaf that differs (missing = None), sorted."""
    from usjepa_fast.config import flatten

    a, b = flatten(json.loads(json.dumps(old, default=str))), flatten(json.loads(json.dumps(new, default=str)))
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_fingerprint(out_dir: str | Path) -> dict[str, Any] | None:
    """The recorded ``fields`` of ``out_dir`` (``fingerprint.json``, else an older ``embed.json``'s)."""
    out_dir = Path(out_dir)
    for name, key in ((FINGERPRINT_FILE, None), ("embed.json", "fingerprint")):
        path = out_dir / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        data = data.get(key) if key else data
        if isinstance(data, dict) and isinstance(data.get("fields"), dict):
            return data["fields"]
    return None


def write_fingerprint(out_dir: str | Path, fields: dict[str, Any]) -> Path:
    """Record ``fields`` as ``out_dir/fingerprint.json`` (``{"key", "fields"}``), atomically."""
    from usjepa_fast.fileio import atomic_write_json

    return atomic_write_json(Path(out_dir) / FINGERPRINT_FILE, {"key": digest(fields), "fields": fields})


def check_fingerprint(out_dir: str | Path, fields: dict[str, Any], *, has_results: bool) -> bool:
    """Whether ``out_dir`` may be resumed by a run with ``fields``: True when it records the same
    fields, False when it records none and holds no results yet (a fresh folder: the caller writes
    it). Raises :class:`FingerprintError` naming the differing fields otherwise (or when results
    exist without any fingerprint, e.g. written by an older usfast)."""
    old = read_fingerprint(out_dir)
    if old is None:
        if has_results:
            raise FingerprintError(
                f"{out_dir} holds embeddings without a run fingerprint (written by an older usfast), so this "
                "run cannot tell whether they match its settings; use another --out, or --overwrite to start fresh"
            )
        return False
    changes = diff_fields(old, fields)
    if not changes:
        return True
    shown = "; ".join(f"{k}: {_short(a)} -> {_short(b)}" for k, a, b in changes[:6])
    more = f" (+{len(changes) - 6} more)" if len(changes) > 6 else ""
    raise FingerprintError(
        f"{out_dir} was embedded with other settings ({shown}{more}); rerun with the same settings to resume, "
        "choose another --out, or pass --overwrite to start fresh"
    )
