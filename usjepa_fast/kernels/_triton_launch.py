"""Launch one Triton kernel either compiled (CUDA) or in the Triton interpreter (CPU tests).

``@triton.jit`` decides between compiling and interpreting when the module is *imported*, from
``TRITON_INTERPRET``. That makes the mode depend on import order inside one pytest process, so
the kernel modules keep their kernels as plain Python functions and wrap them here per call:

- CUDA tensors and ``TRITON_INTERPRET`` unset: a ``JITFunction``, wrapped by ``triton.autotune``
  unless ``USFAST_TRITON_AUTOTUNE=0`` (then the caller's default config is used). Autotuning needs
  a GPU driver, so it is never attempted under the interpreter.
- ``TRITON_INTERPRET=1`` (or CPU tensors with it set): an ``InterpretedFunction`` that runs each
  program instance in Python with the caller's small interpreter config.
- CPU tensors without ``TRITON_INTERPRET=1``: :class:`BackendUnavailableError`.

Kernels launched through this module must not call other ``@triton.jit`` helpers (an interpreted
kernel cannot call a compiled helper), so each kernel body is self-contained. Triton's own
``@jit`` library functions (``tl.sum``, ``tl.max``, ...) have the same problem when triton was
imported without ``TRITON_INTERPRET=1``; :func:`_interpretable_stdlib` swaps them for interpreted
twins for the duration of an interpreted launch.
"""

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from usjepa_fast.errors import BackendUnavailableError

Grid = Callable[[dict[str, Any]], tuple[int, ...]]


def interpreting(*tensors: torch.Tensor) -> bool:
    """True when the kernels must run in the Triton interpreter for these tensors."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return True
    if all(t.is_cuda for t in tensors):
        return False
    raise BackendUnavailableError(
        "the Triton kernels need CUDA tensors; on CPU set TRITON_INTERPRET=1 (slow, for tests) "
        "or select the PyTorch path with usjepa_fast.kernels.set_backend('torch') / USFAST_KERNELS=torch"
    )


def autotune_enabled() -> bool:
    return os.environ.get("USFAST_TRITON_AUTOTUNE", "1") != "0"


_STDLIB_MODULES = (tl, tl.core, tl.standard, tl.math)
_interpreted_twins: dict[int, InterpretedFunction] = {}
_MISSING = object()


@contextlib.contextmanager
def _interpretable_stdlib() -> Iterator[None]:
    """Run an interpreted launch with interpreted ``@jit`` library functions, then undo everything.

    Needed only when triton was imported before ``TRITON_INTERPRET=1`` was set (e.g. by another
    test module): ``@triton.jit`` fixes the mode at decoration time, so ``tl.sum``/``tl.max`` are
    compiled ``JITFunction`` objects that an interpreted kernel cannot call. They are swapped for
    ``InterpretedFunction`` twins (the interpreter recognises reduction combiners by identity, which
    holds because every module attribute is swapped consistently). The interpreter also patches
    ``triton.language`` while it runs and, for nested library calls, does not undo all of it; a
    later *compiled* launch in the same process would then fail. So the namespaces it touches are
    snapshotted here and their replaced attributes restored afterwards.
    """
    snapshots = {obj: dict(vars(obj)) for obj in (*_STDLIB_MODULES, tl.core.tensor)}
    try:
        for module in _STDLIB_MODULES:
            for name, value in list(vars(module).items()):
                if isinstance(value, triton.JITFunction):
                    twin = _interpreted_twins.get(id(value))
                    if twin is None:
                        twin = _interpreted_twins[id(value)] = InterpretedFunction(value.fn)
                    setattr(module, name, twin)
        yield
    finally:
        for obj, saved in snapshots.items():
            current = vars(obj)
            if obj is tl.core.tensor:  # patched-in dunders/properties must go
                for name in [n for n in current if n not in saved]:
                    delattr(obj, name)
            # Names the interpreter *adds* to module globals (its own helpers, referenced by the
            # cached rewritten functions) must stay; only values it replaced are restored.
            for name, value in saved.items():
                if current.get(name, _MISSING) is not value:
                    setattr(obj, name, value)


class DualModeKernel:
    """A Triton kernel body that can be launched compiled, autotuned, or interpreted."""

    def __init__(
        self,
        fn: Callable[..., None],
        tune_configs: Sequence[triton.Config] = (),
        tune_key: Sequence[str] = (),
    ) -> None:
        self.fn = fn
        self._tune_configs = list(tune_configs)
        self._tune_key = list(tune_key)
        # Built lazily: constructing them needs nothing from the GPU, but there is no reason to
        # pay for the wrappers a process never uses.
        self._jit: triton.JITFunction | None = None
        self._tuned: Any = None
        self._interpreted: InterpretedFunction | None = None

    def _compiled(self) -> triton.JITFunction:
        if self._jit is None:
            self._jit = triton.JITFunction(self.fn)
        return self._jit

    def launch(
        self,
        grid: Grid,
        args: Sequence[Any],
        constants: dict[str, Any],
        *,
        interpret: bool,
        interpret_config: dict[str, Any],
        default_config: triton.Config,
    ) -> None:
        """Run the kernel; ``constants`` are constexprs not chosen by the config (head dim, flags).

        The tunable constexprs (block sizes) come from ``interpret_config`` under the interpreter,
        from the autotuner on a GPU, or from ``default_config`` when autotuning is switched off.
        """
        if interpret:
            if self._interpreted is None:
                self._interpreted = InterpretedFunction(self.fn)
            with _interpretable_stdlib():
                self._interpreted[grid](*args, **constants, **interpret_config)
            return
        if self._tune_configs and autotune_enabled():
            if self._tuned is None:
                self._tuned = triton.autotune(configs=self._tune_configs, key=self._tune_key)(self._compiled())
            self._tuned[grid](*args, **constants)
            return
        self._compiled()[grid](
            *args,
            **constants,
            **default_config.kwargs,
            num_warps=default_config.num_warps,
            num_stages=default_config.num_stages,
        )
