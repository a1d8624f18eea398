"""Named model configurations: ``create("usjepa_vit_base", img_size=224)``.

Students (context encoders) ``usjepa_vit_{tiny,small,base,large}`` follow the ViT sizes of timm
(and so export to those timm names); predictors ``predictor_{tiny,small,base}`` follow I-JEPA (width
384, depth 12 for the paper's ViT-B/16 recipe); teachers are ``teacher_vit_base_urfm`` (URFM, an MAE
ViT-B/16 whose encoder sits under ``ema_state_dict``; needs ``weights=<local file>``) and
``teacher_timm:<timm name>`` (any timm ViT, ``weights`` optional: without it, random init).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from torch import nn

from usjepa_fast.errors import UsfastError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    """One named configuration; any field can be overridden in :func:`create`."""

    arch: str  # "vit" (student), "predictor" or "teacher"
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    patch_size: int = 16
    img_size: int = 224
    mlp_ratio: float = 4.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    pool: str = "mean"
    weights: str | None = None  # local checkpoint (teachers); never downloaded
    timm_name: str = ""  # the timm architecture this config exports to / loads as
    drop_path_rate: float = 0.0
    # predictor only: input (student) width, output (teacher) width and token grid
    in_dim: int | None = None
    out_dim: int | None = None
    grid: tuple[int, int] | None = None
    per_block: bool = True
    bf16: bool = False  # teachers: run in bf16 autocast


_VIT = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3, timm_name="vit_tiny_patch16_224"),
    "small": dict(embed_dim=384, depth=12, num_heads=6, timm_name="vit_small_patch16_224"),
    "base": dict(embed_dim=768, depth=12, num_heads=12, timm_name="vit_base_patch16_224"),
    "large": dict(embed_dim=1024, depth=24, num_heads=16, timm_name="vit_large_patch16_224"),
}
_PREDICTOR = {
    "tiny": dict(embed_dim=96, depth=4, num_heads=3),
    "small": dict(embed_dim=192, depth=6, num_heads=6),
    "base": dict(embed_dim=384, depth=12, num_heads=12),
}
REGISTRY: dict[str, ModelConfig] = {
    **{f"usjepa_vit_{k}": ModelConfig(arch="vit", **v) for k, v in _VIT.items()},  # type: ignore[arg-type]
    **{f"predictor_{k}": ModelConfig(arch="predictor", **v) for k, v in _PREDICTOR.items()},  # type: ignore[arg-type]
    "teacher_vit_base_urfm": ModelConfig(arch="teacher", timm_name="vit_base_patch16_224"),
}
TIMM_TEACHER_PREFIX = "teacher_timm:"


def list_models() -> list[str]:
    return sorted(REGISTRY) + [TIMM_TEACHER_PREFIX + "<timm vit name>"]


def get_config(name: str, **overrides: Any) -> ModelConfig:
    if name.startswith(TIMM_TEACHER_PREFIX):
        cfg = ModelConfig(arch="teacher", timm_name=name[len(TIMM_TEACHER_PREFIX) :])
    elif name in REGISTRY:
        cfg = REGISTRY[name]
    else:
        raise UsfastError(f"unknown model '{name}'; choose one of {', '.join(list_models())}")
    valid = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise UsfastError(f"model '{name}' has no option(s) {unknown}; valid: {sorted(valid)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return replace(cfg, **overrides)


def create(name: str, **overrides: Any) -> nn.Module:
    """Instantiate a named configuration.

    Students return :class:`~usjepa_fast.models.vit.VisionTransformer`; predictors need ``in_dim``,
    ``out_dim`` and ``grid``; teachers return a frozen :class:`~usjepa_fast.models.teacher.Teacher`
    and need ``grid`` (the student's token grid) and, for URFM, ``weights``.
    """
    cfg = get_config(name, **overrides)
    if cfg.arch == "vit":
        from usjepa_fast.models.vit import VisionTransformer

        return VisionTransformer(
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            drop_path_rate=cfg.drop_path_rate,
            timm_name=cfg.timm_name or "vit_base_patch16_224",
        )
    if cfg.arch == "predictor":
        from usjepa_fast.models.predictor import Predictor

        if cfg.in_dim is None or cfg.out_dim is None or cfg.grid is None:
            raise UsfastError(f"predictor '{name}' needs in_dim (student width), out_dim (teacher width) and grid")
        return Predictor(
            grid=tuple(cfg.grid),
            in_dim=cfg.in_dim,
            out_dim=cfg.out_dim,
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            drop_path_rate=cfg.drop_path_rate,
            per_block=cfg.per_block,
        )
    from usjepa_fast.models.teacher import frozen_teacher

    grid = tuple(cfg.grid) if cfg.grid is not None else (cfg.img_size // cfg.patch_size,) * 2
    if name == "teacher_vit_base_urfm" and not cfg.weights:
        raise UsfastError("teacher_vit_base_urfm needs weights=<path to the URFM checkpoint> (nothing is downloaded)")
    if name == "teacher_vit_base_urfm":  # one source of truth for URFM's layout and normalisation: the zoo
        return frozen_teacher(f"zoo:URFM={cfg.weights}", None, grid, bf16=cfg.bf16)  # type: ignore[arg-type]
    spec = cfg.weights or cfg.timm_name
    arch = cfg.timm_name if cfg.weights else None
    return frozen_teacher(spec, arch, grid, bf16=cfg.bf16)  # type: ignore[arg-type]
