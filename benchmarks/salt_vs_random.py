"""Is the SALT learning real? The product's probe on SALT students vs their pixel teacher vs random init.

Pipeline (CPU; one pretraining seed is ~15 minutes of one core, seeds run in parallel processes):
1. synthesise the built-in B-mode lesion dataset (4 classes: normal, cyst, solid mass, hyperechoic
   mass; UltraBench layout, train / validation / test split by patient; >= 400 test images);
2. per pretraining seed: SALT stage 1, a pixel teacher (masked normalised-pixel reconstruction) on
   the *train* images, no labels; stage 2 twice from that one frozen teacher, USrc masks:
   ``ragged`` (``mask.equalize=none``: every image keeps its whole context) and ``truncated``
   (``mask.equalize=truncate``: contexts and targets cut to the batch minimum, dense I-JEPA);
3. every encoder (both students, the teacher, a random init of the same architecture) is scored by
   the product's own probe (:func:`usjepa_fast.probe.evaluate.evaluate_task`, paper preset: five
   probe seeds), exactly what ``usfast probe DATASET --encoder RUN/student.safetensors`` prints;
4. the headline is the mean +- std over *pretraining* seeds of each encoder's probe mean, and the
   paired per-seed differences (student - teacher, ragged - truncated, student - random).

Reruns with the same ``--workdir`` reuse the data and every finished run (a run is resumed from its
newest checkpoint), so ``--seeds 0`` / ``--seeds 1`` / ``--seeds 2`` may run as three processes
over one workdir, then ``--seeds 0,1,2`` (all runs finished) only probes and writes the table.

Last line: JSON with every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from usjepa_fast.data.synth import synthesize
from usjepa_fast.probe.evaluate import EvalConfig, evaluate_task
from usjepa_fast.probe.features import FeatureCache, open_encoder
from usjepa_fast.train.engine import read_run_summary
from usjepa_fast.train.pipeline import pixel_teacher_stage, salt_student_stage

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine_header  # noqa: E402  (benchmarks/_machine.py)

ARMS = {"ragged": "mask.equalize=none", "truncated": "mask.equalize=truncate"}


def probe_f1(spec: str, dataset: Path, cache: FeatureCache) -> tuple[float, float]:
    """Test macro F1 (points) of the product's paper-preset probe: mean and std over its probe seeds."""
    res = evaluate_task(open_encoder(spec, device="cpu"), dataset, EvalConfig(preset="paper", device="cpu"), cache)
    ms = res.test.summary()
    return 100.0 * ms.mean, 100.0 * ms.std


def finished(run_dir: Path) -> tuple[Path, float] | None:
    """(student.safetensors, final loss) of a run that reached its last step, from the summary it
    wrote, so a report-only invocation never re-enters training (nor its resume checks)."""
    summary = read_run_summary(run_dir)
    if summary is None or not summary.finished or summary.student_path is None or not summary.student_path.is_file():
        return None
    return summary.student_path, summary.final_loss


def mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-images", type=int, default=3200, help="synthetic images (about 13%% land in test)")
    ap.add_argument("--synth-size", type=int, default=128, help="side of the synthesised frames")
    ap.add_argument("--teacher-steps", type=int, default=400)
    ap.add_argument("--student-steps", type=int, default=600)
    ap.add_argument("--seeds", default="0,1,2", help="pretraining seeds (comma-separated)")
    ap.add_argument("--train-only", action="store_true", help="pretrain the seeds' runs, skip probes and table")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "salt_vs_random_cpu.txt")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)  # tiny matmuls: one thread beats two on a shared 2-core box
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    header = machine_header()  # load at start: before this run's own processes add to it
    t0 = time.perf_counter()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="usfast_salt_vs_random_"))
    ub = work / "synth" / "ultrabench"
    if not (ub / "test.json").is_file():
        synthesize(work / "synth", n_images=args.n_images, n_clips=0, image_size=args.synth_size, seed=0)
    t_synth = time.perf_counter() - t0

    t1 = time.perf_counter()
    runs: dict[int, dict[str, Path]] = {}
    losses: dict[str, list[float]] = {"teacher": [], **{arm: [] for arm in ARMS}}
    for seed in seeds:
        common = dict(progress=False, resume=True, seed=seed)
        root = work / f"seed{seed}"
        done = finished(root / "teacher")
        if done is None:
            teacher = pixel_teacher_stage([ub], root / "teacher", args.teacher_steps, **common)
            done = (teacher.student_path, teacher.final_loss)
        runs[seed] = {"teacher": done[0]}
        losses["teacher"].append(done[1])
        for arm, override in ARMS.items():
            done = finished(root / arm)
            if done is None:
                student = salt_student_stage(
                    runs[seed]["teacher"], [ub], root / arm, args.student_steps, overrides=[override], **common
                )
                if student.student_path is None:
                    raise SystemExit(f"seed {seed} {arm}: stopped at step {student.step}/{student.total_steps}")
                done = (student.student_path, student.final_loss)
            runs[seed][arm] = done[0]
            losses[arm].append(done[1])
    t_train = time.perf_counter() - t1
    if args.train_only:
        print(f"trained seeds {seeds} in {t_train:.0f} s under {work}")
        return

    t2 = time.perf_counter()
    cache = FeatureCache(work / "features")
    names = ["random", "teacher", *ARMS]
    per_seed: dict[str, list[float]] = {n: [] for n in names}  # probe mean per pretraining seed
    probe_std: dict[str, list[float]] = {n: [] for n in names}  # probe-seed std per pretraining seed
    for seed in seeds:
        specs = {k: str(v) for k, v in runs[seed].items()}
        specs["random"] = f"random:{runs[seed]['teacher']}@{1000 + seed}"  # same architecture, untrained
        for name in names:
            m, s = probe_f1(specs[name], ub, cache)
            per_seed[name].append(m)
            probe_std[name].append(s)
    t_probe = time.perf_counter() - t2

    def paired(a: str, b: str) -> tuple[float, float]:
        return mean_std([x - y for x, y in zip(per_seed[a], per_seed[b], strict=True)])

    sizes = {s: len(json.loads((ub / f"{s}.json").read_text())) for s in ("train", "validation", "test")}
    stats = {n: mean_std(per_seed[n]) for n in names}
    diffs = {
        "ragged_minus_teacher": paired("ragged", "teacher"),
        "ragged_minus_truncated": paired("ragged", "truncated"),
        "ragged_minus_random": paired("ragged", "random"),
        "truncated_minus_teacher": paired("truncated", "teacher"),
        "teacher_minus_random": paired("teacher", "random"),
    }
    label = {
        "random": "random init (same arch)",
        "teacher": "stage-1 pixel teacher",
        "ragged": "SALT student, ragged",
        "truncated": "SALT student, truncated",
    }
    lines = [
        f"# salt_vs_random on CPU: {len(seeds)} pretraining seeds {seeds}, each scored by the product probe "
        "(paper preset, 5 probe seeds)",
        *header,
        f"# {args.n_images} synthetic images ({args.synth_size}px), split train {sizes['train']} / validation "
        f"{sizes['validation']} / test {sizes['test']}; ViT dim 96 depth 4 patch 16 at 128px (salt_tiny_cpu); "
        f"stage 1 {args.teacher_steps} steps, stage 2 {args.student_steps} steps, USrc",
        f"{'encoder':<26}{'macro-F1 over seeds':>22}{'per seed':>30}{'probe-seed std':>16}",
    ]
    for n in names:
        m, s = stats[n]
        seeds_txt = " ".join(f"{v:.1f}" for v in per_seed[n])
        lines.append(f"{label[n]:<26}{m:>14.2f} +- {s:<5.2f}{seeds_txt:>30}{np.mean(probe_std[n]):>16.2f}")
    lines.append("paired differences per pretraining seed (macro-F1 points, mean +- std over seeds):")
    for k, (m, s) in diffs.items():
        verdict = "|mean| > 2 std: exceeds its spread" if abs(m) > 2 * s and len(seeds) > 1 else "within its spread"
        lines.append(f"  {k:<26}{m:+7.2f} +- {s:.2f}   ({verdict})")
    lines.append(f"reproduce one row: usfast probe {ub} --encoder {runs[seeds[0]]['ragged']} (paper preset, seeds 0-4)")
    figures = {
        **{f"f1_{n}": round(stats[n][0], 2) for n in names},
        **{f"f1_{n}_std": round(stats[n][1], 2) for n in names},
        **{f"f1_{n}_per_seed": [round(v, 2) for v in per_seed[n]] for n in names},
        **{k: round(m, 2) for k, (m, _) in diffs.items()},
        **{f"{k}_std": round(s, 2) for k, (_, s) in diffs.items()},
        "pretraining_seeds": seeds,
        "n_train": sizes["train"],
        "n_validation": sizes["validation"],
        "n_test": sizes["test"],
        "teacher_steps": args.teacher_steps,
        "student_steps": args.student_steps,
        "final_loss": {k: [round(v, 4) for v in vs] for k, vs in losses.items()},
        "synth_s": round(t_synth, 1),
        "train_s": round(t_train, 1),
        "probe_s": round(t_probe, 1),
        "total_s": round(time.perf_counter() - t0, 1),
    }
    lines.append(json.dumps(figures))
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
