"""Frozen encoders for feature extraction, export and probing.

Every encoder usfast can run frozen — a timm model by name, a usfast export-ready student
(``student.safetensors`` + ``student.json``), or a teacher/foreign checkpoint with its timm
architecture — becomes a :class:`FrozenEncoder`: a timm model in ``eval()`` with no gradients and an
:class:`EncoderInfo` that declares input size, normalisation, pooling and width, so that export,
embed and probe need nothing else.

Pooling default is ``"mean"`` (average of the final-normed patch tokens): JEPA students have no
class token at all, and for MAE-style teachers (URFM) the class token receives no training signal,
so the mean of patch tokens is the one pooling that is meaningful for every encoder we load.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from usjepa_fast.errors import CheckpointError, UsfastError
from usjepa_fast.models.checkpoints import file_sha256, load_state_dict_flexible

log = logging.getLogger("usfast")

Pooling = Literal["mean", "cls"]
SIDECAR_FORMAT = "usfast-encoder/1"


@dataclass
class EncoderInfo:
    """What a consumer of an encoder must know; written as the JSON sidecar of exports."""

    name: str  # human-readable model name (timm name or file stem)
    input_size: int  # square input side in pixels
    mean: tuple[float, float, float]  # per-channel normalisation mean (0-1 pixel scale)
    std: tuple[float, float, float]
    pool: str  # "mean" of patch tokens or "cls" token
    width: int  # feature dimension of the pooled output
    patch_size: int = 16
    in_chans: int = 3
    num_prefix_tokens: int = 0  # class/register tokens in front of the patch tokens
    source: str = ""  # where the weights came from (path or timm name)
    source_hash: str = ""  # sha256 of the weights file, or "random-init:<name>:<seed>"
    timm_name: str = ""  # timm architecture that rebuilds the module
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    format: str = SIDECAR_FORMAT

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EncoderInfo:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsfastError(f"encoder sidecar has unknown fields {unknown}; was it written by a newer usfast?")
        data = dict(data)
        data["mean"], data["std"] = tuple(data["mean"]), tuple(data["std"])
        return cls(**data)


def write_sidecar(info: EncoderInfo, path: str | Path) -> None:
    from usjepa_fast.fileio import atomic_write_json

    atomic_write_json(path, info.to_json())


def read_sidecar(path: str | Path) -> EncoderInfo:
    path = Path(path)
    try:
        return EncoderInfo.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise UsfastError(f"sidecar {path} is missing; re-export the encoder with usfast") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UsfastError(f"sidecar {path} is not a valid usfast encoder description ({exc})") from None


class FrozenEncoder(nn.Module):
    """A frozen timm backbone: ``forward(x) -> (B, D)`` pooled, ``forward_tokens(x) -> (B, N, D)``."""

    def __init__(self, model: nn.Module, info: EncoderInfo) -> None:
        super().__init__()
        self.model = model.eval()
        self.info = info
        for param in self.model.parameters():
            param.requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenEncoder:  # a frozen encoder never leaves eval mode
        return super().train(False)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens after the final norm: (B, 3, S, S) -> (B, N, D)."""
        feats = self.model.forward_features(x)
        if feats.ndim == 4:  # convolutional timm models: (B, C, H, W) -> (B, HW, C)
            return feats.flatten(2).transpose(1, 2)
        return feats[:, self.info.num_prefix_tokens :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features: (B, 3, S, S) -> (B, D)."""
        if self.info.pool == "cls":
            return self.model.forward_features(x)[:, 0]
        return self.forward_tokens(x).mean(dim=1)


def _vit_kwargs(pool: str) -> dict[str, Any]:
    # fc_norm=False keeps the final LayerNorm on every token (I-JEPA/MAE layout: norm, then pool),
    # so patch tokens and both poolings come out of one forward_features call.
    return {"num_classes": 0, "global_pool": "token" if pool == "cls" else "avg", "fc_norm": False}


def build_timm_model(timm_name: str, timm_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Create an un-initialised-from-hub timm model (``pretrained=False`` always: no model hubs here)."""
    import timm

    if not timm.is_model(timm_name):
        raise UsfastError(
            f"'{timm_name}' is not a timm architecture; see `timm.list_models()` or pass a usfast .safetensors"
        )
    try:
        return timm.create_model(timm_name, pretrained=False, **(timm_kwargs or {}))
    except TypeError as exc:
        raise UsfastError(f"timm model '{timm_name}' does not accept {sorted(timm_kwargs or {})}: {exc}") from None


def _build_for_pool(timm_name: str, pool: str, img_size: int | None) -> tuple[nn.Module, dict[str, Any]]:
    """Build a ViT with the token layout we pool from; non-ViT timm models get plain kwargs."""
    kwargs = _vit_kwargs(pool)
    if img_size is not None:
        kwargs["img_size"] = img_size
    try:
        return build_timm_model(timm_name, kwargs), kwargs
    except UsfastError:
        plain: dict[str, Any] = {"num_classes": 0}
        if pool == "cls":
            raise
        return build_timm_model(timm_name, plain), plain


def _info_from_model(
    model: nn.Module, name: str, pool: str, source: str, source_hash: str, timm_name: str, timm_kwargs: dict[str, Any]
) -> EncoderInfo:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    patch_embed = getattr(model, "patch_embed", None)
    img_size = getattr(patch_embed, "img_size", None)
    input_size = int(img_size[0]) if img_size is not None else int(cfg.get("input_size", (3, 224, 224))[-1])
    patch = getattr(patch_embed, "patch_size", (16, 16))
    num_prefix = int(getattr(model, "num_prefix_tokens", 0))
    if pool == "cls" and num_prefix == 0:
        raise UsfastError(f"encoder {name} has no class token; use --pool mean")
    return EncoderInfo(
        name=name,
        input_size=input_size,
        mean=tuple(float(m) for m in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(s) for s in cfg.get("std", (0.229, 0.224, 0.225))),
        pool=pool,
        width=int(getattr(model, "num_features", getattr(model, "embed_dim", 0))),
        patch_size=int(patch[0]),
        num_prefix_tokens=num_prefix,
        source=source,
        source_hash=source_hash,
        timm_name=timm_name,
        timm_kwargs=timm_kwargs,
    )


def save_export_ready(model: nn.Module, info: EncoderInfo, path: str | Path) -> Path:
    """Write ``<stem>.safetensors`` + ``<stem>.json`` that :func:`load_frozen_encoder` (and timm) load.

    The safetensors file holds exactly the state dict of ``timm.create_model(info.timm_name,
    **info.timm_kwargs)``; the sidecar's ``source_hash`` is filled with the file's sha256.
    """
    from safetensors.torch import save

    from usjepa_fast.fileio import atomic_write_bytes

    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(state, metadata={"format": SIDECAR_FORMAT, "timm_name": info.timm_name}))
    info = EncoderInfo(**{**asdict(info), "source": str(path), "source_hash": file_sha256(path)})
    write_sidecar(info, path.with_suffix(".json"))
    return path


