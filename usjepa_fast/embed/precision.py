"""Which precision a backend runs in, and the fp32 parity gate every reduced precision must pass.

:func:`resolve_precision` is the one rule (``auto`` and explicit requests alike): ``auto`` is the
fastest precision the hardware runs *natively* for the runtime (bf16 on a CPU with AMX-BF16 or
AVX512-BF16, fp32 on an AVX2-only CPU, bf16 on an Ampere+ GPU, ...). Nothing is timed, so the
choice is the same on every run of one machine, and a resumed run cannot flip precision.

:class:`GatedBackend` wraps a reduced-precision backend with an fp32 reference over the same
weights: its first call computes both and refuses (:class:`PrecisionParityError`, before any
feature leaves the backend) when the lowest per-row cosine of the pooled features is below
``min_cosine`` (``export.onnx_export.REDUCED_PRECISION_MIN_COSINE``, 0.999); otherwise it logs the
figure, keeps it in ``.gate`` and drops the reference.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from usjepa_fast.errors import UsfastError

log = logging.getLogger("usfast")

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
# CPU bf16 pays only when matmuls are wide enough to outweigh the casts autocast inserts around
# them. Measured on an AVX512-BF16 CPU (2 threads, batch 32, interleaved): width 96 0.77x fp32,
# ViT-Ti (192) 1.06x, ViT-S (384) 1.5-2.3x. Below this width `auto` keeps fp32 on the CPU.
MIN_CPU_BF16_WIDTH = 256
RUNTIMES = ("torch", "onnx", "openvino", "tensorrt")


class PrecisionParityError(UsfastError):
    """A reduced-precision backend's features drift from fp32 beyond the gate."""


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # fp32 | bf16 | fp16 | int8
    reason: str  # one line: why (the ISA/GPU fact, or "requested")
    native: bool  # the hardware runs it natively (False: emulated, expect it slower than fp32)


def check_precision_name(precision: str | None) -> str:
    p = "auto" if precision is None else str(precision).lower()
    if p not in PRECISIONS:
        raise UsfastError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return p


def resolve_precision(
    requested: str | None, runtime: str, device: torch.device | str, caps: Any = None, width: int | None = None
) -> PrecisionChoice:
    """The precision ``runtime`` (torch / onnx / openvino / tensorrt) runs on ``device``.

    ``caps``: a :class:`usjepa_fast.hardware.CpuCaps` (CPU) or ``CudaCaps`` (GPU); None = detect.
    ``width``: the encoder's embedding width (CPU ``auto``: bf16 from :data:`MIN_CPU_BF16_WIDTH`).
    Raises :class:`UsfastError` for combinations no runtime implements (ORT bf16 on a CPU, ...).
    """
    from usjepa_fast import hardware

    req = check_precision_name(requested)
    dev = torch.device(device)
    if runtime not in RUNTIMES:
        raise UsfastError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    if dev.type == "cuda":
        gpu = caps if caps is not None else hardware.cuda_caps(dev)
        bf16, fp16 = (gpu.bf16, gpu.fp16) if gpu is not None else (False, False)
        name = gpu.name if gpu is not None else "this GPU"
        if req == "int8":
            raise UsfastError("--precision int8 is a CPU path (ONNX Runtime on VNNI/AMX); on a GPU use fp16 or bf16")
        if runtime == "tensorrt":
            if req in ("auto", "fp16"):
                return PrecisionChoice("fp16", f"TensorRT fp16 engine on {name}", fp16)
            if req == "fp32":
                return PrecisionChoice("fp32", "requested", True)
            raise UsfastError(f"TensorRT engines here are fp32 or fp16, not {req}; use --precision fp16")
        if runtime == "openvino":
            raise UsfastError("the OpenVINO backend runs on the CPU; use --device cpu or --backend torch")
        if runtime == "onnx":
            if req == "auto":
                return PrecisionChoice("fp16" if fp16 else "fp32", f"ONNX Runtime CUDA on {name}", True)
            if req == "bf16":
                raise UsfastError("ONNX exports are fp32 or fp16; use --precision fp16 with --backend onnx")
            return PrecisionChoice(req, "requested", req == "fp32" or fp16)
        if req == "auto":
            if bf16:  # bf16 keeps fp32's range (no overflow in attention logits) at fp16 speed
                return PrecisionChoice("bf16", f"{name} has bf16 tensor cores", True)
            if fp16:
                return PrecisionChoice("fp16", f"{name} has fp16 tensor cores but no bf16", True)
            return PrecisionChoice("fp32", f"{name} has no reduced-precision tensor cores", True)
        native = req == "fp32" or (req == "bf16" and bf16) or (req == "fp16" and fp16)
        return PrecisionChoice(req, "requested", native)

    cpu = caps if caps is not None else hardware.cpu_caps()
    if runtime == "tensorrt":
        raise UsfastError("TensorRT runs on CUDA devices only; drop --device cpu or use --backend onnx")
    if runtime == "onnx":
        if req in ("auto", "fp32"):
            why = "ONNX Runtime's CPU kernels compute in fp32 (no x86 bf16 path); int8 is an explicit choice"
            return PrecisionChoice("fp32", why if req == "auto" else "requested", True)
        if req == "int8":
            why = f"int8 ({'VNNI/AMX dot products' if cpu.int8_native else 'no VNNI/AMX: emulated, slow'})"
            return PrecisionChoice("int8", why, cpu.int8_native)
        if req == "fp16":
            return PrecisionChoice("fp16", "requested (fp16 graph; emulated on this CPU)", cpu.fp16_native)
        raise UsfastError(
            "ONNX Runtime has no bf16 CPU kernels; use --backend torch or openvino for bf16, or --precision int8"
        )
    if req == "int8":
        raise UsfastError(f"--precision int8 runs through ONNX Runtime; use --backend onnx (not {runtime})")
    if req == "auto":
        if cpu.bf16_native and width is not None and width < MIN_CPU_BF16_WIDTH:
            why = f"{cpu.isa}: bf16 is native but a width-{width} model gains less than its casts cost"
            return PrecisionChoice("fp32", why, True)
        if cpu.bf16_native:
            unit = "AMX-BF16" if cpu.amx_bf16 else "AVX512-BF16"
            return PrecisionChoice("bf16", f"{cpu.isa}: {unit} runs bf16 matmuls natively", True)
        return PrecisionChoice("fp32", f"{cpu.isa}: no AMX-BF16/AVX512-BF16, bf16 would be emulated (slower)", True)
    if runtime == "openvino" and req == "fp16" and not cpu.fp16_native:
        raise UsfastError("OpenVINO runs fp16 on CPUs with AMX-FP16/AVX512-FP16 only; use --precision bf16 or fp32")
    native = req == "fp32" or (req == "bf16" and cpu.bf16_native) or (req == "fp16" and cpu.fp16_native)
    return PrecisionChoice(req, "requested", native)


