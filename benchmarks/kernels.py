"""The Triton kernels vs PyTorch on the shapes SALT training produces (step 2 of the GPU check).

Shapes: one USrc mask draw of ``--usrc-batch`` samples (default 256, the paper's per-GPU batch) on
the 14x14 grid of ViT-B/16 at 224 px, scan regions = convex-probe fans covering 48-83% of the grid
(``benchmarks/ragged_tokens.py``'s fan pool), 4 target blocks:

  ctx_ragged_12x64    the context encoder (ViT-B: 12 heads x 64): one sequence per sample, each
                      keeping its whole context (``mask.equalize=none``, usfast's default)
  pred_ragged_12x32   the predictor (``predictor_base`` is 384 wide / 12 heads = 32): B x 4
                      sequences ``[context of b ; target block j of b]``
  ctx_dense_12x64     the same draw truncated to the batch minimum (``mask.equalize=truncate``):
  pred_dense_12x32    equal lengths, the dense I-JEPA batch
  smooth_l1           the SALT loss as the trainer calls it: packed predictions ``(1, Tt, 768)``
                      against the flattened teacher ``(1, B*196, 768)`` with flat target indices

Attention methods, packed ``(T, H, D)`` in and out, forward and forward+backward:

  triton (ours)          ``triton_varlen_attention``: what ``"auto"`` runs on ragged CUDA batches
  sdpa_reference         ``varlen_attention_reference``: pad + SDPA with a key mask + unpad; on
                         equal lengths SDPA on the dense view (what ``"auto"`` runs there)
  sdpa_jagged            SDPA on jagged nested tensors (PyTorch's varlen flash path)
  sdpa_efficient_masked  pad + the memory-efficient SDPA backend with the key mask + unpad
  sdpa_flash_padded      pad + the flash backend *without* a mask + unpad (attends the pads: not
  sdpa_cudnn_padded      the same function on a ragged batch, a speed bound) / the cuDNN backend
  compiled_reference     ``torch.compile`` of sdpa_reference (ragged cases; these rows run last)

Loss methods: the fused Triton loss (ours), the eager reference, its ``torch.compile``.

Checks (JSON ``targets``): ``packed_auto_choice_ok`` = on the ragged cases ours is at least as fast
(fwd+bwd) as the fastest *exact* SDPA method, else ``varlen_attention``'s CUDA column should become
SDPA; ``dense_auto_choice_ok`` = on equal lengths SDPA is at least as fast as ours, else ``"auto"``
should take Triton there too; the fused loss >= 2x the eager reference in time and peak memory;
ours matches the reference (``rel_err_vs_reference``, bf16 bounds of tests/kernels/test_kernel_gpu.py).

Every row is printed as soon as it is measured; each runs under its own time limit (a row that runs
out prints TIMEOUT and the next row starts); no-compile rows first, ``torch.compile`` rows last.
On a GPU the autotuner's compiles are first done by ``--warm-workers`` processes in parallel (one
config each) into Triton's on-disk cache, so the timed process only loads them. Times: medians of
``triton.testing.do_bench`` (CUDA events); peak memory: allocator peak above the live inputs
during one forward+backward. Last line: JSON.

Without CUDA (or with ``--dry-run``) the same rows run at tiny sizes in the Triton interpreter on
the CPU (fp32, host timers): a check that every row starts and ours matches the reference, no
figure.

    python benchmarks/kernels.py                    # ViT-B/16 training shapes, B=256
    python benchmarks/kernels.py --no-compile --warm-workers 0
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ (for _steps, ragged_tokens)

from _steps import emit, finish, guarded_row, start  # noqa: E402

GRID = (14, 14)
# Forward / gradient bounds for ours vs the reference (tests/kernels/test_kernel_gpu.py's table, vs a
# reference in the same dtype here rather than float64: a little looser)
REL_TOL = {"bf16": 6e-2, "fp16": 1e-2, "fp32": 1e-4}


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--usrc-batch", type=int, default=256, help="samples of the USrc mask draw")
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--embed-dim", type=int, default=768, help="teacher width D for the loss")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None, help="default: bf16 (fp32 dry run)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    p.add_argument("--row-limit", type=float, default=25.0, help="seconds per no-compile row")
    p.add_argument("--ours-limit", type=float, default=60.0, help="seconds for our first row per case (autotune)")
    p.add_argument("--compile-limit", type=float, default=45.0, help="seconds per torch.compile row")
    p.add_argument("--warm-workers", type=int, default=6, help="GPU: parallel autotune warm-up processes (0: off)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the compiled rows")
    p.add_argument("--max-len", type=int, default=None, help="scale the lengths to this maximum (dry run: 16)")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU in the Triton interpreter")
    p.add_argument("--_warm", type=int, default=None, help=argparse.SUPPRESS)  # worker: autotune config index
    p.add_argument("--_lens", default=None, help=argparse.SUPPRESS)  # worker: the draw's lengths (JSON file)
    return p.parse_args()


# ---------------------------------------------------------------------------------------------
# shapes


def usrc_lengths(batch: int) -> dict:
    """Context / per-block predictor lengths of one USrc draw, ragged and truncated, and the
    flat target indices of the ragged draw (``sample * 196 + patch``)."""
    import numpy as np
    from ragged_tokens import fan_pool

    from usjepa_fast.masking import MaskConfig, MultiBlockMaskCollator

    pool = fan_pool(min(batch, 64))  # ~16 ms per fan on one core; samples draw from the pool
    valid = pool[np.random.default_rng(1).integers(0, len(pool), batch)]
    out: dict = {}
    for equalize in ("none", "truncate"):
        cfg = MaskConfig(usrc=True, equalize=equalize)
        m = MultiBlockMaskCollator(cfg, GRID).sample(batch, valid, np.random.default_rng(0))
        tag = "ragged" if equalize == "none" else "dense"
        out[f"ctx_{tag}"] = m.context.lens[:, 0].tolist()
        out[f"pred_{tag}"] = (m.context.lens + m.target.lens).reshape(-1).tolist()  # context + block j
        if equalize == "none":
            out["target_flat"] = m.target.flat(GRID[0] * GRID[1]).tolist()
    return out


def attention_cases(lens: dict, heads: int, cap: int | None = None) -> dict[str, tuple[list[int], int, int]]:
    """case -> (sequence lengths, heads, head dim); ``cap`` scales the lengths down so the longest is
    ``cap`` (dry run only: ragged stays ragged, equal stays equal)."""

    def cut(values: list[int]) -> list[int]:
        return [max(1, -(-n * cap // max(values))) for n in values] if cap else values

    return {
        "ctx_ragged_12x64": (cut(lens["ctx_ragged"]), heads, 64),
        "pred_ragged_12x32": (cut(lens["pred_ragged"]), heads, 32),
        "ctx_dense_12x64": (cut(lens["ctx_dense"]), heads, 64),
        "pred_dense_12x32": (cut(lens["pred_dense"]), heads, 32),
    }


def _qkv(lens: list[int], heads: int, head_dim: int, dtype, device) -> tuple:
    """Packed q, k, v (T, H, D) with gradients and an upstream gradient: fresh random data per case."""
    import torch

    from usjepa_fast.kernels import VarlenLayout

    layout = VarlenLayout.from_lens(lens, device)
    shape = (layout.total, heads, head_dim)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    return layout, q, k, v, torch.randn(shape, device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# methods


def attention_methods(layout, on_cuda: bool) -> dict[str, tuple[Callable, bool, bool]]:
    """name -> (fn(q, k, v), exact on this layout, needs CUDA)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from usjepa_fast.kernels import varlen_attention_reference
    from usjepa_fast.kernels.attention_triton import triton_varlen_attention

    offsets = layout.cu_seqlens.long()
    positions = torch.arange(layout.max_len, device=layout.cu_seqlens.device)
    key_mask = (positions[None, :] < layout.lens.clamp(min=1)[:, None])[:, None, None, :]  # (S, 1, 1, L)

    def ours(q, k, v):
        return triton_varlen_attention(q, k, v, layout.cu_seqlens, layout.max_len)

    def reference(q, k, v):
        return varlen_attention_reference(q, k, v, layout)

    def jagged(q, k, v):
        def nt(t):
            return torch.nested.nested_tensor_from_jagged(t, offsets).transpose(1, 2)  # (S, H, j, D)

        return F.scaled_dot_product_attention(nt(q), nt(k), nt(v)).transpose(1, 2).values()

    def padded(backend, masked: bool):
        def fn(q, k, v):
            with sdpa_kernel(backend):
                out = F.scaled_dot_product_attention(
                    *(layout.pad(t).transpose(1, 2) for t in (q, k, v)), attn_mask=key_mask if masked else None
                )
            return layout.unpad(out.transpose(1, 2))

        return fn

    uniform = layout.uniform
    return {
        "triton (ours)": (ours, True, False),
        "sdpa_reference": (reference, True, False),
        "sdpa_jagged": (jagged, True, False),
        "sdpa_efficient_masked": (padded(SDPBackend.EFFICIENT_ATTENTION, True), True, True),
        "sdpa_flash_padded": (padded(SDPBackend.FLASH_ATTENTION, False), uniform, True),
        "sdpa_cudnn_padded": (padded(SDPBackend.CUDNN_ATTENTION, False), uniform, True),
    }


