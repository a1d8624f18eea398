"""The backend switch: which path each call site takes under auto / triton / torch and the env var."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from usjepa_fast.errors import UsfastError
from usjepa_fast.kernels import (
    VarlenLayout,
    attention_reference,
    dispatch,
    masked_attention,
    salt_smooth_l1,
    set_backend,
    smooth_l1_reference,
    use_backend,
    varlen_attention,
    varlen_attention_reference,
)
from usjepa_fast.kernels import attention as attention_mod
from usjepa_fast.kernels import smooth_l1 as smooth_l1_mod


def _attn_inputs(head_dim: int = 32) -> tuple[torch.Tensor, ...]:
    return tuple(torch.randn(2, 1, 13, head_dim) for _ in range(3)) + (torch.tensor([13, 6]),)


def _loss_inputs() -> tuple[torch.Tensor, ...]:
    return torch.randn(2, 3, 16), torch.randn(2, 7, 16), torch.randint(0, 7, (2, 3))


class _Spy:
    """Counts calls into the Triton entry points (then runs them for real)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import usjepa_fast.kernels.attention_triton as at
        import usjepa_fast.kernels.smooth_l1_triton as st

        self.calls: list[str] = []
        for module, name in (
            (at, "triton_masked_attention"),
            (at, "triton_varlen_attention"),
            (st, "triton_salt_smooth_l1"),
        ):
            real = getattr(module, name)

            def wrapper(*args, _real=real, _name=name, **kwargs):
                self.calls.append(_name)
                return _real(*args, **kwargs)

            monkeypatch.setattr(module, name, wrapper)


def test_auto_on_cpu_takes_the_torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = _Spy(monkeypatch)
    set_backend("auto")
    q, k, v, lens = _attn_inputs()
    assert not dispatch.use_triton(q, k, v)
    torch.testing.assert_close(masked_attention(q, k, v, lens), attention_reference(q, k, v, lens))
    pred, teacher, idx = _loss_inputs()
    torch.testing.assert_close(salt_smooth_l1(pred, teacher, idx), smooth_l1_reference(pred, teacher, idx))
    assert spy.calls == []


def test_forced_triton_runs_the_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = _Spy(monkeypatch)
    set_backend("triton")
    q, k, v, lens = _attn_inputs()
    out = masked_attention(q, k, v, lens)
    pred, teacher, idx = _loss_inputs()
    loss = salt_smooth_l1(pred, teacher, idx)
    assert spy.calls == ["triton_masked_attention", "triton_salt_smooth_l1"]
    torch.testing.assert_close(out, attention_reference(q, k, v, lens), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss, smooth_l1_reference(pred, teacher, idx), rtol=1e-5, atol=1e-6)


def test_forced_torch_wins_even_where_triton_would_be_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = _Spy(monkeypatch)
    with use_backend("torch"):
        assert not dispatch.use_triton(*_attn_inputs())
        masked_attention(*_attn_inputs())
        salt_smooth_l1(*_loss_inputs())
    assert spy.calls == []


def test_use_backend_restores_on_error() -> None:
    set_backend("auto")
    with pytest.raises(KeyError), use_backend("torch"):
        raise KeyError("boom")
    assert dispatch.get_backend() == "auto"
    with pytest.raises(ValueError, match="use one of"):
        set_backend("cuda")  # type: ignore[arg-type]


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated")
def test_tracing_always_takes_the_torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = _Spy(monkeypatch)
    set_backend("triton")
    q, k, v, lens = _attn_inputs()
    # check_trace=False: the trace checker re-runs the function eagerly, outside tracing.
    traced = torch.jit.trace(lambda a, b, c: masked_attention(a, b, c, lens), (q, k, v), check_trace=False)
    assert spy.calls == []
    torch.testing.assert_close(traced(q, k, v), attention_reference(q, k, v, lens))


def test_unsupported_head_dim_falls_back_under_auto_and_raises_when_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend the tensors are on CUDA so that "auto" would pick Triton.
    monkeypatch.setattr(attention_mod, "use_triton", lambda *tensors: dispatch.get_backend() != "torch")
    q, k, v, lens = _attn_inputs(head_dim=24)
    set_backend("auto")
    torch.testing.assert_close(masked_attention(q, k, v, lens), attention_reference(q, k, v, lens))
    set_backend("triton")
    with pytest.raises(UsfastError, match="head dim 24"):
        masked_attention(q, k, v, lens)


def _fresh_dispatch_module(monkeypatch: pytest.MonkeyPatch, env_value: str):
    """Execute dispatch.py as a new module (the real one keeps its state) under USFAST_KERNELS."""
    monkeypatch.setenv("USFAST_KERNELS", env_value)
    spec = importlib.util.spec_from_file_location("_dispatch_copy", dispatch.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_env_var_sets_the_initial_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _fresh_dispatch_module(monkeypatch, "torch").get_backend() == "torch"
    assert _fresh_dispatch_module(monkeypatch, "triton").get_backend() == "triton"
    with pytest.raises(ValueError, match="USFAST_KERNELS='trition'"):
        _fresh_dispatch_module(monkeypatch, "trition")


def test_loss_dispatch_module_uses_the_same_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    # Both call sites must consult the one switch, not a private copy of it.
    assert smooth_l1_mod.use_triton is dispatch.use_triton
    assert attention_mod.use_triton is dispatch.use_triton


def test_dispatch_auto_cpu_forced_and_uniform(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = _Spy(monkeypatch)
    ragged, uniform = VarlenLayout.from_lens([3, 7]), VarlenLayout.from_lens([5, 5])
    q = torch.randn(10, 2, 16)
    set_backend("auto")  # CPU: the reference, both layouts
    torch.testing.assert_close(varlen_attention(q, q, q, ragged), varlen_attention_reference(q, q, q, ragged))
    dense = F.scaled_dot_product_attention(*(q.view(2, 5, 2, 16).transpose(1, 2),) * 3).transpose(1, 2)
    torch.testing.assert_close(varlen_attention(q, q, q, uniform), dense.reshape(10, 2, 16))
    assert spy.calls == []
    set_backend("triton")
    out = varlen_attention(q, q, q, ragged)
    assert spy.calls == ["triton_varlen_attention"]
    torch.testing.assert_close(out, varlen_attention_reference(q, q, q, ragged), rtol=1e-4, atol=1e-5)


def test_auto_on_cuda_takes_sdpa_for_equal_lengths_and_triton_for_ragged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the tensors are on CUDA: "auto" must not pay the kernel where SDPA's dense path wins."""
    spy = _Spy(monkeypatch)
    monkeypatch.setattr(attention_mod, "use_triton", lambda *t: dispatch.get_backend() != "torch")
    set_backend("auto")
    q = torch.randn(10, 2, 16)
    varlen_attention(q, q, q, VarlenLayout.from_lens([5, 5]))
    masked_attention(*(torch.randn(2, 2, 5, 16),) * 3)  # dense padded layout, no lengths
    assert spy.calls == []
    varlen_attention(q, q, q, VarlenLayout.from_lens([3, 7]))
    masked_attention(*(torch.randn(2, 2, 5, 16),) * 3, torch.tensor([5, 2]))
    assert spy.calls == ["triton_varlen_attention", "triton_masked_attention"]
