"""What this machine's CPU and GPU can compute natively: the one place that reads the hardware.

The CPU's instruction-set extensions decide which reduced precisions pay: oneDNN (PyTorch's CPU
matmuls) and OpenVINO run bf16 on AMX-BF16 tiles or AVX512-BF16 dot products at 2-4x fp32; on a
CPU without either, bf16 is *emulated* (converted to fp32 around every op) and runs slower than
fp32. int8 pays with VNNI (AVX512-VNNI / AVX-VNNI dot products) or AMX-INT8; fp16 only with
AVX512-FP16 or AMX-FP16. Flags come from ``/proc/cpuinfo`` (what ``lscpu`` prints) and are
cross-checked against PyTorch's own cpuinfo (``torch.cpu.get_capabilities()``) and the kernel
level its dispatcher uses (``torch.backends.cpu.get_cpu_capability()``): a flag counts only when
both agree where both are known (a VM may expose a flag the hypervisor does not run, and
``ATEN_CPU_CAPABILITY`` may cap PyTorch below the hardware).
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# /proc/cpuinfo flag names (Linux) of the extensions that matter for inference/training precision
_FLAG_ALIASES: dict[str, tuple[str, ...]] = {
    "amx_bf16": ("amx_bf16",),
    "amx_int8": ("amx_int8",),
    "amx_fp16": ("amx_fp16",),
    "amx_tile": ("amx_tile",),
    "avx512_bf16": ("avx512_bf16",),
    "avx512_fp16": ("avx512_fp16",),
    "avx512_vnni": ("avx512_vnni", "avx512vnni"),
    "avx_vnni": ("avx_vnni",),
    "avx512f": ("avx512f",),
    "avx512bw": ("avx512bw",),
    "avx2": ("avx2",),
    "fma": ("fma",),
    "f16c": ("f16c",),
}
# the same extensions under torch.cpu.get_capabilities() names
_TORCH_NAMES: dict[str, str] = {
    "amx_bf16": "amx_bf16",
    "amx_int8": "amx_int8",
    "amx_fp16": "amx_fp16",
    "amx_tile": "amx_tile",
    "avx512_bf16": "avx512_bf16",
    "avx512_fp16": "avx512_fp16",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "avx512f": "avx512_f",
    "avx512bw": "avx512_bw",
    "avx2": "avx2",
}
ISA_LEVELS = ("amx", "avx512_bf16", "avx512_vnni", "avx512", "avx2", "baseline")


def parse_cpuinfo_flags(text: str) -> frozenset[str]:
    """The ``flags`` (x86) or ``Features`` (ARM) set of the first processor in a cpuinfo text."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def raw_cpu_flags(path: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """Every flag ``lscpu`` shows (``/proc/cpuinfo``), unfiltered; empty off Linux. For results files."""
    p = Path(path)
    return parse_cpuinfo_flags(p.read_text(errors="replace")) if p.is_file() else frozenset()


@dataclass(frozen=True)
class CpuCaps:
    """CPU extensions relevant to precision; ``flags`` are the normalised names in ``_FLAG_ALIASES``."""

    flags: frozenset[str]
    model_name: str
    torch_capability: str  # the ATen kernel level in use: DEFAULT, AVX2, AVX512, SVE256, ...
    source: str  # where the flags came from ("/proc/cpuinfo + torch cpuinfo", "torch cpuinfo", ...)
    disagreements: tuple[str, ...] = ()  # flags one source reports and the other denies (dropped)

    def has(self, name: str) -> bool:
        return name in self.flags

    amx_bf16 = property(lambda self: self.has("amx_bf16"))
    amx_int8 = property(lambda self: self.has("amx_int8"))
    amx_fp16 = property(lambda self: self.has("amx_fp16"))
    avx512_bf16 = property(lambda self: self.has("avx512_bf16"))
    avx512_fp16 = property(lambda self: self.has("avx512_fp16"))
    avx512_vnni = property(lambda self: self.has("avx512_vnni"))
    avx_vnni = property(lambda self: self.has("avx_vnni"))
    avx512 = property(lambda self: self.has("avx512f"))
    avx2 = property(lambda self: self.has("avx2"))

    @property
    def bf16_native(self) -> bool:
        """bf16 matmuls run in hardware (AMX tiles or AVX512-BF16 dot products), not emulated."""
        return self.amx_bf16 or self.avx512_bf16

    @property
    def int8_native(self) -> bool:
        """int8 dot products in hardware (VNNI or AMX-INT8): what makes quantized graphs fast."""
        return self.amx_int8 or self.avx512_vnni or self.avx_vnni

    @property
    def fp16_native(self) -> bool:
        return self.amx_fp16 or self.avx512_fp16

    @property
    def isa(self) -> str:
        """The best level, one of :data:`ISA_LEVELS` (what results files and cache keys record)."""
        if self.amx_bf16:
            return "amx"
        if self.avx512_bf16:
            return "avx512_bf16"
        if self.avx512_vnni:
            return "avx512_vnni"
        if self.avx512:
            return "avx512"
        if self.avx2:
            return "avx2"
        return "baseline"

    def flags_line(self) -> str:
        """The flags that matter, in a fixed order: ``amx_bf16 amx_int8 avx512_bf16 avx512_vnni avx2``."""
        order = ["amx_bf16", "amx_int8", "amx_fp16", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni"]
        order += ["avx512f", "avx2", "fma"]
        return " ".join(f for f in order if f in self.flags) or "(none of AMX / AVX-512 / AVX2)"

    def summary(self) -> str:
        native = [
            p for p, ok in (("bf16", self.bf16_native), ("int8", self.int8_native), ("fp16", self.fp16_native)) if ok
        ]
        return (
            f"{self.model_name}: {self.isa} ({self.flags_line()}); native reduced precision: "
            f"{', '.join(native) or 'none (bf16/fp16 would be emulated)'}; torch kernels {self.torch_capability}"
        )


def _torch_capabilities() -> dict[str, Any]:
    try:
        import torch

        get = getattr(torch.cpu, "get_capabilities", None)
        return dict(get()) if get is not None else {}
    except Exception:  # noqa: BLE001 - a cross-check only
        return {}


def _torch_capability_level() -> str:
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001
        return "unknown"


def detect_cpu_caps(cpuinfo: str | None = None, torch_caps: dict[str, Any] | None = None) -> CpuCaps:
    """Detect (or, with arguments, compute from given texts: tests) the CPU's capabilities.

    ``cpuinfo``: a ``/proc/cpuinfo`` text (None = read it; absent off Linux). ``torch_caps``: a
    ``torch.cpu.get_capabilities()`` dict (None = ask torch; ``{}`` = no cross-check)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(errors="replace") if path.is_file() else ""
    raw = parse_cpuinfo_flags(cpuinfo)
    tcaps = _torch_capabilities() if torch_caps is None else torch_caps
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.lower().startswith("model name")),
        str(tcaps.get("cpu_name") or platform.processor() or platform.machine()),
    )
    flags: set[str] = set()
    disagree: list[str] = []
    for name, aliases in _FLAG_ALIASES.items():
        in_proc = any(a in raw for a in aliases) if raw else None
        tname = _TORCH_NAMES.get(name)
        in_torch = bool(tcaps[tname]) if tname is not None and tname in tcaps else None
        votes = [v for v in (in_proc, in_torch) if v is not None]
        if votes and all(votes):
            flags.add(name)
        elif any(votes):
            disagree.append(name)
    # ATen's kernel level may sit below the hardware (ATEN_CPU_CAPABILITY=avx2); oneDNN's matmuls
    # still use what the CPU has, so the level is recorded, not used to veto flags
    level = _torch_capability_level()
    source = " + ".join(s for s, ok in (("/proc/cpuinfo", bool(raw)), ("torch cpuinfo", bool(tcaps))) if ok)
    return CpuCaps(frozenset(flags), model, level, source or "none", tuple(disagree))


