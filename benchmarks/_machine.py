"""What a results file must record about the machine: CPU flags that matter (AMX / AVX-512 BF16 /
AVX2), core count and whether it was busy (load average), as ``#`` comment lines."""

from __future__ import annotations

import os
import platform

_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512_vnni", "avx512f", "avx2")


def cpu_flags() -> list[str]:
    from usjepa_fast.hardware import raw_cpu_flags  # the one reader of the machine's flags

    have = raw_cpu_flags()
    return [f for f in _FLAGS if f in have]


def machine_header() -> list[str]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    cpus = os.cpu_count() or 1
    busy = "busy (load above the core count)" if load[0] > cpus else "not busy"
    return [
        f"# {platform.machine()}, {cpus} CPUs, lscpu flags: {' '.join(cpu_flags()) or 'none of ' + '/'.join(_FLAGS)}",
        f"# load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}: {busy}",
    ]


def gpu_facts() -> dict:
    """What a GPU results file must record: GPU name, compute capability, driver, CUDA / torch / triton
    versions (``gpu`` is None on a machine without a visible CUDA device, e.g. the check's dry run)."""
    import shutil
    import subprocess

    import torch

    from usjepa_fast.hardware import cuda_caps  # the one reader of the GPU's capabilities

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    facts: dict = {
        "gpu": None,
        "capability": None,
        "gpu_memory_gib": None,
        "driver": None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "triton": triton_version,
    }
    caps = cuda_caps()
    if caps is None:
        return facts
    facts.update(gpu=caps.name, capability=f"{caps.capability[0]}.{caps.capability[1]}",
                 gpu_memory_gib=round(caps.memory_gib, 1))  # fmt: skip
    if shutil.which("nvidia-smi"):  # torch does not expose the driver version
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20, check=True,
            ).stdout  # fmt: skip
            facts["driver"] = out.strip().splitlines()[0] if out.strip() else None
        except (OSError, subprocess.SubprocessError):
            pass
    return facts


def gpu_header(facts: dict) -> list[str]:
    """``#`` lines for a GPU results file: the machine (CPU flags, load) and the GPU facts."""
    gpu = (
        f"# GPU {facts['gpu']} (sm {facts['capability']}, {facts['gpu_memory_gib']} GiB) | driver {facts['driver']}"
        if facts["gpu"]
        else "# GPU none visible (CPU dry run: tiny sizes, no GPU figure)"
    )
    return [
        *machine_header(),
        gpu,
        f"# torch {facts['torch']} | CUDA {facts['cuda']} | cuDNN {facts['cudnn']} | triton {facts['triton']} | "
        f"python {platform.python_version()}",
    ]
