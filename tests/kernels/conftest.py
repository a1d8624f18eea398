"""Kernel tests: CPU tests run the Triton kernels in the interpreter; GPU tests run them compiled.

The kernel modules pick compiled vs interpreted mode per launch from ``TRITON_INTERPRET`` (see
``usjepa_fast/kernels/_triton_launch.py``), not at import, so setting it per test here is robust
to whichever module imported triton first in the pytest process.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from usjepa_fast.kernels import dispatch


@pytest.fixture(autouse=True)
def _triton_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if request.node.get_closest_marker("gpu") is None:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    else:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    previous = dispatch.get_backend()
    yield
    dispatch.set_backend(previous)  # a failing test must not leak a forced backend