# ----------------------------------------------------------------------------------------------
# the gate


@dataclass(frozen=True)
class GateReport:
    precision: str
    cosine_min: float  # lowest per-row cosine of pooled features vs fp32
    batch: int  # rows compared
    passed: bool
    where: str  # "first batch" | "open-time check (simulated B-mode frames)"
    min_cosine: float  # the threshold it was judged against

    def line(self, backend: str) -> str:
        op = ">=" if self.passed else "<"
        return (
            f"precision {self.precision} on {backend}: cosine {self.cosine_min:.6f} {op} {self.min_cosine} vs fp32 "
            f"on the {self.where} ({self.batch} frames)"
        )


def cosine_min(a: torch.Tensor, b: torch.Tensor) -> float:
    """Lowest per-row cosine similarity of two ``(B, D)`` feature batches (nan/inf -> -1)."""
    a, b = a.detach().float().cpu().reshape(a.shape[0], -1), b.detach().float().cpu().reshape(b.shape[0], -1)
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return -1.0
    return float(torch.nn.functional.cosine_similarity(a, b, dim=1).min())


class GatedBackend:
    """``candidate`` (reduced precision) checked against ``reference`` (fp32, same weights) on its
    first batch; afterwards a transparent pass-through. ``reference`` may be a backend or any
    callable ``(B, 3, S, S) -> (B, D)``; it is released once the gate has passed."""

    def __init__(
        self,
        candidate: Any,
        reference: Callable[[torch.Tensor], torch.Tensor],
        precision: str,
        min_cosine: float | None = None,
        reason: str = "",
    ) -> None:
        from usjepa_fast.export import onnx_export

        if min_cosine is None:  # the one threshold of every reduced precision, read at call time
            min_cosine = onnx_export.REDUCED_PRECISION_MIN_COSINE
        self.candidate = candidate
        self._reference: Callable[[torch.Tensor], torch.Tensor] | None = reference
        self.info = candidate.info
        self.name = candidate.name
        self.device = candidate.device
        self.precision = precision
        self.min_cosine = min_cosine
        self.reason = reason
        self.gate: GateReport | None = None

    def check(self, x: torch.Tensor, where: str = "first batch", keep: Any = None) -> GateReport:
        """Run the gate on ``x`` (and ``keep``: kept tokens) now; raises :class:`PrecisionParityError`
        when it fails."""
        if self._reference is None:
            raise UsfastError("the parity gate already ran; its report is in .gate")
        out = self.candidate(x) if keep is None else self.candidate(x, keep)
        ref = self._reference(x) if keep is None else self._reference(x, keep)
        cos = cosine_min(out, ref)
        report = GateReport(self.precision, cos, int(x.shape[0]), cos >= self.min_cosine, where, self.min_cosine)
        self.gate = report
        if not report.passed:
            raise PrecisionParityError(
                f"{report.line(self.name)}: refused, features would drift from fp32; use --precision fp32"
            )
        log.info("%s%s", report.line(self.name), f" ({self.reason})" if self.reason else "")
        self._reference = None  # the reference (an fp32 session or module view) is no longer needed
        self._first_out = out
        return report

    def __call__(self, x: torch.Tensor, keep: Any = None) -> torch.Tensor:
        if self._reference is not None:
            self.check(x, keep=keep)
            out, self._first_out = self._first_out, None
            return out
        return self.candidate(x) if keep is None else self.candidate(x, keep)

    def __getattr__(self, name: str) -> Any:  # runtime details (session, encoder, provider, ...)
        if name in ("candidate", "_reference"):
            raise AttributeError(name)
        return getattr(self.candidate, name)


def simulated_gate_batch(info: Any, n: int = 4, seed: int = 0) -> torch.Tensor:
    """``(n, 3, S, S)`` simulated B-mode frames (speckle, fan/linear geometry, overlays), preprocessed
    as embed does: a deterministic, ultrasound-like batch for open-time precision checks."""
    import numpy as np

    from usjepa_fast.data.preprocess import preprocess_batch
    from usjepa_fast.data.synth import render_image

    frames, masks = [], []
    for i in range(n):
        frame, mask, _ = render_image(np.random.default_rng([seed, i]), i % 4, 128)
        frames.append(frame)
        masks.append(mask)
    return preprocess_batch(
        torch.from_numpy(np.stack(frames)),
        torch.from_numpy(np.stack(masks)),
        info.input_size,
        tuple(info.mean),
        tuple(info.std),
    )
