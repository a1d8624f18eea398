"""Checkpoint loading that copes with the layouts found in the wild.

Layouts handled (nested in any combination):
- a plain ``state_dict`` (``.pt``/``.pth``/``.bin`` pickles or ``.safetensors``);
- wrappers: ``ema_state_dict`` (URFM), ``target_encoder`` (I-JEPA / V-JEPA EMA teacher), ``model_ema``,
  ``model``, ``state_dict`` (mmengine ``{'meta', 'state_dict'}``), ``encoder``, ``teacher``, ``student``;
- key prefixes ``module.`` (DDP), ``_orig_mod.`` (torch.compile), ``backbone.``/``encoder.``;
- MAE pre-training checkpoints: ``decoder_*`` and ``mask_token`` keys are dropped (the decoder is
  not part of the encoder), and so are classifier ``head.*`` keys when the model has no head;
- release layouts of the field (V-JEPA, DINOv2, BEiT/USFM, SAM, mmpretrain ViTSAM): converted by
  :mod:`usjepa_fast.models.layouts`, detected from their marker keys and the model's class.
Position embeddings of another grid size are resampled with timm's own filter for ViTs. Anything
still missing, unexpected or of another shape raises :class:`CheckpointError` listing the keys,
unless the caller asks for a partial load (``allow_partial``), which then logs how many are missing.
Metadata objects a research checkpoint pickles beside its tensors (mmengine's message hub, config
objects) are read as inert placeholders: no code from the file is ever run.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from usjepa_fast.errors import CheckpointError
from usjepa_fast.models.layouts import LAYOUTS, convert_layout, detect_layout, sniff_layout

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
    layout: str = ""  # release layout converted (models.layouts), "" if none
    dropped: list[str] = field(default_factory=list)  # declared non-encoder keys (decoders, heads, buffers)
    loaded: int = 0
    missing: list[str] = field(default_factory=list)  # model keys left at their initialisation (partial loads)
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys ignored (partial loads)
    skipped: list[str] = field(default_factory=list)  # shape-mismatched keys not loaded (partial loads)

    @property
    def partial(self) -> bool:
        return bool(self.missing or self.unexpected or self.skipped)


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """Content hash of a checkpoint file (identifies the encoder in caches and sidecars)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class _Opaque:
    """Stand-in for a class a checkpoint pickles as metadata (never called, never imported)."""

    def __new__(cls, *args, **kwargs):  # noqa: ARG004 - pickle passes the original constructor arguments
        return object.__new__(cls)

    def __init__(self, *args, **kwargs) -> None:
        self.args = args

    def __setstate__(self, state) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<unread {self.__class__.__qualname__}>"


