"""The paper's baseline encoders: how each loads from a *local* checkpoint (no hub downloads).

Every entry states the architecture, the timm model that rebuilds it (when timm has one), the key
remapping from the authors' release format, the normalisation and input size, and the pooling used
for the linear probe. Entries whose architecture timm does not cover (SAMUS, EchoCare, USFM) say so
and the resolver raises a one-line :class:`UsfastError` for them instead of building a look-alike
model that would silently give wrong numbers.

This module only *declares*; loading is :func:`usjepa_fast.models.resolve.resolve_encoder` with the
spec ``zoo:<NAME>=<checkpoint path>`` (every command that takes an encoder, and ``teacher.spec``),
e.g. ``zoo:DINOv3=/ckpt/dinov3_vitb16_pretrain_lvd1689m.pth``; unwrapping is
:func:`usjepa_fast.models.checkpoints.unwrap_state_dict` with the entry's ``wrapper_keys`` first.
Key remaps were written against the public release layouts named in ``release_format``; they are
exercised in tests on synthetic state dicts in those layouts (no real weights are available
offline), so treat the first load of a real checkpoint as the check -- a layout mismatch fails
loudly with the missing/unexpected keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from usjepa_fast.errors import UsfastError
from usjepa_fast.models.checkpoints import unwrap_state_dict
from usjepa_fast.models.registry import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class ZooEntry:
    """One baseline encoder of the paper's comparison table."""

    name: str  # row name in the paper's table
    architecture: str  # what the network is
    timm_name: str | None  # timm architecture that rebuilds the encoder; None = not covered by timm
    input_size: int  # side of the square input
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pool: str  # "mean" of patch tokens or "cls"
    release_format: str  # the checkpoint layout the remapping expects
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    wrapper_keys: tuple[str, ...] = ()  # nested dict keys tried first (then the generic ones), first present wins
    strip_prefixes: tuple[str, ...] = ()  # key prefixes removed (after unwrapping)
    drop_prefixes: tuple[str, ...] = ()  # keys dropped (decoders, heads, predictors)
    rename: tuple[tuple[str, str], ...] = ()  # regex substitutions applied to every key, in order
    timm_filter: str | None = None  # "module:function" timm checkpoint filter applied last
    loader: str = "timm"  # "timm", "usfast" (sidecar checkpoints, read like any usfast export) or "unsupported"
    notes: str = ""

    @property
    def supported(self) -> bool:
        return self.loader != "unsupported"


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry(
            name="DINOv3",
            architecture="ViT-B/16 with 4 register tokens, RoPE, LayerScale (Meta DINOv3, LVD-1689M)",
            timm_name="vit_base_patch16_dinov3",
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            pool="cls",
            release_format="Meta dinov3_vitb16_pretrain_lvd1689m-*.pth (cls_token, storage_tokens, blocks.N.*)",
            timm_kwargs={"num_classes": 0, "img_size": 224},
            timm_filter="timm.models.eva:checkpoint_filter_fn",  # timm converts Meta's DINOv3 layout
            notes="timm's EVA implementation with rope_type='dinov3'; DINOv3 probes use the class token.",
        ),
        ZooEntry(
            name="I-JEPA",
            architecture="ViT-H/14, no class token, average pooling (Meta I-JEPA, IN-1k)",
            timm_name="vit_huge_patch14_gap_224",
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            pool="mean",
            release_format="facebookresearch/ijepa IN1K-vit.h.14-300e.pth.tar ({'target_encoder': {'module.*'}})",
            timm_kwargs={"num_classes": 0},
            wrapper_keys=("target_encoder", "encoder"),  # the EMA target encoder is the one evaluated
            strip_prefixes=("module.",),
            notes="Keys match timm's VisionTransformer after stripping 'module.'.",
        ),
        ZooEntry(
            name="UltraSAM",
            architecture="SAM ViT-B image encoder (1024 px, windowed attention, neck to 256 ch) trained on US-43d",
            timm_name="samvit_base_patch16",
            input_size=1024,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            pool="mean",
            release_format="SAM-format state dict with 'image_encoder.*' keys (mmdet 'backbone.*' is mapped)",
            timm_kwargs={"num_classes": 0},
            wrapper_keys=("state_dict", "model"),
            # UltraSam releases an mmdet checkpoint: backbone.* is SAM's image encoder naming.
            rename=((r"^backbone\.", "image_encoder."),),
            drop_prefixes=("prompt_encoder.", "mask_decoder.", "decoder.", "neck_decoder."),
            timm_filter="timm.models.vision_transformer_sam:checkpoint_filter_fn",
            notes="Features are the 256-ch neck output, mean-pooled over the 64x64 grid.",
        ),
        ZooEntry(
            name="SAMUS",
            architecture="SAM ViT-B with a parallel CNN branch, cross-branch attention and adapters (256 px)",
            timm_name=None,
            input_size=256,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            pool="mean",
            release_format="xianlin7/SAMUS checkpoint",
            loader="unsupported",
            notes="timm has no SAMUS (CNN branch + adapters); needs the authors' model code.",
        ),
        ZooEntry(
            name="EchoCare",
            architecture="EchoCare hierarchical (Swin-style) encoder with structure-aware modules",
            timm_name=None,
            input_size=256,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            pool="mean",
            release_format="EchoCare release checkpoint",
            loader="unsupported",
            notes="Custom architecture outside timm; needs the authors' model code.",
        ),
        ZooEntry(
            name="USF-MAE",
            architecture="ViT-B/16 MAE pretrained on OpenUS-46 (class token, MAE decoder discarded)",
            timm_name="vit_base_patch16_224",
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            pool="mean",
            release_format="MAE-style checkpoint {'model': {...}} with decoder_* / mask_token keys",
            timm_kwargs={"num_classes": 0, "global_pool": "avg", "fc_norm": False},
            wrapper_keys=("model", "state_dict"),
            strip_prefixes=("module.",),
            drop_prefixes=("decoder_", "decoder.", "mask_token", "head."),
        ),
        ZooEntry(
            name="USFM",
            architecture="BEiT-style ViT-B/16 with relative position bias, spatial-frequency MIM",
            timm_name=None,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            pool="mean",
            release_format="openmedlab/USFM USFM_latest.pth",
            loader="unsupported",
            notes="Close to timm's beit_base_patch16_224 but the released layout (shared rel-pos bias, "
            "its own key names) is unverified; refusing rather than loading a look-alike.",
        ),
        ZooEntry(
            name="URFM",
            architecture="ViT-B/16 (the SALT teacher of US-JEPA)",
            timm_name="vit_base_patch16_224",
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            pool="mean",
            release_format="MAE ViT-B/16: {'ema_state_dict'} / {'model'} / {'state_dict'} / plain, 'module.' prefixes",
            timm_kwargs={"num_classes": 0, "global_pool": "avg", "fc_norm": False},
            # the EMA encoder is the one a SALT teacher uses (registry.teacher_vit_base_urfm agrees)
            wrapper_keys=("ema_state_dict", "model", "state_dict", "teacher"),
            strip_prefixes=("module.", "encoder.", "backbone."),
            drop_prefixes=("decoder_", "decoder.", "mask_token", "head."),
        ),
        ZooEntry(
            name="US-JEPA",
            architecture="usfast SALT student ViT-B/16 (no class token, mean pool)",
            timm_name="vit_base_patch16_224",
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            pool="mean",
            release_format="usfast export-ready student.safetensors + student.json",
            loader="usfast",
        ),
        ZooEntry(
            name="USrc-JEPA",
            architecture="usfast SALT student ViT-B/16 trained with USrc masking",
            timm_name="vit_base_patch16_224",
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            pool="mean",
            release_format="usfast export-ready student.safetensors + student.json",
            loader="usfast",
        ),
    )
}


