"""One switch between the fused Triton path and the PyTorch reference path.

``set_backend("auto")`` (default) uses Triton when the tensors are on a CUDA device and Triton
imports, and the PyTorch reference otherwise. ``"triton"`` forces the kernels (on CPU that only
works under ``TRITON_INTERPRET=1``, which the tests use); ``"torch"`` forces the reference (ONNX
export does this so the graph holds only standard ops). The environment variable
``USFAST_KERNELS`` sets the initial value.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Literal

import torch

KernelBackend = Literal["auto", "triton", "torch"]
_VALID = ("auto", "triton", "torch")
_backend: str = os.environ.get("USFAST_KERNELS", "auto")
if _backend not in _VALID:  # a typo in the env var should not silently pick a path
    raise ValueError(f"USFAST_KERNELS={_backend!r}; use one of {_VALID}")


def set_backend(backend: KernelBackend) -> None:
    global _backend
    if backend not in _VALID:
        raise ValueError(f"kernel backend {backend!r}; use one of {_VALID}")
    _backend = backend


def get_backend() -> str:
    return _backend


@contextlib.contextmanager
def use_backend(backend: KernelBackend) -> Iterator[None]:
    """Temporarily force a kernel backend (e.g. ``"torch"`` during ONNX export)."""
    previous = _backend
    set_backend(backend)
    try:
        yield
    finally:
        set_backend(previous)


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(*tensors: torch.Tensor) -> bool:
    """Decide the path for one call from the switch and the tensors' device."""
    if _backend == "torch":
        return False
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting():
        return False  # exported graphs must hold standard ops only
    if _backend == "triton":
        return True
    return triton_available() and all(t.is_cuda for t in tensors)