def load_frozen_encoder(
    spec: str | Path,
    arch: str | None = None,
    pool: str | None = None,
    img_size: int | None = None,
    seed: int = 0,
) -> FrozenEncoder:
    """Resolve an encoder spec into a :class:`FrozenEncoder`.

    ``spec`` is one of:
    - a usfast export-ready ``.safetensors`` with its ``.json`` sidecar (or a run directory holding
      ``student.safetensors``);
    - a checkpoint file (``.pt``/``.pth``/``.bin``/``.safetensors``) together with ``arch``, the timm
      architecture it belongs to (teachers such as URFM: ``arch="vit_base_patch16_224"``);
    - a timm model name: random initialisation from ``seed`` (no hub downloads here), useful as the
      random-init baseline; pass a checkpoint path as spec with ``arch`` for real weights.
    """
    path = Path(spec)
    if path.is_dir():
        candidate = path / "student.safetensors"
        if not candidate.is_file():
            raise UsfastError(f"{path} is a directory without student.safetensors; pass a checkpoint file")
        path = candidate
    if path.suffix in (".onnx", ".engine", ".plan"):
        raise UsfastError(f"{path} is a {path.suffix} file; run it through usjepa_fast.embed.backends.open_backend")

    if path.is_file():
        sidecar = path.with_suffix(".json")
        if path.suffix == ".safetensors" and sidecar.is_file() and arch is None:
            declared = read_sidecar(sidecar)
            kwargs = dict(declared.timm_kwargs)
            if pool is not None and pool != declared.pool:
                kwargs.update(_vit_kwargs(pool))
            model = build_timm_model(declared.timm_name, kwargs)
            load_state_dict_flexible(model, path)
            info = _info_from_model(
                model, declared.name, pool or declared.pool, str(path), file_sha256(path), declared.timm_name, kwargs
            )
            # the training run's normalisation, not timm's default (ImageNet) config
            info.mean, info.std = declared.mean, declared.std
            return FrozenEncoder(model, info)
        if arch is None:
            raise CheckpointError(
                f"checkpoint {path} has no usfast sidecar (.json); pass arch=<timm name> (--arch), "
                "e.g. vit_base_patch16_224 for URFM"
            )
        pool = pool or "mean"
        model, kwargs = _build_for_pool(arch, pool, img_size)
        load_state_dict_flexible(model, path)
        info = _info_from_model(model, path.stem, pool, str(path), file_sha256(path), arch, kwargs)
        return FrozenEncoder(model, info)

    name = str(spec)
    if arch is not None:
        raise UsfastError(f"checkpoint {name} does not exist; check the path")
    import timm

    if not timm.is_model(name):
        raise UsfastError(
            f"'{name}' is neither an existing file nor a timm model name; pass a checkpoint path or a timm name"
        )
    pool = pool or "mean"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, kwargs = _build_for_pool(name, pool, img_size)
    log.warning("encoder %s: random initialisation (seed %d); no weights are downloaded here", name, seed)
    info = _info_from_model(model, name, pool, name, f"random-init:{name}:{seed}", name, kwargs)
    return FrozenEncoder(model, info)
