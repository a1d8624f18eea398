"""Fused variable-length attention in Triton (flash-attention 2 style), forward and backward.

Semantics match :func:`usjepa_fast.kernels.attention.attention_reference`: for sample ``b`` with
valid length ``L = seq_lens[b]`` (clamped to ``[0, N]``), query rows ``< L`` attend to keys ``< L``
with softmax scale ``1/sqrt(D)``; query rows ``>= L`` output zeros and receive zero gradients, and
padded keys/values receive zero gradients.

Algorithm (per (batch, head) and query block of ``BLOCK_M`` rows):

- forward: stream key/value blocks of ``BLOCK_N`` rows up to ``L`` with an online softmax (running
  max ``m`` and normaliser ``l``, fp32 accumulator), so the ``N x N`` score matrix never exists;
  store ``lse = m + log2(l)`` (base 2, in scaled units) for the backward.
- backward: ``delta = rowsum(dO * O)`` (preprocess kernel), then one kernel per key block that
  accumulates ``dK, dV`` over query blocks and one per query block that accumulates ``dQ`` over key
  blocks, both recomputing ``P = exp2(S - lse)``. No atomics, so every kernel overwrites its
  outputs and the autotuner may replay it freely.

Padding is skipped, not masked: a program whose query (or key) block lies entirely beyond ``L``
writes zeros and exits, and the inner loops stop at ``L``. That is where this kernel gains over a
dense padded attention on varlen JEPA batches (context sets and predictor sequences differ in size).

Inputs may be fp32, fp16 or bf16 with any strides whose last dim is contiguous (e.g. views of a
fused qkv projection); accumulation is fp32. Head dims: powers of two from 16 to 256.
"""

import math

import torch
import triton
import triton.language as tl

from usjepa_fast.errors import UsfastError
from usjepa_fast.kernels._triton_launch import DualModeKernel, interpreting

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_LOG2E = 1.4426950408889634
# The interpreter runs each program instance in Python: the smallest legal blocks keep it fast.
_INTERPRET_BLOCKS = {"BLOCK_M": 16, "BLOCK_N": 16}


def head_dim_supported(head_dim: int) -> bool:
    return 16 <= head_dim <= 256 and head_dim & (head_dim - 1) == 0


# --------------------------------------------------------------------------------------------
# Kernels. Plain functions (wrapped per call by DualModeKernel), self-contained: no jit helpers.
# --------------------------------------------------------------------------------------------


