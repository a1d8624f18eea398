"""What a results file must record about the machine: CPU flags that matter (AMX / AVX-512 BF16 /
AVX2), core count and whether it was busy (load average), as ``#`` comment lines."""

from __future__ import annotations

import os
import platform

_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512_vnni", "avx512f", "avx2")


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
    except OSError:
        return []
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    have = set(line.split(":", 1)[-1].split())
    return [f for f in _FLAGS if f in have]


def machine_header() -> list[str]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    cpus = os.cpu_count() or 1
    busy = "busy (load above the core count)" if load[0] > cpus else "not busy"
    return [
        f"# {platform.machine()}, {cpus} CPUs, lscpu flags: {' '.join(cpu_flags()) or 'none of ' + '/'.join(_FLAGS)}",
        f"# load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}: {busy}",
    ]
