"""Capability detection: flags parsed from cpuinfo texts of real CPU families, cross-checked with
torch's cpuinfo; ISA level and native precisions; CUDA facts; this machine's own report."""

from __future__ import annotations

import pytest
import torch

from usjepa_fast.hardware import ISA_LEVELS, bf16_native, cpu_caps, cuda_caps, detect_cpu_caps, machine_key

BASE = "fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma"
CPUINFO = {
    # Sapphire Rapids (AMX)
    "amx": f"{BASE} avx2 avx512f avx512bw avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8 avx_vnni",
    # Zen 4 (AVX512-BF16, no AMX): the development machine's family
    "avx512_bf16": f"{BASE} avx2 avx512f avx512bw avx512_vnni avx512_bf16",
    # Cascade Lake (VNNI, no bf16)
    "avx512_vnni": f"{BASE} avx2 avx512f avx512bw avx512_vnni",
    # Skylake-SP
    "avx512": f"{BASE} avx2 avx512f avx512bw",
    # Haswell .. Zen 3
    "avx2": f"{BASE} avx2",
    "baseline": "fpu sse sse2",
}


def _text(flags: str) -> str:
    return f"processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Test CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n"


@pytest.mark.parametrize("isa", list(CPUINFO))
def test_isa_level_and_native_precisions_from_cpuinfo(isa: str) -> None:
    caps = detect_cpu_caps(_text(CPUINFO[isa]), torch_caps={})
    assert caps.isa == isa and caps.model_name == "Test CPU"
    assert caps.bf16_native == (isa in ("amx", "avx512_bf16"))
    assert caps.int8_native == (isa in ("amx", "avx512_bf16", "avx512_vnni"))
    assert caps.fp16_native == (isa == "amx")
    assert caps.amx_int8 == (isa == "amx") and caps.avx2 == (isa != "baseline")
    line = caps.flags_line()
    assert ("avx512_bf16" in line) == caps.avx512_bf16 and ("amx_bf16" in line) == caps.amx_bf16
    assert caps.isa in caps.summary()


def test_isa_levels_are_ordered_best_first() -> None:
    assert list(CPUINFO) == list(ISA_LEVELS)


def test_a_flag_torch_denies_is_dropped_and_reported() -> None:
    # a VM that lists avx512_bf16 in /proc/cpuinfo while the CPU (cpuid, torch's cpuinfo) lacks it
    torch_caps = {"avx2": True, "avx512_f": True, "avx512_bw": True, "avx512_vnni": True, "avx512_bf16": False}
    caps = detect_cpu_caps(_text(CPUINFO["avx512_bf16"]), torch_caps=torch_caps)
    assert not caps.bf16_native and caps.isa == "avx512_vnni" and "avx512_bf16" in caps.disagreements


def test_without_cpuinfo_torch_cpuinfo_decides() -> None:
    caps = detect_cpu_caps("", torch_caps={"avx2": True, "amx_bf16": True, "avx512_bf16": True, "cpu_name": "X"})
    assert caps.amx_bf16 and caps.isa == "amx" and caps.source == "torch cpuinfo" and caps.model_name == "X"


def test_this_machine_agrees_with_torch() -> None:
    caps = cpu_caps()
    assert caps.isa in ISA_LEVELS and caps.torch_capability
    tc = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    if "avx512_bf16" in tc and not caps.disagreements:
        assert caps.avx512_bf16 == bool(tc["avx512_bf16"])
        assert caps.amx_bf16 == bool(tc.get("amx_bf16", False))
    assert bf16_native("cpu") == caps.bf16_native
    assert machine_key() == machine_key() and caps.isa in machine_key()


def test_cuda_caps_none_without_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: see test_cuda_caps_on_gpu")
    assert cuda_caps() is None and not bf16_native("cuda")


@pytest.mark.gpu
def test_cuda_caps_on_gpu() -> None:
    caps = cuda_caps(torch.device("cuda", 0))
    assert caps is not None and caps.fp16 == (caps.capability[0] >= 7)
    assert caps.bf16 == (caps.capability >= (8, 0)) and caps.tf32 == caps.bf16
