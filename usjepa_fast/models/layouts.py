"""Release layouts of the field's checkpoints -> the keys of the timm model that runs them.

:func:`usjepa_fast.models.checkpoints.load_state_dict_flexible` unwraps a checkpoint (``model`` /
``state_dict`` / ``target_encoder`` ...) and then hands it here: :func:`detect_layout` recognises a
release layout from its marker keys *and* the class of the model being loaded (a V-JEPA checkpoint
converts only into a timm ``VisionTransformer``), :func:`convert_layout` rewrites it. Each converter
takes the unwrapped state with whatever wrapper prefix it carries (``module.backbone.``,
``backbone.``, ``teacher.backbone.``), keeps the encoder's keys and reports what it drops (heads,
decoders, predictors), so nothing disappears silently.

========== ============================================ ==========================================
layout     release                                      converted to
========== ============================================ ==========================================
vjepa      V-JEPA ``{'encoder','predictor',              timm ``VisionTransformer`` without class
           'target_encoder'}``, ``module.backbone.*``,  token: one frame = one tubelet of it
           3-D patch embedding, 3-D sincos pos-embed    (V-JEPA's own forward on a 2-frame clip)
dinov2     Meta DINOv2 hub weights / training           timm ``vit_*_patch14_dinov2`` /
           ``teacher`` checkpoints (``mask_token``,      ``_reg4_`` (timm's DINOv2 filter; pos-embed
           ``register_tokens``, chunked blocks)         resampled by DINOv2's own rule)
beit       USFM / unilm BEiT (``q_bias``/``v_bias``,     timm ``Beit`` (shared table copied into
           ``gamma_1/2``, shared or per-block rel-pos)  every block, as USFM's fine-tuning does)
sam        Meta SAM ``image_encoder.*``                 timm ``VisionTransformerSAM``
mmpretrain mmengine ``{'meta','state_dict'}`` with       timm ``VisionTransformerSAM`` (UltraSam.pth;
-sam       mmpretrain ``ViTSAM`` keys under backbone.   decoder / prompt encoder / heads dropped)
========== ============================================ ==========================================

V-JEPA 2 and EchoJEPA (built on V-JEPA 2) have no position-embedding table: their attention rotates
thirds of each head by the (time, row, column) position (3-D RoPE, with V-JEPA 2's own frequency
layout). timm has no such attention, so :data:`VJEPA2_REFUSAL` is raised rather than loading a
look-alike that would give different features.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from usjepa_fast.errors import CheckpointError

log = logging.getLogger("usfast")

VJEPA2_REFUSAL = (
    "a V-JEPA 2 / EchoJEPA encoder (3-D patch embedding and no pos_embed table: its attention applies "
    "3-D RoPE to thirds of each head); timm has no matching attention, so usfast refuses rather than "
    "load a look-alike - embed it with the vjepa2 / EchoJEPA eval code and pass the features directory"
)


@dataclass
class LayoutResult:
    """What a converter produced: timm keys, and what it left out and why."""

    state: dict[str, torch.Tensor]
    dropped: list[str] = field(default_factory=list)  # keys not part of the encoder (heads, decoders, buffers)
    notes: list[str] = field(default_factory=list)  # conversions a user should know about (logged)


@dataclass(frozen=True)
class Layout:
    name: str
    description: str  # what the release is (error messages)
    model_class: str  # "module:Class" of the timm model it converts into
    suggest: str  # how to load such a file (hint when the model class does not fit)
    marker: Callable[[Mapping[str, torch.Tensor]], str | None]  # -> wrapper prefix if the layout is present
    convert: Callable[[dict[str, torch.Tensor], nn.Module, str, int | None], LayoutResult]


def _prefix_of(state: Mapping[str, torch.Tensor], marker: str, test=None) -> str | None:
    """The shortest key prefix ``p`` (``''`` or ending in ``.``) with ``p + marker`` in ``state``."""
    best: str | None = None
    for key, value in state.items():
        if not key.endswith(marker):
            continue
        prefix = key[: -len(marker)]
        if prefix and not prefix.endswith("."):
            continue
        if test is not None and not test(value):
            continue
        if best is None or len(prefix) < len(best):
            best = prefix
    return best


def _take(state: Mapping[str, torch.Tensor], prefix: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Keys under ``prefix`` with it stripped; the others are reported as dropped."""
    kept = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return kept, sorted(k for k in state if not k.startswith(prefix))


def _grid(model: nn.Module) -> tuple[int, int]:
    g = model.patch_embed.grid_size
    return (int(g[0]), int(g[1]))


# ----------------------------------------------------------------------------------------------
# V-JEPA