# ---------------------------------------------------------------------------------------------
# measuring


def _bench_ms(fn: Callable[[], object], on_cuda: bool, reps: int, grad_to_none: list | None = None) -> float:
    if on_cuda:
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median"))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * sorted(times)[len(times) // 2]


def _peak_mib(fn: Callable[[], object]) -> float:
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def measure(fn: Callable, inputs: tuple, leaves: list, grad_out, on_cuda: bool, reps: int) -> dict:
    """First call (compile / autotune) seconds, fwd and fwd+bwd ms, fwd+bwd peak MiB (CUDA)."""
    import torch

    def fwd() -> object:
        return fn(*inputs)

    def fwd_bwd() -> None:
        fn(*inputs).backward(grad_out)

    t0 = time.perf_counter()
    with torch.no_grad():
        fwd()
    fwd_bwd()
    if on_cuda:
        torch.cuda.synchronize()
    row = {"first_call_s": round(time.perf_counter() - t0, 2)}
    with torch.no_grad():
        row["fwd_ms"] = _bench_ms(fwd, on_cuda, reps)
    row["fwd_bwd_ms"] = _bench_ms(fwd_bwd, on_cuda, reps, grad_to_none=leaves)
    for t in leaves:
        t.grad = None
    if on_cuda:
        row["fwd_bwd_peak_mib"] = round(_peak_mib(fwd_bwd), 1)
        for t in leaves:
            t.grad = None
    return row


