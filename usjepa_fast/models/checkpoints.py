"""Checkpoint loading that copes with the layouts found in the wild.

Layouts handled (nested in any combination):
- a plain ``state_dict`` (``.pt``/``.pth``/``.bin`` pickles or ``.safetensors``);
- wrappers: ``ema_state_dict`` (URFM), ``target_encoder`` (I-JEPA EMA teacher), ``model_ema``,
  ``model``, ``state_dict``, ``encoder``, ``teacher``, ``student``;
- key prefixes ``module.`` (DDP), ``_orig_mod.`` (torch.compile), ``backbone.``/``encoder.``;
- MAE pre-training checkpoints: ``decoder_*`` and ``mask_token`` keys are dropped (the decoder is
  not part of the encoder), and so are classifier ``head.*`` keys when the model has no head.
Position embeddings of another grid size are resampled with timm's own filter for ViTs. Anything
still missing or unexpected raises :class:`CheckpointError` listing the keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from usjepa_fast.errors import CheckpointError

log = logging.getLogger("usfast")

# Preference order when a checkpoint holds several candidate state dicts: the EMA weights are the
# ones a teacher should use (URFM's encoder lives under ema_state_dict; I-JEPA's under target_encoder).
WRAPPER_KEYS = (
    "ema_state_dict",
    "target_encoder",
    "model_ema",
    "state_dict_ema",
    "teacher",
    "model",
    "state_dict",
    "encoder",
    "student",
    "module",
)
STRIP_PREFIXES = ("module.", "_orig_mod.", "backbone.", "encoder.", "model.")
MAE_ONLY_PREFIXES = ("decoder", "mask_token")


@dataclass
class LoadReport:
    """What :func:`load_state_dict_flexible` did, for logging and tests."""

    wrapper_path: list[str] = field(default_factory=list)
    stripped_prefix: str = ""
    dropped: list[str] = field(default_factory=list)
    loaded: int = 0


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """Content hash of a checkpoint file (identifies the encoder in caches and sidecars)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(path: str | Path) -> Any:
    """Read a ``.safetensors`` or torch pickle file into Python objects (tensors on CPU)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of a .pt/.pth/.safetensors file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        # weights_only=True refuses arbitrary pickled code; research checkpoints sometimes hold
        # argparse Namespaces or numpy scalars, which we allow explicitly as plain data.
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            if "Weights only load failed" not in str(exc):
                raise
            import argparse

            import numpy as np

            safe = [argparse.Namespace, np.dtype, np.ndarray, np.core.multiarray.scalar]  # type: ignore[attr-defined]
            with torch.serialization.safe_globals(safe):
                return torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise CheckpointError(
            f"checkpoint {path} could not be read ({first[:160]}); is the file complete and a torch/safetensors file?"
        ) from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(torch.is_tensor(v) for v in obj.values())


def unwrap_state_dict(obj: Any, prefer: tuple[str, ...] = ()) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Descend through wrapper keys until a flat name -> tensor mapping is found.

    ``prefer``: wrapper keys tried before :data:`WRAPPER_KEYS` (a zoo entry's release layout, e.g.
    I-JEPA's ``target_encoder`` over its online ``encoder``).
    """
    keys = tuple(dict.fromkeys((*prefer, *WRAPPER_KEYS)))
    path: list[str] = []
    for _ in range(4):  # wrappers nest at most a few levels in practice
        if _is_state_dict(obj):
            return dict(obj), path
        if not isinstance(obj, Mapping):
            break
        for key in keys:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                path.append(key)
                break
        else:
            # Mixed dicts (tensors plus metadata): keep the tensor entries.
            tensors = {k: v for k, v in obj.items() if torch.is_tensor(v)}
            if tensors:
                return tensors, path
            break
    raise CheckpointError(
        "checkpoint holds no state dict (looked under "
        f"{', '.join(keys)}); found keys {sorted(obj)[:8] if isinstance(obj, Mapping) else type(obj)}"
    )


