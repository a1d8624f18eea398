"""Ragged tokens: how much context the mask collator keeps, and what a ragged SALT step costs.

Paper settings for the masks: B=256 per batch, 224 px / patch 16 (14x14 grid), 4 target blocks of
scale 0.075-0.125, context scale 0.85-1.0, tau 0.8; scan regions are convex-probe fans (the data
simulator's ``Geometry``) whose half-angle is solved so that each fan covers a coverage drawn
uniformly from 48-83% of the grid (the touch rule of ``patch_validity``).

1. **masks**: kept / available context tokens per sample (mean), plain I-JEPA and USrc, for the
   truncated collator (``mask.equalize=truncate``, what usfast did before) and the ragged one
   (``none``), on the same draws; the same for target tokens; mask sampling time per batch, with
   the pre-ragged per-image loop sampler (loaded from git, commit ``LEGACY_COMMIT``) as baseline.
2. **attention on CPU** (why the CPU dispatch pads + masks): fwd+bwd of packed ragged sequences
   through padded SDPA with a key mask (usfast's CPU path), jagged nested-tensor SDPA, a
   per-sequence SDPA loop and length-sorted buckets, on the context and predictor lengths of one
   USrc draw.
3. **layout** (why tokens travel packed): fwd+bwd of a stack of student blocks on the same ragged
   batch, packed ``(T, D)`` vs padded ``(B, Kmax, D)`` + key mask, and the truncated dense batch.
4. **SALT step**: the product's ``Trainer.train_step`` (frozen teacher forward, student, per-block
   predictor, fused-loss call site, backward, AdamW) with USrc masks, ragged vs truncated, on the
   same data and the same mask draws (two trainers stepped alternately), tiny and small models.
   ``time_per_real_token_ratio`` = (ragged time / ragged real context tokens) / (truncated time /
   truncated real context tokens); target <= 0.6.

Prints a table, then one JSON line. ``--out`` also writes them (with the lscpu flags line and the
load average before and after) to a results file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without install

from _machine import machine_header  # noqa: E402  (benchmarks/_machine.py)

from usjepa_fast.data.scan_region import patch_validity  # noqa: E402
from usjepa_fast.data.synth import Geometry  # noqa: E402
from usjepa_fast.kernels import VarlenLayout, varlen_attention_reference  # noqa: E402
from usjepa_fast.masking import MaskConfig, MultiBlockMaskCollator  # noqa: E402

LEGACY_COMMIT = "e39ab8f"  # the last commit with the per-image loop sampler that truncates to the batch minimum
GRID = (14, 14)

# CPU step presets: ViT-Ti/16 and ViT-S/16 students (teacher: a frozen random ViT of the same size,
# standing in for the paper's URFM ViT-B, whose cost is the same for both modes), narrow predictors.
STEP_PRESETS = {
    "tiny": dict(dim=192, depth=12, heads=3, pdim=96, pdepth=4, pheads=3),
    "small": dict(dim=384, depth=12, heads=6, pdim=192, pdepth=6, pheads=6),
}


# -- scan regions -----------------------------------------------------------------------------------
def fan_validity(rng: np.random.Generator, coverage: float, raster: int = 112) -> torch.Tensor:
    """A (14, 14) valid-patch grid of a convex-probe fan covering ~``coverage`` of the grid.

    The fan is the simulator's ``Geometry`` rastered at ``raster`` px (8 px per patch; the touch
    rule needs no more); its half-angle is bisected to the requested coverage.
    """
    patch = raster // GRID[0]
    top = raster * rng.uniform(0.06, 0.14)
    r0 = raster * rng.uniform(0.05, 0.3)
    bottom = raster * rng.uniform(0.85, 0.98)
    cx = raster / 2 + raster * rng.uniform(-0.03, 0.03)
    lo, hi = np.deg2rad(5.0), np.deg2rad(85.0)
    valid = None
    for _ in range(14):
        half = 0.5 * (lo + hi)
        apex_y = top - r0 * np.cos(half)
        geom = Geometry("fan", raster, cx=cx, apex_y=apex_y, r0=r0, r1=bottom - apex_y, half_angle=float(half))
        valid = patch_validity(geom.beam_coords()[2], raster, patch)
        if float(valid.float().mean()) < coverage:
            lo = half
        else:
            hi = half
    return valid


def fan_pool(n: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.stack([fan_validity(rng, rng.uniform(0.48, 0.83)) for _ in range(n)])  # (n, 14, 14)


# -- 1. masks ---------------------------------------------------------------------------------------
def legacy_sampler() -> types.ModuleType | None:
    """The pre-ragged sampler module from git (None when git or the commit is unavailable)."""
    try:
        src = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{LEGACY_COMMIT}:usjepa_fast/masking/multiblock.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType("legacy_multiblock")
    sys.modules[module.__name__] = module  # dataclasses look their module up there
    exec(compile(src, "legacy_multiblock.py", "exec"), module.__dict__)
    return module


def mask_stats(pool: torch.Tensor, batch: int, batches: int) -> dict:
    legacy = legacy_sampler()
    out: dict = {}
    for usrc in (True, False):
        tag = "usrc" if usrc else "plain"
        rows = {}
        for equalize in ("truncate", "none"):
            coll = MultiBlockMaskCollator(MaskConfig(usrc=usrc, equalize=equalize), GRID)
            ctx_frac, tgt_frac, ctx_avail, ctx_kept, times = [], [], [], [], []
            for i in range(batches):
                rng = np.random.default_rng([7, i])
                valid = pool[rng.choice(len(pool), batch, replace=batch > len(pool))]
                t = time.perf_counter()
                m = coll.sample(batch, valid, np.random.default_rng([1, i]))
                times.append(time.perf_counter() - t)
                ctx_frac.append((m.context.lens[:, 0].double() / m.context_available.double()).mean().item())
                tgt_frac.append((m.target.lens.double() / m.target_available.double()).mean().item())
                ctx_avail.append(m.context_available.double().mean().item())
                ctx_kept.append(m.context.lens.double().mean().item())
            rows[equalize] = dict(
                context_kept_fraction=float(np.mean(ctx_frac)),
                target_kept_fraction=float(np.mean(tgt_frac)),
                context_available_mean=float(np.mean(ctx_avail)),
                context_kept_mean=float(np.mean(ctx_kept)),
                sample_ms=1e3 * float(np.median(times)),
            )
        if legacy is not None:
            coll = legacy.MultiBlockMaskCollator(legacy.MaskConfig(usrc=usrc), GRID)
            times = []
            for i in range(batches):
                valid = pool[np.random.default_rng([7, i]).choice(len(pool), batch, replace=batch > len(pool))]
                t = time.perf_counter()
                coll.sample(batch, valid, np.random.default_rng([1, i]))
                times.append(time.perf_counter() - t)
            rows["legacy_sample_ms"] = 1e3 * float(np.median(times))
        out[tag] = rows
    return out


# -- 2./3. attention paths and layouts ------------------------------------------------------------
def _interleaved_ms(fns: dict, reps: int) -> dict:
    """Median ms of each function, timed round-robin so that other jobs' load hits all alike."""
    results: dict = {}
    live = {}
    for name, fn in fns.items():
        try:
            fn()  # warm-up (allocator, kernels); also tells whether the path runs in this build
            live[name] = fn
        except Exception as exc:  # e.g. a prototype API missing from this torch build
            results[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
    times: dict[str, list[float]] = {name: [] for name in live}
    for _ in range(reps):
        for name, fn in live.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    results.update({name: 1e3 * float(np.median(ts)) for name, ts in times.items()})
    return results


def attention_paths(lens: list[int], heads: int, head_dim: int, reps: int) -> dict:
    """fwd+bwd ms of each CPU path on packed (T, H, hd) sequences of lengths ``lens``."""
    layout = VarlenLayout.from_lens(lens)
    qkv = torch.randn(layout.total, 3, heads, head_dim, requires_grad=True)
    offsets = layout.cu_seqlens.long()

    def backward(out: torch.Tensor) -> None:
        out.backward(torch.ones_like(out))
        qkv.grad = None

    def padded_masked() -> None:  # usfast's CPU path
        backward(varlen_attention_reference(*qkv.unbind(1), layout))

    def jagged() -> None:
        def nt(x):
            return torch.nested.nested_tensor_from_jagged(x.contiguous(), offsets).transpose(1, 2)

        q, k, v = qkv.unbind(1)
        backward(F.scaled_dot_product_attention(nt(q), nt(k), nt(v)).transpose(1, 2).values())

    def loop() -> None:
        q, k, v = qkv.unbind(1)
        outs = []
        for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
            outs.append(
                F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1)[None] for t in (q, k, v)))[0].transpose(0, 1)
            )
        backward(torch.cat(outs))

    order = torch.argsort(layout.lens)

    def buckets(groups: int = 8) -> None:  # sort by length, pad each of ``groups`` buckets to its own max
        q, k, v = qkv.unbind(1)
        outs, rows = [], []
        for chunk in order.chunk(groups):
            idx = torch.cat([torch.arange(offsets[s], offsets[s + 1]) for s in chunk.tolist()])
            sub = VarlenLayout.from_lens(layout.lens[chunk])
            outs.append(varlen_attention_reference(q[idx], k[idx], v[idx], sub))
            rows.append(idx)
        out = torch.empty_like(q)
        out = out.index_copy(0, torch.cat(rows), torch.cat(outs))
        backward(out)

    paths = {"padded_key_mask": padded_masked, "jagged_nt": jagged, "loop": loop, "buckets": buckets}
    return _interleaved_ms(paths, reps)


