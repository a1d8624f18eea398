"""Frozen encoders for feature extraction, export and probing: the types and the sidecar files.

Every encoder usfast can run frozen becomes a :class:`FrozenEncoder`: a timm model in ``eval()``
with no gradients and an :class:`EncoderInfo` that declares input size, normalisation, pooling and
width, so that export, embed and probe need nothing else. Turning a spec (timm name, usfast
``student.safetensors`` + ``student.json``, foreign checkpoint + arch, ``zoo:``, ``random:``) into
one is the job of :func:`usjepa_fast.models.resolve.resolve_encoder`, and of nothing else.

Pooling default is ``"mean"`` (average of the final-normed patch tokens): JEPA students have no
class token at all, and for MAE-style teachers (URFM) the class token receives no training signal,
so the mean of patch tokens is the one pooling that is meaningful for every encoder we load.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from usjepa_fast.errors import UsfastError
from usjepa_fast.models.checkpoints import file_sha256

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
    """A frozen timm backbone: ``forward(x) -> (B, D)`` pooled, ``forward_tokens(x) -> (B, N, D)``.

    ``forward(x, keep)`` / ``features(x, keep)`` run the encoder on the kept patches only
    (:mod:`usjepa_fast.models.kept_tokens`: scan-region tokens) and pool over them; ``keep`` is a
    :class:`~usjepa_fast.masking.RaggedIndex` (packed, the PyTorch path) or ``(B, K)`` int64 indices
    padded with ``-1`` (the ONNX export's form). :attr:`keep_unsupported` says why a model cannot.
    """

    def __init__(self, model: nn.Module, info: EncoderInfo) -> None:
        super().__init__()
        self.model = model.eval()
        self.info = info
        for param in self.model.parameters():
            param.requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenEncoder:  # a frozen encoder never leaves eval mode
        return super().train(False)

    @property
    def keep_unsupported(self) -> str | None:
        """None when this encoder runs on kept tokens (``forward(x, keep)``), else why not (one line)."""
        if not hasattr(self, "_keep_reason"):
            from usjepa_fast.models.kept_tokens import kept_token_support

            reason = kept_token_support(self.model)
            if reason is None and self.info.pool == "cls" and not self.info.num_prefix_tokens:
                reason = f"{self.info.name} pools its first token but has no class token"
            self._keep_reason = reason
        return self._keep_reason

    def features(self, x: torch.Tensor, keep: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features and patch tokens from one ``forward_features`` call: (B, 3, S, S) ->
        ((B, D), (B, N, D)). The one pooling of usfast (embed, probe and the ONNX export use it):
        ``cls`` = token 0, ``mean`` = mean of the patch tokens, then the model's own ``fc_norm`` when
        it normalises after pooling (BEiT / USFM), i.e. timm's ``forward_head(..., pre_logits=True)``.

        With ``keep`` only the kept patches go through the encoder and ``mean`` averages them: a
        ``RaggedIndex`` gives packed tokens ``(T, D)``; ``(B, K)`` indices padded with ``-1`` give
        ``(B, K, D)`` (rows of pads are meaningless)."""
        if keep is not None:
            return self._features_kept(x, keep)
        feats = self.model.forward_features(x)
        if feats.ndim == 4:  # convolutional timm models / SAM's neck: (B, C, H, W) -> (B, HW, C)
            feats = feats.flatten(2).transpose(1, 2)
            tokens = feats
        else:
            tokens = feats[:, self.info.num_prefix_tokens :]
        return self._head(feats[:, 0] if self.info.pool == "cls" else tokens.mean(dim=1)), tokens

    def _head(self, pooled: torch.Tensor) -> torch.Tensor:
        fc_norm = getattr(self.model, "fc_norm", None)
        if isinstance(fc_norm, nn.Module) and not isinstance(fc_norm, nn.Identity):
            pooled = fc_norm(pooled)
        return pooled

    def _features_kept(self, x: torch.Tensor, keep: Any) -> tuple[torch.Tensor, torch.Tensor]:
        from usjepa_fast.masking.ragged import RaggedIndex
        from usjepa_fast.models.kept_tokens import forward_kept, forward_kept_padded

        if self.keep_unsupported is not None:
            raise UsfastError(f"kept tokens (--tokens scan): {self.keep_unsupported}; use --tokens all")
        if isinstance(keep, RaggedIndex):
            out = forward_kept(self.model, x, keep.to(x.device))
            cls = out.prefix[:, 0] if out.prefix is not None else None
            return self._head(cls if self.info.pool == "cls" else out.mean()), out.tokens
        seq, valid = forward_kept_padded(self.model, x, keep)  # (B, P + K, D), (B, K)
        tokens = seq[:, self.info.num_prefix_tokens :]  # (B, K, D)
        w = valid.to(tokens.dtype)[..., None]
        mean = (tokens * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)
        return self._head(seq[:, 0] if self.info.pool == "cls" else mean), tokens

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens after the final norm: (B, 3, S, S) -> (B, N, D)."""
        return self.features(x)[1]

    def forward(self, x: torch.Tensor, keep: Any = None) -> torch.Tensor:
        """Pooled features: (B, 3, S, S) -> (B, D); over the kept patches only with ``keep``."""
        return self.features(x, keep)[0]


def build_timm_model(timm_name: str, timm_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Create an un-initialised-from-hub timm model (``pretrained=False`` always: no model hubs here)."""
    import timm

    if not timm.is_model(timm_name):
        raise UsfastError(
            f"'{timm_name}' is not a timm architecture; see `timm.list_models()` or pass a usfast .safetensors"
        )
    try:
        return timm.create_model(timm_name, pretrained=False, **(timm_kwargs or {}))
    except (TypeError, AssertionError, ValueError) as exc:  # timm validates kwargs with asserts too
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise UsfastError(f"timm model '{timm_name}' does not accept {sorted(timm_kwargs or {})}: {detail}") from None


def save_export_ready(model: nn.Module, info: EncoderInfo, path: str | Path) -> Path:
    """Write ``<stem>.safetensors`` + ``<stem>.json`` that :func:`~usjepa_fast.models.resolve.resolve_encoder`
    (and timm) load.

    The safetensors file holds exactly the state dict of ``timm.create_model(info.timm_name,
    **info.timm_kwargs)``; the sidecar's ``source_hash`` is filled with the file's sha256.
    """
    from safetensors.torch import save

    from usjepa_fast.fileio import atomic_write_bytes

    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(state, metadata={"format": SIDECAR_FORMAT, "timm_name": info.timm_name}))
    # an absolute source: the sidecar re-opens its weights from any working directory
    info = EncoderInfo(**{**asdict(info), "source": str(path.resolve()), "source_hash": file_sha256(path)})
    write_sidecar(info, path.with_suffix(".json"))
    return path