def rel_err(ours, ref) -> float:
    return ((ours.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-12)).item()


def _grads_rel_err(fn: Callable, ref_fn: Callable, inputs: tuple, grad_out) -> float:
    """max rel error of the output and every input gradient of ``fn`` vs ``ref_fn``."""
    import torch

    outs = []
    for f in (fn, ref_fn):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        out = f(*leaves)
        outs.append((out.detach(), *torch.autograd.grad(out, leaves, grad_out)))
    return max(rel_err(a, b) for a, b in zip(*outs, strict=True))


HEAD = f"{'kernel':<10} {'case':<18} {'method':<22} {'fwd ms':>9} {'fwd+bwd ms':>11} {'peak MiB':>9} {'first s':>8}"


def print_row(r: dict) -> None:
    lead = f"{r['kernel']:<10} {r['case']:<18} {r['method']:<22}"
    if "timeout" in r:
        emit(f"{lead} TIMEOUT: {r['timeout']}")
    elif "error" in r:
        emit(f"{lead} unavailable: {r['error']}")
    elif "skipped" in r:
        emit(f"{lead} skipped: {r['skipped']}")
    else:
        peak = f"{r['fwd_bwd_peak_mib']:>9.1f}" if "fwd_bwd_peak_mib" in r else f"{'-':>9}"
        err = f"  rel err {r['rel_err_vs_reference']:.1e}" if "rel_err_vs_reference" in r else ""
        emit(f"{lead} {r['fwd_ms']:>9.3f} {r['fwd_bwd_ms']:>11.3f} {peak} {r['first_call_s']:>8.2f}{err}")


# ---------------------------------------------------------------------------------------------
# the rows


