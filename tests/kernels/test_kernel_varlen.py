"""Packed (varlen) attention: the layout, the Triton packed kernel (interpreted on CPU) against the
reference, the dispatch, and the SALT loss on packed targets.

Error metric as in test_kernel_attention.py: max |ours - ref| / max |ref| per tensor (output, dq,
dk, dv), reference in float64 on the same (rounded) inputs, through the padded SDPA path:

| input dtype | bound | why                                                         |
|-------------|-------|-------------------------------------------------------------|
| float64     | 2e-5  | the kernel computes in fp32 (inputs are cast), fp32 rounding |
| float32     | 2e-5  | fp32 accumulation, exp2/log2 online softmax                  |
| float16     | 4e-3  | output and gradients rounded to fp16 (2^-11 relative)        |
| bfloat16    | 3e-2  | output and gradients rounded to bf16 (2^-8 relative)         |
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from usjepa_fast.errors import UsfastError
from usjepa_fast.kernels import (
    VarlenLayout,
    salt_smooth_l1,
    set_backend,
    smooth_l1_reference,
    varlen_attention,
    varlen_attention_reference,
)
from usjepa_fast.kernels.attention_triton import triton_varlen_attention

TOL = {torch.float64: 2e-5, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-12)).item()


def _packed_qkv(lens: list[int], heads: int, dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Views of one fused (T, 3, H, D) leaf, as KernelAttention produces them."""
    qkv = torch.randn(sum(lens), 3, heads, dim, dtype=torch.float64).to(dtype).requires_grad_()
    return (qkv, *qkv.unbind(1))


def _check(lens: list[int], heads: int, dim: int, dtype: torch.dtype) -> None:
    layout = VarlenLayout.from_lens(lens)
    qkv, q, k, v = _packed_qkv(lens, heads, dim, dtype)
    assert not q.is_contiguous()
    out = triton_varlen_attention(q, k, v, layout.cu_seqlens, layout.max_len)
    assert out.dtype == dtype and out.shape == q.shape
    grad_out = torch.randn(out.shape, dtype=torch.float64).to(dtype)
    (grad,) = torch.autograd.grad(out, qkv, grad_out)
    ref_qkv = qkv.detach().double().requires_grad_()
    ref = varlen_attention_reference(*ref_qkv.unbind(1), layout)
    (ref_grad,) = torch.autograd.grad(ref, ref_qkv, grad_out.double())
    assert rel_err(out, ref) < TOL[dtype], "output"
    for i, name in enumerate("qkv"):
        assert grad.dtype == dtype
        assert rel_err(grad[:, i], ref_grad[:, i]) < TOL[dtype], f"d{name}"


@pytest.mark.parametrize(
    ("lens", "dim"),
    [
        ([0, 1, 17, 5, 33], 32),  # an empty and a length-1 sequence; lengths not multiples of the block
        ([16, 0, 0, 31], 16),  # consecutive empty sequences; one exactly one block long
        ([40, 3], 64),
    ],
)
def test_packed_forward_backward_float64(lens: list[int], dim: int) -> None:
    _check(lens, 2, dim, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_packed_forward_backward_dtypes(dtype: torch.dtype) -> None:
    _check([7, 1, 22], 1, 32, dtype)


def test_packed_sequences_never_see_each_other() -> None:
    layout = VarlenLayout.from_lens([9, 13, 4])
    _, q, k, v = _packed_qkv([9, 13, 4], 1, 16, torch.float32)
    out = triton_varlen_attention(q, k, v, layout.cu_seqlens, layout.max_len)
    with torch.no_grad():
        k2, v2 = k.clone(), v.clone()
        k2[9:22], v2[9:22] = 1e4, float("nan")  # garbage in the middle sequence only
        out2 = triton_varlen_attention(q, k2, v2, layout.cu_seqlens, layout.max_len)
    assert torch.equal(out2[:9], out[:9].detach()) and torch.equal(out2[22:], out[22:].detach())
    for s in range(3):  # each sequence equals plain SDPA on that sequence alone
        a, b = layout.cu_seqlens[s].item(), layout.cu_seqlens[s + 1].item()
        solo = F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1) for t in (q, k, v))).transpose(0, 1)
        assert rel_err(out[a:b], solo) < TOL[torch.float32]