@functools.lru_cache(maxsize=1)
def cpu_caps() -> CpuCaps:
    """This machine's CPU capabilities (detected once per process)."""
    return detect_cpu_caps()


@dataclass(frozen=True)
class CudaCaps:
    """What one CUDA device computes natively."""

    index: int
    name: str
    capability: tuple[int, int]
    memory_gib: float
    bf16: bool  # bf16 tensor cores: Ampere (sm80) and newer
    fp16: bool  # fp16 tensor cores: Volta (sm70) and newer (fp16 runs everywhere, fast from sm70)
    tf32: bool  # tf32 tensor-core matmuls: Ampere and newer

    def summary(self) -> str:
        precisions = [p for p, ok in (("bf16", self.bf16), ("fp16", self.fp16), ("tf32", self.tf32)) if ok]
        return (
            f"{self.name}, {self.memory_gib:.0f} GiB, compute {self.capability[0]}.{self.capability[1]}; "
            f"native: {', '.join(precisions) or 'fp32 only'}"
        )


def cuda_caps(device: Any = None) -> CudaCaps | None:
    """Capabilities of ``device`` (default: the current CUDA device), or None without a GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    dev = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
    if dev.type != "cuda":
        return None
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    p = torch.cuda.get_device_properties(index)
    major, minor = int(p.major), int(p.minor)
    return CudaCaps(
        index=index,
        name=str(p.name),
        capability=(major, minor),
        memory_gib=p.total_memory / 2**30,
        bf16=major >= 8,
        fp16=major >= 7,
        tf32=major >= 8,
    )


def machine_key(device: Any = None) -> str:
    """What a measured or cached choice depends on: the ISA level + flags, CPU model, torch version
    (and the GPU's name and compute capability on CUDA). Stable across runs on one machine."""
    import torch

    cpu = cpu_caps()
    parts = [cpu.isa, cpu.flags_line().replace(" ", ","), cpu.model_name, f"torch{torch.__version__}"]
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda":
        gpu = cuda_caps(dev)
        if gpu is not None:
            parts += [gpu.name, f"sm{gpu.capability[0]}{gpu.capability[1]}"]
    return "|".join(parts)


def bf16_native(device: Any) -> bool:
    """Whether ``device`` runs bf16 matmuls natively (Ampere+ GPU; CPU with AMX-BF16 / AVX512-BF16)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        gpu = cuda_caps(dev)
        return gpu is not None and gpu.bf16
    if dev.type == "cpu":
        return cpu_caps().bf16_native
    return False


def bf16_training_pays(device: Any) -> tuple[bool, str]:
    """Whether bf16 autocast speeds up a *training* step on ``device``, and why (``run.precision=auto``).

    CUDA: Ampere+ (bf16 tensor cores). CPU: never. On an AVX512-BF16 CPU (no AMX) a SALT step under
    bf16 autocast measured slower than fp32 at every size tried (tiny recipe 0.75x, ViT-Ti student +
    teacher 0.85x, ViT-S 0.77x; teacher-only bf16 0.88-0.98x), and on an AMX-BF16 CPU too (student
    width 96: 0.66x; 384: 0.78-0.87x; 768: 0.85x; benchmarks/train_precision.py,
    train_precision_cpu_amx.txt): autocast re-casts every frozen or trainable weight each step and the
    backward pass gains little, while inference (weights cast once per batch) gains 1.5-3x.
    """
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        ok = bf16_native(dev)
        return ok, "bf16 tensor cores" if ok else "no bf16 tensor cores (pre-Ampere)"
    if dev.type == "cpu":
        caps = cpu_caps()
        if caps.bf16_native:
            unit = "AMX-BF16" if caps.amx_bf16 else "AVX512-BF16"
            return False, f"{unit}: bf16 autocast training steps measured slower than fp32"
        return False, f"{caps.isa}: bf16 would be emulated"
    return False, f"{dev.type}: no bf16 rule"