def _strip_prefixes(state: dict[str, torch.Tensor], model_keys: set[str]) -> tuple[dict[str, torch.Tensor], str]:
    """Remove a wrapper prefix (``module.``...) when doing so makes more keys match the model."""
    best, best_prefix = state, ""
    best_hits = len(model_keys & set(state))
    for prefix in STRIP_PREFIXES:
        if not any(k.startswith(prefix) for k in state):
            continue
        candidate = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}
        hits = len(model_keys & set(candidate))
        if hits > best_hits:
            best, best_prefix, best_hits = candidate, prefix, hits
    if best_prefix:  # prefixes can stack (module._orig_mod.)
        more, extra = _strip_prefixes(best, model_keys)
        return more, best_prefix + extra
    return best, best_prefix


DEFAULT_HINT = "check the architecture (--arch) and that the file is an encoder checkpoint"


def load_state_dict_flexible(
    model: nn.Module,
    source: str | Path | Mapping[str, Any],
    strict: bool = True,
    hint: str | None = None,
    label: str | None = None,
) -> LoadReport:
    """Load ``source`` (path or loaded object) into ``model``, adapting the layouts above.

    Raises :class:`CheckpointError` naming missing, unexpected and shape-mismatched keys when
    ``strict`` and the checkpoint does not fit after adaptation; the message names ``label`` (default:
    the path) and ends with ``hint`` (what to do; default: check ``--arch``).
    """
    name = label or (str(source) if isinstance(source, (str, Path)) else "<state dict>")
    raw = read_checkpoint(source) if isinstance(source, (str, Path)) else source
    state, wrapper_path = unwrap_state_dict(raw)
    report = LoadReport(wrapper_path=wrapper_path)
    model_state = model.state_dict()
    model_keys = set(model_state)
    state, report.stripped_prefix = _strip_prefixes(state, model_keys)

    dropped = [k for k in state if k.startswith(MAE_ONLY_PREFIXES) and k not in model_keys]
    if not any(k.startswith("head.") for k in model_keys):
        dropped += [k for k in state if k.startswith("head.")]
    for key in dropped:
        state.pop(key)
    report.dropped = sorted(dropped)

    # timm ViTs: resample pos_embed / patch_embed to this model's grid (other input size).
    try:
        from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

        if isinstance(model, VisionTransformer) and "pos_embed" in state:
            # Another width / layout: timm's resampler cannot reshape it. Leave the keys as they
            # are; the shape-mismatch report below names them (one line, no timm traceback).
            with contextlib.suppress(RuntimeError, ValueError, KeyError):
                state = checkpoint_filter_fn(state, model)
    except ImportError:  # timm is a core dependency; only a broken install gets here
        pass

    shape_mismatch = [
        f"{k} {tuple(v.shape)} vs model {tuple(model_state[k].shape)}"
        for k, v in state.items()
        if k in model_state and model_state[k].shape != v.shape
    ]
    missing = sorted(model_keys - set(state))
    unexpected = sorted(set(state) - model_keys)
    if strict and (missing or unexpected or shape_mismatch):

        def _few(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_few(unexpected)}")
        if shape_mismatch:
            parts.append(f"shape mismatch: {_few(shape_mismatch)}")
        raise CheckpointError(
            f"checkpoint {name} does not fit {model.__class__.__name__} ({'; '.join(parts)}); {hint or DEFAULT_HINT}"
        )
    ok = {k: v for k, v in state.items() if k in model_state and model_state[k].shape == v.shape}
    model.load_state_dict(ok, strict=False)
    report.loaded = len(ok)
    log.debug(
        "loaded %d tensors from %s (wrappers=%s, prefix=%r, dropped=%d)",
        len(ok),
        name,
        wrapper_path,
        report.stripped_prefix,
        len(dropped),
    )
    return report
