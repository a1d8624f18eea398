"""Claim: a clip's frame list from decoding (true counts, never metadata) costs less than one read of the
clip, and nothing once cached; its scan mask from 16 spread frames costs about one more read, once.

Measured per clip, in one run, on synthetic 300-frame clips (H.264 .mp4, VP9 .webm, MJPEG .avi):

  (a) metadata   the old index: demux packet timestamps, no decoding (wrong for edit lists/truncation)
  (b) read       decode every frame to gray numpy (``PyAVDecoder.frames``): what one epoch over the clip
                 costs a reader, and what a decode-based index costs if it converts pixels
  (c) index      ``clip_index`` cold: decode without converting pixels + demux count + JSON entry
  (d) cached     ``clip_index`` warm (entry in the cache dir)
  (e) mask       ``scan_mask`` cold: one decoding pass keeping 16 spread frames + clip detection
  (f) mask warm  ``scan_mask`` from the cache

Ratios are against (b) in the same run. CPU time (``process_time``) is reported next to wall time
because the dev box is shared. ``--folder`` adds clips of your own (for a local check only). The last
output line is one JSON object.

    python benchmarks/clip_index.py [--clips 3] [--frames 300] [--size 256] [--repeats 3] [--folder DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _machine import machine_header


def metadata_index(path: Path) -> int:
    """The pre-decoding index: packet timestamps from the demuxer."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return len([p.pts for p in container.demux(stream) if p.size and p.pts is not None])


def timed(fn, repeats: int) -> tuple[float, float]:
    """Best (wall, cpu) seconds over ``repeats`` calls."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best_wall, best_cpu


def measure(path: Path, work: Path, repeats: int, dec) -> dict:
    """All timings of one clip; every cold call gets a fresh cache dir under ``work``."""
    from usjepa_fast.data.clips import clip_index, scan_mask

    fresh = (work / f"cold{i}" for i in range(10_000))
    warm = work / "warm"
    meta = timed(lambda: metadata_index(path), repeats)
    read = timed(lambda: sum(1 for _ in dec.frames(path)), repeats)
    index = timed(lambda: clip_index(path, cache_dir=next(fresh)), repeats)
    info = clip_index(path, cache_dir=warm)
    cached = timed(lambda: clip_index(path, cache_dir=warm), repeats)
    mask = timed(lambda: scan_mask(path, cache_dir=next(fresh), mode="detect"), repeats)
    scan_mask(path, cache_dir=warm, mode="detect")
    mask_warm = timed(lambda: scan_mask(path, cache_dir=warm, mode="detect"), repeats)
    return {
        "clip": path.name,
        "codec": dec.probe(path).codec,
        "frames": info.num_frames,
        "listed": info.listed,
        "metadata_ms": meta[0] * 1e3,
        "read_ms": read[0] * 1e3,
        "read_cpu_ms": read[1] * 1e3,
        "index_ms": index[0] * 1e3,
        "index_cpu_ms": index[1] * 1e3,
        "cached_ms": cached[0] * 1e3,
        "mask_ms": mask[0] * 1e3,
        "mask_cpu_ms": mask[1] * 1e3,
        "mask_warm_ms": mask_warm[0] * 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=3)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--folder", type=Path, default=None, help="also measure the clips in this folder")
    args = ap.parse_args()

    from usjepa_fast.data.clips import MASK_FRAMES
    from usjepa_fast.data.media import list_media
    from usjepa_fast.data.synth import synthesize
    from usjepa_fast.data.video import PyAVDecoder

    header = machine_header()
    tmp = Path(tempfile.mkdtemp(prefix="usfast-clip-index-"))
    synthesize(tmp / "synth", n_images=0, n_clips=args.clips, image_size=args.size, seed=0, clip_frames=args.frames)
    files = list_media(tmp / "synth" / "clips", ("video",))
    if args.folder is not None:
        files += list_media(args.folder, ("video",))
    dec = PyAVDecoder()
    rows = [measure(path, tmp / f"c{n}", args.repeats, dec) for n, path in enumerate(files)]

    print("\n".join(header))
    print(
        f"# {args.clips} synthetic clips x {args.frames} frames at {args.size} px"
        + (f" + {args.folder}" if args.folder else "")
        + f"; best of {args.repeats}; mask = {MASK_FRAMES} spread frames"
    )
    print("| clip | codec | frames | metadata | read (b) | index cold (c) | c/b | cached (d) |", end="")
    print(" mask cold (e) | e/b | mask warm |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['clip'][:34]} | {r['codec']} | {r['frames']} | {r['metadata_ms']:.1f} ms | {r['read_ms']:.0f} ms "
            f"(cpu {r['read_cpu_ms']:.0f}) | {r['index_ms']:.0f} ms (cpu {r['index_cpu_ms']:.0f}) | "
            f"{r['index_ms'] / r['read_ms']:.2f} | {r['cached_ms']:.2f} ms | {r['mask_ms']:.0f} ms "
            f"(cpu {r['mask_cpu_ms']:.0f}) | {r['mask_ms'] / r['read_ms']:.2f} | {r['mask_warm_ms']:.1f} ms |"
        )
    tot = {k: sum(r[k] for r in rows) for k in rows[0] if k.endswith("_ms")}
    frames = sum(r["frames"] for r in rows)
    print(
        f"| all ({len(rows)} clips) | | {frames} | {tot['metadata_ms']:.0f} ms | {tot['read_ms']:.0f} ms | "
        f"{tot['index_ms']:.0f} ms | {tot['index_ms'] / tot['read_ms']:.2f} | {tot['cached_ms']:.1f} ms | "
        f"{tot['mask_ms']:.0f} ms | {tot['mask_ms'] / tot['read_ms']:.2f} | {tot['mask_warm_ms']:.1f} ms |"
    )
    print(
        json.dumps(
            {
                "clips": len(rows),
                "frames": frames,
                "index_ms_per_frame": round(tot["index_ms"] / frames, 3),
                "index_vs_read": round(tot["index_ms"] / tot["read_ms"], 3),
                "index_cpu_vs_read_cpu": round(tot["index_cpu_ms"] / tot["read_cpu_ms"], 3),
                "cached_ms_per_clip": round(tot["cached_ms"] / len(rows), 3),
                "mask_vs_read": round(tot["mask_ms"] / tot["read_ms"], 3),
                "mask_warm_ms_per_clip": round(tot["mask_warm_ms"] / len(rows), 3),
                "metadata_ms_per_clip": round(tot["metadata_ms"] / len(rows), 3),
            }
        )
    )


if __name__ == "__main__":
    main()
