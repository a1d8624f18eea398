"""Is the SALT learning real? Linear probe of a SALT-trained tiny student vs a random-init twin.

Pipeline (all on CPU, ~10 minutes on 2 busy cores):
1. synthesise the built-in B-mode lesion dataset (4 classes: normal, cyst, solid mass, hyperechoic
   mass; UltraBench layout with train / validation / test splits by patient);
2. SALT stage 1: a pixel teacher (masked normalised-pixel reconstruction) on the *train* images,
   no labels; stage 2: the SALT student predicting the frozen teacher's latents (USrc masks);
3. frozen mean-pooled features of the SALT student, of the stage-1 teacher and of randomly
   initialised encoders of the same architecture (several init seeds);
4. a linear probe (torch, softmax regression on standardised features, weight decay picked on the
   validation split) trained on train+validation, macro-F1 on the test split, over several probe
   seeds; the figures are mean +- std over seeds (and over random-init seeds for the baseline).

Last line: JSON with f1_salt, f1_random, margin (macro-F1 points) and every other figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score

from usjepa_fast.data.preprocess import PreprocessConfig, Preprocessor
from usjepa_fast.data.synth import synthesize
from usjepa_fast.data.ultrabench import UltraBenchDataset
from usjepa_fast.models import create
from usjepa_fast.models.resolve import resolve_encoder
from usjepa_fast.train.pipeline import DEMO_OVERRIDES, pretrain_two_stage

IMAGE_SIZE, PATCH = 128, 16  # the geometry of the tiny recipes (salt_tiny_cpu.yaml)


@torch.no_grad()
def features(encoder: torch.nn.Module, ds: UltraBenchDataset, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Mean-pooled final-normed tokens (B, D) for a whole split, and its labels."""
    encoder.eval()
    xs = []
    for start in range(0, len(ds), batch):
        items = [ds[i] for i in range(start, min(len(ds), start + batch))]
        x = torch.stack([it["image"] for it in items])
        xs.append(encoder(x).float())
    return torch.cat(xs).numpy(), np.asarray(ds.labels)