def _vjepa_marker(state: Mapping[str, torch.Tensor]) -> str | None:
    return _prefix_of(state, "patch_embed.proj.weight", lambda v: v.ndim == 5)


def _vjepa(state: dict[str, torch.Tensor], model: nn.Module, prefix: str, native_size: int | None) -> LayoutResult:
    kept, dropped = _take(state, prefix)
    if "pos_embed" not in kept:
        raise CheckpointError(f"this checkpoint is {VJEPA2_REFUSAL}")
    if getattr(model, "cls_token", None) is not None or getattr(model, "num_prefix_tokens", 0):
        raise CheckpointError(
            "V-JEPA encoders have no class token, but the model has one; load V-JEPA through zoo:V-JEPA=PATH "
            "(ViT-L/16) or a class-token-free timm arch (e.g. vit_huge_patch16_gap_448 --img-size 224 for ViT-H/16)"
        )
    weight = kept["patch_embed.proj.weight"]  # (D, C, tubelet, p, p)
    tubelet = int(weight.shape[2])
    # One frame repeated over the tubelet: conv3d(frame x tubelet) == conv2d(frame, kernel summed over time).
    kept["patch_embed.proj.weight"] = weight.sum(dim=2)  # (D, C, p, p)
    pos = kept["pos_embed"]  # (1, T' * g * g, D): 3-D sincos table of the pretraining clip
    n, dim = int(pos.shape[1]), int(pos.shape[2])
    patch = int(weight.shape[-1])
    target = _grid(model)
    candidates = [native_size // patch] if native_size else []
    candidates.append(target[0])
    side = next((g for g in candidates if g > 0 and n % (g * g) == 0), None)
    if side is None:
        raise CheckpointError(
            f"V-JEPA pos_embed has {n} positions, not (frames/{tubelet}) x g x g for the {target[0]}x{target[1]} "
            "grid; build the model at the checkpoint's own input size (--img-size, e.g. 224 or 384)"
        )
    frames = n // (side * side)
    table = pos.float().reshape(1, frames, side, side, dim).permute(0, 4, 1, 2, 3)  # (1, D, T', g, g)
    # V-JEPA's interpolate_pos_encoding for a clip of `tubelet` frames at the target grid: one
    # trilinear call with these scale factors (for T'=8 the time axis lands between slices 3 and 4).
    scale = (1.0 / frames, target[0] / side, target[1] / side)
    out = F.interpolate(table, scale_factor=scale, mode="trilinear")
    if tuple(out.shape[2:]) != (1, *target):  # float rounding of the scale: V-JEPA would fail here
        out = F.interpolate(table, size=(1, *target), mode="trilinear")
    kept["pos_embed"] = out.permute(0, 2, 3, 4, 1).reshape(1, target[0] * target[1], dim).to(pos.dtype)
    notes = [
        f"V-JEPA: 3-D patch embedding (tubelet {tubelet}) summed over time, pos-embed table of {frames} temporal "
        f"positions interpolated to one (one frame = one tubelet of that frame)"
    ]
    return LayoutResult(kept, dropped, notes)


# ----------------------------------------------------------------------------------------------
# DINOv2

_CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.*)$")


def _dinov2_marker(state: Mapping[str, torch.Tensor]) -> str | None:
    prefix = _prefix_of(state, "cls_token")
    if prefix is None:
        return None
    has = {k[len(prefix) :] for k in state if k.startswith(prefix)}
    mask = state.get(prefix + "mask_token")
    if "register_tokens" in has or (mask is not None and mask.ndim == 2) or any(_CHUNKED.match(k) for k in has):
        return prefix
    return None


