"""The compiled kernels on a CUDA GPU (skipped without one): accuracy, padding skip, loss memory.

Correctness tests run with ``USFAST_TRITON_AUTOTUNE=0`` (the fixed default configs) so that each
(dtype, head dim) compiles once; one test covers the autotuned path. Error metric as in the CPU
tests: max |ours - ref| / max |ref| against a float64 reference on the same rounded inputs. GPU
bounds are looser than the interpreter's because P and dS are rounded to the input dtype before
their tensor-core matmuls (flash-attention practice):

| dtype    | output | gradients |
|----------|--------|-----------|
| float32  | 1e-4   | 1e-4      |  (IEEE fp32 dots: torch's default matmul precision "highest")
| float16  | 4e-3   | 1e-2      |
| bfloat16 | 3e-2   | 6e-2      |
"""

from __future__ import annotations

import pytest
import torch

from usjepa_fast.kernels import VarlenLayout
from usjepa_fast.kernels.attention import attention_reference, varlen_attention_reference
from usjepa_fast.kernels.attention_triton import triton_masked_attention, triton_varlen_attention
from usjepa_fast.kernels.smooth_l1_triton import triton_salt_smooth_l1

pytestmark = pytest.mark.gpu

TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (4e-3, 1e-2), torch.bfloat16: (3e-2, 6e-2)}


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-12)).item()


@pytest.fixture
def fixed_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USFAST_TRITON_AUTOTUNE", "0")


def _check_attention(dtype: torch.dtype, head_dim: int, n: int, lens: list[int]) -> None:
    q, k, v = (torch.randn(len(lens), 2, n, head_dim, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    seq_lens = torch.tensor(lens, device="cuda")
    out = triton_masked_attention(q, k, v, seq_lens)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = attention_reference(*ref_in, seq_lens)
    ref_grads = torch.autograd.grad(ref, ref_in, grad_out.double())
    out_tol, grad_tol = TOL[dtype]
    assert rel_err(out, ref) < out_tol, f"out {dtype} D={head_dim} N={n}"
    for name, g, rg in zip("qkv", grads, ref_grads, strict=True):
        assert rel_err(g, rg) < grad_tol, f"d{name} {dtype} D={head_dim} N={n}"


@pytest.mark.parametrize(
    ("dtype", "head_dim"),
    [(torch.float16, 32), (torch.float16, 64), (torch.float16, 128), (torch.bfloat16, 32), (torch.bfloat16, 64),
     (torch.bfloat16, 128), (torch.float32, 32), (torch.float32, 64)],
)  # fmt: skip
def test_attention_matches_reference(dtype: torch.dtype, head_dim: int, fixed_configs: None) -> None:
    gen = torch.Generator().manual_seed(head_dim)
    for n in (197, 50, 13):
        lens = [1, n] + torch.randint(1, n + 1, (2,), generator=gen).tolist()
        _check_attention(dtype, head_dim, n, lens)


def test_attention_autotuned_path() -> None:
    _check_attention(torch.bfloat16, 64, 197, [197, 150, 1, 64])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("head_dim", [32, 64])
def test_packed_attention_matches_reference(dtype: torch.dtype, head_dim: int, fixed_configs: None) -> None:
    """Packed (T, H, D) + cu_seqlens, as training runs it: ViT-B context lengths and predictor rows."""
    lens = [0, 1, 196, 75, 30, 151, 17]
    layout = VarlenLayout.from_lens(lens, "cuda")
    qkv = torch.randn(sum(lens), 3, 4, head_dim, device="cuda", dtype=dtype, requires_grad=True)
    q, k, v = qkv.unbind(1)
    out = triton_varlen_attention(q, k, v, layout.cu_seqlens, layout.max_len)
    grad_out = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, qkv, grad_out)
    ref_qkv = qkv.detach().double().requires_grad_()
    ref = varlen_attention_reference(*ref_qkv.unbind(1), layout)
    (ref_grad,) = torch.autograd.grad(ref, ref_qkv, grad_out.double())
    out_tol, grad_tol = TOL[dtype]
    assert rel_err(out, ref) < out_tol
    for i, name in enumerate("qkv"):
        assert rel_err(grad[:, i], ref_grad[:, i]) < grad_tol, f"d{name} {dtype} D={head_dim}"


def test_padding_is_skipped_not_computed(fixed_configs: None) -> None:
    """Cost follows the valid lengths: a batch padded 32x costs far less than a full one."""
    import triton.testing

    b, h, n, d = 8, 16, 4096, 64  # full: ~0.55 TFLOP of attention; short: 1/1024 of it + zero stores
    q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    full = torch.full((b,), n, device="cuda")
    short = torch.full((b,), n // 32, device="cuda")
    t_full = triton.testing.do_bench(lambda: triton_masked_attention(q, k, v, full), return_mode="median")
    t_short = triton.testing.do_bench(lambda: triton_masked_attention(q, k, v, short), return_mode="median")
    assert t_short * 5 < t_full, f"{t_short:.3f} ms vs {t_full:.3f} ms"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("gather", "normalize"), [(True, True), (False, False)])
def test_smooth_l1_matches_reference(dtype: torch.dtype, gather: bool, normalize: bool) -> None:
    b, m, n, d = 4, 37, 196, 768
    pred = torch.randn(b, m, d, device="cuda", dtype=dtype, requires_grad=True)
    teacher = torch.randn(b, n if gather else m, d, device="cuda", dtype=dtype) * 2
    idx = torch.randint(0, n, (b, m), device="cuda") if gather else None
    loss = triton_salt_smooth_l1(pred, teacher, idx, beta=0.5, normalize_target=normalize)
    loss.backward()

    p = pred.detach().double().requires_grad_()
    target = teacher.double() if idx is None else torch.gather(teacher.double(), 1, idx[..., None].expand(-1, -1, d))
    if normalize:
        target = torch.nn.functional.layer_norm(target, (d,), eps=1e-6)
    ref = torch.nn.functional.smooth_l1_loss(p, target, beta=0.5)
    ref.backward()
    assert abs(loss.item() - ref.item()) / ref.item() < 1e-5
    grad_tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    assert rel_err(pred.grad, p.grad) < grad_tol


def _peak_extra_bytes(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def test_smooth_l1_allocates_only_the_gradient() -> None:
    """The fused loss + backward needs the (B, M, D) gradient and B*M row sums, nothing more."""
    from usjepa_fast.kernels.smooth_l1 import smooth_l1_reference

    b, m, n, d = 64, 120, 196, 768
    teacher = torch.randn(b, n, d, device="cuda", dtype=torch.bfloat16)
    idx = torch.randint(0, n, (b, m), device="cuda")

    def run(loss_fn):
        pred = torch.randn(b, m, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)

        def step():
            loss_fn(pred, teacher, idx).backward()

        return _peak_extra_bytes(step)  # includes pred.grad, which both paths must produce

    grad_bytes = b * m * d * 2
    fused = run(triton_salt_smooth_l1)
    ref = run(smooth_l1_reference)
    assert fused <= grad_bytes + b * m * 4 + (1 << 20), f"fused loss peak {fused} B > gradient {grad_bytes} B"
    assert ref >= 2 * fused, f"reference peak {ref} B is not 2x the fused peak {fused} B"
