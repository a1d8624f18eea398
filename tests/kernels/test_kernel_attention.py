"""Fused masked attention (Triton, interpreted on CPU) against the SDPA reference.

Error metric: max |ours - ref| / max |ref| per tensor (output, dq, dk, dv). Bounds per input dtype,
always against a reference computed in float64 (half types: on the half-rounded inputs):

| input dtype | bound | why                                                             |
|-------------|-------|-----------------------------------------------------------------|
| float64     | 2e-5  | the kernel computes in fp32 (inputs are cast), fp32 rounding     |
| float32     | 2e-5  | fp32 accumulation, exp2/log2 online softmax                      |
| float16     | 4e-3  | output and gradients rounded to fp16 (2^-11 relative)            |
| bfloat16    | 3e-2  | output and gradients rounded to bf16 (2^-8 relative)             |

Shapes are tiny because the interpreter runs every program instance in Python; block size 16.
"""

from __future__ import annotations

import pytest
import torch

from usjepa_fast.errors import BackendUnavailableError, UsfastError
from usjepa_fast.kernels.attention import attention_reference
from usjepa_fast.kernels.attention_triton import triton_masked_attention

TOL = {torch.float64: 2e-5, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-12)).item()


def _qkv(b: int, h: int, n: int, d: int, dtype: torch.dtype) -> list[torch.Tensor]:
    return [torch.randn(b, h, n, d, dtype=torch.float64).to(dtype).requires_grad_() for _ in range(3)]


def _check(q, k, v, lens, tol: float) -> None:
    out = triton_masked_attention(q, k, v, lens)
    assert out.dtype == q.dtype and out.shape == q.shape
    grad_out = torch.randn(out.shape, dtype=torch.float64).to(q.dtype)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)

    ref_in = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = attention_reference(*ref_in, lens)
    ref_grads = torch.autograd.grad(ref, ref_in, grad_out.double())
    assert rel_err(out, ref) < tol, "output"
    for name, g, rg in zip("qkv", grads, ref_grads, strict=True):
        assert g.dtype == q.dtype
        assert rel_err(g, rg) < tol, f"d{name}"


@pytest.mark.parametrize(
    ("head_dim", "n", "lens"),
    [
        (32, 37, [1, 29]),  # length 1; lengths and N not multiples of the block size
        (64, 40, [40, 17]),  # one full sequence, one padded
    ],
)
def test_forward_backward_float64(head_dim: int, n: int, lens: list[int]) -> None:
    q, k, v = _qkv(len(lens), 2, n, head_dim, torch.float64)
    _check(q, k, v, torch.tensor(lens), TOL[torch.float64])


def test_head_dim_128() -> None:
    q, k, v = _qkv(1, 1, 20, 128, torch.float64)
    _check(q, k, v, torch.tensor([13]), TOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_forward_backward_dtypes(dtype: torch.dtype) -> None:
    q, k, v = _qkv(2, 1, 24, 32, dtype)
    _check(q, k, v, torch.tensor([24, 5]), TOL[dtype])


def test_random_lengths_and_no_lengths() -> None:
    gen = torch.Generator().manual_seed(3)
    n = 33
    lens = torch.randint(1, n + 1, (2,), generator=gen)
    q, k, v = _qkv(2, 1, n, 32, torch.float32)
    _check(q, k, v, lens, TOL[torch.float32])
    # seq_lens=None: every sequence full, identical to plain SDPA.
    q, k, v = _qkv(1, 2, 19, 32, torch.float32)
    _check(q, k, v, None, TOL[torch.float32])


def test_padding_is_zero_and_never_attended() -> None:
    q, k, v = _qkv(2, 1, 21, 32, torch.float32)
    lens = torch.tensor([0, 9])  # length 0: the whole sample is padding
    out = triton_masked_attention(q, k, v, lens)
    out.sum().backward()
    assert torch.all(out[0] == 0) and torch.all(out[1, :, 9:] == 0)
    for t in (q, k, v):
        assert torch.all(t.grad[0] == 0) and torch.all(t.grad[1, :, 9:] == 0)
        assert torch.isfinite(t.grad).all()
    ref = attention_reference(q.detach(), k.detach(), v.detach(), lens)
    assert torch.isfinite(ref).all() and rel_err(out, ref) < TOL[torch.float32]

    # Garbage in the padded keys/values must not change the valid rows.
    with torch.no_grad():
        k2, v2 = k.clone(), v.clone()
        k2[1, :, 9:] = 1e4
        v2[1, :, 9:] = float("nan")
        out2 = triton_masked_attention(q, k2, v2, lens)
    assert torch.equal(out2[1, :, :9], out[1, :, :9].detach())


def test_strided_inputs_from_fused_qkv() -> None:
    """Views of a fused (B, N, 3, H, D) projection run without copies and match the reference."""
    b, n, h, d = 2, 18, 2, 32
    qkv = torch.randn(b, n, 3, h, d, requires_grad=True)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, D), non-contiguous
    assert not q.is_contiguous()
    lens = torch.tensor([18, 7])
    out = triton_masked_attention(q, k, v, lens)
    # A transposed upstream gradient, as produced by out.transpose(1, 2).reshape(B, N, H * D).
    (out.transpose(1, 2).reshape(b, n, h * d) * torch.arange(h * d)).sum().backward()
    grad = qkv.grad.clone()
    qkv.grad = None
    ref = attention_reference(q, k, v, lens)
    (ref.transpose(1, 2).reshape(b, n, h * d) * torch.arange(h * d)).sum().backward()
    assert rel_err(out, ref) < TOL[torch.float32]
    assert rel_err(grad, qkv.grad) < TOL[torch.float32]


def test_reference_matches_per_sample_truncation() -> None:
    """The reference itself: a padded batch equals running each sample on its valid prefix."""
    q, k, v = (torch.randn(3, 2, 11, 16, dtype=torch.float64) for _ in range(3))
    lens = torch.tensor([11, 4, 1])
    out = attention_reference(q, k, v, lens)
    for i, n in enumerate(lens.tolist()):
        solo = torch.nn.functional.scaled_dot_product_attention(
            q[i : i + 1, :, :n], k[i : i + 1, :, :n], v[i : i + 1, :, :n]
        )
        torch.testing.assert_close(out[i : i + 1, :, :n], solo)
        assert torch.all(out[i, :, n:] == 0)


def test_bad_inputs_raise_one_line_errors() -> None:
    q = torch.randn(1, 1, 8, 32)
    with pytest.raises(UsfastError, match="share one"):
        triton_masked_attention(q, q[..., :16], q)
    with pytest.raises(UsfastError, match="head dim 24"):
        triton_masked_attention(*(torch.randn(1, 1, 8, 24) for _ in range(3)))
    with pytest.raises(UsfastError, match="seq_lens must have shape"):
        triton_masked_attention(q, q, q, torch.tensor([3, 4]))


def test_cpu_without_interpreter_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET")
    q = torch.randn(1, 1, 8, 32)
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        triton_masked_attention(q, q, q)
