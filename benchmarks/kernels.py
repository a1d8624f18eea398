"""Benchmark the fused Triton kernels against PyTorch on ViT-B/16 SALT shapes (CUDA GPU).

Claims checked (issue #5 targets on an H100):
- attention forward+backward >= 1.0x PyTorch SDPA's flash backend on padded variable-length
  batches (flash attends the padding; ours skips it), for the context encoder (~170 valid tokens)
  and the predictor (~200 tokens);
- fused Smooth-L1 loss+gradient >= 2x the eager reference with >= 2x less peak memory;
- packed (varlen) attention on the shapes ragged training produces (issue #10): ViT-B contexts
  (12 heads x 64) of a B=256 USrc draw (fans covering 48-83% of the 14x14 grid, as in
  ``benchmarks/ragged_tokens.py``) and per-block predictor sequences (12 heads x 32, B x 4
  sequences of context + block), packed ``(T, H, D)`` in and out: the Triton packed kernel vs SDPA
  flash on the padded batch (pad + unpad included: the input is packed), SDPA on jagged nested
  tensors, and the padded reference. ``"auto"`` sends ragged CUDA batches to the Triton kernel;
  if a SDPA row wins here, change the CUDA column of the dispatch in kernels/attention.py.

Baselines per kernel: the eager reference with the same semantics (SDPA + key-padding mask; eager
gather + layer-norm + smooth_l1), ``torch.compile`` of that reference, and for attention SDPA's
flash backend on the padded batch without a mask (the fastest dense PyTorch path). Times are
medians of ``triton.testing.do_bench`` (CUDA events); peak memory is the allocator's peak above the
live inputs during one forward+backward. Prints a ratio table, then one JSON line with everything.

Without CUDA it prints why, runs a tiny correctness smoke of both kernels in the Triton
interpreter (``--no-smoke`` skips it), and exits 0.

    python benchmarks/kernels.py                     # full ViT-B/16 shapes
    python benchmarks/kernels.py --batch 32 --no-compile   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--ctx-mean", type=int, default=170, help="mean valid context tokens (max 196)")
    p.add_argument("--pred-mean", type=int, default=200, help="mean predictor tokens (context + targets)")
    p.add_argument("--spread", type=int, default=24, help="valid lengths are uniform in mean +- spread")
    p.add_argument("--targets", type=int, default=120, help="target tokens M per image for the loss")
    p.add_argument("--embed-dim", type=int, default=768, help="teacher width D for the loss")
    p.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    p.add_argument("--no-smoke", action="store_true", help="without CUDA: skip the interpreted smoke test")
    p.add_argument("--usrc-batch", type=int, default=256, help="packed rows: samples of the USrc mask draw")
    return p.parse_args()


# ---------------------------------------------------------------------------------------------
# CPU: explain and smoke-test in the interpreter
# ---------------------------------------------------------------------------------------------


def _cpu_smoke() -> dict:
    # Must be set before triton is imported for the first time (torch does not import it).
    os.environ["TRITON_INTERPRET"] = "1"
    import torch

    from usjepa_fast.kernels.attention import attention_reference
    from usjepa_fast.kernels.attention_triton import triton_masked_attention
    from usjepa_fast.kernels.smooth_l1 import smooth_l1_reference
    from usjepa_fast.kernels.smooth_l1_triton import triton_salt_smooth_l1

    torch.manual_seed(0)
    t0 = time.perf_counter()
    q, k, v = (torch.randn(2, 2, 37, 64, requires_grad=True) for _ in range(3))
    lens = torch.tensor([37, 11])
    out = triton_masked_attention(q, k, v, lens)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref = attention_reference(q, k, v, lens)
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    attn_err = max((a - b).abs().max().item() for a, b in zip((out, *grads), (ref, *ref_grads), strict=True))

    pred = torch.randn(2, 9, 96, requires_grad=True)
    teacher, idx = torch.randn(2, 30, 96), torch.randint(0, 30, (2, 9))
    from usjepa_fast.kernels import VarlenLayout, varlen_attention_reference
    from usjepa_fast.kernels.attention_triton import triton_varlen_attention

    layout = VarlenLayout.from_lens([0, 1, 23, 9])
    pq, pk, pv = (torch.randn(layout.total, 2, 32, requires_grad=True) for _ in range(3))
    packed = triton_varlen_attention(pq, pk, pv, layout.cu_seqlens, layout.max_len)
    p_grads = torch.autograd.grad(packed.square().sum(), (pq, pk, pv))
    p_ref = varlen_attention_reference(pq, pk, pv, layout)
    p_ref_grads = torch.autograd.grad(p_ref.square().sum(), (pq, pk, pv))
    attn_err = max(
        attn_err,
        *((a - b).abs().max().item() for a, b in zip((packed, *p_grads), (p_ref, *p_ref_grads), strict=True)),
    )

    loss = triton_salt_smooth_l1(pred, teacher, idx)
    (g,) = torch.autograd.grad(loss, pred)
    ref_loss = smooth_l1_reference(pred, teacher, idx)
    (rg,) = torch.autograd.grad(ref_loss, pred)
    loss_err = max(abs(loss.item() - ref_loss.item()), (g - rg).abs().max().item())
    return {
        "attention_max_abs_err": attn_err,
        "smooth_l1_max_abs_err": loss_err,
        "ok": attn_err < 1e-4 and loss_err < 1e-6,
        "seconds": round(time.perf_counter() - t0, 2),
    }


# ---------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------


def _bench_ms(fn: Callable[[], object], grad_to_none: list | None = None) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median"))


def _peak_mib(fn: Callable[[], object]) -> float:
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _measure(fn: Callable, inputs: tuple, leaves: list, grad_out=None) -> dict:
    """fwd / fwd+bwd median ms and fwd+bwd peak MiB of ``fn(*inputs)``; ``leaves`` get gradients."""
    import torch

    def fwd() -> object:
        return fn(*inputs)

    def fwd_bwd() -> None:
        out = fn(*inputs)
        out.backward(grad_out)

    with torch.no_grad():
        fwd()  # compile / autotune outside the timed region
    fwd_bwd()
    row = {}
    with torch.no_grad():
        row["fwd_ms"] = _bench_ms(fwd)
    row["fwd_bwd_ms"] = _bench_ms(fwd_bwd, grad_to_none=leaves)
    for t in leaves:
        t.grad = None
    row["fwd_bwd_peak_mib"] = _peak_mib(fwd_bwd)
    for t in leaves:
        t.grad = None
    return row


def _rel_err(ours, ref) -> float:
    return ((ours.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-12)).item()


def _lengths(batch: int, mean: int, spread: int, cap: int | None, gen) -> torch.Tensor:  # noqa: F821
    import torch

    lens = torch.randint(max(1, mean - spread), mean + spread + 1, (batch,), generator=gen)
    return lens.clamp(max=cap) if cap else lens


def _attention_rows(args: argparse.Namespace, dtype, compile_ok: bool) -> list[dict]:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from usjepa_fast.kernels.attention import attention_reference
    from usjepa_fast.kernels.attention_triton import triton_masked_attention

    gen = torch.Generator().manual_seed(0)
    cases = {
        "context": _lengths(args.batch, args.ctx_mean, args.spread, 196, gen),
        "predictor": _lengths(args.batch, args.pred_mean, args.spread, None, gen),
    }

    def flash_padded(q, k, v, lens):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v)

    methods: dict[str, Callable] = {
        "triton_varlen (ours)": triton_masked_attention,
        "sdpa_flash_padded": flash_padded,
        "sdpa_masked (reference)": attention_reference,
    }
    if compile_ok:
        methods["compiled_reference"] = torch.compile(attention_reference, dynamic=False)

    rows = []
    for case, lens_cpu in cases.items():
        n = int(lens_cpu.max())
        lens = lens_cpu.cuda()
        shape = (args.batch, args.heads, n, args.head_dim)
        q, k, v = (torch.randn(shape, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
        grad_out = torch.randn(shape, device="cuda", dtype=dtype)
        for name, fn in methods.items():
            row = {"kernel": "attention", "case": case, "method": name, "padded_len": n,
                   "mean_len": round(float(lens_cpu.float().mean()), 1)}  # fmt: skip
            try:
                row.update(_measure(fn, (q, k, v, lens), [q, k, v], grad_out))
                if "(ours)" in name:  # sanity: same answer as the reference on these very shapes
                    with torch.no_grad():
                        row["rel_err_vs_reference"] = _rel_err(fn(q, k, v, lens), attention_reference(q, k, v, lens))
            except Exception as exc:  # a baseline unavailable on this GPU/build must not end the run
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            rows.append(row)
    return rows


def _usrc_lengths(batch: int) -> tuple[list[int], list[int]]:
    """Context lengths and per-block predictor lengths of one USrc draw (ragged_tokens.py fans)."""
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from ragged_tokens import GRID, fan_pool

    from usjepa_fast.masking import MaskConfig, MultiBlockMaskCollator

    pool = fan_pool(max(batch, 64))
    masks = MultiBlockMaskCollator(MaskConfig(usrc=True), GRID).sample(batch, pool[:batch], np.random.default_rng(0))
    ctx = masks.context.lens[:, 0].tolist()
    pred = (masks.context.lens + masks.target.lens).reshape(-1).tolist()  # per-block: context + block j
    return ctx, pred


def _packed_rows(args: argparse.Namespace, dtype, compile_ok: bool) -> list[dict]:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from usjepa_fast.kernels import VarlenLayout, varlen_attention_reference
    from usjepa_fast.kernels.attention_triton import triton_varlen_attention

    ctx_lens, pred_lens = _usrc_lengths(args.usrc_batch)
    cases = {"ctx_usrc_12x64": (ctx_lens, 12, 64), "pred_usrc_12x32": (pred_lens, 12, 32)}
    rows = []
    for case, (lens, heads, head_dim) in cases.items():
        layout = VarlenLayout.from_lens(lens, "cuda")
        offsets = layout.cu_seqlens.long()

        def ours(q, k, v, layout=layout):
            return triton_varlen_attention(q, k, v, layout.cu_seqlens, layout.max_len)

        def flash_padded(q, k, v, layout=layout):  # attends the pads; pad + unpad: the input is packed
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                out = F.scaled_dot_product_attention(*(layout.pad(t).transpose(1, 2) for t in (q, k, v)))
            return layout.unpad(out.transpose(1, 2))

        def jagged(q, k, v, offsets=offsets):
            def nt(t):
                return torch.nested.nested_tensor_from_jagged(t, offsets).transpose(1, 2)

            return F.scaled_dot_product_attention(nt(q), nt(k), nt(v)).transpose(1, 2).values()

        def reference(q, k, v, layout=layout):
            return varlen_attention_reference(q, k, v, layout)

        methods: dict[str, Callable] = {
            "triton_packed (ours)": ours,
            "sdpa_flash_padded": flash_padded,
            "sdpa_jagged": jagged,
            "sdpa_masked (reference)": reference,
        }
        if compile_ok:
            methods["compiled_reference"] = torch.compile(reference, dynamic=False)
        shape = (layout.total, heads, head_dim)
        q, k, v = (torch.randn(shape, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
        grad_out = torch.randn(shape, device="cuda", dtype=dtype)
        for name, fn in methods.items():
            row = {"kernel": "attention_packed", "case": case, "method": name, "padded_len": layout.max_len,
                   "mean_len": round(layout.total / layout.num_seqs, 1), "sequences": layout.num_seqs}  # fmt: skip
            try:
                row.update(_measure(fn, (q, k, v), [q, k, v], grad_out))
                if "(ours)" in name:
                    with torch.no_grad():
                        row["rel_err_vs_reference"] = _rel_err(fn(q, k, v), reference(q, k, v))
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            rows.append(row)
    return rows


def _loss_rows(args: argparse.Namespace, dtype, compile_ok: bool) -> list[dict]:
    import torch

    from usjepa_fast.kernels.smooth_l1 import smooth_l1_reference
    from usjepa_fast.kernels.smooth_l1_triton import triton_salt_smooth_l1

    b, m, n, d = args.batch, args.targets, 196, args.embed_dim
    pred = torch.randn(b, m, d, device="cuda", dtype=dtype, requires_grad=True)
    teacher = torch.randn(b, n, d, device="cuda", dtype=dtype)
    idx = torch.randint(0, n, (b, m), device="cuda")
    methods: dict[str, Callable] = {
        "triton_fused (ours)": triton_salt_smooth_l1,
        "eager_reference": smooth_l1_reference,
    }
    if compile_ok:
        methods["compiled_reference"] = torch.compile(smooth_l1_reference, dynamic=False)
    rows = []
    for name, fn in methods.items():
        row = {"kernel": "smooth_l1", "case": f"B{b}xM{m}xD{d}", "method": name}
        try:
            row.update(_measure(fn, (pred, teacher, idx), [pred]))
            if "(ours)" in name:
                with torch.no_grad():
                    row["rel_err_vs_reference"] = _rel_err(
                        fn(pred, teacher, idx), smooth_l1_reference(pred, teacher, idx)
                    )
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        rows.append(row)
    return rows


def _ratios(rows: list[dict]) -> list[dict]:
    """baseline / ours for time and peak memory (> 1 means ours is faster / smaller)."""
    out = []
    for row in rows:
        if "(ours)" in row["method"] or "error" in row:
            continue
        ours = next(
            r for r in rows if r["kernel"] == row["kernel"] and r["case"] == row["case"] and "(ours)" in r["method"]
        )
        if "error" in ours:
            continue
        out.append({
            "kernel": row["kernel"], "case": row["case"], "vs": row["method"],
            "fwd_speedup": row["fwd_ms"] / ours["fwd_ms"],
            "fwd_bwd_speedup": row["fwd_bwd_ms"] / ours["fwd_bwd_ms"],
            "peak_mem_ratio": row["fwd_bwd_peak_mib"] / max(ours["fwd_bwd_peak_mib"], 1e-9),
        })  # fmt: skip
    return out


def _targets(ratios: list[dict]) -> dict:
    def get(kernel: str, vs: str, key: str) -> list[float]:
        return [r[key] for r in ratios if r["kernel"] == kernel and r["vs"] == vs]

    attn = get("attention", "sdpa_flash_padded", "fwd_bwd_speedup")
    packed = [r["fwd_bwd_speedup"] for r in ratios if r["kernel"] == "attention_packed" and "sdpa" in r["vs"]]
    loss_speed = get("smooth_l1", "eager_reference", "fwd_bwd_speedup")
    loss_mem = get("smooth_l1", "eager_reference", "peak_mem_ratio")
    return {
        "attention_fwd_bwd_vs_flash_padded_min": min(attn) if attn else None,
        "attention_target_1.0x_met": bool(attn) and min(attn) >= 1.0,
        "packed_attention_fwd_bwd_vs_best_sdpa_min": min(packed) if packed else None,
        "packed_auto_choice_ok": bool(packed) and min(packed) >= 1.0,  # else: dispatch SDPA on CUDA ragged
        "smooth_l1_fwd_bwd_vs_eager": loss_speed[0] if loss_speed else None,
        "smooth_l1_peak_mem_vs_eager": loss_mem[0] if loss_mem else None,
        "smooth_l1_target_2x_met": bool(loss_speed) and loss_speed[0] >= 2.0 and loss_mem[0] >= 2.0,
    }


def main() -> int:
    args = _parse()
    import torch

    if not torch.cuda.is_available():
        print("benchmarks/kernels.py: no CUDA device here; the Triton kernels are timed on a GPU only "
              "(run benchmarks/gpu_check.sh in a GPU session).")  # fmt: skip
        result: dict = {"cuda": False, "platform": platform.platform()}
        if not args.no_smoke:
            smoke = _cpu_smoke()
            print(f"interpreter smoke test: attention max abs err {smoke['attention_max_abs_err']:.2e}, "
                  f"smooth-L1 max abs err {smoke['smooth_l1_max_abs_err']:.2e}, ok={smoke['ok']} "
                  f"({smoke['seconds']} s)")  # fmt: skip
            result["interpreter_smoke"] = smoke
        print(json.dumps(result))
        return 0 if result.get("interpreter_smoke", {"ok": True})["ok"] else 1

    import triton

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    compile_ok = not args.no_compile
    t0 = time.perf_counter()
    rows = _attention_rows(args, dtype, compile_ok) + _packed_rows(args, dtype, compile_ok)
    rows += _loss_rows(args, dtype, compile_ok)
    ratios = _ratios(rows)
    targets = _targets(ratios)

    print(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__} | "
          f"dtype {args.dtype} | B={args.batch} H={args.heads} Dh={args.head_dim}")  # fmt: skip
    print(f"{'kernel':<17} {'case':<16} {'method':<24} {'fwd ms':>9} {'fwd+bwd ms':>11} {'peak MiB':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['kernel']:<17} {r['case']:<16} {r['method']:<24} unavailable: {r['error']}")
            continue
        print(f"{r['kernel']:<17} {r['case']:<16} {r['method']:<24} {r['fwd_ms']:>9.3f} {r['fwd_bwd_ms']:>11.3f} "
              f"{r['fwd_bwd_peak_mib']:>9.1f}")  # fmt: skip
    print("\nratios (baseline / ours; > 1 = ours faster or smaller)")
    print(f"{'kernel':<17} {'case':<16} {'vs':<24} {'fwd':>7} {'fwd+bwd':>8} {'peak mem':>9}")
    for r in ratios:
        print(f"{r['kernel']:<17} {r['case']:<16} {r['vs']:<24} {r['fwd_speedup']:>6.2f}x "
              f"{r['fwd_bwd_speedup']:>7.2f}x {r['peak_mem_ratio']:>8.2f}x")  # fmt: skip
    print(f"\ntargets: {targets}  ({time.perf_counter() - t0:.0f} s incl. compile/autotune)")
    print(json.dumps({
        "cuda": True, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
        "triton": triton.__version__, "dtype": args.dtype, "args": vars(args), "rows": rows,
        "ratios": ratios, "targets": targets,
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
