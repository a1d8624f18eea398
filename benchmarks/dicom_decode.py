"""Claim: usfast reads a JPEG cine loop to gray frames faster than pydicom's defaults, in bounded memory.

Work: every frame of an ultrasound JPEG-baseline (YBR_FULL_422) cine loop -> gray ``(H, W)`` uint8.
In one run, on the same file:

  (a) pixel_array  - ``dcmread(path).pixel_array`` (the whole loop, RGB) then ``media.to_gray`` per
                     frame: what most scripts do;
  (b) iter_pixels  - pydicom 3's streaming ``pydicom.pixels.iter_pixels(path)`` (default plugin order,
                     YBR -> RGB) then ``to_gray``: pydicom's best configuration out of the box;
  (c) ceiling      - ``iter_pixels(path, raw=True, decoding_plugin="pillow")`` keeping the Y plane: the
                     fastest decode pydicom offers, no usfast code (what usfast should match);
  (d) usfast       - ``DicomDecoder().frames(path)`` (header allow-list, integrity check, per-frame decode
                     with Pillow first, Y plane as luma);
  (e) usfast fps   - the same with ``FrameSampling(fps=10)``: dropped frames are never decoded.

Reported: frames/s (wall and CPU time: the dev box is shared), peak Python-traced memory (numpy
buffers included) and the ratio to (b). Files: a synthetic 300-frame 640x480 loop written by
``dicom_write.write_us_dicom`` (speckle-like texture), and pydicom-data's real
``color3d_jpeg_baseline.dcm`` (120 frames, 640x480) when installed. Targets: (d) >= 2x (b) and within
15% of (c) in frames/s; (d) peak memory below one tenth of (a). The last output line is one JSON object.

    python benchmarks/dicom_decode.py [--frames 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np


def synthetic_loop(path: Path, n: int, h: int = 480, w: int = 640) -> Path:
    from scipy import ndimage

    from usjepa_fast.data.dicom_write import write_us_dicom

    rng = np.random.default_rng(0)
    field = ndimage.gaussian_filter(rng.rayleigh(1.0, (h, w + 4 * n)).astype(np.float32), (1.5, 0.8))
    field = np.clip(field / field.max() * 320, 0, 255).astype(np.uint8)
    frames = np.stack([field[:, 4 * t : 4 * t + w] for t in range(n)])  # the probe pans 4 px / frame
    frames[:, :40] = 0  # black header band, like a scanner's
    return write_us_dicom(path, frames, compression="jpeg", frame_time_ms=1000 / 30, cine_rate=30)


def method_pixel_array(path: Path) -> int:
    import pydicom

    from usjepa_fast.data.media import to_gray

    arr = pydicom.dcmread(path).pixel_array
    return sum(to_gray(frame).shape[0] > 0 for frame in arr)


def method_iter_pixels(path: Path) -> int:
    from pydicom.pixels import iter_pixels

    from usjepa_fast.data.media import to_gray

    return sum(to_gray(frame).shape[0] > 0 for frame in iter_pixels(path))


def method_ceiling(path: Path) -> int:
    from pydicom.pixels import iter_pixels

    return sum(
        np.ascontiguousarray(f[..., 0]).shape[0] > 0 for f in iter_pixels(path, raw=True, decoding_plugin="pillow")
    )


def method_usfast(path: Path, fps: float | None = None) -> int:
    from usjepa_fast.data.dicom import DicomDecoder
    from usjepa_fast.data.video import FrameSampling

    return sum(1 for _ in DicomDecoder().frames(path, FrameSampling(fps=fps)))


def measure(fn, path: Path, repeats: int) -> dict:
    n = fn(path)  # warm-up (imports, page cache)
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn(path)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    tracemalloc.start()
    fn(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"frames": n, "wall_s": min(walls), "cpu_s": min(cpus), "peak_mib": peak / 2**20}


def machine() -> tuple[str, str]:
    try:
        flags = next(
            line
            for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if line.startswith("Flags")
        )
    except (OSError, StopIteration):
        flags = "Flags: (lscpu unavailable)"
    have = [f for f in ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2") if f in flags.split()]
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return f"lscpu flags of note: {', '.join(have) or 'none'} (AMX {'yes' if 'amx_tile' in have else 'no'})", load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    flags, load = machine()
    files: dict[str, Path] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files[f"synthetic {args.frames}x640x480"] = synthetic_loop(Path(tmp) / "loop.dcm", args.frames)
        try:
            from pydicom.data import get_testdata_file

            real = get_testdata_file("color3d_jpeg_baseline.dcm", download=False)
            if real:
                files["pydicom-data color3d_jpeg_baseline (120x640x480)"] = Path(real)
        except ImportError:
            pass
        methods = {
            "(a) pixel_array + to_gray": method_pixel_array,
            "(b) iter_pixels + to_gray": method_iter_pixels,
            "(c) ceiling: iter_pixels raw, pillow, Y": method_ceiling,
            "(d) usfast DicomDecoder.frames": method_usfast,
            "(e) usfast, fps=10 sampling": lambda p: method_usfast(p, fps=10.0),
        }
        results: dict[str, dict[str, dict]] = {}
        for label, path in files.items():
            results[label] = {name: measure(fn, path, args.repeats) for name, fn in methods.items()}
    print(f"# benchmarks/dicom_decode.py, {platform.machine()}, {os.cpu_count()} CPUs visible")
    print(f"# {flags}; load average at start: {load} (shared box: wall figures contended, CPU figures less so)")
    summary: dict = {"load_average": load}
    for label, rows in results.items():
        base = rows["(b) iter_pixels + to_gray"]
        print(f"\n{label}\n| method | frames | frames/s wall | frames/s CPU | vs (b), CPU | loop ms CPU | peak MiB |")
        print("|---|---|---|---|---|---|---|")
        for name, r in rows.items():
            fps_wall, fps_cpu = r["frames"] / r["wall_s"], r["frames"] / r["cpu_s"]
            ratio = fps_cpu / (base["frames"] / base["cpu_s"])
            loop_ms = 1000 * r["cpu_s"]
            print(
                f"| {name} | {r['frames']} | {fps_wall:.0f} | {fps_cpu:.0f} | {ratio:.2f}x | {loop_ms:.0f} "
                f"| {r['peak_mib']:.1f} |"
            )
        d, c, a = (
            rows["(d) usfast DicomDecoder.frames"],
            rows["(c) ceiling: iter_pixels raw, pillow, Y"],
            rows["(a) pixel_array + to_gray"],
        )
        summary[label] = {
            "usfast_fps_cpu": round(d["frames"] / d["cpu_s"], 1),
            "iter_pixels_fps_cpu": round(base["frames"] / base["cpu_s"], 1),
            "speedup_vs_iter_pixels": round((d["frames"] / d["cpu_s"]) / (base["frames"] / base["cpu_s"]), 2),
            "efficiency_vs_ceiling": round((d["frames"] / d["cpu_s"]) / (c["frames"] / c["cpu_s"]), 3),
            "peak_mib_usfast": round(d["peak_mib"], 1),
            "peak_mib_pixel_array": round(a["peak_mib"], 1),
            "fps10_loop_ms_cpu": round(1000 * rows["(e) usfast, fps=10 sampling"]["cpu_s"], 1),
            "full_loop_ms_cpu": round(1000 * d["cpu_s"], 1),
        }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