def layout_paths(lens: list[int], min_len: int, dim: int, heads: int, depth: int, reps: int) -> dict:
    """fwd+bwd ms of ``depth`` student blocks: packed vs padded on ragged ``lens``; dense truncated."""
    from usjepa_fast.models import create

    torch.manual_seed(0)
    blocks = create("usjepa_vit_base", img_size=224, embed_dim=dim, depth=depth, num_heads=heads).blocks
    layout = VarlenLayout.from_lens(lens)
    packed = torch.randn(layout.total, dim, requires_grad=True)
    b = len(lens)
    dense = torch.randn(b, min_len, dim, requires_grad=True)

    def run(x: torch.Tensor, lay: VarlenLayout | None) -> None:
        for blk in blocks:
            x = blk(x, layout=lay) if lay is not None else blk(x)
        x.sum().backward()

    times = _interleaved_ms(
        {
            "packed": lambda: run(packed, layout),
            "padded": lambda: run(layout.pad(packed), layout),
            "truncated_dense": lambda: run(dense, None),
        },
        reps,
    )
    return {
        **times,
        "tokens_ragged": layout.total,
        "tokens_padded": b * layout.max_len,
        "tokens_truncated": b * min_len,
    }


# -- 4. SALT steps ----------------------------------------------------------------------------------
class DrawWithinLargerBatch:
    """Draw each micro-batch's masks as part of a ``draw_batch``-sample batch and keep its own rows.

    A CPU cannot step B=256 at 224 px, but truncation depends on the batch it is the minimum of:
    with this wrapper a B=16..32 step carries exactly the per-sample token counts of a B=256
    micro-batch (the paper's per-GPU batch). The other rows' regions come from the same fan pool.
    """

    def __init__(self, collator: MultiBlockMaskCollator, pool: torch.Tensor, draw_batch: int) -> None:
        self.collator, self.pool, self.draw_batch = collator, pool, draw_batch

    def sample(self, batch_size: int, valid: torch.Tensor | None, rng: np.random.Generator):
        from usjepa_fast.masking import MaskBatch, RaggedIndex

        others = self.pool[rng.choice(len(self.pool), self.draw_batch - batch_size)]
        m = self.collator.sample(self.draw_batch, torch.cat([valid, others]), rng)

        def head(r: RaggedIndex) -> RaggedIndex:
            return RaggedIndex(r.idx[: int(r.lens[:batch_size].sum())], r.lens[:batch_size])

        return MaskBatch(
            head(m.context),
            head(m.target),
            m.context_available[:batch_size],
            m.target_available[:batch_size],
            m.target_shape,
            m.fallbacks,
        )


