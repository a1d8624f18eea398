"""Claim: a prepared corpus (``usfast prepare``) delivers >= 20x the training images per CPU core of a raw
video folder read the way the trainer reads it today, and 12 CPU cores per GPU feed >= 2,000 images/s.

Measured per access path, in one run, as images per CPU-second of the loading process (``process_time``,
FFmpeg's threads included), on the same clips:

  (a) video, shuffled   ``VideoFrameDataset`` + a random permutation of (clip, frame) items: what the
                        trainer's sampler does today (the dataset keeps 2 decoded clips; a miss decodes
                        the whole clip)
  (b) video, clip-aware a sampler that shuffles clips and reads ``--frames-per-visit`` frames of one
                        clip per visit (``data.sampler.CorpusSampler``'s clip mode, what the trainer
                        uses with ``data.frames_per_visit``): one decode serves a visit
  (c) prepared          ``PreparedCorpus(transform=None)`` in random order + ``collate_frames``: bytes
                        only, batches of 256 padded uint8 frames (the GPU then runs
                        ``preprocess_train_batch`` next to the step)

(a)-(c) read items without preprocessing, so (a) and (b) are their cheapest form; what preprocessing
costs where is measured apart: ``Preprocessor(train)`` per item on the CPU, and the batched
``preprocess_train_batch`` on the CPU (on a GPU it is a few small matmuls per batch; not measured here).
Also: ``usfast prepare`` frames per CPU-second (scan-region detection included: the synthetic clips have
no sidecar masks) and the corpus size per 1,000 frames.

Clips: ``--clips`` synthetic H.264 clips of ``--frames`` frames at 640x480 (the simulator's 480-px fan /
linear B-mode, ``frames // 3`` rendered frames played forward and back, on a 640-wide black canvas),
cached in ``--work``; plus the real sample clips of ``--real`` when that folder exists (never copied).
The last output line is one JSON object.

    python benchmarks/train_input.py [--clips 8] [--frames 300] [--samples 16] [--visits 3] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from _machine import machine_header

REAL = Path("/work/shared/data/real-sample/clips")
BATCH = 256


def make_clips(folder: Path, n: int, frames: int, seed: int = 0) -> list[Path]:
    """``n`` synthetic 640x480 H.264 clips of ``frames`` frames (cached: existing files are kept)."""
    from usjepa_fast.data.synth import render_clip, write_video

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"synth_{i:02d}.mp4"
        paths.append(path)
        if path.is_file():
            continue
        unique = max(4, frames // 3)
        rendered, _, _ = render_clip(
            np.random.default_rng([seed, i]), i % 4, 480, unique, None, ("fan", "linear")[i % 2]
        )
        bounce = np.concatenate([np.arange(unique), np.arange(unique - 2, 0, -1)])  # forward, then back
        order = np.resize(bounce, frames)
        canvas = np.pad(rendered, ((0, 0), (0, 0), (80, 80)))  # (u, 480, 640): black sides
        tmp = path.with_name(f".{path.name}.tmp.mp4")
        write_video(canvas[order], tmp, fps=30)
        os.replace(tmp, path)
    return paths


def cpu_timed(fn) -> tuple[float, float, object]:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def video_dataset(folder: Path, cache: Path):
    """A fresh ``VideoFrameDataset`` (no decoded clip cached) with its clip indexes and masks warm."""
    from usjepa_fast.data.folders import VideoFrameDataset

    ds = VideoFrameDataset(folder, cache_dir=cache, on_error="skip")
    for path in ds.files:
        ds._file_mask(path)  # the trainer memoises a clip's mask per worker: not a per-sample cost
    return ds


def measure_video(folder: Path, cache: Path, n_samples: int, visits: int, k: int, seed: int) -> dict:
    ds = video_dataset(folder, cache)
    order = np.random.default_rng(seed).permutation(len(ds))[:n_samples]
    wall_a, cpu_a, _ = cpu_timed(lambda: [ds[int(i)] for i in order])
    ds = video_dataset(folder, cache)
    clip_of = np.asarray([fid for fid, _, _ in ds.index])
    from usjepa_fast.data.sampler import CorpusSampler

    sampler = CorpusSampler([len(clip_of)], cap=None, seed=seed, clips=[clip_of], frames_per_visit=k)
    items, lengths = sampler.member_visits(0, 0)  # the trainer's clip-aware epoch of this member
    picked = items[: int(lengths[:visits].sum())]
    wall_b, cpu_b, _ = cpu_timed(lambda: [ds[int(i)] for i in picked])
    return {
        "items": len(ds),
        "clips": len(ds.files),
        "a_images": len(order),
        "a_cpu": cpu_a,
        "a_wall": wall_a,
        "b_images": len(picked),
        "b_cpu": cpu_b,
        "b_wall": wall_b,
    }


def measure_prepare(folder: Path, out: Path, cache: Path) -> dict:
    from usjepa_fast.data.prepare import prepare_corpus

    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache / "scan_masks", ignore_errors=True)  # detection is part of a first prepare
    s = prepare_corpus([folder], out, storage_size=256, workers=1, cache_dir=cache)
    on_disk = sum(p.stat().st_size for p in (out / "shards").iterdir())
    return {
        "frames": s.frames,
        "cpu": s.cpu_seconds,
        "wall": s.seconds,
        "bytes": on_disk,
        "unreadable": len(s.unreadable),
    }


def measure_prepared(corpus: Path, n: int, seed: int) -> dict:
    from usjepa_fast.data.prepared import PreparedCorpus, collate_frames

    pc = PreparedCorpus(corpus)
    order = np.random.default_rng(seed).permutation(len(pc))
    order = np.resize(order, max(n, len(order)))[: max(n, BATCH)]

    def run() -> list:
        return [collate_frames([pc[int(i)] for i in order[s : s + BATCH]]) for s in range(0, len(order), BATCH)]

    run()  # first touch: page cache and mask LRU warm, as in a running epoch
    wall, cpu, batches = cpu_timed(run)
    return {"images": len(order), "cpu": cpu, "wall": wall, "batch": batches[0], "corpus": pc}


def measure_preprocessing(pc, batch: dict, seed: int) -> dict:
    from usjepa_fast.data.preprocess import PreprocessConfig, Preprocessor, preprocess_train_batch

    cfg = PreprocessConfig(image_size=224, train=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(seed)
        preprocess_train_batch(batch["frames"][:8], batch["masks"][:8], batch["sizes"][:8], cfg, generator=g)
        _, cpu_gpu_path, _ = cpu_timed(
            lambda: preprocess_train_batch(batch["frames"], batch["masks"], batch["sizes"], cfg, generator=g)
        )
        pp = Preprocessor(cfg)
        items = [pc.read(i) for i in range(min(64, len(pc)))]
        _, cpu_item, _ = cpu_timed(lambda: [pp(gray, mask, generator=g) for gray, mask in items])
    finally:
        torch.set_num_threads(threads)
    return {"batch_per_cpu_s": len(batch["frames"]) / cpu_gpu_path, "item_per_cpu_s": len(items) / cpu_item}


def run_source(name: str, folder: Path, work: Path, args) -> dict:
    cache = work / "cache"
    prep = measure_prepare(folder, work / f"corpus-{name}", cache)
    video = measure_video(folder, cache, args.samples, args.visits, args.frames_per_visit, args.seed)
    prepared = measure_prepared(work / f"corpus-{name}", args.prepared_images, args.seed)
    pre = measure_preprocessing(prepared["corpus"], prepared["batch"], args.seed)
    rate = lambda n, c: n / c if c > 0 else float("inf")  # noqa: E731
    return {
        "name": name,
        "clips": video["clips"],
        "frames": video["items"],
        "a": rate(video["a_images"], video["a_cpu"]),
        "b": rate(video["b_images"], video["b_cpu"]),
        "c": rate(prepared["images"], prepared["cpu"]),
        "a_n": video["a_images"],
        "b_n": video["b_images"],
        "c_n": prepared["images"],
        "prepare_fps_core": rate(prep["frames"], prep["cpu"]),
        "mb_per_1000": prep["bytes"] / max(1, prep["frames"]) * 1000 / 2**20,
        "prepare_unreadable": prep["unreadable"],
        "pp_batch_cpu": pre["batch_per_cpu_s"],
        "pp_item_cpu": pre["item_per_cpu_s"],
        "mean_shape": prepared["corpus"].item_shape.mean(axis=0).round().astype(int).tolist(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--samples", type=int, default=16, help="(a): shuffled items read")
    ap.add_argument("--visits", type=int, default=3, help="(b): clip visits read")
    ap.add_argument("--frames-per-visit", type=int, default=16)
    ap.add_argument("--prepared-images", type=int, default=4 * BATCH)
    ap.add_argument("--cores-per-gpu", type=int, default=12)
    ap.add_argument("--target", type=float, default=2000.0, help="images/s one GPU's step consumes")
    ap.add_argument("--real", type=Path, default=REAL if REAL.is_dir() else None)
    ap.add_argument("--work", type=Path, default=Path("/tmp/usfast-bench-train-input"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ.setdefault("USFAST_CACHE_DIR", str(args.work / "cache"))
    for line in machine_header():
        print(line)
    synth_dir = args.work / f"synth-{args.clips}x{args.frames}"
    make_clips(synth_dir, args.clips, args.frames, args.seed)
    rows = [run_source("synthetic", synth_dir, args.work, args)]
    if args.real is not None and args.real.is_dir():
        rows.append(run_source("real", args.real, args.work, args))
    print(
        f"# (a) {args.samples} shuffled items, (b) {args.visits} visits x {args.frames_per_visit} frames, "
        f"(c) {args.prepared_images} items in batches of {BATCH}; images per CPU-second of the loading process"
    )
    print(
        "| source | clips | frames | stored (mean h x w) | (a) video shuffled | (b) clip-aware | (c) prepared | c/a |",
        end="",
    )
    print(" c/b |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {r['clips']} | {r['frames']} | {r['mean_shape'][0]} x {r['mean_shape'][1]} | "
            f"{r['a']:.1f} | {r['b']:.1f} | {r['c']:,.0f} | {r['c'] / r['a']:,.0f}x | {r['c'] / r['b']:,.0f}x |"
        )
    head = [
        "source",
        "usfast prepare (frames/CPU-s)",
        "MB per 1,000 frames",
        "Preprocessor(train) per item (img/CPU-s)",
    ]
    print("| " + " | ".join([*head, "preprocess_train_batch on 1 CPU thread (img/s)"]) + " |")
    print("|---|---|---|---|---|")
    for r in rows:
        cells = [r["name"], f"{r['prepare_fps_core']:.0f}", f"{r['mb_per_1000']:.1f}", f"{r['pp_item_cpu']:.0f}"]
        print("| " + " | ".join([*cells, f"{r['pp_batch_cpu']:.0f}"]) + " |")
    s = rows[0]
    node = s["c"] * args.cores_per_gpu
    result = {
        "prepared_vs_video_speedup": round(s["c"] / s["a"], 1),
        "prepared_vs_clip_aware_speedup": round(s["c"] / s["b"], 1),
        "clip_aware_vs_video_speedup": round(s["b"] / s["a"], 1),
        "video_images_per_s_per_core": round(s["a"], 2),
        "clip_aware_images_per_s_per_core": round(s["b"], 1),
        "prepared_images_per_s_per_core": round(s["c"]),
        "cores_per_gpu_assumed": args.cores_per_gpu,
        "prepared_node_images_per_s": round(node),
        "feeds_target": bool(node >= args.target),
        "prepare_frames_per_s_per_core": round(s["prepare_fps_core"], 1),
        "corpus_mb_per_1000_frames": round(s["mb_per_1000"], 1),
        "cpu_preprocessor_images_per_s_per_core": round(s["pp_item_cpu"]),
    }
    if len(rows) > 1:
        r = rows[1]
        result |= {
            "real_prepared_vs_video_speedup": round(r["c"] / r["a"], 1),
            "real_prepared_images_per_s_per_core": round(r["c"]),
            "real_prepare_frames_per_s_per_core": round(r["prepare_fps_core"], 1),
            "real_corpus_mb_per_1000_frames": round(r["mb_per_1000"], 1),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
