"""SALT teachers: frozen encoders that embed the full image once per step.

A teacher declares its own input normalisation, input size, patch size and width. The trainer
feeds it the *student's* normalised batch; :class:`Teacher` converts the normalisation and, when
the teacher's patch size differs, resizes the image so that the teacher's token grid equals the
student's (target indices must address the same patches in both).

Two kinds:
- frozen (SALT, US-JEPA): any timm ViT by name plus a local checkpoint, or a usfast export-ready
  ``.safetensors`` (e.g. the stage-1 pixel teacher) — loaded through
  :func:`usjepa_fast.models.frozen.load_frozen_encoder`; ``eval()``, no grad, optional bf16.
- EMA (I-JEPA online teacher, the RQ1 baseline): a copy of the student updated as
  ``t = m * t + (1 - m) * s`` after every optimizer step, momentum scheduled 0.996 -> 1.0.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from usjepa_fast.errors import UsfastError
from usjepa_fast.models.frozen import FrozenEncoder, load_frozen_encoder
from usjepa_fast.models.vit import VisionTransformer

log = logging.getLogger("usfast")


class Teacher(nn.Module):
    """Full-image token embedder: forward(x (B, 3, S, S) student-normalised) -> (B, N, Dt)."""

    def __init__(
        self,
        encoder: nn.Module,
        width: int,
        mean: Sequence[float],
        std: Sequence[float],
        input_size: int,
        source: str,
        bf16: bool = False,
        trainable_copy: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.width = int(width)
        self.input_size = int(input_size)
        self.source = source
        self.bf16 = bf16
        self.is_ema = trainable_copy
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_mean", self.mean.clone(), persistent=False)
        self.register_buffer("in_std", self.std.clone(), persistent=False)
        for param in self.encoder.parameters():
            param.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> Teacher:  # teachers never use dropout / drop-path
        return super().train(False)

    def set_input_normalisation(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Declare how the batches fed to :meth:`forward` are normalised (the student's data config)."""
        self.in_mean.copy_(torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.in_std.copy_(torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.encoder, FrozenEncoder):
            return self.encoder.forward_tokens(x)
        return self.encoder.forward_features(x)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x * self.in_std + self.in_mean - self.mean) / self.std  # student -> teacher normalisation
        if x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        use_bf16 = self.bf16 and x.device.type in ("cuda", "cpu")
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            tokens = self._tokens(x)  # (B, N, Dt)
        return tokens.float()

    @torch.no_grad()
    def ema_update(self, student: nn.Module, momentum: float) -> None:
        """t <- m * t + (1 - m) * s over matching parameters (EMA mode only)."""
        if not self.is_ema:
            raise RuntimeError("ema_update called on a frozen teacher")
        t_params = list(self.encoder.parameters())
        s_params = list(student.parameters())
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(t_params, [p.detach() for p in s_params], alpha=1.0 - momentum)


def frozen_teacher(
    spec: str,
    arch: str | None,
    grid: tuple[int, int],
    bf16: bool = False,
) -> Teacher:
    """Load a frozen SALT teacher whose token grid matches the student's ``grid``.

    ``spec``: a usfast ``.safetensors`` (sidecar beside it), a run directory, a checkpoint path
    with ``arch`` (timm name, e.g. ``vit_base_patch16_224`` for URFM), or a timm name (random
    init, for ablations only).
    """
    probe = load_frozen_encoder(spec, arch=arch)
    patch = probe.info.patch_size
    want = grid[0] * patch
    encoder = probe
    if probe.info.input_size != want:
        if arch is None and Path(spec).exists():
            raise UsfastError(
                f"teacher {spec} takes {probe.info.input_size}px inputs ({probe.info.input_size // patch} patches a "
                f"side) but the student grid is {grid[0]}; set student.img_size={probe.info.input_size // patch * 16}"
                " or export the teacher at the student's grid"
            )
        # A raw checkpoint or a timm name: rebuild at the student's grid (pos_embed resampled by
        # the loader; a timm name is re-created at that size).
        encoder = load_frozen_encoder(spec, arch=arch, img_size=want)
    info = encoder.info
    if info.num_prefix_tokens and info.pool == "cls":
        log.info("teacher %s: class token dropped, SALT targets are patch tokens", spec)
    log.info("teacher %s: width %d, input %dpx, patch %d", spec, info.width, want, patch)
    return Teacher(encoder, info.width, info.mean, info.std, want, str(spec), bf16=bf16)


def ema_teacher(student: VisionTransformer, mean: Sequence[float], std: Sequence[float]) -> Teacher:
    """I-JEPA target encoder: a copy of the student (same width, grid, normalisation)."""
    target = copy.deepcopy(student)
    side = student.grid[0] * student.patch_embed.patch_size[0]
    return Teacher(target, student.embed_dim, mean, std, side, "ema", bf16=False, trainable_copy=True)
