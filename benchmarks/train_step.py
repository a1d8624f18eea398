"""SALT step cost: context encoder on gathered tokens vs all tokens + attention mask; compiled vs eager.

One SALT step = frozen teacher forward on the full image, student forward, predictor, Smooth-L1
loss, backward and AdamW step. The two student variants compute the same context features:

- ``gathered`` (usfast with ``mask.equalize=truncate``): tokens are gathered by the context indices
  after patch + position embedding, so the blocks process the batch-minimum K of the N tokens;
- ``masked``: the same encoder on all N tokens with a key mask hiding the dropped ones (what a
  naive implementation does), then the context outputs are gathered.

A third, ``ragged`` (usfast's default, ``mask.equalize=none``), runs the same mask draw without the
truncation: every sample keeps its whole context and every block its own tokens (packed tokens,
see ``benchmarks/ragged_tokens.py``); it processes more real tokens, so its figure is the time per
real context token relative to ``gathered``.

Each variant x {eager, compiled} runs in a fresh subprocess so peak memory is its own (CUDA:
``max_memory_allocated``; CPU: growth of the process's max RSS over the set-up baseline). The same
mask draw is reused for every step so a compiled graph is not re-specialised mid-measurement.
Last line: JSON with every figure, including ``gathered_vs_masked_time_ratio``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

from _machine import machine_header  # benchmarks/_machine.py (the script's folder is on sys.path)

PRESETS = {
    # CPU: ViT-Ti-ish student and teacher at 224/16 (196 tokens), small predictor.
    "cpu": dict(
        img=224,
        patch=16,
        dim=192,
        depth=4,
        heads=3,
        pdim=96,
        pdepth=2,
        pheads=3,
        teacher="vit_tiny_patch16_224",
        batch=8,
    ),
    # GPU: the paper's ViT-B/16 student, predictor 384x12, ViT-B/16 teacher.
    "gpu": dict(
        img=224,
        patch=16,
        dim=768,
        depth=12,
        heads=12,
        pdim=384,
        pdepth=12,
        pheads=12,
        teacher="vit_base_patch16_224",
        batch=128,
    ),
}


def _rss_mib() -> float:
    # ru_maxrss is KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(
    preset: str, variants: list[str], compiled: bool, steps: int, warmup: int, threads: int | None
) -> list[dict]:
    """Time (and, for one variant, peak memory of) SALT steps; several variants alternate step by step."""
    import numpy as np
    import torch

    from usjepa_fast.kernels import salt_smooth_l1
    from usjepa_fast.masking import MaskConfig, MultiBlockMaskCollator, apply_masks
    from usjepa_fast.models import create, frozen_teacher

    if threads:
        torch.set_num_threads(threads)
    p = PRESETS[preset]
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    grid = (p["img"] // p["patch"],) * 2
    torch.manual_seed(0)
    student = create(
        "usjepa_vit_base",
        img_size=p["img"],
        patch_size=p["patch"],
        embed_dim=p["dim"],
        depth=p["depth"],
        num_heads=p["heads"],
    ).to(dev)
    teacher = frozen_teacher(p["teacher"], None, grid, bf16=dev.type == "cuda").to(dev)
    predictor = create(
        "predictor_base",
        in_dim=p["dim"],
        out_dim=teacher.width,
        grid=grid,
        embed_dim=p["pdim"],
        depth=p["pdepth"],
        num_heads=p["pheads"],
    ).to(dev)

    # One draw, twice: truncated to the batch minimum (dense (B, K) indices) and ragged (packed).
    def draw(equalize: str):
        return MultiBlockMaskCollator(MaskConfig(equalize=equalize), grid).sample(
            p["batch"], None, np.random.default_rng(0)
        )

    masks, ragged = draw("truncate"), draw("none").to(dev)
    ctx_idx = masks.context.idx.view(p["batch"], -1).to(dev)  # (B, Kc)
    tgt_idx = masks.target.idx.view(p["batch"], -1).to(dev)  # (B, nT * Kt), block-major
    keep_mask = torch.zeros(p["batch"], grid[0] * grid[1], dtype=torch.bool, device=dev)
    keep_mask.scatter_(1, ctx_idx, True)
    x = torch.randn(p["batch"], 3, p["img"], p["img"], device=dev)

    class Step(torch.nn.Module):
        def __init__(self, variant: str) -> None:
            super().__init__()
            self.variant = variant
            self.student, self.predictor = student, predictor

        def forward(self, x, ctx_idx, tgt_idx, keep_mask):
            if self.variant == "ragged":  # packed: (Tc, D) context, (Tt, Dt) predictions
                return self.predictor(self.student(x, ragged.context), ragged.context, ragged.target)
            if self.variant == "gathered":
                ctx = self.student(x, ctx_idx)  # (B, K, D): blocks see K tokens
            else:
                ctx = apply_masks(self.student.forward_masked(x, keep_mask), ctx_idx)  # blocks see N tokens
            return self.predictor(ctx, ctx_idx, tgt_idx, masks.num_target_blocks)

    opt = torch.optim.AdamW(
        [q for q in student.parameters() if q.requires_grad] + list(predictor.parameters()), lr=1e-4
    )
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    steps_by_variant = {v: Step(v) for v in variants}
    fns = {v: torch.compile(m) if compiled else m for v, m in steps_by_variant.items()}

    def step(fn: torch.nn.Module) -> None:
        with autocast:
            targets = teacher(x)
            pred = fn(x, ctx_idx, tgt_idx, keep_mask)
        if fn.variant == "ragged":  # packed targets: flattened teacher tokens, flat indices
            b, n, d = targets.shape
            loss = salt_smooth_l1(pred[None], targets.reshape(1, b * n, d), ragged.target.flat(n)[None])
        else:
            loss = salt_smooth_l1(pred, targets, tgt_idx)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    base_rss = _rss_mib()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    first, times = {}, {v: [] for v in variants}
    for v in variants:
        t = time.perf_counter()
        step(fns[v])
        sync()
        first[v] = time.perf_counter() - t
        for _ in range(warmup):
            step(fns[v])
    sync()
    # Alternating the variants step by step spreads CPU contention from other jobs evenly over them.
    for _ in range(steps):
        for v in variants:
            t = time.perf_counter()
            step(fns[v])
            sync()
            times[v].append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else _rss_mib() - base_rss
    return [
        {
            "variant": v,
            "compiled": compiled,
            "device": dev.type,
            "step_s": float(np.median(times[v])),
            "first_step_s": first[v],
            "peak_mib": peak if len(variants) == 1 else float("nan"),
            "kept_tokens": int(ctx_idx.shape[1]) if v != "ragged" else ragged.context.total / p["batch"],
            "all_tokens": grid[0] * grid[1],
            "batch": p["batch"],
        }
        for v in variants
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None, help="default: gpu if CUDA else cpu")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled variants")
    ap.add_argument("--out", default=None, help="also write the table + JSON to this file")
    ap.add_argument("--_child", nargs=2, metavar=("VARIANT", "COMPILED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    preset = args.preset or ("gpu" if torch.cuda.is_available() else "cpu")
    if args._child:
        variant, compiled = args._child[0], args._child[1] == "1"
        variants = ["gathered", "masked", "ragged"] if variant == "both" else [variant]
        print(json.dumps(measure(preset, variants, compiled, args.steps, args.warmup, args.threads)))
        return

    # "both": eager step times with the variants interleaved (robust to other jobs' load); the
    # single-variant runs give each variant's own peak memory (and compiled step times).
    combos = [("both", False), ("gathered", False), ("masked", False), ("ragged", False)]
    if not args.no_compile:
        combos += [("gathered", True), ("masked", True)]
    header = machine_header()  # CPU flags and the load average at the start
    rows = {}
    for variant, compiled in combos:
        cmd = [
            sys.executable,
            __file__,
            "--preset",
            preset,
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--_child",
            variant,
            "1" if compiled else "0",
        ]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{variant} compiled={compiled} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        for r in json.loads(proc.stdout.strip().splitlines()[-1]):
            rows[(variant if variant != "both" else r["variant"] + "*", compiled)] = r

    gi, mi = rows[("gathered*", False)], rows[("masked*", False)]  # interleaved eager timings
    ri = rows[("ragged*", False)]
    g, m = rows[("gathered", False)], rows[("masked", False)]  # own-process runs: peak memory
    figures = {
        "preset": preset,
        "device": g["device"],
        "batch": g["batch"],
        "kept_tokens": g["kept_tokens"],
        "all_tokens": g["all_tokens"],
        "gathered_eager_step_s": round(gi["step_s"], 4),
        "masked_eager_step_s": round(mi["step_s"], 4),
        "gathered_vs_masked_time_ratio": round(gi["step_s"] / mi["step_s"], 3),
        "gathered_eager_peak_mib": round(g["peak_mib"], 1),
        "masked_eager_peak_mib": round(m["peak_mib"], 1),
        "gathered_vs_masked_memory_ratio": round(g["peak_mib"] / max(m["peak_mib"], 1e-9), 3),
        "ragged_mean_kept_tokens": round(ri["kept_tokens"], 1),
        "ragged_eager_step_s": round(ri["step_s"], 4),
        "ragged_vs_gathered_time_ratio": round(ri["step_s"] / gi["step_s"], 3),
        "ragged_vs_gathered_time_per_token_ratio": round(
            (ri["step_s"] / ri["kept_tokens"]) / (gi["step_s"] / gi["kept_tokens"]), 3
        ),
    }
    if ("gathered", True) in rows and ("masked", True) in rows:
        gc, mc = rows[("gathered", True)], rows[("masked", True)]
        figures.update(
            {
                "gathered_compiled_step_s": round(gc["step_s"], 4),
                "masked_compiled_step_s": round(mc["step_s"], 4),
                "compiled_vs_eager_time_ratio": round(gc["step_s"] / gi["step_s"], 3),
                "gathered_vs_masked_time_ratio_compiled": round(gc["step_s"] / mc["step_s"], 3),
                "gathered_compiled_peak_mib": round(gc["peak_mib"], 1),
                "masked_compiled_peak_mib": round(mc["peak_mib"], 1),
                "compile_first_step_s": round(gc["first_step_s"], 1),
            }
        )
    lines = [
        *header,
        f"# train_step benchmark, preset {preset} on {g['device']} ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores shared with other engineers' jobs: CPU timings are contended)",
        f"# batch {g['batch']}, context keeps {g['kept_tokens']} of {g['all_tokens']} tokens; median of {args.steps} "
        "steps; peak memory: CUDA max allocated, CPU max-RSS growth; * = eager variants interleaved step by step "
        "in one process (the timing the ratios use)",
        f"{'variant':<12}{'mode':<10}{'step (s)':>10}{'peak (MiB)':>12}{'first step (s)':>16}",
    ]
    for (variant, compiled), r in rows.items():
        peak = "-" if r["peak_mib"] != r["peak_mib"] else f"{r['peak_mib']:.1f}"  # NaN: shared process
        lines.append(
            f"{variant:<12}{'compiled' if compiled else 'eager':<10}{r['step_s']:>10.4f}{peak:>12}"
            f"{r['first_step_s']:>16.2f}"
        )
    lines.append(f"gathered / masked step time (eager): {figures['gathered_vs_masked_time_ratio']:.3f}")
    lines.append(
        f"ragged / gathered (eager): step time {figures['ragged_vs_gathered_time_ratio']:.3f} with "
        f"{figures['ragged_mean_kept_tokens']:.1f} vs {g['kept_tokens']} context tokens per sample; time per real "
        f"context token {figures['ragged_vs_gathered_time_per_token_ratio']:.3f}"
    )
    if "compiled_vs_eager_time_ratio" in figures:
        lines.append(f"compiled / eager step time (gathered): {figures['compiled_vs_eager_time_ratio']:.3f}")
    lines.append(json.dumps(figures))
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
