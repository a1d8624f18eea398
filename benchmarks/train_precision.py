"""Claim: the tiny CPU recipes' precision is set by measurement: a SALT step fp32 vs bf16 autocast.

Builds the ``salt_tiny_cpu`` recipe's Trainer twice on the same synthetic data (a frozen teacher
trained for two steps by ``pixel_teacher_tiny_cpu``, as in the demo): ``run.precision=fp32,
teacher.bf16=false`` and ``run.precision=bf16, teacher.bf16=true`` (student, predictor and teacher
under bf16 autocast), and times ``Trainer.train_step`` in interleaved rounds (a shared machine's
load hits both alike); the ratio is the median of within-round ratios. ``usjepa_fast.hardware``
decides what ``run.precision=auto`` does; this benchmark is the evidence for that rule on the
machine it runs on. Last line: JSON.

    python benchmarks/train_precision.py [--threads 1] [--steps 4] [--rounds 3] [--set KEY=VALUE ...]

``--set`` overrides keys of the recipe (e.g. a ViT-S-wide student: ``--set model.embed_dim=384
--set model.num_heads=6``), for the width dependence of the rule.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="salt_tiny_cpu")
    ap.add_argument("--threads", type=int, default=1, help="the recipe's run.num_threads")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per precision per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override KEY=VALUE")
    args = ap.parse_args()

    import numpy as np
    import torch

    from usjepa_fast.data.synth import synthesize
    from usjepa_fast.hardware import bf16_training_pays, cpu_caps
    from usjepa_fast.train import run
    from usjepa_fast.train.config import load_train_config
    from usjepa_fast.train.engine import Trainer

    logging.basicConfig(level=logging.WARNING)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="usfast_trainprec_"))
    synthesize(work / "synth", n_images=160, n_clips=0, image_size=128, seed=0)
    data = [f"data.sources=[{work / 'synth' / 'ultrabench'}]"]
    teacher_cfg = load_train_config(
        "pixel_teacher_tiny_cpu",
        data + ["optim.steps=2", "optim.warmup_steps=1", f"run.out_dir={work / 'teacher'}", "run.progress=false"],
    )
    run(teacher_cfg)

    caps = cpu_caps()
    load0 = os.getloadavg()[0]
    from _machine import machine_header

    print("\n".join(machine_header()))
    print(f"# {caps.summary()}; {args.threads} thread(s); load avg at start {load0:.2f}")
    trainers = {}
    for mode in ("fp32", "bf16"):
        cfg = load_train_config(
            args.recipe,
            data
            + [
                f"teacher.spec={work / 'teacher'}",
                f"run.out_dir={work / ('run_' + mode)}",
                "run.progress=false",
                f"run.num_threads={args.threads}",
                f"run.precision={mode}",
                f"teacher.bf16={'true' if mode == 'bf16' else 'false'}",
                "optim.steps=100000",
                "run.ckpt_every=1000000",
                "run.val_every=1000000",
                "run.log_every=1000000",
                *args.overrides,
            ],
        )
        t = Trainer(cfg)
        for _ in range(2):  # warm-up: allocator, oneDNN primitive caches
            t.train_step()
        trainers[mode] = t
    times: dict[str, list[float]] = {m: [] for m in trainers}
    for r in range(args.rounds):
        for mode, t in trainers.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                t.train_step()
            times[mode].append((time.perf_counter() - t0) / args.steps)
        print(f"# round {r + 1}: " + ", ".join(f"{m} {v[-1]:.3f} s/step" for m, v in times.items()), flush=True)
    ratio = float(np.median(np.array(times["fp32"]) / np.array(times["bf16"])))
    cfg = trainers["fp32"].cfg
    pays, why = bf16_training_pays("cpu")
    print(f"{'precision':<10}{'s/step (best)':>14}{'img/s':>8}")
    for mode, v in times.items():
        print(f"{mode:<10}{min(v):>14.3f}{cfg.data.batch_size / min(v):>8.1f}")
    print(
        f"bf16 speed-up (median of within-round ratios): {ratio:.3f}x; run.precision=auto here: "
        f"{'bf16' if pays else 'fp32'} ({why})"
    )
    result = {
        "recipe": args.recipe,
        "overrides": args.overrides,
        "cpu_isa": caps.isa,
        "cpu_flags": caps.flags_line(),
        "threads": args.threads,
        "batch": cfg.data.batch_size,
        "image_size": cfg.data.image_size,
        "student_width": cfg.model.embed_dim,
        "torch": torch.__version__,
        "fp32_s_per_step": round(min(times["fp32"]), 4),
        "bf16_s_per_step": round(min(times["bf16"]), 4),
        "bf16_speedup": round(ratio, 3),
        "auto_picks": "bf16" if pays else "fp32",
        "rounds": [{m: round(v[i], 4) for m, v in times.items()} for i in range(args.rounds)],
        "load_avg_start": round(load0, 2),
        "load_avg_end": round(os.getloadavg()[0], 2),
    }
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
