"""The field's encoders (the paper's baselines and more): how each loads from a *local* checkpoint.

Every entry states the architecture, the timm model that rebuilds it (when timm has one), the key
remapping from the authors' release format (wrapper keys, prefixes, renames, a release ``layout``
of :mod:`usjepa_fast.models.layouts`), the normalisation and input size, and the pooling used for
the linear probe. Entries whose architecture timm does not cover (SAMUS, EchoCare, V-JEPA 2,
EchoJEPA) say why and the resolver raises a one-line :class:`UsfastError` for them instead of
building a look-alike model that would silently give wrong numbers.

This module only *declares*; loading is :func:`usjepa_fast.models.resolve.resolve_encoder` with the
spec ``zoo:<NAME>=<checkpoint path>`` (every command that takes an encoder, and ``teacher.spec``),
e.g. ``zoo:DINOv3=/ckpt/dinov3_vitb16_pretrain_lvd1689m.pth``; ``zoo:<NAME>:<BRANCH>=<path>`` picks
one of the entry's ``branches`` (``zoo:V-JEPA:encoder=vitl16.pth.tar`` = the online encoder instead
of the EMA ``target_encoder`` evaluated by default). Unwrapping is
:func:`usjepa_fast.models.checkpoints.unwrap_state_dict` with the entry's ``wrapper_keys`` first.
Key remaps were written against the public release code named in ``release_format``; tests build
checkpoints in those layouts from timm models and check the features equal the timm model's (no
real weights are available offline), so treat the first load of a real checkpoint as the last
check -- a layout mismatch fails loudly with the missing/unexpected keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from usjepa_fast.errors import CheckpointError, UsfastError
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
    branches: tuple[str, ...] = ()  # sub-dicts a user may pick (zoo:NAME:BRANCH=PATH); the first is the default
    strip_prefixes: tuple[str, ...] = ()  # key prefixes removed (after unwrapping)
    drop_prefixes: tuple[str, ...] = ()  # keys dropped (decoders, heads, predictors)
    rename: tuple[tuple[str, str], ...] = ()  # regex substitutions applied to every key, in order
    timm_filter: str | None = None  # "module:function" timm checkpoint filter applied after the remaps
    layout: str | None = "auto"  # models.layouts converter: a name (forced), "auto" (detected) or None
    loader: str = "timm"  # "timm", "usfast" (sidecar checkpoints, read like any usfast export) or "unsupported"
    notes: str = ""  # for unsupported entries: why (shown by --list-zoo and the refusal)

    @property
    def supported(self) -> bool:
        return self.loader != "unsupported"

    @property
    def loader_text(self) -> str:
        """How the entry loads, for the zoo table."""
        if self.loader == "usfast":
            return "usfast sidecar"
        if not self.supported:
            return "-"
        steps = [f"timm `{self.timm_name}`"]
        if self.layout and self.layout != "auto":
            steps.append(f"`{self.layout}` layout")
        if self.timm_filter:
            steps.append(f"`{self.timm_filter.rsplit(':', 1)[0].rsplit('.', 1)[-1]}` filter")
        if self.branches:
            steps.append(f"branch {' / '.join(self.branches)}")
        return ", ".join(steps)

    @property
    def normalisation_text(self) -> str:
        if tuple(self.mean) == tuple(IMAGENET_MEAN) and tuple(self.std) == tuple(IMAGENET_STD):
            return "ImageNet"
        return f"mean {list(self.mean)}, std {list(self.std)}"


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
            branches=("target_encoder", "encoder"),
            strip_prefixes=("module.",),
            notes="Keys match timm's VisionTransformer after stripping 'module.'.",
        ),
        ZooEntry(
            name="V-JEPA",
            architecture="ViT-L/16 video encoder (tubelet 2, 16 frames, 3-D sincos), no class token (Meta V-JEPA)",
            timm_name="vit_large_patch16_224",
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            pool="mean",
            release_format="facebookresearch/jepa vitl16.pth.tar ({'encoder', 'predictor', 'target_encoder'}, "
            "'module.backbone.*')",
            timm_kwargs={"num_classes": 0, "class_token": False, "global_pool": "avg", "fc_norm": False},
            wrapper_keys=("target_encoder", "encoder"),
            branches=("target_encoder", "encoder"),
            strip_prefixes=("module.", "backbone."),
            layout="vjepa",
            notes="One frame = one tubelet of it (V-JEPA's own forward on a 2-frame clip: kernel summed over time, "
            "pos-embed interpolated to one temporal position); V-JEPA's image eval instead repeats it over 16 frames.",
        ),
        ZooEntry(
            name="V-JEPA-H",
            architecture="ViT-H/16 video encoder (tubelet 2, 16 frames, 3-D sincos), no class token (Meta V-JEPA)",
            timm_name="vit_huge_patch16_gap_448",
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            pool="mean",
            release_format="facebookresearch/jepa vith16.pth.tar ({'encoder', 'predictor', 'target_encoder'}, "
            "'module.backbone.*')",
            timm_kwargs={"num_classes": 0, "img_size": 224},
            wrapper_keys=("target_encoder", "encoder"),
            branches=("target_encoder", "encoder"),
            strip_prefixes=("module.", "backbone."),
            layout="vjepa",
            notes="As V-JEPA; vith16-384 loads with --img-size 384.",
        ),
        ZooEntry(
            name="V-JEPA2",
            architecture="ViT-L/H/g video encoder with 3-D RoPE (no pos-embed table), tubelet 2 (Meta V-JEPA 2)",
            timm_name=None,
            input_size=256,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            pool="mean",
            release_format="facebookresearch/vjepa2 vitl.pt / vith.pt / vitg.pt ({'encoder', 'target_encoder'}, "
            "'module.backbone.*')",
            branches=("target_encoder", "encoder"),
            loader="unsupported",
            notes="timm has no V-JEPA 2 attention (3-D RoPE on thirds of each head with V-JEPA 2's own frequency "
            "layout); embed it with the vjepa2 eval code.",
        ),
        ZooEntry(
            name="EchoJEPA",
            architecture="V-JEPA 2 ViT-L/16 and ViT-g/16 (3-D RoPE) pretrained on echocardiography videos",
            timm_name=None,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            pool="mean",
            release_format="bowang-lab/EchoJEPA checkpoints (V-JEPA 2 layout: {'encoder', 'target_encoder'})",
            branches=("target_encoder", "encoder"),
            loader="unsupported",
            notes="Built on V-JEPA 2: timm has no 3-D RoPE attention of that layout; embed it with EchoJEPA's code.",
        ),
        ZooEntry(
            name="DINOv2",
            architecture="ViT-B/14 with LayerScale and class token (Meta DINOv2, LVD-142M)",
            timm_name="vit_base_patch14_dinov2",
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            pool="cls",
            release_format="facebookresearch/dinov2 dinov2_vitb14_pretrain.pth (plain, 518 px) or "
            "teacher_checkpoint.pth ({'teacher': {'backbone.*'}})",
            timm_kwargs={"num_classes": 0, "img_size": 224},
            wrapper_keys=("teacher", "model", "state_dict"),
            branches=("teacher", "student"),
            strip_prefixes=("module.",),
            layout="dinov2",
            notes="pos-embed resampled to the 16x16 grid of 224 px by DINOv2's own interpolation.",
        ),
        ZooEntry(
            name="DINOv2-reg",
            architecture="ViT-B/14 with 4 register tokens, LayerScale, class token (Meta DINOv2 + registers)",
            timm_name="vit_base_patch14_reg4_dinov2",
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            pool="cls",
            release_format="facebookresearch/dinov2 dinov2_vitb14_reg4_pretrain.pth (register_tokens, 518 px)",
            timm_kwargs={"num_classes": 0, "img_size": 224},
            wrapper_keys=("teacher", "model", "state_dict"),
            branches=("teacher", "student"),
            strip_prefixes=("module.",),
            layout="dinov2",
            notes="registers become timm's reg_token; the class token takes its position embedding.",
        ),
        ZooEntry(
            name="UltraSAM",
            architecture="SAM ViT-B image encoder (1024 px, windowed attention, neck to 256 ch) trained on US-43d",
            timm_name="samvit_base_patch16",
            input_size=1024,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            pool="mean",
            release_format="CAMMA-public/UltraSam UltraSam.pth: mmengine {'meta', 'state_dict'} with mmpretrain "
            "ViTSAM keys under 'backbone.' (a SAM 'image_encoder.*' state dict loads too)",
            timm_kwargs={"num_classes": 0},
            wrapper_keys=("state_dict", "model"),
            notes="Features are SAM's 256-ch image embedding (the neck), mean-pooled over the 64x64 grid; "
            "UltraSam's own classification configs pool the 768-ch last block instead.",
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
            architecture="BEiT-style ViT-B/16: relative position bias, LayerScale, mean pooling + fc_norm (USFM)",
            timm_name="beit_base_patch16_224",
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            pool="mean",
            release_format="openmedlab/USFM USFM_latest.pth (unilm BEiT keys: q_bias/v_bias, gamma_1/2, shared "
            "rel_pos_bias or per-block tables)",
            timm_kwargs={"num_classes": 0, "global_pool": "avg"},
            wrapper_keys=("model", "state_dict", "module"),
            strip_prefixes=("module.", "encoder."),
            layout="beit",
            notes="Features = fc_norm(mean of patch tokens), USFM's classification pooling; a pretraining checkpoint "
            "(norm.*, no fc_norm.*) gets the identity fc_norm USFM's classifier starts from.",
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


class ZooSpec(NamedTuple):
    """A parsed ``zoo:NAME[:BRANCH]=PATH``."""

    name: str
    path: str
    branch: str | None = None


def remap_state_dict(entry: ZooEntry, state: Any, branch: str | None = None) -> dict[str, torch.Tensor]:
    """Release-format state (possibly wrapped) -> keys of ``entry``'s timm model (before its layout/filter).

    ``branch``: one of ``entry.branches`` (a top-level sub-dict of the checkpoint); None = the
    entry's wrapper order (its default branch first).
    """
    prefer = entry.wrapper_keys
    if branch is not None:
        if branch not in entry.branches:
            choices = ", ".join(entry.branches) if entry.branches else "none (the entry has one set of weights)"
            raise UsfastError(f"zoo entry {entry.name} has no branch {branch!r}; branches: {choices}")
        if not (isinstance(state, Mapping) and isinstance(state.get(branch), Mapping)):
            found = sorted(state)[:8] if isinstance(state, Mapping) else type(state).__name__
            raise CheckpointError(
                f"{entry.name} checkpoint has no {branch!r} state dict (top-level keys: {found}); drop :{branch} "
                "or pass a training checkpoint that holds it"
            )
        prefer = (branch,)
    sd, _ = unwrap_state_dict(state, prefer=prefer)
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


def parse_zoo_spec(spec: str) -> ZooSpec | None:
    """``'zoo:NAME=PATH'`` / ``'zoo:NAME:BRANCH=PATH'`` -> :class:`ZooSpec`; anything else -> None."""
    if not spec.startswith("zoo:"):
        return None
    body = spec[4:]
    if "=" not in body:
        raise UsfastError(f"zoo spec {spec!r} must look like zoo:NAME=/path/to/checkpoint (or zoo:NAME:BRANCH=...)")
    name, path = body.split("=", 1)
    name, sep, branch = name.partition(":")
    if sep and not branch:
        raise UsfastError(f"zoo spec {spec!r}: name a branch after the colon (zoo:NAME:BRANCH=PATH) or drop it")
    return ZooSpec(name, path, branch or None)


def zoo_table() -> str:
    """Markdown overview of the zoo (for docs and ``usfast compare --list-zoo``)."""
    lines = [
        "| model | architecture | input | normalisation | pool | loader | loads |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in ZOO.values():
        status = "yes" if e.supported else f"no: {e.notes}"
        lines.append(
            f"| {e.name} | {e.architecture} | {e.input_size} | {e.normalisation_text} | {e.pool} | "
            f"{e.loader_text} | {status} |"
        )
    return "\n".join(lines)