def _dinov2(state: dict[str, torch.Tensor], model: nn.Module, prefix: str, native_size: int | None) -> LayoutResult:
    from timm.models.vision_transformer import checkpoint_filter_fn

    kept, dropped = _take(state, prefix)
    if any(_CHUNKED.match(k) for k in kept):  # block_chunks > 0: blocks.<chunk>.<global index>.*
        kept = {(f"blocks.{m[2]}.{m[3]}" if (m := _CHUNKED.match(k)) else k): v for k, v in kept.items()}
    notes = []
    pos = kept.get("pos_embed")
    target = _grid(model)
    if pos is not None:
        side = math.isqrt(int(pos.shape[1]) - 1)
        if side != target[0] or target[0] != target[1]:
            # DINOv2 resamples its table on the fly: bicubic; register models by size with antialias,
            # the others by scale (g + 0.1) / M without (the "interpolate_offset" kludge of dino#8).
            grid = pos[:, 1:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
            if "register_tokens" in kept:
                grid = F.interpolate(grid, size=target, mode="bicubic", antialias=True)
            else:
                scale = ((target[0] + 0.1) / side, (target[1] + 0.1) / side)
                grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
            grid = grid.permute(0, 2, 3, 1).reshape(1, target[0] * target[1], -1).to(pos.dtype)
            kept["pos_embed"] = torch.cat([pos[:, :1], grid], dim=1)
            notes.append(f"DINOv2: pos-embed {side}x{side} -> {target[0]}x{target[1]} by DINOv2's own interpolation")
    if "mask_token" not in kept:  # timm's filter keys its DINOv2 conversion on mask_token
        kept["mask_token"] = torch.zeros(1, int(kept["cls_token"].shape[-1]))
    return LayoutResult(checkpoint_filter_fn(kept, model), dropped, notes)


# ----------------------------------------------------------------------------------------------
# BEiT / USFM

_BEIT_PRETRAIN_ONLY = ("mask_token", "lm_head.", "decoder")


def _beit_marker(state: Mapping[str, torch.Tensor]) -> str | None:
    prefix = _prefix_of(state, "blocks.0.attn.q_bias")
    if prefix is None:
        prefix = _prefix_of(state, "rel_pos_bias.relative_position_bias_table")
    return prefix


def _beit(state: dict[str, torch.Tensor], model: nn.Module, prefix: str, native_size: int | None) -> LayoutResult:
    from timm.models.beit import checkpoint_filter_fn

    kept, dropped = _take(state, prefix)
    for key in list(kept):
        if key.endswith("relative_position_index") or key.startswith(_BEIT_PRETRAIN_ONLY):
            kept.pop(key)  # index buffers are rebuilt by the model; MIM heads are not the encoder
            dropped.append(key)
    notes = []
    shared = kept.get("rel_pos_bias.relative_position_bias_table")
    if shared is not None and getattr(model, "rel_pos_bias", None) is None:
        kept.pop("rel_pos_bias.relative_position_bias_table")
        for i, block in enumerate(model.blocks):
            key = f"blocks.{i}.attn.relative_position_bias_table"
            if getattr(block.attn, "relative_position_bias_table", None) is not None and key not in kept:
                kept[key] = shared.clone()
        notes.append("BEiT/USFM: shared relative position bias copied into every block (as USFM's fine-tuning does)")
    fc_norm, norm = getattr(model, "fc_norm", None), getattr(model, "norm", None)
    if (
        isinstance(fc_norm, nn.LayerNorm)
        and isinstance(norm, nn.Identity)
        and "fc_norm.weight" not in kept
        and "norm.weight" in kept
    ):
        # A pretraining checkpoint: its final norm acts per token before pooling, which the mean-pooling
        # model does not have. USFM's (and BEiT's) classifier drops it and starts fc_norm at identity.
        for key in ("norm.weight", "norm.bias"):
            if kept.pop(key, None) is not None:
                dropped.append(key)
        kept["fc_norm.weight"] = torch.ones_like(fc_norm.weight, device="cpu")
        kept["fc_norm.bias"] = torch.zeros_like(fc_norm.bias, device="cpu")
        notes.append(
            "BEiT/USFM pretraining checkpoint (norm.*, no fc_norm.*): fc_norm set to the identity LayerNorm and "
            "norm.* unused, as USFM's classification model starts"
        )
    return LayoutResult(checkpoint_filter_fn(kept, model), dropped, notes)


# ----------------------------------------------------------------------------------------------
# SAM (Meta) and mmpretrain ViTSAM (mmengine / mmdet, e.g. UltraSAM)


def _sam_marker(state: Mapping[str, torch.Tensor]) -> str | None:
    return _prefix_of(state, "image_encoder.patch_embed.proj.weight")


def _sam(state: dict[str, torch.Tensor], model: nn.Module, prefix: str, native_size: int | None) -> LayoutResult:
    from timm.models.vision_transformer_sam import checkpoint_filter_fn

    kept, dropped = _take(state, prefix + "image_encoder.")
    restored = {f"image_encoder.{k}": v for k, v in kept.items()}  # the form timm's filter expects
    return LayoutResult(checkpoint_filter_fn(restored, model), dropped)


def _mmsam_marker(state: Mapping[str, torch.Tensor]) -> str | None:
    prefix = _prefix_of(state, "patch_embed.projection.weight")
    if prefix is None or prefix + "layers.0.ln1.weight" not in state:
        return None
    pos = state.get(prefix + "pos_embed")
    return prefix if pos is None or pos.ndim == 4 else None  # ViTSAM's table is (1, H, W, C)


_MMSAM_RENAMES = (
    (re.compile(r"^patch_embed\.projection\."), "patch_embed.proj."),
    (re.compile(r"^layers\.(\d+)\."), r"blocks.\1."),
    (re.compile(r"\.ln1\."), ".norm1."),
    (re.compile(r"\.ln2\."), ".norm2."),
    (re.compile(r"\.ffn\.layers\.0\.0\."), ".mlp.fc1."),
    (re.compile(r"\.ffn\.layers\.1\."), ".mlp.fc2."),
    (re.compile(r"^channel_reduction\."), "neck."),
)


def _mmsam(state: dict[str, torch.Tensor], model: nn.Module, prefix: str, native_size: int | None) -> LayoutResult:
    kept, dropped = _take(state, prefix)
    out = {}
    for key, value in kept.items():
        for pattern, repl in _MMSAM_RENAMES:
            key = pattern.sub(repl, key)
        out[key] = value
    return LayoutResult(out, dropped, ["mmpretrain ViTSAM keys renamed to timm's SAM ViT"])


LAYOUTS: dict[str, Layout] = {
    lay.name: lay
    for lay in (
        Layout(
            "vjepa",
            "V-JEPA (3-D patch embedding, module.backbone.* keys)",
            "timm.models.vision_transformer:VisionTransformer",
            "zoo:V-JEPA=PATH (ViT-L/16), or a class-token-free ViT --arch",
            _vjepa_marker,
            _vjepa,
        ),
        Layout(
            "dinov2",
            "DINOv2 (mask_token / register_tokens / chunked blocks)",
            "timm.models.vision_transformer:VisionTransformer",
            "zoo:DINOv2=PATH / zoo:DINOv2-reg=PATH, or --arch vit_base_patch14_dinov2 / vit_base_patch14_reg4_dinov2",
            _dinov2_marker,
            _dinov2,
        ),
        Layout(
            "beit",
            "BEiT / USFM (q_bias, v_bias, relative position bias)",
            "timm.models.beit:Beit",
            "zoo:USFM=PATH, or --arch beit_base_patch16_224",
            _beit_marker,
            _beit,
        ),
        Layout(
            "sam",
            "Segment Anything (image_encoder.*)",
            "timm.models.vision_transformer_sam:VisionTransformerSAM",
            "--arch samvit_base_patch16 (or _large / _huge)",
            _sam_marker,
            _sam,
        ),
        Layout(
            "mmpretrain-sam",
            "mmengine/mmpretrain ViTSAM (backbone.layers.N.ln1, e.g. UltraSam.pth)",
            "timm.models.vision_transformer_sam:VisionTransformerSAM",
            "zoo:UltraSAM=PATH, or --arch samvit_base_patch16",
            _mmsam_marker,
            _mmsam,
        ),
    )
}


def _is_instance(model: nn.Module, target: str) -> bool:
    import importlib

    module_name, cls_name = target.split(":")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError):
        return False
    return isinstance(model, cls)