def attention_rows(cases: dict, args, dtype, device, compiled: bool) -> list[dict]:
    import torch

    from usjepa_fast.kernels import varlen_attention_reference

    on_cuda = device.type == "cuda"
    reps = 3 if on_cuda else 1
    rows = []
    for case, (lens, heads, head_dim) in cases.items():
        layout, q, k, v, grad_out = _qkv(lens, heads, head_dim, dtype, device)
        base = {"kernel": "attention", "case": case, "sequences": layout.num_seqs, "max_len": layout.max_len,
                "mean_len": round(layout.total / max(layout.num_seqs, 1), 1), "uniform": layout.uniform}  # fmt: skip
        if compiled:
            if layout.uniform:
                continue  # sdpa_reference is one SDPA call there: nothing for the compiler to fuse
            compiled_ref = torch.compile(varlen_attention_reference, dynamic=False, backend=args.compile_backend)
            methods = {"compiled_reference": (compiled_ref, True, False)}
        else:
            methods = attention_methods(layout, on_cuda)
        for name, (fn, exact, cuda_only) in methods.items():
            row = {**base, "method": name, "exact": exact}
            if cuda_only and not on_cuda:
                row["skipped"] = "CUDA only"
            else:

                def reference(a, b, c, layout=layout):
                    return varlen_attention_reference(a, b, c, layout)

                if name == "compiled_reference":
                    fn, limit = (lambda a, b, c, f=fn, layout=layout: f(a, b, c, layout)), args.compile_limit
                else:
                    limit = args.ours_limit if "(ours)" in name else args.row_limit
                with guarded_row(row, limit):
                    row.update(measure(fn, (q, k, v), [q, k, v], grad_out, on_cuda, reps))
                    if name == "triton (ours)":
                        row["rel_err_vs_reference"] = _grads_rel_err(fn, reference, (q, k, v), grad_out)
            print_row(row)
            rows.append(row)
        del q, k, v, grad_out
    return rows


def loss_rows(lens: dict, args, dtype, device, compiled: bool) -> list[dict]:
    import torch

    from usjepa_fast.kernels.smooth_l1 import smooth_l1_reference
    from usjepa_fast.kernels.smooth_l1_triton import triton_salt_smooth_l1

    on_cuda = device.type == "cuda"
    b, n, d = len(lens["ctx_ragged"]), GRID[0] * GRID[1], args.embed_dim
    idx = torch.tensor(lens["target_flat"], device=device)[None]  # (1, Tt) flat: sample * N + patch
    pred = torch.randn(1, idx.shape[1], d, device=device, dtype=dtype, requires_grad=True)
    teacher = torch.randn(1, b * n, d, device=device, dtype=dtype)
    grad_out = torch.ones((), device=device)
    if compiled:
        compiled_ref = torch.compile(smooth_l1_reference, dynamic=False, backend=args.compile_backend)
        methods: dict[str, Callable] = {"compiled_reference": compiled_ref}
    else:
        methods = {"triton_fused (ours)": triton_salt_smooth_l1, "eager_reference": smooth_l1_reference}
    rows = []
    for name, fn in methods.items():
        row = {"kernel": "smooth_l1", "case": f"packed_Tt{idx.shape[1]}xD{d}", "method": name, "exact": True}
        with guarded_row(row, args.compile_limit if compiled else args.row_limit):
            row.update(measure(fn, (pred, teacher, idx), [pred], grad_out, on_cuda, 3 if on_cuda else 1))
            if "(ours)" in name:
                row["rel_err_vs_reference"] = _grads_rel_err(
                    lambda p, f=fn: f(p, teacher, idx),
                    lambda p: smooth_l1_reference(p, teacher, idx),
                    (pred,),
                    grad_out,
                )
        print_row(row)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# autotune warm-up (GPU): one process per config index compiles that config into the disk cache


def _restrict_autotune(index: int) -> bool:
    """Worker: leave config ``index`` alone in each autotuned kernel's space; False when this index
    is past every backward space (the worker then runs forward only)."""
    from usjepa_fast.kernels import attention_triton as at

    backward = True
    for kernel in (at._FWD, at._DKDV, at._DQ):  # private: a benchmark-only hook into the autotune spaces
        configs = kernel._tune_configs
        if kernel is not at._FWD and index >= len(configs):
            backward = False
        kernel._tune_configs = [configs[min(index, len(configs) - 1)]]
    return backward


def warm_worker(args, dtype, device) -> int:
    import torch

    backward = _restrict_autotune(args._warm)
    lens = json.loads(Path(args._lens).read_text())
    for _case, (case_lens, heads, head_dim) in attention_cases(lens, args.heads, args.max_len).items():
        layout, q, k, v, grad_out = _qkv(case_lens, heads, head_dim, dtype, device)
        fn = attention_methods(layout, True)["triton (ours)"][0]
        if backward:
            fn(q, k, v).backward(grad_out)
        else:
            with torch.no_grad():
                fn(q, k, v)
    torch.cuda.synchronize()
    return 0