def test_bad_packed_inputs_raise_one_line_errors() -> None:
    q = torch.randn(8, 1, 32)
    cu = torch.tensor([0, 8])
    with pytest.raises(UsfastError, match="packed"):
        triton_varlen_attention(q, q[..., :16], q, cu, 8)
    with pytest.raises(UsfastError, match="head dim 24"):
        triton_varlen_attention(*(torch.randn(8, 1, 24) for _ in range(3)), cu, 8)
    with pytest.raises(UsfastError, match="cu_seqlens"):
        triton_varlen_attention(q, q, q, torch.tensor(0), 8)


def test_layout_pad_unpad_and_pooling() -> None:
    layout = VarlenLayout.from_lens([2, 0, 3])
    assert layout.cu_seqlens.tolist() == [0, 2, 2, 5] and layout.max_len == 3 and layout.total == 5
    assert layout.seq_id.tolist() == [0, 0, 2, 2, 2] and layout.pad_index.tolist() == [0, 1, 6, 7, 8]
    x = torch.arange(10.0).view(5, 2)
    padded = layout.pad(x)
    assert padded.shape == (3, 3, 2) and torch.all(padded[1] == 0) and torch.all(padded[0, 2] == 0)
    assert torch.equal(layout.unpad(padded), x)
    torch.testing.assert_close(layout.segment_mean(x), torch.tensor([[1.0, 2.0], [0.0, 0.0], [6.0, 7.0]]))
    uniform = VarlenLayout.from_lens([4, 4])
    y = torch.randn(8, 3)
    assert uniform.uniform and uniform.pad(y).data_ptr() == y.data_ptr()  # a view, no copy
    with pytest.raises(ValueError, match=">= 0"):
        VarlenLayout.from_lens([3, -1])


def test_reference_pads_get_zero_gradient_and_match_each_sequence() -> None:
    layout = VarlenLayout.from_lens([5, 1, 8])
    _, q, k, v = _packed_qkv([5, 1, 8], 2, 16, torch.float64)
    out = varlen_attention_reference(q, k, v, layout)
    for s in range(3):
        a, b = layout.cu_seqlens[s].item(), layout.cu_seqlens[s + 1].item()
        solo = F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1) for t in (q, k, v))).transpose(0, 1)
        torch.testing.assert_close(out[a:b], solo)
    # the padded intermediate: its pad rows receive exactly zero gradient
    padded = [layout.pad(t.detach()).transpose(1, 2).requires_grad_() for t in (q, k, v)]
    from usjepa_fast.kernels import attention_reference

    res = attention_reference(*padded, layout.lens)
    res.backward(torch.randn_like(res))
    for t in padded:
        assert torch.all(t.grad[1, :, 1:] == 0) and torch.all(t.grad[0, :, 5:] == 0)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_packed_loss_averages_over_real_target_tokens(backend: str) -> None:
    """Flattened teacher (1, B*N, D) + offset indices: the token-weighted mean of per-sample losses."""
    set_backend(backend)
    lens, n, d = [3, 1, 6], 9, 32
    teacher = torch.randn(3, n, d) * 2 + 1
    idx = [torch.randperm(n)[:m] for m in lens]
    pred = torch.randn(sum(lens), d, requires_grad=True)
    flat = torch.cat([b * n + i for b, i in enumerate(idx)])
    loss = salt_smooth_l1(pred[None], teacher.reshape(1, 3 * n, d), flat[None])
    loss.backward()
    grad = pred.grad.clone()
    pred.grad = None
    set_backend("torch")
    parts, start = [], 0
    for b, m in enumerate(lens):
        parts.append(smooth_l1_reference(pred[None, start : start + m], teacher[b : b + 1], idx[b][None]) * m)
        start += m
    ref = torch.stack(parts).sum() / sum(lens)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad, pred.grad, rtol=1e-5, atol=1e-8)


def test_torch_compile_fullgraph_through_the_packed_kernel() -> None:
    layout = VarlenLayout.from_lens([4, 11, 1])

    def fn(q, k, v):
        return varlen_attention(q, k, v, layout).square().sum()

    q, k, v = (torch.randn(16, 2, 16, requires_grad=True) for _ in range(3))
    set_backend("triton")
    loss = torch.compile(fn, backend="aot_eager", fullgraph=True)(q, k, v)
    loss.backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    set_backend("torch")
    ref = fn(q, k, v)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    for g, t in zip(grads, (q, k, v), strict=True):
        torch.testing.assert_close(g, t.grad, rtol=1e-4, atol=1e-5)