def zoo_entry(name: str) -> ZooEntry:
    for key, entry in ZOO.items():
        if key.lower() == name.lower():
            return entry
    raise UsfastError(f"'{name}' is not in the model zoo; choose from {', '.join(ZOO)}")


def remap_state_dict(entry: ZooEntry, state: Any) -> dict[str, torch.Tensor]:
    """Release-format state (possibly wrapped) -> keys of ``entry``'s timm model (before timm's filter)."""
    sd, _ = unwrap_state_dict(state, prefer=entry.wrapper_keys)
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        for prefix in entry.strip_prefixes:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        for pattern, repl in entry.rename:
            key = re.sub(pattern, repl, key)
        if key.startswith(entry.drop_prefixes):
            continue
        out[key] = value
    return out


def parse_zoo_spec(spec: str) -> tuple[str, str] | None:
    """``'zoo:NAME=PATH'`` -> (NAME, PATH); anything else -> None."""
    if not spec.startswith("zoo:"):
        return None
    body = spec[4:]
    if "=" not in body:
        raise UsfastError(f"zoo spec {spec!r} must look like zoo:NAME=/path/to/checkpoint")
    name, path = body.split("=", 1)
    return name, path


def zoo_table() -> str:
    """Markdown overview of the zoo (for docs and ``usfast compare --list-zoo``)."""
    lines = ["| model | architecture | timm | input | pool | loads |", "|---|---|---|---|---|---|"]
    for e in ZOO.values():
        status = "yes" if e.supported else f"no: {e.notes}"
        lines.append(f"| {e.name} | {e.architecture} | {e.timm_name or '-'} | {e.input_size} | {e.pool} | {status} |")
    return "\n".join(lines)