def _attn_fwd(
    Q, K, V, OUT, LSE, LENS,
    qk_scale,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    H, N_CTX, N_BUCKET,
    HEAD_DIM: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr, PACKED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    if PACKED:  # LENS holds cu_seqlens; sequence b occupies token rows [tok0, tok0 + seq_len)
        tok0 = tl.load(LENS + b).to(tl.int64)
        seq_len = tl.load(LENS + b + 1) - tl.load(LENS + b)
        row_limit = seq_len  # rows past the end belong to the next sequence: never written here
    else:  # padded (B, H, N, D): LENS holds lengths; rows past a length are pads, written as zeros
        tok0 = 0
        seq_len = tl.minimum(tl.load(LENS + b), N_CTX)
        row_limit = N_CTX
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    o_ptrs = OUT + b * stride_ob + h * stride_oh + (tok0 + offs_m)[:, None] * stride_on + offs_d[None, :]
    lse_ptrs = LSE + pid_bh.to(tl.int64) * N_CTX + offs_m
    if start_m >= seq_len:
        # The whole query block is padding: zero output, nothing to attend.
        tl.store(o_ptrs, tl.zeros([BLOCK_M, HEAD_DIM], dtype=OUT.dtype.element_ty), mask=offs_m[:, None] < row_limit)
        tl.store(lse_ptrs, tl.zeros([BLOCK_M], dtype=tl.float32), mask=offs_m < N_CTX)
        return

    row_valid = offs_m < seq_len
    q = tl.load(
        Q + b * stride_qb + h * stride_qh + (tok0 + offs_m)[:, None] * stride_qn + offs_d[None, :],
        mask=row_valid[:, None],
        other=0.0,
    )  # (BLOCK_M, D)
    if DOT_F32:
        q = q.to(tl.float32)
    # K is read transposed, (D, BLOCK_N), so the score tile is a plain q @ kT.
    kt_ptrs = K + b * stride_kb + h * stride_kh + (tok0 + offs_n)[None, :] * stride_kn + offs_d[:, None]
    v_ptrs = V + b * stride_vb + h * stride_vh + (tok0 + offs_n)[:, None] * stride_vn + offs_d[None, :]

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    # Every processed key block starts below seq_len, so each row sees >= 1 finite score per
    # block and m_i is finite after the first iteration (no inf - inf).
    for start_n in range(0, seq_len, BLOCK_N):
        col_valid = (start_n + offs_n) < seq_len
        kt = tl.load(kt_ptrs + start_n * stride_kn, mask=col_valid[None, :], other=0.0)
        if DOT_F32:
            kt = kt.to(tl.float32)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
        s = tl.where(col_valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptrs + start_n * stride_vn, mask=col_valid[:, None], other=0.0)
        if DOT_F32:
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    acc = acc / l_i[:, None]
    acc = tl.where(row_valid[:, None], acc, 0.0)
    tl.store(o_ptrs, acc.to(OUT.dtype.element_ty), mask=offs_m[:, None] < row_limit)
    tl.store(lse_ptrs, m_i + tl.math.log2(l_i), mask=offs_m < N_CTX)


def _attn_bwd_preprocess(
    OUT, DO, DELTA, LENS,
    stride_ob, stride_oh, stride_on,
    stride_dob, stride_doh, stride_don,
    H, N_CTX, N_BUCKET,
    HEAD_DIM: tl.constexpr, PACKED: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """delta[b, h, n] = sum_d dO * O (fp32); zero on padded rows, where O is zero anyway."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    if PACKED:
        tok0 = tl.load(LENS + b).to(tl.int64)
        seq_len = tl.load(LENS + b + 1) - tl.load(LENS + b)
    else:
        tok0 = 0
        seq_len = tl.minimum(tl.load(LENS + b), N_CTX)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_valid = offs_m < seq_len
    o = tl.load(
        OUT + b * stride_ob + h * stride_oh + (tok0 + offs_m)[:, None] * stride_on + offs_d[None, :],
        mask=row_valid[:, None],
        other=0.0,
    ).to(tl.float32)
    do = tl.load(
        DO + b * stride_dob + h * stride_doh + (tok0 + offs_m)[:, None] * stride_don + offs_d[None, :],
        mask=row_valid[:, None],
        other=0.0,
    ).to(tl.float32)
    tl.store(DELTA + pid_bh.to(tl.int64) * N_CTX + offs_m, tl.sum(o * do, 1), mask=offs_m < N_CTX)


def _attn_bwd_dkdv(
    Q, K, V, DO, LSE, DELTA, DK, DV, LENS,
    sm_scale, qk_scale,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_don,
    stride_gb, stride_gh, stride_gn,
    H, N_CTX, N_BUCKET,
    HEAD_DIM: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr, PACKED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """One program per key block: dV = sum_m P^T dO, dK = scale * sum_m dS^T Q (stride_g*: dK/dV)."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    if PACKED:
        tok0 = tl.load(LENS + b).to(tl.int64)
        seq_len = tl.load(LENS + b + 1) - tl.load(LENS + b)
        row_limit = seq_len
    else:
        tok0 = 0
        seq_len = tl.minimum(tl.load(LENS + b), N_CTX)
        row_limit = N_CTX
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    g_off = b * stride_gb + h * stride_gh + (tok0 + offs_n)[:, None] * stride_gn + offs_d[None, :]
    if start_n >= seq_len:
        # Padded keys are never attended: zero gradients.
        zeros = tl.zeros([BLOCK_N, HEAD_DIM], dtype=DK.dtype.element_ty)
        tl.store(DK + g_off, zeros, mask=offs_n[:, None] < row_limit)
        tl.store(DV + g_off, zeros, mask=offs_n[:, None] < row_limit)
        return

    col_valid = offs_n < seq_len
    k = tl.load(
        K + b * stride_kb + h * stride_kh + (tok0 + offs_n)[:, None] * stride_kn + offs_d[None, :],
        mask=col_valid[:, None],
        other=0.0,
    )  # (BLOCK_N, D)
    v = tl.load(
        V + b * stride_vb + h * stride_vh + (tok0 + offs_n)[:, None] * stride_vn + offs_d[None, :],
        mask=col_valid[:, None],
        other=0.0,
    )
    if DOT_F32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    qt_ptrs = Q + b * stride_qb + h * stride_qh + (tok0 + offs_m)[None, :] * stride_qn + offs_d[:, None]  # (D, BLOCK_M)
    do_ptrs = DO + b * stride_dob + h * stride_doh + (tok0 + offs_m)[:, None] * stride_don + offs_d[None, :]
    stat_ptrs = pid_bh.to(tl.int64) * N_CTX + offs_m

    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    for start_m in range(0, seq_len, BLOCK_M):
        row_valid = (start_m + offs_m) < seq_len
        qt = tl.load(qt_ptrs + start_m * stride_qn, mask=row_valid[None, :], other=0.0)
        do = tl.load(do_ptrs + start_m * stride_don, mask=row_valid[:, None], other=0.0)
        if DOT_F32:
            qt = qt.to(tl.float32)
            do = do.to(tl.float32)
        lse = tl.load(LSE + stat_ptrs + start_m, mask=row_valid, other=0.0)
        delta = tl.load(DELTA + stat_ptrs + start_m, mask=row_valid, other=0.0)
        st = tl.dot(k, qt, input_precision=PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M) = S^T
        pt = tl.math.exp2(st - lse[None, :])
        # where(), not a product: masked entries may hold inf from a garbage lse.
        pt = tl.where(col_valid[:, None] & row_valid[None, :], pt, 0.0)
        dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)  # (BLOCK_N, BLOCK_M) = (dO V^T)^T
        dst = pt * (dpt - delta[None, :])
        dk += tl.dot(dst.to(qt.dtype), tl.trans(qt), input_precision=PRECISION)
    dk *= sm_scale
    tl.store(DK + g_off, dk.to(DK.dtype.element_ty), mask=offs_n[:, None] < row_limit)
    tl.store(DV + g_off, dv.to(DV.dtype.element_ty), mask=offs_n[:, None] < row_limit)


def _attn_bwd_dq(
    Q, K, V, DO, LSE, DELTA, DQ, LENS,
    sm_scale, qk_scale,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_don,
    stride_gb, stride_gh, stride_gn,
    H, N_CTX, N_BUCKET,
    HEAD_DIM: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr, PACKED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """One program per query block: dQ = scale * sum_n dS K with dS = P * (dO V^T - delta)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    if PACKED:
        tok0 = tl.load(LENS + b).to(tl.int64)
        seq_len = tl.load(LENS + b + 1) - tl.load(LENS + b)
        row_limit = seq_len
    else:
        tok0 = 0
        seq_len = tl.minimum(tl.load(LENS + b), N_CTX)
        row_limit = N_CTX
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    g_ptrs = DQ + b * stride_gb + h * stride_gh + (tok0 + offs_m)[:, None] * stride_gn + offs_d[None, :]
    if start_m >= seq_len:
        tl.store(g_ptrs, tl.zeros([BLOCK_M, HEAD_DIM], dtype=DQ.dtype.element_ty), mask=offs_m[:, None] < row_limit)
        return

    row_valid = offs_m < seq_len
    q = tl.load(
        Q + b * stride_qb + h * stride_qh + (tok0 + offs_m)[:, None] * stride_qn + offs_d[None, :],
        mask=row_valid[:, None],
        other=0.0,
    )
    do = tl.load(
        DO + b * stride_dob + h * stride_doh + (tok0 + offs_m)[:, None] * stride_don + offs_d[None, :],
        mask=row_valid[:, None],
        other=0.0,
    )
    if DOT_F32:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + pid_bh.to(tl.int64) * N_CTX + offs_m, mask=row_valid, other=0.0)
    delta = tl.load(DELTA + pid_bh.to(tl.int64) * N_CTX + offs_m, mask=row_valid, other=0.0)
    kt_ptrs = K + b * stride_kb + h * stride_kh + (tok0 + offs_n)[None, :] * stride_kn + offs_d[:, None]  # (D, BLOCK_N)
    vt_ptrs = V + b * stride_vb + h * stride_vh + (tok0 + offs_n)[None, :] * stride_vn + offs_d[:, None]

    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for start_n in range(0, seq_len, BLOCK_N):
        col_valid = (start_n + offs_n) < seq_len
        kt = tl.load(kt_ptrs + start_n * stride_kn, mask=col_valid[None, :], other=0.0)
        vt = tl.load(vt_ptrs + start_n * stride_vn, mask=col_valid[None, :], other=0.0)
        if DOT_F32:
            kt = kt.to(tl.float32)
            vt = vt.to(tl.float32)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
        p = tl.math.exp2(s - lse[:, None])
        p = tl.where(row_valid[:, None] & col_valid[None, :], p, 0.0)
        dp = tl.dot(do, vt, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kt.dtype), tl.trans(kt), input_precision=PRECISION)
    dq *= sm_scale
    tl.store(g_ptrs, dq.to(DQ.dtype.element_ty), mask=offs_m[:, None] < row_limit)


# Autotune spaces kept small: every config is compiled once per (head dim, dtype, length bucket),
# and JEPA runs see only a handful of those. OutOfResources configs are skipped by the autotuner.
def _cfg(bm: int, bn: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)


_FWD_CONFIGS = [
    _cfg(128, 128, 8, 3),
    _cfg(128, 64, 8, 3),
    _cfg(128, 32, 4, 3),
    _cfg(64, 64, 4, 3),
    _cfg(64, 32, 4, 2),
    _cfg(64, 64, 4, 4),
]
# dK/dV: few query rows per step and many keys per program (FA2 backward layout); dQ: the reverse.
_DKDV_CONFIGS = [_cfg(32, 128, 8, 3), _cfg(32, 64, 4, 3), _cfg(64, 64, 4, 2), _cfg(16, 64, 4, 3)]
_DQ_CONFIGS = [_cfg(128, 32, 8, 3), _cfg(64, 32, 4, 3), _cfg(64, 64, 4, 2), _cfg(64, 16, 4, 3)]
_PRE_BLOCK_M = 64
_KEY = ["N_BUCKET", "HEAD_DIM", "PACKED"]  # the autotuner appends the tensors' dtypes to the key itself

_FWD = DualModeKernel(_attn_fwd, _FWD_CONFIGS, _KEY)
_PRE = DualModeKernel(_attn_bwd_preprocess)
_DKDV = DualModeKernel(_attn_bwd_dkdv, _DKDV_CONFIGS, _KEY)
_DQ = DualModeKernel(_attn_bwd_dq, _DQ_CONFIGS, _KEY)


def _default_config(head_dim: int, kind: str) -> triton.Config:
    """Configs used on a GPU with USFAST_TRITON_AUTOTUNE=0 (fits shared memory up to D=256)."""
    small = head_dim <= 64
    if kind == "fwd":
        return _cfg(64, 64 if small else 32, 4, 2)
    if kind == "dkdv":
        return _cfg(32 if small else 16, 64 if small else 32, 4, 2)
    return _cfg(64 if small else 32, 32 if small else 16, 4, 2)


def _strides(t: torch.Tensor, packed: bool) -> tuple[int, int, int]:
    """(sequence, head, token) strides: padded (B, H, N, D), or packed (T, H, D) where sequence b
    starts at token row cu_seqlens[b] (read by the kernel) and has no stride of its own."""
    if packed:
        return 0, t.stride(1), t.stride(0)
    return t.stride(0), t.stride(1), t.stride(2)


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs follow torch's global matmul setting (TF32 only if the user allowed it).
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def _prepare(t: torch.Tensor) -> torch.Tensor:
    # The kernels need a unit stride on the head dim only; any batch/head/token strides are fine.
    return t if t.stride(-1) == 1 else t.contiguous()


def _geometry(q: torch.Tensor, lens: torch.Tensor, packed: bool, max_len: int) -> tuple[int, int, int, int]:
    """(sequences, heads, context length of the grid, head dim) for either layout."""
    if packed:
        return lens.shape[0] - 1, q.shape[1], max_len, q.shape[2]
    bsz, heads, n_ctx, head_dim = q.shape
    return bsz, heads, n_ctx, head_dim


def _launch_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lens: torch.Tensor,
    scale: float,
    interpret: bool,
    packed: bool = False,
    max_len: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``lens``: (B,) lengths (padded layout) or (S+1,) cu_seqlens (packed layout, ``max_len`` set)."""
    seqs, heads, n_ctx, head_dim = _geometry(q, lens, packed, max_len)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((seqs * heads, n_ctx), dtype=torch.float32, device=q.device)
    if seqs * heads == 0 or n_ctx == 0:
        return out.zero_(), lse
    grid = lambda meta: (triton.cdiv(n_ctx, meta["BLOCK_M"]), seqs * heads)
    _FWD.launch(
        grid,
        (q, k, v, out, lse, lens, scale * _LOG2E, *_strides(q, packed), *_strides(k, packed), *_strides(v, packed),
         *_strides(out, packed), heads, n_ctx, triton.next_power_of_2(n_ctx)),
        {"HEAD_DIM": head_dim, "DOT_F32": interpret, "PRECISION": _dot_precision(q.dtype), "PACKED": packed},
        interpret=interpret, interpret_config=_INTERPRET_BLOCKS, default_config=_default_config(head_dim, "fwd"),
    )  # fmt: skip
    return out, lse


def _launch_backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    lens: torch.Tensor,
    scale: float,
    interpret: bool,
    packed: bool = False,
    max_len: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    seqs, heads, n_ctx, head_dim = _geometry(q, lens, packed, max_len)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty_like(dq)
    dv = torch.empty_like(dq)
    if seqs * heads == 0 or n_ctx == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    bucket = triton.next_power_of_2(n_ctx)
    delta = torch.empty_like(lse)  # (S*H, N) fp32
    pre_block = _INTERPRET_BLOCKS["BLOCK_M"] if interpret else _PRE_BLOCK_M
    _PRE.launch(
        lambda meta: (triton.cdiv(n_ctx, meta["BLOCK_M"]), seqs * heads),
        (out, do, delta, lens, *_strides(out, packed), *_strides(do, packed), heads, n_ctx, bucket),
        {"HEAD_DIM": head_dim, "PACKED": packed},
        interpret=interpret, interpret_config={"BLOCK_M": pre_block},
        default_config=triton.Config({"BLOCK_M": pre_block}, num_warps=4, num_stages=1),
    )  # fmt: skip

    common = (*_strides(q, packed), *_strides(k, packed), *_strides(v, packed), *_strides(do, packed),
              *_strides(dq, packed), heads, n_ctx, bucket)  # fmt: skip
    constants = {"HEAD_DIM": head_dim, "DOT_F32": interpret, "PRECISION": _dot_precision(q.dtype), "PACKED": packed}
    _DKDV.launch(
        lambda meta: (triton.cdiv(n_ctx, meta["BLOCK_N"]), seqs * heads),
        (q, k, v, do, lse, delta, dk, dv, lens, scale, scale * _LOG2E, *common),
        constants,
        interpret=interpret, interpret_config=_INTERPRET_BLOCKS, default_config=_default_config(head_dim, "dkdv"),
    )  # fmt: skip
    _DQ.launch(
        lambda meta: (triton.cdiv(n_ctx, meta["BLOCK_M"]), seqs * heads),
        (q, k, v, do, lse, delta, dq, lens, scale, scale * _LOG2E, *common),
        constants,
        interpret=interpret, interpret_config=_INTERPRET_BLOCKS, default_config=_default_config(head_dim, "dq"),
    )  # fmt: skip
    return dq, dk, dv


# Custom ops make the launches opaque, shape-typed nodes for torch.compile (no graph break on a
# Triton launch it cannot trace); the autograd.Function below wires them together. One pair of ops
# serves both layouts: ``max_len == 0`` means padded (B, H, N, D) with (B,) lengths, ``max_len > 0``
# packed (T, H, D) with (S+1,) cu_seqlens.
@torch.library.custom_op("usjepa_fast::masked_attention_fwd", mutates_args=())
def _attention_fwd_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens: torch.Tensor, scale: float, interpret: bool, max_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch_forward(q, k, v, lens, scale, interpret, packed=max_len > 0, max_len=max_len)


@_attention_fwd_op.register_fake
def _(q, k, v, lens, scale, interpret, max_len):
    seqs, heads, n_ctx, _ = _geometry(q, lens, max_len > 0, max_len)
    return q.new_empty(q.shape), q.new_empty((seqs * heads, n_ctx), dtype=torch.float32)


@torch.library.custom_op("usjepa_fast::masked_attention_bwd", mutates_args=())
def _attention_bwd_op(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    lens: torch.Tensor,
    scale: float,
    interpret: bool,
    max_len: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _launch_backward(_prepare(grad_out), q, k, v, out, lse, lens, scale, interpret, max_len > 0, max_len)


@_attention_bwd_op.register_fake
def _(grad_out, q, k, v, out, lse, lens, scale, interpret, max_len):
    return tuple(q.new_empty(q.shape) for _ in range(3))


class _MaskedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, lens, scale, interpret, max_len):  # type: ignore[override]
        out, lse = _attention_fwd_op(q, k, v, lens, scale, interpret, max_len)
        ctx.save_for_backward(q, k, v, out, lse, lens)
        ctx.scale = scale
        ctx.interpret = interpret
        ctx.max_len = max_len
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v, out, lse, lens = ctx.saved_tensors
        dq, dk, dv = _attention_bwd_op(grad_out, q, k, v, out, lse, lens, ctx.scale, ctx.interpret, ctx.max_len)
        return dq, dk, dv, None, None, None, None


def _check_head_dim(head_dim: int) -> None:
    if not head_dim_supported(head_dim):
        raise UsfastError(
            f"masked_attention: head dim {head_dim} is not supported by the Triton kernel (powers of two "
            "16..256); use set_backend('torch') for this model"
        )


def _common_dtype(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
    dtype = q.dtype if q.dtype in SUPPORTED_DTYPES else torch.float32
    if k.dtype != dtype or v.dtype != dtype or q.dtype != dtype:  # e.g. fp64 test inputs, mixed autocast
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    return q, k, v


def triton_masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seq_lens: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Fused variable-length attention; q, k, v ``(B, H, N, D)`` -> ``(B, H, N, D)`` in q's dtype.

    ``seq_lens`` ``(B,)`` integer valid lengths (``None``: all ``N``); rows at or beyond a sample's
    length come out as zeros. ``scale`` defaults to ``1/sqrt(D)``.
    """
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise UsfastError(
            f"masked_attention: q, k, v must share one (B, H, N, D) shape, got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}; reshape heads to (B, H, N, D) before the call"
        )
    head_dim = q.shape[-1]
    _check_head_dim(head_dim)
    in_dtype = q.dtype
    q, k, v = _common_dtype(q, k, v)
    bsz, _, n_ctx, _ = q.shape
    if seq_lens is None:
        lens = torch.full((bsz,), n_ctx, dtype=torch.int32, device=q.device)
    else:
        if seq_lens.shape != (bsz,):
            raise UsfastError(
                f"masked_attention: seq_lens must have shape ({bsz},), got {tuple(seq_lens.shape)}; "
                "pass one valid length per sample"
            )
        lens = seq_lens.to(device=q.device, dtype=torch.int32)
    interpret = interpreting(q, k, v)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    out = _MaskedAttention.apply(_prepare(q), _prepare(k), _prepare(v), lens, scale, interpret, 0)
    return out.to(in_dtype)  # no-op unless the inputs were e.g. fp64 (computed in fp32)


def triton_varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_len: int,
    scale: float | None = None,
) -> torch.Tensor:
    """Fused attention over packed sequences; q, k, v ``(T, H, D)`` -> ``(T, H, D)`` in q's dtype.

    Sequence ``s`` is token rows ``cu_seqlens[s] : cu_seqlens[s + 1]`` (``(S+1,)`` int, starting at
    0 and ending at T: FlashAttention's varlen convention); tokens attend within their sequence
    only. ``max_len`` (a host int >= every length) sizes the launch grid; empty sequences are
    allowed. Any token/head strides with a contiguous last dim (views of a fused qkv) are fine.
    """
    if q.dim() != 3 or k.shape != q.shape or v.shape != q.shape:
        raise UsfastError(
            f"varlen_attention: q, k, v must share one packed (T, H, D) shape, got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise UsfastError(f"varlen_attention: cu_seqlens must be (S+1,), got {tuple(cu_seqlens.shape)}")
    head_dim = q.shape[-1]
    _check_head_dim(head_dim)
    in_dtype = q.dtype
    q, k, v = _common_dtype(q, k, v)
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    interpret = interpreting(q, k, v)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    # max(1, .): the op's "packed" flag is max_len > 0; an all-empty batch launches nothing anyway.
    out = _MaskedAttention.apply(_prepare(q), _prepare(k), _prepare(v), cu, scale, interpret, max(1, int(max_len)))
    return out.to(in_dtype)