def warm_autotune(args, lens: dict) -> dict:
    """Run ``--warm-workers`` workers in parallel; returns what they did (never raises)."""
    from usjepa_fast.kernels import attention_triton as at

    n = min(args.warm_workers, len(at._FWD_CONFIGS))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        lens_file = Path(tmp) / "lens.json"
        lens_file.write_text(json.dumps(lens))
        cmd = [sys.executable, __file__, "--usrc-batch", str(args.usrc_batch), "--heads", str(args.heads),
               "--dtype", args.dtype, "--_lens", str(lens_file)]  # fmt: skip
        procs = [subprocess.Popen([*cmd, "--_warm", str(i)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for i in range(n)]  # fmt: skip
        failed = []
        for i, p in enumerate(procs):
            try:
                _, err = p.communicate(timeout=max(5.0, args.ours_limit - (time.perf_counter() - t0)))
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
                failed.append(f"worker {i}: timeout")
                continue
            if p.returncode:
                failed.append(f"worker {i}: {(err.decode(errors='replace').strip().splitlines() or ['?'])[-1][:160]}")
    return {"workers": n, "seconds": round(time.perf_counter() - t0, 1), "failed": failed}


# ---------------------------------------------------------------------------------------------
# report


def ratios(rows: list[dict]) -> list[dict]:
    """baseline / ours for time and peak memory (> 1 means ours is faster / smaller)."""
    done = [r for r in rows if "fwd_ms" in r]
    out = []
    for r in done:
        if "(ours)" in r["method"]:
            continue
        ours = next((o for o in done if o["case"] == r["case"] and "(ours)" in o["method"]), None)
        if ours is None:
            continue
        entry = {"kernel": r["kernel"], "case": r["case"], "vs": r["method"], "exact": r["exact"],
                 "fwd_speedup": r["fwd_ms"] / ours["fwd_ms"],
                 "fwd_bwd_speedup": r["fwd_bwd_ms"] / ours["fwd_bwd_ms"]}  # fmt: skip
        if "fwd_bwd_peak_mib" in r and "fwd_bwd_peak_mib" in ours:
            entry["peak_mem_ratio"] = r["fwd_bwd_peak_mib"] / max(ours["fwd_bwd_peak_mib"], 1e-9)
        out.append(entry)
    return out


def targets(rows: list[dict], ratio_rows: list[dict], dtype_name: str) -> tuple[dict, list[str]]:
    """The dispatch checks and the loss target, plus one plain sentence per attention case.

    Per case, ``speed`` = the fastest exact SDPA method's fwd+bwd time / ours. Ragged batches are
    auto's Triton cases: right iff ``speed >= 1`` on every one (the minimum is reported); equal
    lengths are auto's SDPA cases: right iff ``speed <= 1`` on every one (the maximum is reported).
    """
    out: dict = {}
    verdicts = []
    for kind in ("ragged", "dense"):
        speeds = []
        for case in sorted({x["case"] for x in rows if x["kernel"] == "attention" and kind in x["case"]}):
            exact = [x for x in ratio_rows if x["case"] == case and x["exact"] and x["vs"].startswith("sdpa")]
            if not exact:
                verdicts.append(f"{case}: no exact SDPA row measured")
                continue
            best = min(exact, key=lambda x: x["fwd_bwd_speedup"])  # the fastest SDPA method
            speed = best["fwd_bwd_speedup"]
            speeds.append(speed)
            auto, other = ("Triton", "SDPA") if kind == "ragged" else ("SDPA", "Triton")
            right = speed >= 1.0 if kind == "ragged" else speed <= 1.0
            verdicts.append(
                f"{case}: Triton fwd+bwd is {speed:.2f}x the fastest exact SDPA ({best['vs']}), so auto's "
                + (f"{auto} is right here" if right else f"{auto} should become {other} here")
            )
        if kind == "ragged":
            out["packed_triton_vs_best_exact_sdpa_min"] = min(speeds) if speeds else None
            out["packed_auto_choice_ok"] = bool(speeds) and min(speeds) >= 1.0
        else:
            out["dense_triton_vs_best_sdpa_max"] = max(speeds) if speeds else None
            out["dense_auto_choice_ok"] = bool(speeds) and max(speeds) <= 1.0
    loss = [x for x in ratio_rows if x["kernel"] == "smooth_l1" and x["vs"] == "eager_reference"]
    out["smooth_l1_fwd_bwd_vs_eager"] = loss[0]["fwd_bwd_speedup"] if loss else None
    out["smooth_l1_peak_mem_vs_eager"] = loss[0].get("peak_mem_ratio") if loss else None
    out["smooth_l1_target_2x_met"] = (
        bool(loss) and loss[0]["fwd_bwd_speedup"] >= 2.0 and (loss[0].get("peak_mem_ratio") or 0.0) >= 2.0
    )
    errs = [r["rel_err_vs_reference"] for r in rows if "rel_err_vs_reference" in r]
    out["ours_max_rel_err"] = max(errs) if errs else None
    out["ours_matches_reference"] = bool(errs) and max(errs) <= REL_TOL[dtype_name]
    return out, verdicts


def main() -> int:
    args = _parse()
    import torch

    dry = args.dry_run or not torch.cuda.is_available()
    if dry:
        os.environ["TRITON_INTERPRET"] = "1"  # read per launch by the kernels
        # the interpreter runs each program in Python: one 16-token block per sequence, one head, and
        # dynamo + AOT autograd without inductor's C++ codegen keep the dry run to seconds
        args.usrc_batch, args.heads, args.embed_dim, args.warm_workers = min(args.usrc_batch, 2), 1, 64, 0
        args.max_len, args.compile_backend = args.max_len or 16, "aot_eager"
    args.dtype = args.dtype or ("fp32" if dry else "bf16")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    device = torch.device("cpu" if dry else "cuda")
    if args._warm is not None:
        return warm_worker(args, dtype, device)

    t0 = time.perf_counter()
    facts = start("kernels", "Triton kernels vs PyTorch SDPA / jagged SDPA / compiled, SALT training shapes", dry)
    lens = usrc_lengths(args.usrc_batch)
    cases = attention_cases(lens, args.heads, args.max_len)
    if args.max_len:
        lens["target_flat"] = lens["target_flat"][: 4 * args.max_len]
    shapes = [f"{c} {len(v[0])} seqs mean {sum(v[0]) / len(v[0]):.1f} max {max(v[0])}" for c, v in cases.items()]
    emit(f"# dtype {args.dtype}, USrc draw of B={args.usrc_batch}: " + ", ".join(shapes))
    warm = None
    if args.warm_workers > 0:
        warm = warm_autotune(args, lens)
        emit(f"# autotune warm-up: {warm['workers']} workers in {warm['seconds']} s"
             + (f"; failed: {warm['failed']}" if warm["failed"] else ""))  # fmt: skip
    emit(HEAD)
    rows = attention_rows(cases, args, dtype, device, compiled=False)
    rows += loss_rows(lens, args, dtype, device, compiled=False)
    if not args.no_compile:
        rows += attention_rows(cases, args, dtype, device, compiled=True)
        rows += loss_rows(lens, args, dtype, device, compiled=True)

    ratio_rows = ratios(rows)
    checks, verdicts = targets(rows, ratio_rows, args.dtype)
    emit("\nratios (baseline / ours; > 1 = ours faster or smaller; exact = same function on this batch)")
    emit(f"{'kernel':<10} {'case':<18} {'vs':<22} {'exact':>5} {'fwd':>7} {'fwd+bwd':>8} {'peak mem':>9}")
    for r in ratio_rows:
        mem = f"{r['peak_mem_ratio']:>8.2f}x" if "peak_mem_ratio" in r else f"{'-':>9}"
        emit(f"{r['kernel']:<10} {r['case']:<18} {r['vs']:<22} {'yes' if r['exact'] else 'no':>5} "
             f"{r['fwd_speedup']:>6.2f}x {r['fwd_bwd_speedup']:>7.2f}x {mem}")  # fmt: skip
    for line in verdicts:
        emit(("# dry run, not a figure: " if dry else "") + line)
    ours_failed = [r for r in rows if "(ours)" in r["method"] and ("error" in r or "timeout" in r)]
    timeouts = [r for r in rows if "timeout" in r]
    status = "failed" if ours_failed or not checks["ours_matches_reference"] else "partial" if timeouts else "ok"
    payload = {"args": {k: v for k, v in vars(args).items() if not k.startswith("_")}, "rows": rows,
               "ratios": ratio_rows, "targets": checks, "verdicts": verdicts, "autotune_warmup": warm,
               "timeouts": len(timeouts)}  # fmt: skip
    return finish("kernels", facts, dry, time.perf_counter() - t0, status, **payload)


if __name__ == "__main__":
    sys.exit(main())