def salt_steps(
    preset: str, pool: torch.Tensor, batch: int, steps: int, warmup: int, threads: int, draw_batch: int | None
) -> dict:
    """Median step seconds and real context tokens per step, ragged vs truncated, same draws."""
    from usjepa_fast.config import apply_overrides, from_dict
    from usjepa_fast.models import create
    from usjepa_fast.models.frozen import save_export_ready
    from usjepa_fast.train.config import TrainConfig
    from usjepa_fast.train.data import TensorImageDataset
    from usjepa_fast.train.engine import Trainer

    p = STEP_PRESETS[preset]
    work = Path(tempfile.mkdtemp(prefix="usfast_ragged_"))
    torch.manual_seed(123)
    teacher = create("usjepa_vit_base", img_size=224, embed_dim=p["dim"], depth=p["depth"], num_heads=p["heads"])
    teacher_path = save_export_ready(
        teacher, teacher.encoder_info("teacher", (0.5,) * 3, (0.25,) * 3), work / "teacher" / "student.safetensors"
    )
    n_items = batch * (steps + warmup + 1)
    gen = torch.Generator().manual_seed(0)
    coarse = torch.randn(n_items, 1, 14, 14, generator=gen)
    images = F.interpolate(coarse, size=(224, 224), mode="bilinear").expand(-1, 3, -1, -1).contiguous()
    valid = pool[torch.randint(0, len(pool), (n_items,), generator=gen)]
    data = TensorImageDataset(images, valid)

    def trainer(mode: str) -> Trainer:
        overrides = [
            "data.image_size=224", f"data.batch_size={batch}", "data.num_workers=0",
            "model.student=usjepa_vit_base", f"model.embed_dim={p['dim']}", f"model.depth={p['depth']}",
            f"model.num_heads={p['heads']}", "model.patch_size=16", "model.predictor=predictor_base",
            f"model.predictor_embed_dim={p['pdim']}", f"model.predictor_depth={p['pdepth']}",
            f"model.predictor_num_heads={p['pheads']}", "model.predictor_per_block=true",
            "mask.usrc=true", f"mask.equalize={mode}", "objective.kind=salt", f"teacher.spec={teacher_path}",
            "teacher.bf16=false", f"optim.steps={steps + warmup + 10}", "optim.warmup_steps=1",
            "run.device=cpu", "run.precision=fp32", "run.compile=false", "run.progress=false",
            f"run.num_threads={threads}", f"run.out_dir={work / mode}",
        ]  # fmt: skip
        tr = Trainer(from_dict(TrainConfig, apply_overrides({}, overrides)), train_dataset=data)
        if draw_batch:
            tr.collator = DrawWithinLargerBatch(tr.collator, pool, draw_batch)  # type: ignore[assignment]
        tokens: list[int] = []
        collect = tr.collect_masks

        def counting(pending):
            masks = collect(pending)
            tokens.append(masks.context.total)
            return masks

        tr.collect_masks = counting  # type: ignore[method-assign]
        tr.context_tokens = tokens  # type: ignore[attr-defined]
        return tr

    trainers = {mode: trainer(mode) for mode in ("none", "truncate")}
    times: dict[str, list[float]] = {mode: [] for mode in trainers}
    for i in range(steps + warmup):
        for mode, tr in trainers.items():  # alternate: contention from other jobs hits both alike
            t = time.perf_counter()
            float(tr.train_step()["loss"])  # the host sync a log interval would do
            if i >= warmup:
                times[mode].append(time.perf_counter() - t)
    # Block sizes are drawn per batch, so token counts swing from step to step: the figures are
    # sums over the same timed steps (the same draws for both modes), not medians of one and means
    # of the other.
    # The frozen teacher's forward is the part of a step that does not grow with the kept tokens:
    # its share of the truncated step bounds what any layout can do for the time per real token.
    tr = trainers["truncate"]
    images_batch = images[:batch]
    with torch.no_grad():
        tr.targets(images_batch)
        teacher_times = []
        for _ in range(3):
            t = time.perf_counter()
            tr.targets(images_batch)
            teacher_times.append(time.perf_counter() - t)
    out = {"teacher_fwd_s": float(np.median(teacher_times))}
    for mode, tr in trainers.items():
        tr.close()
        out[mode] = dict(
            step_s=float(np.mean(times[mode])),
            step_s_median=float(np.median(times[mode])),
            context_tokens=float(np.mean(tr.context_tokens[warmup:])),
        )
    r, t = out["none"], out["truncate"]
    out["ragged_step_time_ratio"] = r["step_s"] / t["step_s"]
    out["real_token_ratio"] = r["context_tokens"] / t["context_tokens"]
    out["time_per_real_token_ratio"] = out["ragged_step_time_ratio"] / out["real_token_ratio"]
    share = min(1.0, out["teacher_fwd_s"] / t["step_s"])
    out["teacher_share_truncated"] = share
    # If everything but the teacher cost exactly its token count, the ratio would be this:
    out["proportional_time_per_token_ratio"] = share / out["real_token_ratio"] + (1.0 - share)
    return out


