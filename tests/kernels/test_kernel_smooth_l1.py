"""Fused SALT Smooth-L1 (Triton, interpreted on CPU) against the PyTorch reference.

Error metric: |loss - ref| / |ref| and max |grad - ref_grad| / max |ref_grad|, reference in float64
on the same (rounded) inputs. Bounds per input dtype:

| input dtype | loss  | grad  | why                                                         |
|-------------|-------|-------|-------------------------------------------------------------|
| float64     | 1e-5  | 1e-5  | the kernel computes in fp32 (fp64 inputs are cast)          |
| float32     | 1e-5  | 1e-5  | fp32 layer-norm and per-row sums                            |
| float16     | 1e-5  | 2e-3  | loss in fp32 from fp16 inputs; gradient stored as fp16      |
| bfloat16    | 1e-5  | 1.6e-2| loss in fp32 from bf16 inputs; gradient stored as bf16      |
"""

from __future__ import annotations

import pytest
import torch

from usjepa_fast.errors import UsfastError
from usjepa_fast.kernels.smooth_l1 import smooth_l1_reference
from usjepa_fast.kernels.smooth_l1_triton import triton_salt_smooth_l1

TOL = {
    torch.float64: (1e-5, 1e-5),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-5, 2e-3),
    torch.bfloat16: (1e-5, 1.6e-2),
}


def _reference(pred, teacher, idx, beta, normalize):
    """float64 reference with its gradient wrt pred (the reference itself casts to fp32)."""
    p = pred.detach().double().requires_grad_()
    target = (
        teacher.double()
        if idx is None
        else torch.gather(teacher.double(), 1, idx[..., None].expand(-1, -1, teacher.shape[-1]))
    )
    if normalize:
        target = torch.nn.functional.layer_norm(target, (target.shape[-1],), eps=1e-6)
    loss = torch.nn.functional.smooth_l1_loss(p, target, beta=beta)
    return loss, p, target


def _inputs(dtype, gather, b=2, m=7, n=19, d=48):
    pred = torch.randn(b, m, d, dtype=torch.float64).to(dtype).requires_grad_()
    teacher = (torch.randn(b, n if gather else m, d, dtype=torch.float64) * 3 + 1).to(dtype)
    idx = torch.stack([torch.randperm(n)[:m] for _ in range(b)]) if gather else None
    return pred, teacher, idx


@pytest.mark.parametrize("gather", [True, False])
@pytest.mark.parametrize("normalize", [True, False])
def test_loss_and_grad_float64(gather: bool, normalize: bool) -> None:
    pred, teacher, idx = _inputs(torch.float64, gather)
    beta = 0.5
    loss = triton_salt_smooth_l1(pred, teacher, idx, beta=beta, normalize_target=normalize)
    (loss * 2.5).backward()  # grad_output != 1 exercises the backward scale
    ref, p, target = _reference(pred, teacher, idx, beta, normalize)
    (ref * 2.5).backward()
    loss_tol, grad_tol = TOL[torch.float64]
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert abs(loss.item() - ref.item()) / ref.item() < loss_tol
    assert pred.grad.dtype == torch.float64
    assert ((pred.grad - p.grad).abs().max() / p.grad.abs().max()).item() < grad_tol
    # Both Smooth-L1 branches are hit, or the test would not cover the kernel's two formulas.
    abs_diff = (p.detach() - target).abs()
    assert (abs_diff < beta).any() and (abs_diff > beta).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtypes_against_float64_reference(dtype: torch.dtype) -> None:
    pred, teacher, idx = _inputs(dtype, gather=True, d=64)
    loss = triton_salt_smooth_l1(pred, teacher, idx)
    loss.backward()
    ref, p, _ = _reference(pred, teacher, idx, 1.0, True)
    ref.backward()
    loss_tol, grad_tol = TOL[dtype]
    assert abs(loss.item() - ref.item()) / ref.item() < loss_tol
    assert pred.grad.dtype == dtype
    assert ((pred.grad.double() - p.grad).abs().max() / p.grad.abs().max()).item() < grad_tol


def test_matches_public_reference_and_teacher_gets_no_grad() -> None:
    pred, teacher, idx = _inputs(torch.float32, gather=True, b=1, m=5, n=9, d=32)
    teacher.requires_grad_()
    loss = triton_salt_smooth_l1(pred, teacher, idx, beta=2.0)
    ref = smooth_l1_reference(pred, teacher, idx, beta=2.0)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-7)
    loss.backward()
    assert teacher.grad is None and pred.grad is not None


def test_no_grad_path_computes_the_same_loss() -> None:
    pred, teacher, idx = _inputs(torch.float32, gather=True)
    with torch.no_grad():
        loss = triton_salt_smooth_l1(pred, teacher, idx)
    assert loss.grad_fn is None
    ref = smooth_l1_reference(pred, teacher, idx)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-7)


def test_second_backward_is_refused() -> None:
    pred, teacher, idx = _inputs(torch.float32, gather=True, b=1, m=3, n=5, d=16)
    loss = triton_salt_smooth_l1(pred, teacher, idx)
    loss.backward(retain_graph=True)
    # The saved gradient was scaled in place; autograd must refuse to reuse it silently.
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_bad_shapes_raise_one_line_errors() -> None:
    pred = torch.randn(2, 4, 16)
    with pytest.raises(UsfastError, match="not gathered"):
        triton_salt_smooth_l1(pred, torch.randn(2, 9, 16))
    with pytest.raises(UsfastError, match="target_idx must be"):
        triton_salt_smooth_l1(pred, torch.randn(2, 9, 16), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(UsfastError, match="same B and D"):
        triton_salt_smooth_l1(pred, torch.randn(2, 4, 8))


def test_out_of_range_index_reads_a_zero_target_not_foreign_memory() -> None:
    pred, teacher, idx = _inputs(torch.float32, gather=True, b=1, m=4, n=6, d=16)
    bad = idx.clone()
    bad[0, 1] = 6  # one past the end
    loss = triton_salt_smooth_l1(pred, teacher, bad, normalize_target=False)
    padded = torch.cat([teacher, torch.zeros(1, 1, 16)], dim=1)  # a zero row where index 6 points
    torch.testing.assert_close(loss, smooth_l1_reference(pred, padded, bad, normalize_target=False))
