"""Claim: ``usfast embed --tokens scan`` (only each frame's scan-region patches go through the encoder)
is faster than whole-frame embedding by close to the share of tokens it drops, with the same probe F1.

Data: the simulator's convex-probe (fan) geometry with its black surround and burned-in text:
``--clips`` MJPEG clips of ``--frames`` frames (224 px, their ``.scanmask.png`` beside them) for the
speed, and ``--images`` single fan frames of the 4 synthetic classes (normal / cyst / solid /
hyperechoic mass) for the probe. Both sides run the same engine (``embed.run_engine``: decode,
preprocess, batches of ``--batch-size``) with the same torch backend, fp32, ``--threads``; the only
difference is ``EmbedOptions.tokens`` (``all`` = the baseline, the best whole-frame configuration of
the same backend; ``scan`` = kept tokens at ``--patch-coverage``).

Figures:
- ``kept_fraction``: patch tokens through the encoder / all patch tokens (scan side).
- ``embed_scan_tokens_speedup``: median over ``--rounds`` alternating rounds of (whole-frame engine
  seconds / scan engine seconds), end to end (decode included); target >= 0.8 / kept_fraction.
  ``model_speedup``: the same ratio on the encoder call alone (pre-decoded batches, one clip each:
  the first two clips).
- ``macro_f1_all`` / ``macro_f1_scan``: a linear probe (``probe.linear.train_probe``, the paper
  preset, probe seeds 0-4, mean ± std) on image features, train / validation / test split 60/15/25 %
  stratified; target |difference| <= 1 point. ``cosine_*``: per-image cosine of scan-token to
  whole-frame features (mean, min).

The encoder is randomly initialised (no hub downloads): speed does not depend on the weights, and
both probes see features of the same network (a trained encoder's F1 gap is not measured here).

    python benchmarks/embed_scan_tokens.py [--model vit_small_patch16_224] [--clips 4] [--frames 16]
        [--images 320] [--rounds 3]

The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_header  # noqa: E402


def make_clips(root: Path, n: int, frames: int, size: int, seed: int) -> None:
    from usjepa_fast.data import synth
    from usjepa_fast.data.scan_region import save_mask

    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rng = np.random.default_rng([seed, 1, i])
        clip, mask, _ = synth.render_clip(rng, i % len(synth.CLASSES), size, frames, geometry="fan")
        synth.write_video(clip, root / f"clip_{i:03d}.avi")
        save_mask(mask, root / f"clip_{i:03d}.scanmask.png")


def make_images(root: Path, n: int, size: int, seed: int) -> np.ndarray:
    from PIL import Image

    from usjepa_fast.data import synth
    from usjepa_fast.data.scan_region import save_mask

    root.mkdir(parents=True, exist_ok=True)
    labels = np.arange(n) % len(synth.CLASSES)
    for i, label in enumerate(labels):
        img, mask, _ = synth.render_image(np.random.default_rng([seed, 2, i]), int(label), size, "fan")
        Image.fromarray(img).save(root / f"img_{i:04d}.png")
        save_mask(mask, root / f"img_{i:04d}.scanmask.png")
    return labels


def engine_features(backend, sources, tokens: str, batch: int, coverage: float):
    from usjepa_fast.embed import EmbedOptions, MemorySink, run_engine

    sink = MemorySink()
    opts = EmbedOptions(batch_size=batch, progress=False, tokens=tokens, patch_coverage=coverage)
    t0 = time.perf_counter()
    stats = run_engine(backend, sources, opts, sink)
    dt = time.perf_counter() - t0
    feats = np.concatenate([sink.features[i] for i in range(len(sources))])
    return feats, dt, stats


def model_only(backend, batches) -> float:
    t0 = time.perf_counter()
    for x, keep in batches:
        backend(x, keep)
    return time.perf_counter() - t0


def probe_f1(x: np.ndarray, y: np.ndarray, seeds) -> tuple[float, float]:
    from usjepa_fast.probe.linear import train_probe

    rng = np.random.default_rng(0)
    tr, va, te = [], [], []
    for c in np.unique(y):  # stratified 60 / 15 / 25
        idx = rng.permutation(np.flatnonzero(y == c))
        a, b = int(0.6 * len(idx)), int(0.75 * len(idx))
        tr += idx[:a].tolist()
        va += idx[a:b].tolist()
        te += idx[b:].tolist()
    heads = train_probe(x[tr], y[tr], x[va], y[va], int(y.max()) + 1, preset="paper", seeds=seeds, device="cpu")
    s = heads.evaluate(x[te], y[te]).summary("macro_f1")
    return 100.0 * s.mean, 100.0 * s.std


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="vit_small_patch16_224")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--images", type=int, default=320)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--patch-coverage", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from usjepa_fast.embed import open_backend
    from usjepa_fast.embed.sources import list_sources
    from usjepa_fast.masking import RaggedIndex

    header = machine_header()
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="embed_scan_tokens_"))
    t_start = t0 = time.perf_counter()
    make_clips(tmp / "clips", args.clips, args.frames, args.size, args.seed)
    labels = make_images(tmp / "images", args.images, args.size, args.seed)
    t_data = time.perf_counter() - t0
    backend = open_backend(args.model, "torch", "cpu", precision="fp32", threads=args.threads, img_size=args.size)
    clips = list_sources(tmp / "clips")
    images = list_sources(tmp / "images")
    cov = args.patch_coverage

    # speed: alternating rounds, end to end through the engine
    engine_ratios, t_all, t_scan, stats_scan = [], [], [], None
    engine_features(backend, clips[:1], "scan", args.batch_size, cov)  # warm-up (allocator, threads)
    for r in range(args.rounds):
        order = ("all", "scan") if r % 2 == 0 else ("scan", "all")
        secs = {}
        for mode in order:
            _, secs[mode], st = engine_features(backend, clips, mode, args.batch_size, cov)
            if mode == "scan":
                stats_scan = st
        t_all.append(secs["all"])
        t_scan.append(secs["scan"])
        engine_ratios.append(secs["all"] / secs["scan"])
    kept_fraction = stats_scan.tokens_kept / stats_scan.tokens_total
    frames = stats_scan.frames_embedded

    # speed: the encoder call alone, on the same frames (one clip's frames per batch, its own mask)
    from usjepa_fast.data.preprocess import preprocess_batch
    from usjepa_fast.data.scan_region import load_mask, scan_patch_index
    from usjepa_fast.data.video import get_decoder

    info = backend.info
    dec = get_decoder("pyav")
    batches_all, batches_scan = [], []
    for src in clips[:2]:
        gray = torch.from_numpy(np.stack([f.image for f in dec.frames(src.path)][: args.frames]))
        mask = load_mask(src.mask_path)
        masks = torch.from_numpy(mask)[None].expand(gray.shape[0], -1, -1)
        x = preprocess_batch(gray, masks, info.input_size, tuple(info.mean), tuple(info.std))
        idx = scan_patch_index(mask, info.input_size, info.patch_size, cov)
        batches_all.append((x, None))
        keep = RaggedIndex(idx.repeat(x.shape[0]), torch.full((x.shape[0],), idx.numel()))
        batches_scan.append((x, keep))
    model_ratios = []
    with torch.inference_mode():
        for _ in range(args.rounds):
            a = model_only(backend, batches_all)
            s = model_only(backend, batches_scan)
            model_ratios.append(a / s)

    # probe F1 and cosine on single frames
    f_all, _, _ = engine_features(backend, images, "all", args.batch_size, cov)
    f_scan, _, st_img = engine_features(backend, images, "scan", args.batch_size, cov)
    y = labels.astype(np.int64)
    seeds = (0, 1, 2, 3, 4)
    f1_all, f1_all_sd = probe_f1(f_all, y, seeds)
    f1_scan, f1_scan_sd = probe_f1(f_scan, y, seeds)
    cos = (f_all * f_scan).sum(1) / (np.linalg.norm(f_all, axis=1) * np.linalg.norm(f_scan, axis=1))
    img_fraction = st_img.tokens_kept / st_img.tokens_total

    speedup = statistics.median(engine_ratios)
    target = 0.8 / kept_fraction
    fps_all = frames / statistics.median(t_all)
    fps_scan = frames / statistics.median(t_scan)
    lines = header + [
        f"# {args.model} (random init) at {args.size} px, torch eager fp32, {args.threads} threads, batch "
        f"{args.batch_size}; {args.clips} convex-probe clips x {args.frames} frames; {args.images} fan images; "
        f"patch coverage {cov}; data generated in {t_data:.0f} s; the machine is shared with other engineers",
        "",
        "| figure | whole frame (--tokens all) | scan tokens (--tokens scan) | ratio / target |",
        "|---|---|---|---|",
        f"| patch tokens through the encoder (clips) | 100% | {100 * kept_fraction:.1f}% | |",
        f"| engine frames/s, median of {args.rounds} rounds | {fps_all:.1f} | {fps_scan:.1f} | "
        f"speedup {speedup:.2f}x (rounds {', '.join(f'{r:.2f}' for r in engine_ratios)}); target >= "
        f"0.8 / {kept_fraction:.3f} = {target:.2f}x |",
        f"| encoder call alone | | | speedup {statistics.median(model_ratios):.2f}x "
        f"(rounds {', '.join(f'{r:.2f}' for r in model_ratios)}) |",
        f"| probe macro F1 (images, {100 * img_fraction:.1f}% tokens kept), seeds 0-4 | {f1_all:.1f} ± "
        f"{f1_all_sd:.1f} | {f1_scan:.1f} ± {f1_scan_sd:.1f} | difference {f1_scan - f1_all:+.1f} points "
        "(target within 1) |",
        f"| cosine scan vs whole-frame features (images) | | | mean {cos.mean():.4f}, min {cos.min():.4f} |",
        "",
        f"# wall time {time.perf_counter() - t_start:.0f} s; load average at the end "
        + " ".join(f"{v:.2f}" for v in os.getloadavg()),
    ]
    print("\n".join(lines))
    result = {
        "model": args.model,
        "threads": args.threads,
        "frames": frames,
        "kept_fraction": round(kept_fraction, 4),
        "embed_scan_tokens_speedup": round(speedup, 3),
        "speedup_target": round(target, 3),
        "speedup_ok": bool(speedup >= target),
        "model_speedup": round(statistics.median(model_ratios), 3),
        "frames_per_s_all": round(fps_all, 2),
        "frames_per_s_scan": round(fps_scan, 2),
        "macro_f1_all": round(f1_all, 2),
        "macro_f1_all_std": round(f1_all_sd, 2),
        "macro_f1_scan": round(f1_scan, 2),
        "macro_f1_scan_std": round(f1_scan_sd, 2),
        "f1_within_1_point": bool(abs(f1_scan - f1_all) <= 1.0),
        "cosine_mean": round(float(cos.mean()), 4),
        "cosine_min": round(float(cos.min()), 4),
        "image_kept_fraction": round(img_fraction, 4),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
