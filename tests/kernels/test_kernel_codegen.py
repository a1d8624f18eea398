"""The kernels as the GPU sees them, checked without a GPU.

1. Ahead-of-time compilation for sm_90 (H100/H200) with triton's bundled ptxas: proves the kernel
   bodies are valid *compiled* Triton (the interpreter accepts Python the compiler rejects) and
   that their shared memory fits. Skipped if this triton build has no CUDA backend.
2. ``torch.compile(fullgraph=True)`` through both call sites with the kernels forced on (run by the
   interpreter): the custom ops keep the launches traceable, so a compiled trainer gets no graph
   break at the kernels, and the compiled loss and gradients match the eager PyTorch path.
"""

from __future__ import annotations

import pytest
import torch
import triton

from usjepa_fast.kernels import attention_triton as at
from usjepa_fast.kernels import masked_attention, salt_smooth_l1, set_backend
from usjepa_fast.kernels import smooth_l1_triton as st

H100_MAX_SHARED = 232_448  # bytes of shared memory one block may use on sm_90


def _compile_sm90(fn, pointer_types: dict[str, str], constexprs: dict, num_warps: int, num_stages: int):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    jit_fn = triton.JITFunction(fn)
    signature = {}
    for name in jit_fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointer_types:
            signature[name] = pointer_types[name]
        elif "scale" in name or name in ("inv_numel", "beta", "eps"):
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    src = ASTSource(jit_fn, signature, constexprs)
    return triton.compile(
        src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": num_stages}
    )


def _cuda_backend_present() -> bool:
    try:
        from triton.backends import backends

        return "nvidia" in backends
    except Exception:
        return False


@pytest.mark.skipif(not _cuda_backend_present(), reason="triton build without the CUDA backend")
def test_kernels_compile_for_sm90(monkeypatch: pytest.MonkeyPatch) -> None:
    import triton.language as tl

    if not isinstance(tl.standard.sum, triton.JITFunction):
        pytest.skip("triton was imported with TRITON_INTERPRET=1: its library is interpreter-only in this process")
    monkeypatch.delenv("TRITON_INTERPRET")  # the compiler consults it too; this is the GPU path
    ptrs = {name: "*bf16" for name in ("Q", "K", "V", "OUT", "DO", "DQ", "DK", "DV")}
    ptrs.update({"LSE": "*fp32", "DELTA": "*fp32", "LENS": "*i32"})
    for packed in (False, True):  # padded (B, H, N, D) + lengths, packed (T, H, D) + cu_seqlens
        attn = {"HEAD_DIM": 64, "DOT_F32": False, "PRECISION": "tf32", "PACKED": packed}
        for fn, configs in (
            (at._attn_fwd, at._FWD_CONFIGS),
            (at._attn_bwd_dkdv, at._DKDV_CONFIGS),
            (at._attn_bwd_dq, at._DQ_CONFIGS),
        ):
            cfg = configs[0]  # the largest-tile config of each space
            kernel = _compile_sm90(fn, ptrs, {**attn, **cfg.kwargs}, cfg.num_warps, cfg.num_stages)
            assert 0 < kernel.metadata.shared <= H100_MAX_SHARED, fn.__name__
        _compile_sm90(at._attn_bwd_preprocess, ptrs, {"HEAD_DIM": 64, "PACKED": packed, "BLOCK_M": 64}, 4, 1)

    loss_ptrs = {"PRED": "*bf16", "TEACHER": "*bf16", "IDX": "*i64", "GRAD": "*bf16", "ROW_LOSS": "*fp32"}
    cfg = st._gpu_config(1024)  # ViT-B width 768 -> BLOCK_D 1024
    flags = {"GATHER": True, "NORMALIZE": True, "WRITE_GRAD": True, "BLOCK_D": 1024, **cfg.kwargs}
    _compile_sm90(st._smooth_l1_fwd, loss_ptrs, flags, cfg.num_warps, cfg.num_stages)


def test_interpreted_launch_leaves_triton_language_untouched() -> None:
    """The interpreter patches triton.language while it runs; nothing may leak into compiled launches."""
    import triton.language as tl

    namespaces = (tl, tl.core, tl.standard, tl.math, tl.core.tensor)
    before = [dict(vars(ns)) for ns in namespaces]
    q = torch.randn(1, 1, 20, 16)
    at.triton_masked_attention(q, q, q, torch.tensor([7]))
    st.triton_salt_smooth_l1(torch.randn(1, 3, 16), torch.randn(1, 3, 16))  # tl.sum: a @jit library call
    for ns, saved in zip(namespaces, before, strict=True):
        changed = [name for name, value in saved.items() if vars(ns).get(name) is not value]
        assert changed == [], f"{ns.__name__}: {changed[:5]}"
    assert set(vars(tl.core.tensor)) == set(before[-1])


def test_torch_compile_fullgraph_through_both_kernels() -> None:
    def step(q, k, v, lens, teacher, idx):
        out = masked_attention(q, k, v, lens)  # (B, H, N, D)
        pred = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)[:, :5]  # (B, 5, H*D)
        return salt_smooth_l1(pred, teacher, idx)

    q, k, v = (torch.randn(2, 2, 20, 16, requires_grad=True) for _ in range(3))
    lens, teacher, idx = torch.tensor([20, 7]), torch.randn(2, 9, 32), torch.randint(0, 9, (2, 5))

    set_backend("triton")
    loss = torch.compile(step, backend="aot_eager", fullgraph=True)(q, k, v, lens, teacher, idx)
    loss.backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None

    set_backend("torch")
    ref = step(q, k, v, lens, teacher, idx)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for g, t in zip(grads, (q, k, v), strict=True):
        torch.testing.assert_close(g, t.grad, rtol=1e-4, atol=1e-6)
