"""SALT teachers: frozen encoders that embed the full image once per step.

A teacher declares its own input normalisation, input size, patch size and width. The trainer
feeds it the *student's* normalised batch; :class:`Teacher` converts the normalisation and, when
the teacher's patch size differs, resizes the image so that the teacher's token grid equals the
student's (target indices must address the same patches in both).

Two kinds:
- frozen (SALT, US-JEPA): any torch-loadable encoder spec -- a usfast run dir / export-ready
  ``.safetensors`` (e.g. the stage-1 pixel teacher, always read through its sidecar), ``zoo:URFM=PATH``
  (the zoo entry's normalisation), a raw checkpoint + timm ``arch`` (normalisation: ``mean``/``std``
  or timm's default), a timm name or ``random:SPEC`` (ablations) -- opened by
  :func:`usjepa_fast.models.resolve.resolve_encoder`; ``eval()``, no grad, optional bf16.
- EMA (I-JEPA online teacher, the RQ1 baseline): a copy of the student updated as
  ``t = m * t + (1 - m) * s`` after every optimizer step, momentum scheduled 0.996 -> 1.0; it runs
  under the trainer's precision (``bf16`` = ``run.precision``), like the student it tracks.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from usjepa_fast.errors import UsfastError
from usjepa_fast.masking.ragged import RaggedIndex
from usjepa_fast.models.frozen import EncoderInfo, FrozenEncoder
from usjepa_fast.models.resolve import describe_encoder, parse_encoder_spec, resolve_encoder
from usjepa_fast.models.vit import VisionTransformer

log = logging.getLogger("usfast")


class Teacher(nn.Module):
    """Full-image token embedder: forward(x (B, 3, S, S) student-normalised) -> (B, N, Dt).

    ``bf16``: the encoder runs under bf16 autocast when True and in fp32 when False, whatever
    autocast the caller is in (the frozen teacher's precision is its own config key, the EMA
    teacher's is the trainer's).
    """

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
        info: EncoderInfo | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.width = int(width)
        self.input_size = int(input_size)
        self.source = source
        self.bf16 = bf16
        self.is_ema = trainable_copy
        self.info = info  # the frozen encoder's description (None for the EMA copy)
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

    @property
    def keep_unsupported(self) -> str | None:
        """None when the teacher can embed kept patches only (``forward(x, keep)``), else why not."""
        if not isinstance(self.encoder, FrozenEncoder):
            return "the EMA teacher embeds the full image"
        return self.encoder.keep_unsupported

    @torch.no_grad()
    def forward(self, x: torch.Tensor, keep: RaggedIndex | None = None) -> torch.Tensor:
        """(B, 3, S, S) -> (B, N, Dt). ``keep`` (one patch sequence per image, ``teacher.tokens=scan``):
        only those patches go through the encoder; the other rows of the output are zeros (no target
        may address them)."""
        x = (x * self.in_std + self.in_mean - self.mean) / self.std  # student -> teacher normalisation
        if x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        use_bf16 = self.bf16 and x.device.type in ("cuda", "cpu")
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            if keep is None:
                return self._tokens(x).float()  # (B, N, Dt)
            if self.keep_unsupported is not None:
                raise UsfastError(f"teacher.tokens=scan: {self.keep_unsupported}; use teacher.tokens=full")
            kept = self.encoder.features(x, keep)[1].float()  # (T, Dt) packed, keep order
        b, n = x.shape[0], (self.input_size // self.info.patch_size) ** 2
        out = kept.new_zeros(b * n, kept.shape[-1])
        out[keep.flat(n)] = kept  # scatter back onto the grid the targets index
        return out.view(b, n, -1)

    @torch.no_grad()
    def ema_update(self, student: nn.Module, momentum: float) -> None:
        """t <- m * t + (1 - m) * s over matching parameters (EMA mode only)."""
        if not self.is_ema:
            raise RuntimeError("ema_update called on a frozen teacher")
        t_params = list(self.encoder.parameters())
        s_params = list(student.parameters())
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(t_params, [p.detach() for p in s_params], alpha=1.0 - momentum)


_NORMALISATION_ORIGIN = {
    "usfast": "its sidecar",
    "zoo": "the zoo entry",
    "checkpoint": "timm's default for the arch (set teacher.mean / teacher.std if it was trained otherwise)",
    "timm": "timm's default",
}


def frozen_teacher(
    spec: str,
    arch: str | None,
    grid: tuple[int, int],
    bf16: bool = False,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    student_patch: int = 16,
) -> Teacher:
    """Load a frozen SALT teacher whose token grid matches the student's ``grid``.

    ``spec``: any torch-loadable spec of :mod:`usjepa_fast.models.resolve` -- a usfast run directory
    or ``.safetensors`` (read through its sidecar; an ``arch`` equal to the sidecar's is fine),
    ``zoo:URFM=PATH``, a checkpoint path with ``arch`` (timm name, e.g. ``vit_base_patch16_224`` for
    URFM), a timm name or ``random:SPEC`` (random init, for ablations only). ``mean``/``std``
    replace the declared normalisation; ``student_patch`` only words the grid-mismatch error.
    """
    parsed = parse_encoder_spec(spec, arch)
    if parsed.form == "runtime":
        raise UsfastError(
            f"teacher {spec} is an ONNX / TensorRT file; SALT needs the PyTorch teacher's patch tokens: pass the "
            "checkpoint or run dir it was exported from"
        )
    declared = describe_encoder(parsed, arch=arch, mean=mean, std=std)  # meta device: no weights read yet
    patch = declared.patch_size
    want = grid[0] * patch
    base = parsed.base if parsed.form == "random" and parsed.base is not None else parsed
    img_size = None
    if declared.input_size != want:
        trained_usfast = parsed.form == "usfast" or (
            parsed.form == "zoo" and parsed.entry is not None and parsed.entry.loader == "usfast"
        )
        if trained_usfast:  # our own export: resampling its position embeddings would change its features
            side = declared.input_size // patch
            raise UsfastError(
                f"teacher {spec} takes {declared.input_size}px inputs ({side} patches a side) but the student grid is "
                f"{grid[0]}; set data.image_size={side * student_patch} (model.patch_size {student_patch}) or train "
                "the teacher at the student's grid"
            )
        # A raw checkpoint, a zoo entry, a timm name or a random init: built at the student's grid
        # (position embeddings resampled by the loader).
        img_size = want
        log.info("teacher %s: position embeddings resampled from %dpx to %dpx", spec, declared.input_size, want)
    encoder = resolve_encoder(parsed, arch=arch, img_size=img_size, mean=mean, std=std)
    info = encoder.info
    if info.num_prefix_tokens and info.pool == "cls":
        log.info("teacher %s: class token dropped, SALT targets are patch tokens", spec)
    origin = "teacher.mean / teacher.std" if mean is not None or std is not None else _NORMALISATION_ORIGIN[base.form]
    log.info(
        "teacher %s (%s %s): width %d, input %dpx, patch %d, normalisation mean=%s std=%s (from %s), %s",
        spec,
        parsed.form,
        info.timm_name,
        info.width,
        want,
        patch,
        _fmt(info.mean),
        _fmt(info.std),
        origin,
        "bf16 autocast" if bf16 else "fp32",
    )
    return Teacher(encoder, info.width, info.mean, info.std, want, info.source, bf16=bf16, info=info)


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def ema_teacher(student: VisionTransformer, mean: Sequence[float], std: Sequence[float], bf16: bool = False) -> Teacher:
    """I-JEPA target encoder: a copy of the student (same width, grid, normalisation).

    ``bf16``: the trainer's precision (``run.precision``): the target encoder runs as the student does,
    so the SALT-vs-EMA compute comparison measures the objective, not a precision difference.
    """
    target = copy.deepcopy(student)
    side = student.grid[0] * student.patch_embed.patch_size[0]
    return Teacher(target, student.embed_dim, mean, std, side, "ema", bf16=bf16, trainable_copy=True)
