"""SALT and I-JEPA (EMA) training steps on one GPU: images/s and peak memory (step 3 of the GPU check).

What runs is the product's ``Trainer.train_step`` (mask thread, teacher forward, ragged student and
per-block predictor, loss, backward, AdamW, EMA update) on an in-memory ``TensorImageDataset``:
ViT-B/16 student + ``predictor_base`` (384 wide, 12 deep, 12 heads) at 224 px, batch 256, bf16
autocast, USrc masks on convex-probe fans covering 48-83% of the grid (``ragged_tokens.py``'s fan
pool), data loaded by DataLoader workers as in training. Weights are random (the cost does not
depend on them); the SALT teacher is a frozen ViT-B/16 (``teacher.spec=vit_base_patch16_224``),
the EMA teacher I-JEPA's target encoder (a copy of the student, updated every step).

Rows, for each objective (``salt``, ``ema``):

  eager_sdpa    run.kernels=torch:  PyTorch SDPA (pad + key mask + unpad) and the eager loss
  eager_triton  run.kernels=triton: the packed Triton attention and the fused Triton loss
  compiled      run.kernels=auto, run.compile=true: torch.compile of student + predictor with
                the Triton kernels as custom ops inside (what ``usfast train`` runs on a GPU)

Eager rows first, compiled rows last, each under its own time limit (a row that runs out prints
TIMEOUT; the next row starts). Per row: the median over ``--steps`` timed steps after ``--warmup``
untimed ones (compiled rows: ``--compile-warmup``, which hold the compile and the dynamic-shape
recompile; all reported as ``first_steps_s``), images/s = batch / median step, peak CUDA memory allocated during the row
(weights, AdamW state, teacher and activations). Ratios against eager_sdpa of the same objective,
and EMA / SALT (RQ1: what the frozen teacher costs or saves against I-JEPA's target encoder).
Last line: JSON.

``--dry-run``: the same rows on the CPU at tiny sizes (112 px, one-block models, batch 2, fp32, the
Triton rows in the interpreter; the compiled rows compile the same module with dynamo's ``eager``
backend, no inductor codegen): proves every row starts, no figure.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ (for _steps, ragged_tokens)

from _steps import emit, finish, guarded_row, start  # noqa: E402

ROWS = {  # row -> (run.kernels, run.compile)
    "eager_sdpa": ("torch", False),
    "eager_triton": ("triton", False),
    "compiled": ("auto", True),
}


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=256, help="images per step (the paper's per-GPU batch)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per eager row (allocator, autotune)")
    p.add_argument("--compile-warmup", type=int, default=3, help="untimed steps per compiled row (compile, recompile)")
    p.add_argument("--precision", choices=["bf16", "fp32"], default=None, help="default: bf16 (fp32 dry run)")
    p.add_argument("--objectives", default="salt,ema")
    p.add_argument("--rows", default=",".join(ROWS), help="comma list of " + ", ".join(ROWS))
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers (data.num_workers)")
    p.add_argument("--row-limit", type=float, default=45.0, help="seconds per eager row")
    p.add_argument("--compile-limit", type=float, default=120.0, help="seconds per compiled row")
    p.add_argument("--dry-run", action="store_true")
    return p.parse_args()


def fan_valid_patches(n: int, grid: tuple[int, int], seed: int = 0):
    """(n, gh, gw) bool valid-patch grids: convex-probe fans of the USrc benchmarks (14x14, reduced by
    max-pooling to a coarser grid: a coarse patch is valid where any of its fine patches is)."""
    import torch
    import torch.nn.functional as F
    from ragged_tokens import GRID, fan_pool

    pool = fan_pool(min(n, 64), seed)  # ~16 ms per fan; images draw from the pool
    if tuple(grid) != GRID:
        pool = F.adaptive_max_pool2d(pool.float()[:, None], grid)[:, 0].bool()
    return pool[torch.randint(0, len(pool), (n,), generator=torch.Generator().manual_seed(seed))]


def dataset(n: int, size: int, grid: tuple[int, int]):
    """Smooth random images (what a context can predict, unlike white noise), gray replicated to 3
    channels as a view, and their fans."""
    import torch
    import torch.nn.functional as F

    from usjepa_fast.train.data import TensorImageDataset

    coarse = torch.randn(n, 1, grid[0], grid[1], generator=torch.Generator().manual_seed(0))
    gray = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return TensorImageDataset(gray.expand(-1, 3, -1, -1), fan_valid_patches(n, grid))


def config(args, objective: str, row: str, out_dir: Path, teacher: str):
    from usjepa_fast.config import apply_overrides, from_dict
    from usjepa_fast.train.config import TrainConfig

    kernels, compiled = ROWS[row]
    if args.dry_run:
        model = ["data.image_size=112", "model.embed_dim=32", "model.depth=1", "model.num_heads=2",
                 "model.predictor_embed_dim=32", "model.predictor_depth=1", "model.predictor_num_heads=2"]  # fmt: skip
        compiled = False  # the dry run compiles tr.model itself, with a lighter backend (see measure)
    else:
        model = ["data.image_size=224"]
    overrides = [
        *model,
        f"data.batch_size={args.batch}", f"data.num_workers={args.workers}", "model.student=usjepa_vit_base",
        "model.patch_size=16", "model.predictor=predictor_base", "mask.usrc=true", f"objective.kind={objective}",
        f"teacher.spec={teacher if objective == 'salt' else ''}",
        f"optim.steps={10 * (args.steps + args.compile_warmup)}",
        "optim.warmup_steps=1", f"run.device={'cpu' if args.dry_run else 'cuda'}", f"run.precision={args.precision}",
        f"run.kernels={kernels}", f"run.compile={str(compiled).lower()}", "run.progress=false",
        f"run.out_dir={out_dir}", "run.ckpt_every=1000000", "run.val_every=1000000",
    ]  # fmt: skip
    return from_dict(TrainConfig, apply_overrides({}, overrides))


def measure(args, objective: str, row: str, data, work: Path, teacher: str, record: dict) -> None:
    """Fill ``record`` with one row's figures (the caller guards it with a time limit)."""
    import numpy as np
    import torch

    from usjepa_fast.train.engine import Trainer

    cuda = not args.dry_run
    gc.collect()  # the previous row's Trainer (and any cycle holding its CUDA tensors) is gone
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    tr = Trainer(config(args, objective, row, work / f"{objective}_{row}", teacher), train_dataset=data)
    try:
        if args.dry_run and ROWS[row][1]:
            tr.step_model = torch.compile(tr.model, backend="eager")  # what Trainer does, without inductor

        def step() -> float:
            t = time.perf_counter()
            metrics = tr.train_step()
            float(metrics["loss"])  # the host sync a log interval does
            if cuda:
                torch.cuda.synchronize()
            return time.perf_counter() - t

        warmup = args.compile_warmup if ROWS[row][1] else args.warmup
        record["first_steps_s"] = [round(step(), 3) for _ in range(warmup)]
        times = [step() for _ in range(args.steps)]
        median = float(np.median(times))
        record.update(step_s=round(median, 4), images_per_s=round(args.batch / median, 1),
                      step_s_spread=[round(min(times), 4), round(max(times), 4)])  # fmt: skip
        if cuda:
            record["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            record["reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    finally:
        tr.close()
        if ROWS[row][1]:
            torch._dynamo.reset()  # drop the compiled graphs (inductor's on-disk caches stay warm)


def teacher_spec(args, work: Path) -> str:
    """The frozen SALT teacher: a random ViT-B/16 by timm name (GPU); a one-block usfast export at the
    dry run's size (CPU)."""
    if not args.dry_run:
        return "vit_base_patch16_224"
    import torch

    from usjepa_fast.models import create
    from usjepa_fast.models.frozen import save_export_ready

    torch.manual_seed(1)
    model = create("usjepa_vit_base", img_size=112, embed_dim=32, depth=1, num_heads=2)
    path = save_export_ready(
        model, model.encoder_info("teacher", (0.5,) * 3, (0.25,) * 3), work / "teacher.safetensors"
    )
    return str(path)


def print_row(r: dict) -> None:
    lead = f"{r['objective']:<6} {r['row']:<14}"
    if "timeout" in r or "error" in r:
        emit(f"{lead} {'TIMEOUT' if 'timeout' in r else 'failed'}: {r.get('timeout') or r.get('error')}")
        return
    peak = f"{r['peak_gib']:>9.2f}" if "peak_gib" in r else f"{'-':>9}"
    first = ", ".join(f"{t:.1f}" for t in r["first_steps_s"])
    emit(f"{lead} {r['step_s']:>9.4f} {r['images_per_s']:>9.1f} {peak}   {first}")


def main() -> int:
    args = _parse()
    import os

    import torch

    if args.dry_run or not torch.cuda.is_available():
        args.dry_run = True
        os.environ["TRITON_INTERPRET"] = "1"  # the eager_triton row runs the kernels in the interpreter
        args.batch, args.steps, args.warmup, args.compile_warmup, args.workers = min(args.batch, 2), 1, 1, 1, 0
    args.precision = args.precision or ("fp32" if args.dry_run else "bf16")
    t0 = time.perf_counter()
    facts = start("train", "SALT / EMA train step, ViT-B/16 + predictor_base + ViT-B/16 teacher", args.dry_run)
    work = Path(tempfile.mkdtemp(prefix="usfast_gpu_train_"))
    try:
        teacher = teacher_spec(args, work)
        size, grid = (112, (7, 7)) if args.dry_run else (224, (14, 14))
        data = dataset(args.batch * (max(args.warmup, args.compile_warmup) + args.steps + 2), size, grid)
        emit(f"# batch {args.batch}, {args.precision}, {size} px, USrc fans; median of {args.steps} steps after "
             f"{args.warmup} warm-up steps ({args.compile_warmup} compiled); "
             f"DataLoader workers {args.workers}")  # fmt: skip
        emit(f"{'mode':<6} {'row':<14} {'step s':>9} {'images/s':>9} {'peak GiB':>9}   first steps (s)")
        rows_wanted = [r for r in args.rows.split(",") if r]
        order = [(o, r) for r in rows_wanted if not ROWS[r][1] for o in args.objectives.split(",")]
        order += [(o, r) for r in rows_wanted if ROWS[r][1] for o in args.objectives.split(",")]  # compiled last
        rows = []
        for objective, row in order:
            record = {"objective": objective, "row": row, "kernels": ROWS[row][0], "compiled": ROWS[row][1]}
            with guarded_row(record, args.compile_limit if ROWS[row][1] else args.row_limit):
                measure(args, objective, row, data, work, teacher, record)
            print_row(record)
            rows.append(record)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    done = {(r["objective"], r["row"]): r for r in rows if "step_s" in r}
    ratios = {}
    for (objective, row), r in done.items():
        base = done.get((objective, "eager_sdpa"))
        if base is not None and row != "eager_sdpa":
            ratios[f"{objective}_{row}_speedup_vs_eager_sdpa"] = round(base["step_s"] / r["step_s"], 3)
            if "peak_gib" in r:
                ratios[f"{objective}_{row}_memory_vs_eager_sdpa"] = round(r["peak_gib"] / base["peak_gib"], 3)
        other = done.get(("salt", row))
        if objective == "ema" and other is not None:
            ratios[f"ema_vs_salt_{row}_step_time"] = round(r["step_s"] / other["step_s"], 3)
    for key, value in ratios.items():
        emit(f"{'# dry run, not a figure: ' if args.dry_run else ''}{key}: {value}")
    failed = [r for r in rows if "error" in r]
    status = "failed" if failed or not rows else "partial" if any("timeout" in r for r in rows) else "ok"
    payload = {"args": vars(args), "rows": rows, "ratios": ratios}
    return finish("train", facts, args.dry_run, time.perf_counter() - t0, status, **payload)


if __name__ == "__main__":
    sys.exit(main())
