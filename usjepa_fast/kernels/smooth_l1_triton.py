"""Fused SALT loss in Triton: gather + layer-norm of targets + Smooth-L1 + gradient, one pass.

Semantics match :func:`usjepa_fast.kernels.smooth_l1.smooth_l1_reference`: ``target =
teacher[b, target_idx[b, m]]`` (or ``teacher[b, m]`` when already gathered), optionally
``layer_norm(target)`` without affine, then ``mean(smooth_l1(pred - target, beta))`` over all
``B * M * D`` elements. The teacher receives no gradient.

Liger-Kernel's fused-loss pattern: each program reads a block of rows of ``pred`` and their
teacher rows once, and writes both the per-row loss sums and ``d loss / d pred`` for those rows.
The backward is then one in-place scale of that saved gradient by ``grad_output``. Neither the
gathered targets, their normalised copy, nor the difference tensor is ever materialised: the only
``(B, M, D)`` buffer is the gradient itself, which autograd needs anyway. Per-row sums (``B*M``
floats) are reduced with ``torch.sum`` so the result is deterministic (no atomics).
"""

import torch
import triton
import triton.language as tl

from usjepa_fast.errors import UsfastError
from usjepa_fast.kernels._triton_launch import DualModeKernel, interpreting

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INTERPRET_ROWS = 4
_MAX_DIM = 16384  # one row lives in registers; ViT widths are 384..1280


def _smooth_l1_fwd(
    PRED, TEACHER, IDX, GRAD, ROW_LOSS,
    n_rows, M, D, N_TEACHER,
    stride_pb, stride_pm,
    stride_tb, stride_tn,
    stride_ib,
    stride_gb, stride_gm,
    inv_numel, beta, eps,
    GATHER: tl.constexpr, NORMALIZE: tl.constexpr, WRITE_GRAD: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)  # flat row index over B * M
    row_valid = rows < n_rows
    b = (rows // M).to(tl.int64)
    m = (rows % M).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    col_valid = cols < D
    mask = row_valid[:, None] & col_valid[None, :]

    if GATHER:
        t_row = tl.load(IDX + b * stride_ib + m, mask=row_valid, other=0).to(tl.int64)
        # Memory safety: an out-of-range index reads a zero target instead of foreign memory
        # (the collator never produces one; the reference path raises on it).
        t_mask = mask & ((t_row >= 0) & (t_row < N_TEACHER))[:, None]
    else:
        t_row = m
        t_mask = mask
    t = tl.load(
        TEACHER + b[:, None] * stride_tb + t_row[:, None] * stride_tn + cols[None, :], mask=t_mask, other=0.0
    ).to(tl.float32)  # (BLOCK_R, BLOCK_D)
    if NORMALIZE:
        # F.layer_norm semantics: biased variance, eps inside the square root.
        mean = tl.sum(t, 1) / D
        centred = tl.where(mask, t - mean[:, None], 0.0)
        var = tl.sum(centred * centred, 1) / D
        t = centred * tl.math.rsqrt(var + eps)[:, None]
    p = tl.load(PRED + b[:, None] * stride_pb + m[:, None] * stride_pm + cols[None, :], mask=mask, other=0.0).to(
        tl.float32
    )

    diff = p - t
    abs_diff = tl.abs(diff)
    quadratic = abs_diff < beta
    loss = tl.where(quadratic, 0.5 * diff * diff / beta, abs_diff - 0.5 * beta)
    loss = tl.where(mask, loss, 0.0)
    tl.store(ROW_LOSS + rows, tl.sum(loss, 1), mask=row_valid)
    if WRITE_GRAD:
        # d mean(loss) / d pred: diff / beta inside the quadratic zone, sign(diff) outside.
        sign = tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, 0.0))
        grad = tl.where(quadratic, diff / beta, sign) * inv_numel
        tl.store(
            GRAD + b[:, None] * stride_gb + m[:, None] * stride_gm + cols[None, :],
            grad.to(GRAD.dtype.element_ty),
            mask=mask,
        )


_FWD = DualModeKernel(_smooth_l1_fwd)


