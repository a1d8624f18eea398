"""Claim: one clip scan-region rule (frames spread over the clip, blank/dark frames dropped) finds the
region where the old rules fail: first-frame detection (embed, ``usfast masks``) and the first 64 frames
(training) break on clips that start black, fade in, or open with a title card.

Synthetic drifting-probe clips (``synth.render_clip``, true mask known) are encoded to H.264 with the
simulator's writer and decoded back; each clip comes in variants:

  clean       as rendered
  black       the first 40% of the frames black (a recording that starts before the probe touches)
  fade        the first 40% faded in from black
  black_ends  black lead (40%) and tail (20%)
  title       the first 40% a title card (text on black)

Rules: ``first`` = detect on frame 0 (old embed/preview), ``first64`` = the first 64 frames (old
training), ``spread k`` = k frames at ``spread_positions`` (``+drop`` with blank/dark frames dropped, the
new ``detect_clip_region``). Reports mean and min IoU with the true mask per variant and ms per clip.
The last output line is one JSON object.

    python benchmarks/clip_scan_region.py [--clips 8] [--frames 150] [--size 128]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from _machine import machine_header

VARIANTS = ("clean", "black", "fade", "black_ends", "title")


def variants(frames: np.ndarray) -> dict[str, np.ndarray]:
    n = len(frames)
    lead, tail = int(0.4 * n), int(0.2 * n)
    out = {"clean": frames}
    b = frames.copy()
    b[:lead] = 0
    out["black"] = b
    f = frames.astype(np.float32)
    f[:lead] *= np.linspace(0.0, 1.0, lead)[:, None, None]
    out["fade"] = np.rint(f).astype(np.uint8)
    e = b.copy()
    e[n - tail :] = 0
    out["black_ends"] = e
    t = b.copy()
    h, w = frames.shape[1:]
    t[:lead, h // 4 : h // 4 + h // 8, w // 8 : w - w // 8] = 200  # a bar of "text"
    out["title"] = t
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()

    from usjepa_fast.data import synth
    from usjepa_fast.data.clips import MASK_FRAMES, spread_positions
    from usjepa_fast.data.scan_region import detect_clip_region, detect_scan_region, mask_iou
    from usjepa_fast.data.video import PyAVDecoder

    header = machine_header()
    rules = {
        "first": lambda fr: detect_scan_region(fr[0]),
        "first64": lambda fr: detect_scan_region(fr[:64]),
    }
    for k in (4, 8, 16, 32):
        rules[f"spread {k}"] = lambda fr, k=k: detect_scan_region(fr[spread_positions(len(fr), k)])
        rules[f"spread {k}+drop"] = lambda fr, k=k: detect_clip_region(fr[spread_positions(len(fr), k)])
    iou = {r: {v: [] for v in VARIANTS} for r in rules}
    ms = {r: 0.0 for r in rules}
    dec = PyAVDecoder()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.clips):
            rng = np.random.default_rng([2024, i])
            frames, truth, _ = synth.render_clip(rng, i % 4, args.size, args.frames, None, ("fan", "linear")[i % 2])
            for name, clip in variants(frames).items():
                path = Path(tmp) / f"c{i}_{name}.mp4"
                synth.write_video(clip, path, fps=15)
                decoded = np.stack([f.image for f in dec.frames(path)])  # (T, H, W) as every reader sees it
                for rule, fn in rules.items():
                    t0 = time.perf_counter()
                    found = fn(decoded)
                    ms[rule] += (time.perf_counter() - t0) * 1000
                    iou[rule][name].append(mask_iou(found, truth))
    n_runs = args.clips * len(VARIANTS)
    print("\n".join(header))
    print(f"# {args.clips} synthetic clips x {args.frames} frames at {args.size} px, H.264", end="")
    print(f"; new rule = spread {MASK_FRAMES}+drop")
    print("| rule | " + " | ".join(VARIANTS) + " | ms/clip |")
    print("|---|" + "---|" * (len(VARIANTS) + 1))
    summary = {}
    for rule in rules:
        cells = [f"{np.mean(iou[rule][v]):.3f} (min {np.min(iou[rule][v]):.3f})" for v in VARIANTS]
        print(f"| {rule} | " + " | ".join(cells) + f" | {ms[rule] / n_runs:.0f} |")
        summary[rule] = {v: round(float(np.mean(iou[rule][v])), 4) for v in VARIANTS}
        summary[rule]["min"] = round(float(min(np.min(iou[rule][v]) for v in VARIANTS)), 4)
    new = f"spread {MASK_FRAMES}+drop"
    print(
        json.dumps(
            {
                "clips": args.clips,
                "frames": args.frames,
                "size": args.size,
                "new_rule": new,
                "new_rule_min_iou": summary[new]["min"],
                "first_frame_min_iou": summary["first"]["min"],
                "first64_min_iou": summary["first64"]["min"],
                "iou": summary,
            }
        )
    )


if __name__ == "__main__":
    main()