def sniff_layout(state: Mapping[str, torch.Tensor]) -> Layout | None:
    """The release layout ``state`` looks like, whatever model it is loaded into (for hints)."""
    return next((lay for lay in LAYOUTS.values() if lay.marker(state) is not None), None)


def detect_layout(state: Mapping[str, torch.Tensor], model: nn.Module) -> str | None:
    """Name of the layout of ``state`` that converts into ``model``'s class, or None."""
    for lay in LAYOUTS.values():
        if lay.marker(state) is not None and _is_instance(model, lay.model_class):
            return lay.name
    return None


def convert_layout(
    name: str, state: Mapping[str, torch.Tensor], model: nn.Module, native_size: int | None = None
) -> LayoutResult:
    """Rewrite ``state`` (release layout ``name``) into ``model``'s timm keys.

    ``native_size``: the input side the checkpoint was trained at, when known (zoo entries), so a
    model built at another size gets the table resampled by the release's own rule.
    """
    if name not in LAYOUTS:
        raise CheckpointError(f"unknown checkpoint layout {name!r}; use one of {', '.join(LAYOUTS)}")
    lay = LAYOUTS[name]
    prefix = lay.marker(state)
    if prefix is None:
        keys = sorted(state)[:6]
        raise CheckpointError(f"checkpoint is not in the {lay.description} layout (keys start {keys})")
    if not _is_instance(model, lay.model_class):
        raise CheckpointError(
            f"a {lay.description} checkpoint cannot load into {model.__class__.__name__}; load it as {lay.suggest}"
        )
    result = lay.convert(dict(state), model, prefix, native_size)
    for note in result.notes:
        log.info("%s", note)
    return result