def _gpu_config(block_d: int) -> triton.Config:
    # Memory-bound: ~8K elements per program keeps enough bytes in flight without spilling.
    rows = max(1, min(16, 8192 // block_d))
    warps = 4 if block_d <= 512 else 8
    return triton.Config({"BLOCK_R": rows}, num_warps=warps, num_stages=1)


def _launch(
    pred: torch.Tensor,
    teacher: torch.Tensor,
    idx: torch.Tensor | None,
    beta: float,
    normalize: bool,
    eps: float,
    write_grad: bool,
    interpret: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    bsz, m_rows, dim = pred.shape
    n_rows = bsz * m_rows
    block_d = triton.next_power_of_2(dim)
    row_loss = torch.empty(n_rows, dtype=torch.float32, device=pred.device)
    grad = torch.empty((bsz, m_rows, dim), dtype=pred.dtype, device=pred.device) if write_grad else None
    grad_arg = grad if grad is not None else row_loss  # never written when WRITE_GRAD is False
    idx_arg = idx if idx is not None else row_loss  # never read when GATHER is False
    config = _gpu_config(block_d)
    grid = lambda meta: (triton.cdiv(n_rows, meta["BLOCK_R"]),)
    _FWD.launch(
        grid,
        (pred, teacher, idx_arg, grad_arg, row_loss, n_rows, m_rows, dim, teacher.shape[1],
         pred.stride(0), pred.stride(1), teacher.stride(0), teacher.stride(1),
         idx.stride(0) if idx is not None else 0,
         grad.stride(0) if grad is not None else 0, grad.stride(1) if grad is not None else 0,
         1.0 / (n_rows * dim), float(beta), float(eps)),
        {"GATHER": idx is not None, "NORMALIZE": bool(normalize), "WRITE_GRAD": write_grad, "BLOCK_D": block_d},
        interpret=interpret, interpret_config={"BLOCK_R": _INTERPRET_ROWS}, default_config=config,
    )  # fmt: skip
    loss = row_loss.sum() / (n_rows * dim)
    return loss, grad


# A custom op keeps the launch an opaque, shape-typed node for torch.compile.
@torch.library.custom_op("usjepa_fast::salt_smooth_l1_fwd", mutates_args=())
def _smooth_l1_op(
    pred: torch.Tensor,
    teacher: torch.Tensor,
    idx: torch.Tensor | None,
    beta: float,
    normalize: bool,
    eps: float,
    write_grad: bool,
    interpret: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    loss, grad = _launch(pred, teacher, idx, beta, normalize, eps, write_grad, interpret)
    return loss, grad if grad is not None else pred.new_empty(0)


@_smooth_l1_op.register_fake
def _(pred, teacher, idx, beta, normalize, eps, write_grad, interpret):
    grad = pred.new_empty(pred.shape) if write_grad else pred.new_empty(0)
    return pred.new_empty((), dtype=torch.float32), grad


class _FusedSmoothL1(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pred, teacher, idx, beta, normalize, eps, interpret):  # type: ignore[override]
        loss, grad = _smooth_l1_op(pred, teacher, idx, beta, normalize, eps, True, interpret)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        if torch.compiler.is_compiling():
            # Traced graphs handle buffer reuse themselves; keep the op functional.
            return grad * grad_output.to(grad.dtype), None, None, None, None, None, None
        # In place: no second (B, M, D) buffer. The saved gradient can then serve only one backward
        # pass; autograd's version counter turns a second one (retain_graph) into an error.
        grad.mul_(grad_output.to(grad.dtype))
        return grad, None, None, None, None, None, None


def triton_salt_smooth_l1(
    pred: torch.Tensor,
    teacher: torch.Tensor,
    target_idx: torch.Tensor | None = None,
    beta: float = 1.0,
    normalize_target: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Fused mean Smooth-L1 between ``pred`` (B, M, D) and (gathered, layer-normed) teacher tokens.

    ``teacher`` is ``(B, M, D)`` when ``target_idx`` is None, else ``(B, N, D)`` with
    ``target_idx`` ``(B, M)`` integer indices into N. Returns the fp32 scalar loss; the gradient
    with respect to ``pred`` is computed in the same pass (when ``pred`` requires grad).
    """
    if pred.dim() != 3 or teacher.dim() != 3 or teacher.shape[0] != pred.shape[0] or teacher.shape[2] != pred.shape[2]:
        raise UsfastError(
            f"salt_smooth_l1: pred must be (B, M, D) and teacher (B, N, D) with the same B and D, got "
            f"{tuple(pred.shape)} and {tuple(teacher.shape)}"
        )
    bsz, m_rows, dim = pred.shape
    if target_idx is None:
        if teacher.shape[1] != m_rows:
            raise UsfastError(
                f"salt_smooth_l1: teacher {tuple(teacher.shape)} is not gathered to pred {tuple(pred.shape)}; "
                "pass target_idx (B, M) to gather inside the kernel"
            )
        idx = None
    else:
        if target_idx.shape != (bsz, m_rows):
            raise UsfastError(f"salt_smooth_l1: target_idx must be ({bsz}, {m_rows}), got {tuple(target_idx.shape)}")
        idx = target_idx.to(device=pred.device)
        idx = idx if idx.stride(-1) == 1 else idx.contiguous()
    if dim > _MAX_DIM:
        raise UsfastError(f"salt_smooth_l1: embedding dim {dim} exceeds {_MAX_DIM}; use set_backend('torch')")
    if bsz * m_rows == 0:
        raise UsfastError("salt_smooth_l1: no target tokens (M == 0); check the mask collator's target blocks")
    in_dtype = pred.dtype
    if in_dtype not in SUPPORTED_DTYPES:
        pred = pred.float()  # e.g. fp64 test inputs; autograd casts the gradient back
    if teacher.dtype not in SUPPORTED_DTYPES:
        teacher = teacher.float()
    pred = pred if pred.stride(-1) == 1 else pred.contiguous()
    teacher = teacher.detach()
    teacher = teacher if teacher.stride(-1) == 1 else teacher.contiguous()
    interpret = interpreting(pred, teacher)
    if not (torch.is_grad_enabled() and pred.requires_grad):
        loss, _ = _smooth_l1_op(pred, teacher, idx, float(beta), bool(normalize_target), float(eps), False, interpret)
        return loss
    return _FusedSmoothL1.apply(pred, teacher, idx, float(beta), bool(normalize_target), float(eps), interpret)