class _Pooled(torch.nn.Module):
    """(B, 3, S, S) -> (B, D) mean-pooled features of a usfast student (what a FrozenEncoder returns)."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.pooled(x)


def linear_probe(
    xtr: np.ndarray,
    ytr: np.ndarray,
    xte: np.ndarray,
    yte: np.ndarray,
    num_classes: int,
    seed: int,
    weight_decay: float,
    epochs: int = 100,
) -> float:
    """Softmax regression with AdamW (minibatches, seed-dependent init and order); macro-F1 in points."""
    g = torch.Generator().manual_seed(seed)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr_t = torch.from_numpy((xtr - mu) / sd).float()
    xte_t = torch.from_numpy((xte - mu) / sd).float()
    ytr_t = torch.from_numpy(ytr).long()
    layer = torch.nn.Linear(xtr.shape[1], num_classes)
    with torch.no_grad():
        layer.weight.normal_(0, 0.01, generator=g)
        layer.bias.zero_()
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-2, weight_decay=weight_decay)
    n = len(xtr_t)
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for start in range(0, n, 128):
            idx = order[start : start + 128]
            loss = torch.nn.functional.cross_entropy(layer(xtr_t[idx]), ytr_t[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = layer(xte_t).argmax(1).numpy()
    return 100.0 * f1_score(yte, pred, average="macro", labels=list(range(num_classes)), zero_division=0)


def evaluate(encoder: torch.nn.Module, splits: dict[str, UltraBenchDataset], seeds: list[int]) -> list[float]:
    """Probe scores over ``seeds``: wd picked on validation, then train+validation -> test."""
    ftr, ytr = features(encoder, splits["train"])
    fva, yva = features(encoder, splits["validation"])
    fte, yte = features(encoder, splits["test"])
    k = splits["train"].num_classes
    grid = [1e-4, 1e-2, 1e-1, 1.0]
    best_wd = max(grid, key=lambda wd: linear_probe(ftr, ytr, fva, yva, k, seed=0, weight_decay=wd, epochs=60))
    xall, yall = np.concatenate([ftr, fva]), np.concatenate([ytr, yva])
    return [linear_probe(xall, yall, fte, yte, k, seed=s, weight_decay=best_wd) for s in seeds]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-images", type=int, default=600)
    ap.add_argument("--synth-size", type=int, default=128, help="side of the synthesised frames")
    ap.add_argument("--teacher-steps", type=int, default=400)
    ap.add_argument("--student-steps", type=int, default=600)
    ap.add_argument("--probe-seeds", type=int, default=5)
    ap.add_argument("--random-inits", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "salt_vs_random_cpu.txt")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)  # tiny matmuls: one thread beats two on a shared 2-core box
    t0 = time.perf_counter()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="usfast_salt_vs_random_"))
    ub = work / "synth" / "ultrabench"
    reuse = (ub / "test.json").is_file()  # a --workdir from an earlier run: reuse data and finished runs
    if not reuse:
        synthesize(work / "synth", n_images=args.n_images, n_clips=0, image_size=args.synth_size, seed=0)
    t_synth = time.perf_counter() - t0

    t1 = time.perf_counter()
    result = pretrain_two_stage(
        [ub],
        work / "runs",
        teacher_steps=args.teacher_steps,
        student_steps=args.student_steps,
        overrides=DEMO_OVERRIDES,
        progress=False,
        resume=reuse,
    )
    t_train = time.perf_counter() - t1

    pre = Preprocessor(PreprocessConfig(image_size=IMAGE_SIZE, patch_size=PATCH))
    splits = {s: UltraBenchDataset(ub, s, pre) for s in ("train", "validation", "test")}
    seeds = list(range(args.probe_seeds))
    t2 = time.perf_counter()
    salt = evaluate(resolve_encoder(result.student.student_path), splits, seeds)
    teacher = evaluate(resolve_encoder(result.teacher.student_path), splits, seeds)
    random_scores = []
    for init in range(args.random_inits):
        torch.manual_seed(1000 + init)
        enc = create("usjepa_vit_tiny", img_size=IMAGE_SIZE, patch_size=PATCH, embed_dim=96, depth=4, num_heads=3)
        random_scores += evaluate(_Pooled(enc), splits, seeds)
    t_probe = time.perf_counter() - t2

    f1_salt, f1_random, f1_teacher = float(np.mean(salt)), float(np.mean(random_scores)), float(np.mean(teacher))
    figures = {
        "f1_salt": round(f1_salt, 2),
        "f1_salt_std": round(float(np.std(salt)), 2),
        "f1_random": round(f1_random, 2),
        "f1_random_std": round(float(np.std(random_scores)), 2),
        "margin": round(f1_salt - f1_random, 2),
        "f1_pixel_teacher": round(f1_teacher, 2),
        "f1_pixel_teacher_std": round(float(np.std(teacher)), 2),
        "n_train": len(splits["train"]),
        "n_validation": len(splits["validation"]),
        "n_test": len(splits["test"]),
        "teacher_steps": args.teacher_steps,
        "student_steps": args.student_steps,
        "student_final_loss": round(result.student.final_loss, 4),
        "student_best_val_loss": result.student.best_val_loss,
        "teacher_final_loss": round(result.teacher.final_loss, 4),
        "probe_seeds": args.probe_seeds,
        "random_inits": args.random_inits,
        "synth_s": round(t_synth, 1),
        "train_s": round(t_train, 1),
        "probe_s": round(t_probe, 1),
        "total_s": round(time.perf_counter() - t0, 1),
    }
    lines = [
        f"# salt_vs_random on CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores shared "
        "with other engineers' jobs: timings are contended)",
        f"# {args.n_images} synthetic images ({args.synth_size}px) -> {IMAGE_SIZE}px, ViT dim 96 depth 4 patch 16; "
        f"stage 1 pixel teacher {args.teacher_steps} steps, stage 2 SALT {args.student_steps} steps (USrc)",
        f"{'encoder':<28}{'macro-F1 (test)':>18}",
        f"{'random init (same arch)':<28}{f1_random:>12.2f} +- {np.std(random_scores):.2f}",
        f"{'stage-1 pixel teacher':<28}{f1_teacher:>12.2f} +- {np.std(teacher):.2f}",
        f"{'SALT student':<28}{f1_salt:>12.2f} +- {np.std(salt):.2f}",
        f"margin SALT - random: {f1_salt - f1_random:+.2f} macro-F1 points "
        f"(ratio {f1_salt / max(f1_random, 1e-9):.2f}x)",
        json.dumps(figures),
    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
