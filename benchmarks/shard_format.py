"""Claim: raw uint8 frames in memory-mappable parts (``data.shards``) beat WebDataset-style tar shards
of PNG members for training input, at ~3x their size: random access from the local page cache and
sequential streaming both cost no decode.

Formats, on the same frames (real sample clips and a synthetic clip, stored at 256 px short side):

  raw-pread   the usfast format: one ``.bin`` of raw blocks + offsets; a frame = one ``os.preadv``
  raw-mmap    the same file through ``np.memmap`` slicing (+ copy)
  zlib-pread  each frame zlib-compressed (level 1) in the same layout: a middle ground
  tar-png     WebDataset layout: ``KEY.png`` members in a tar; random access through a member offset
              index, sequential through ``tarfile`` streaming; PNG decode by Pillow

Per format: bytes per 1,000 frames; random access (shuffled order) and sequential streaming in
frames per CPU-second (one process, warm page cache: a local NVMe serves 10^5+ such reads/s; from
object storage the sequential read is network-bound, so bytes/frame sets frames/s per GB/s). The
last line is one JSON object.

    python benchmarks/shard_format.py [--frames 400] [--repeats 3] [--real DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from _machine import machine_header
from PIL import Image

REAL = Path("/work/shared/data/real-sample/clips")


def collect_frames(n: int, real: Path | None) -> list[np.ndarray]:
    """Up to ``n`` frames at 256 px short side: real clips first (every 2nd frame), then synthetic."""
    from usjepa_fast.data.prepare import storage_shape, store_frame
    from usjepa_fast.data.synth import render_clip
    from usjepa_fast.data.video import FrameSampling, PyAVDecoder

    frames: list[np.ndarray] = []
    if real is not None and real.is_dir():
        for path in sorted(real.iterdir()):
            for f in PyAVDecoder().frames(path, FrameSampling(every_k=2)):
                frames.append(store_frame(f.image, storage_shape(*f.image.shape, 256, 1024)))
            if len(frames) >= n // 2:
                break
    synth, _, _ = render_clip(np.random.default_rng(0), 1, 320, max(4, n - len(frames)), None, "fan")
    frames += [store_frame(f, storage_shape(*f.shape, 256, 1024)) for f in synth]
    return frames[:n]


def cpu_rate(fn, n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        c0 = time.process_time()
        fn()
        best = min(best, time.process_time() - c0)
    return n / max(best, 1e-9)


def write_flat(path: Path, blobs: list[bytes]) -> list[tuple[int, int]]:
    offsets, pos = [], 0
    with open(path, "wb") as fh:
        for b in blobs:
            fh.write(b)
            offsets.append((pos, len(b)))
            pos += len(b)
    return offsets


def png_bytes(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def measure(frames: list[np.ndarray], work: Path, repeats: int) -> list[dict]:
    n = len(frames)
    shapes = [f.shape for f in frames]
    order = np.random.default_rng(0).permutation(n)
    rows = []

    # raw: the usfast layout
    raw = work / "raw.bin"
    offs = write_flat(raw, [f.tobytes() for f in frames])
    fd = os.open(raw, os.O_RDONLY)

    def raw_random() -> None:
        for i in order:
            out = np.empty(shapes[i], np.uint8)
            os.preadv(fd, [out], offs[i][0])

    mm = np.memmap(raw, dtype=np.uint8, mode="r")

    def mmap_random() -> None:
        for i in order:
            o, k = offs[i]
            np.array(mm[o : o + k]).reshape(shapes[i])

    def raw_stream() -> None:
        with open(raw, "rb", buffering=8 << 20) as fh:
            for sh in shapes:
                np.frombuffer(fh.read(sh[0] * sh[1]), np.uint8).reshape(sh)

    size = raw.stat().st_size
    rows.append(
        dict(
            format="raw-pread",
            bytes=size,
            random=cpu_rate(raw_random, n, repeats),
            stream=cpu_rate(raw_stream, n, repeats),
        )
    )
    rows.append(
        dict(format="raw-mmap", bytes=size, random=cpu_rate(mmap_random, n, repeats), stream=rows[-1]["stream"])
    )

    # zlib-1 per frame, same layout
    zpath = work / "zlib.bin"
    zoffs = write_flat(zpath, [zlib.compress(f.tobytes(), 1) for f in frames])
    zfd = os.open(zpath, os.O_RDONLY)

    def zlib_random() -> None:
        for i in order:
            o, k = zoffs[i]
            np.frombuffer(zlib.decompress(os.pread(zfd, k, o)), np.uint8).reshape(shapes[i])

    def zlib_stream() -> None:
        with open(zpath, "rb", buffering=8 << 20) as fh:
            for (_, k), sh in zip(zoffs, shapes, strict=True):
                np.frombuffer(zlib.decompress(fh.read(k)), np.uint8).reshape(sh)

    rows.append(
        dict(
            format="zlib-pread",
            bytes=zpath.stat().st_size,
            random=cpu_rate(zlib_random, n, repeats),
            stream=cpu_rate(zlib_stream, n, repeats),
        )
    )

    # WebDataset-style tar of PNG members
    tpath = work / "shard.tar"
    with tarfile.open(tpath, "w") as tar:
        for i, f in enumerate(frames):
            data = png_bytes(f)
            info = tarfile.TarInfo(f"{i:06d}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with tarfile.open(tpath, "r") as tar:
        members = {int(m.name.split(".")[0]): (m.offset_data, m.size) for m in tar.getmembers()}
    tfd = os.open(tpath, os.O_RDONLY)

    def tar_random() -> None:
        for i in order:
            o, k = members[int(i)]
            np.asarray(Image.open(io.BytesIO(os.pread(tfd, k, o))))

    def tar_stream() -> None:
        with tarfile.open(tpath, "r|") as tar:  # streaming mode: what WebDataset does over HTTP
            for m in tar:
                np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read())))

    rows.append(
        dict(
            format="tar-png",
            bytes=tpath.stat().st_size,
            random=cpu_rate(tar_random, n, repeats),
            stream=cpu_rate(tar_stream, n, repeats),
        )
    )
    for f in (fd, zfd, tfd):
        os.close(f)
    for r in rows:
        r["kb_per_frame"] = r["bytes"] / n / 1024
        r["mb_per_1000"] = r["bytes"] / n * 1000 / 2**20
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--real", type=Path, default=REAL if REAL.is_dir() else None)
    args = ap.parse_args()
    for line in machine_header():
        print(line)
    frames = collect_frames(args.frames, args.real)
    mean_shape = np.mean([f.shape for f in frames], axis=0)
    print(
        f"# {len(frames)} frames at 256 px short side (mean {mean_shape[0]:.0f} x {mean_shape[1]:.0f}); "
        f"real clips: {args.real or 'none'}; CPU-time rates, best of {args.repeats}, warm page cache"
    )
    with tempfile.TemporaryDirectory(prefix="usfast-shardfmt-") as tmp:
        rows = measure(frames, Path(tmp), args.repeats)
    print(
        "| format | KiB/frame | MB per 1,000 frames | random access (frames/CPU-s) | sequential stream (frames/CPU-s) |"
    )
    print("|---|---|---|---|---|")
    for r in rows:
        sizes = f"{r['kb_per_frame']:.1f} | {r['mb_per_1000']:.1f}"
        print(f"| {r['format']} | {sizes} | {r['random']:,.0f} | {r['stream']:,.0f} |")
    by = {r["format"]: r for r in rows}
    print(
        json.dumps(
            {
                "frames": len(frames),
                "raw_random_per_cpu_s": round(by["raw-pread"]["random"]),
                "raw_mmap_random_per_cpu_s": round(by["raw-mmap"]["random"]),
                "tar_png_random_per_cpu_s": round(by["tar-png"]["random"]),
                "raw_stream_per_cpu_s": round(by["raw-pread"]["stream"]),
                "tar_png_stream_per_cpu_s": round(by["tar-png"]["stream"]),
                "raw_vs_tar_png_random": round(by["raw-pread"]["random"] / by["tar-png"]["random"], 1),
                "raw_mb_per_1000": round(by["raw-pread"]["mb_per_1000"], 1),
                "tar_png_mb_per_1000": round(by["tar-png"]["mb_per_1000"], 1),
                "zlib_mb_per_1000": round(by["zlib-pread"]["mb_per_1000"], 1),
                "size_ratio_raw_vs_png": round(by["raw-pread"]["bytes"] / by["tar-png"]["bytes"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