# -- report -----------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256, help="masks: samples per batch (paper: 256)")
    ap.add_argument("--batches", type=int, default=8, help="masks: batches averaged")
    ap.add_argument("--pool", type=int, default=512, help="distinct fan regions drawn from")
    ap.add_argument("--step-batch", type=int, default=32, help="SALT step: batch on CPU")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5, help="attention / layout: timed repetitions")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    header = machine_header()  # CPU flags and the load average at the start
    t0 = time.perf_counter()

    pool = fan_pool(args.pool)
    masks = mask_stats(pool, args.batch, args.batches)

    # One USrc draw at the step batch size gives the ragged lengths for the kernel/layout tables.
    coll = MultiBlockMaskCollator(MaskConfig(usrc=True), GRID)
    draw = coll.sample(args.step_batch * 2, pool[: args.step_batch * 2], np.random.default_rng(3))
    ctx_lens = draw.context.lens[:, 0].tolist()
    pred_lens = (draw.context.lens + draw.target.lens).reshape(-1).tolist()  # per-block predictor sequences
    small = STEP_PRESETS["small"]
    attn = {
        "context (ViT-S, 6x64)": attention_paths(ctx_lens, small["heads"], small["dim"] // small["heads"], args.reps),
        "predictor (6x32)": attention_paths(pred_lens, small["pheads"], small["pdim"] // small["pheads"], args.reps),
    }
    layout = layout_paths(ctx_lens, int(draw.context_available.min()), small["dim"], small["heads"], 4, args.reps)

    steps = {}
    for name in args.presets.split(","):
        for draw_batch in (None, args.batch):  # truncation within the step's own batch / within a B=256 draw
            key = f"{name}_B{args.step_batch}" if draw_batch is None else f"{name}_B{args.step_batch}_of_{draw_batch}"
            steps[key] = salt_steps(name, pool, args.step_batch, args.steps, args.warmup, args.threads, draw_batch)
    load_after = os.getloadavg()

    u, pl = masks["usrc"], masks["plain"]
    lines = [
        f"# ragged_tokens on CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{args.threads} torch threads; shared with other engineers' jobs: timings are contended)",
        *header,
        f"# load average at the end {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}",
        f"# masks: B={args.batch}, 14x14 grid, 4 target blocks, fans covering 48-83% of the grid "
        f"({args.pool} regions), {args.batches} batches",
        "",
        f"{'masks':<8}{'equalize':<10}{'ctx avail':>10}{'ctx kept':>10}{'kept/avail':>12}{'tgt kept':>10}"
        f"{'ms/batch':>10}",
    ]
    for tag, rows in (("usrc", u), ("plain", pl)):
        for mode in ("truncate", "none"):
            r = rows[mode]
            lines.append(
                f"{tag:<8}{mode:<10}{r['context_available_mean']:>10.1f}{r['context_kept_mean']:>10.1f}"
                f"{r['context_kept_fraction']:>12.3f}{r['target_kept_fraction']:>10.3f}{r['sample_ms']:>10.2f}"
            )
        if "legacy_sample_ms" in rows:
            lines.append(f"{tag:<8}{'legacy':<10}{'':>10}{'':>10}{'':>12}{'':>10}{rows['legacy_sample_ms']:>10.2f}"
                         f"   (per-image loop sampler at {LEGACY_COMMIT})")  # fmt: skip
    lines += ["", f"attention fwd+bwd on CPU, ms (one USrc draw, {len(ctx_lens)} samples; packed in, packed out)"]
    names = ("padded_key_mask", "jagged_nt", "loop", "buckets")
    lines.append(f"{'case':<24}" + "".join(f"{n:>17}" for n in names))
    for case, row in attn.items():
        cells = "".join(f"{row[n]:>17.1f}" if isinstance(row[n], float) else f"{'n/a':>17}" for n in names)
        lines.append(f"{case:<24}{cells}")
    lines += [
        "",
        f"4 ViT-S blocks fwd+bwd, ms: packed {layout['packed']:.1f} ({layout['tokens_ragged']} tokens), padded "
        f"{layout['padded']:.1f} ({layout['tokens_padded']} rows), truncated dense {layout['truncated_dense']:.1f} "
        f"({layout['tokens_truncated']} tokens)",
        "",
        "SALT step (Trainer.train_step: teacher fwd + student + per-block predictor + loss + bwd + AdamW; USrc; "
        f"B={args.step_batch}; mean of {args.steps} paired steps; '_of_{args.batch}': the B rows of a "
        f"B={args.batch} draw, i.e. the paper's per-GPU truncation)",
        f"{'case':<20}{'mode':<10}{'step (s)':>10}{'ctx tokens':>12}{'ms/token':>10}",
    ]
    for name, s in steps.items():
        for mode in ("truncate", "none"):
            r = s[mode]
            lines.append(f"{name:<20}{mode:<10}{r['step_s']:>10.3f}{r['context_tokens']:>12.0f}"
                         f"{1e3 * r['step_s'] / r['context_tokens']:>10.3f}")  # fmt: skip
        lines.append(
            f"{name:<20}ragged/truncated: step time {s['ragged_step_time_ratio']:.3f}, real context tokens "
            f"{s['real_token_ratio']:.2f}x, time per real token {s['time_per_real_token_ratio']:.3f} (teacher fwd "
            f"{s['teacher_fwd_s']:.2f} s = {100 * s['teacher_share_truncated']:.0f}% of the truncated step: "
            f"token-proportional cost would give {s['proportional_time_per_token_ratio']:.3f})"
        )
    figures = {
        "context_kept_fraction_usrc": round(u["none"]["context_kept_fraction"], 4),
        "context_kept_fraction_plain": round(pl["none"]["context_kept_fraction"], 4),
        "context_kept_fraction_usrc_truncated": round(u["truncate"]["context_kept_fraction"], 4),
        "context_kept_fraction_plain_truncated": round(pl["truncate"]["context_kept_fraction"], 4),
        "target_kept_fraction_usrc": round(u["none"]["target_kept_fraction"], 4),
        "target_kept_fraction_usrc_truncated": round(u["truncate"]["target_kept_fraction"], 4),
        "context_available_mean_usrc": round(u["none"]["context_available_mean"], 1),
        "mask_sample_ms_usrc": round(u["none"]["sample_ms"], 2),
        "mask_sample_ms_plain": round(pl["none"]["sample_ms"], 2),
        "mask_sample_ms_usrc_legacy": round(u.get("legacy_sample_ms", float("nan")), 2),
        "mask_sample_ms_plain_legacy": round(pl.get("legacy_sample_ms", float("nan")), 2),
        "attention_cpu_ms": attn,
        "layout_blocks_ms": layout,
        "steps": steps,
        "ragged_step_time_ratio": {k: round(v["ragged_step_time_ratio"], 3) for k, v in steps.items()},
        "time_per_real_token_ratio": {k: round(v["time_per_real_token_ratio"], 3) for k, v in steps.items()},
        "load_after": load_after,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    lines.append(json.dumps(figures))
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