_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_BLOCKED_GLOBAL = re.compile(r"unsupported GLOBAL ([\w.]+) whose module [\w.]+ is blocked")


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``; classes pickled as metadata are mapped to inert placeholders."""
    import argparse

    import numpy as np

    scalar = (getattr(np, "_core", None) or np.core).multiarray.scalar  # numpy 2 renamed core -> _core
    safe: list[Any] = [argparse.Namespace, np.dtype, np.ndarray]
    safe += [(scalar, f"numpy.{core}.multiarray.scalar") for core in ("core", "_core")]
    for _ in range(64):  # one retry per distinct metadata class
        try:
            with torch.serialization.safe_globals(safe):
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            blocked = _BLOCKED_GLOBAL.search(str(exc))
            if blocked is not None:  # os / sys / subprocess ...: a file that would run code when unpickled
                raise CheckpointError(
                    f"checkpoint {path} pickles a call to {blocked.group(1)}, which could run code; usfast never "
                    "unpickles that - re-save only the state dict from a copy you trust"
                ) from None
            found = _UNSUPPORTED_GLOBAL.search(str(exc))
            if found is None:
                raise
            name = found.group(1)
            safe.append((type(name.rsplit(".", 1)[-1], (_Opaque,), {"__module__": "usfast.unread"}), name))
    raise CheckpointError(f"checkpoint {path} pickles too many custom classes; save its state dict alone")


def read_checkpoint(path: str | Path) -> Any:
    """Read a ``.safetensors`` or torch pickle file into Python objects (tensors on CPU)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of a .pt/.pth/.safetensors file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        # weights_only=True refuses arbitrary pickled code; research checkpoints also hold argparse
        # Namespaces, numpy scalars and framework objects (mmengine HistoryBuffer...): the first two are
        # allowed as plain data, the others become placeholders (only the tensors matter here).
        return _torch_load(path)
    except CheckpointError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        if "SETITEM" in str(exc) or "APPEND" in str(exc):
            first = "it pickles a custom dict/list subclass"
        raise CheckpointError(
            f"checkpoint {path} could not be read ({first[:160]}); is the file complete and a torch/safetensors "
            "file? (a checkpoint that pickles custom objects: re-save only its state dict)"
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


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")


def load_state_dict_flexible(
    model: nn.Module,
    source: str | Path | Mapping[str, Any],
    *,
    hint: str | None = None,
    label: str | None = None,
    prefer: tuple[str, ...] = (),
    layout: str | None = "auto",
    native_size: int | None = None,
    allow_partial: bool = False,
) -> LoadReport:
    """Load ``source`` (path or loaded object) into ``model``, adapting the layouts above.

    ``prefer``: wrapper keys tried first (see :func:`unwrap_state_dict`); ``layout``: ``"auto"``
    (detect a release layout of :mod:`~usjepa_fast.models.layouts`), a layout name (forced), or None;
    ``native_size``: the input side the checkpoint was trained at, when known.

    Raises :class:`CheckpointError` naming missing, unexpected and shape-mismatched keys when the
    checkpoint does not fit after adaptation; the message names ``label`` (default: the path), a
    release layout the file looks like, and ends with ``hint`` (what to do; default: check
    ``--arch``). ``allow_partial=True`` loads the tensors that fit instead, leaves the rest at the
    model's initialisation and logs the counts (the report lists them); nothing fitting is an error.
    """
    name = label or (str(source) if isinstance(source, (str, Path)) else "<state dict>")
    raw = read_checkpoint(source) if isinstance(source, (str, Path)) else source
    state, wrapper_path = unwrap_state_dict(raw, prefer=prefer)
    report = LoadReport(wrapper_path=wrapper_path)
    model_state = model.state_dict()
    model_keys = set(model_state)
    looks_like = sniff_layout(state)
    expected = None  # a forced layout the file turned out not to be in (it may already hold timm keys)
    if layout == "auto":
        chosen = detect_layout(state, model)
    elif layout:
        if layout not in LAYOUTS:
            raise CheckpointError(f"unknown checkpoint layout {layout!r}; use one of {', '.join(LAYOUTS)}")
        expected = LAYOUTS[layout]
        chosen = layout if expected.marker(state) is not None else None
    else:
        chosen = None
    if chosen:
        converted = convert_layout(chosen, state, model, native_size=native_size)
        state, report.layout, report.dropped = converted.state, chosen, list(converted.dropped)
    state, report.stripped_prefix = _strip_prefixes(state, model_keys)

    dropped = [k for k in state if k.startswith(MAE_ONLY_PREFIXES) and k not in model_keys]
    if not any(k.startswith("head.") for k in model_keys):
        dropped += [k for k in state if k.startswith("head.")]
    for key in dropped:
        state.pop(key)
    report.dropped = sorted(set(report.dropped) | set(dropped))

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
    ok = {k: v for k, v in state.items() if k in model_state and model_state[k].shape == v.shape}
    if missing or unexpected or shape_mismatch:
        parts = []
        if missing:
            parts.append(f"missing keys: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_few(unexpected)}")
        if shape_mismatch:
            parts.append(f"shape mismatch: {_few(shape_mismatch)}")
        layout_note = ""
        if looks_like is not None and not report.layout:
            layout_note = f"; the file looks like {looks_like.description}: load it as {looks_like.suggest}"
        elif expected is not None and not report.layout:
            layout_note = f"; it is neither in the {expected.description} layout nor in timm's keys"
        if not allow_partial or not ok:
            fix = hint or DEFAULT_HINT
            if ok:
                fix += " (or pass --allow-partial to load what fits)"
            raise CheckpointError(
                f"checkpoint {name} does not fit {model.__class__.__name__} ({'; '.join(parts)}){layout_note}; {fix}"
            )
        report.missing, report.unexpected = missing, unexpected
        report.skipped = sorted(k for k in state if k in model_state and model_state[k].shape != state[k].shape)
        log.warning(
            "partial load of %s: %d of %d model tensors missing (left at their initialisation: %s), "
            "%d unexpected and %d shape-mismatched checkpoint tensors ignored",
            name,
            len(missing) + len(report.skipped),
            len(model_keys),
            _few(missing + report.skipped) or "-",
            len(unexpected),
            len(report.skipped),
        )
    model.load_state_dict(ok, strict=False)  # every key that does not fit was reported above
    report.loaded = len(ok)
    log.debug(
        "loaded %d tensors from %s (wrappers=%s, prefix=%r, layout=%s, dropped=%d)",
        len(ok),
        name,
        wrapper_path,
        report.stripped_prefix,
        report.layout or "-",
        len(report.dropped),
    )
    return report
