"""Claim: `usfast synth` writes a few hundred physically simulated B-mode images in seconds.

The speckle model convolves every scatterer with the point-spread function; done per scatterer in
Python that is hopeless, done as one FFT convolution over the scatterer field it is milliseconds.
This script measures, in one run:

  (a) naive     - per-scatterer accumulation of the PSF in a Python loop (timed on a subset of the
                  scatterers and scaled to the full field: the loop cost is linear in their number);
  (b) fft       - the same RF field as ``synth.rf_lines`` computes it (one FFT convolution);
  (c) end to end- ``synthesize`` images/s (1 process and one per CPU) including tissue model,
                  envelope detection, log compression, scan conversion, overlays and PNG writing,
                  plus clip frames/s (render + H.264/VP9/MJPEG encode);
  (d) scan-region detection ms per 256-px frame (the data layer's other per-frame cost).

Target: 240 images of 256 px in <= 15 s on 2 CPU cores. The last output line is one JSON object.

    python benchmarks/synth_speed.py [--size 256] [--images 96]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def naive_rf(scat: np.ndarray, psf: np.ndarray, limit: int) -> tuple[np.ndarray, int]:
    """Accumulate the PSF scatterer by scatterer (the first ``limit`` scatterers)."""
    nz, nx = scat.shape
    hz, hx = psf.shape[0] // 2, psf.shape[1] // 2
    out = np.zeros((nz + 2 * hz, nx + 2 * hx), np.float32)
    done = 0
    for z in range(nz):
        for x in range(nx):
            if done >= limit:
                return out, done
            out[z : z + psf.shape[0], x : x + psf.shape[1]] += scat[z, x] * psf
            done += 1
    return out, done


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--clips", type=int, default=3)
    args = ap.parse_args()

    from scipy import signal

    from usjepa_fast.data import synth
    from usjepa_fast.data.scan_region import detect_scan_region

    size = args.size
    rng = np.random.default_rng(0)
    nz, nx = 2 * size, size
    psf = synth._psf(1.6, 1.2)
    scat = rng.standard_normal((nz, nx), dtype=np.float32)

    subset = 4000
    t0 = time.perf_counter()
    _, done = naive_rf(scat, psf, subset)
    naive_s = (time.perf_counter() - t0) * (nz * nx) / done

    reps = 10
    t0 = time.perf_counter()
    for _ in range(reps):
        signal.fftconvolve(scat, psf, mode="same")
    fft_s = (time.perf_counter() - t0) / reps

    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        synth.synthesize(Path(tmp) / "a", n_images=args.images, n_clips=0, image_size=size, workers=1)
        img_1 = args.images / (time.perf_counter() - t0)
        # CPU time does not depend on what else the machine runs: the contention-free estimate.
        cpu_per_image = (time.process_time() - c0) / args.images
        t0 = time.perf_counter()
        synth.synthesize(Path(tmp) / "b", n_images=args.images, n_clips=0, image_size=size, workers=cpus)
        img_n = args.images / (time.perf_counter() - t0)
        frames = 32
        t0 = time.perf_counter()
        synth.synthesize(
            Path(tmp) / "c", n_images=0, n_clips=args.clips, image_size=size, clip_frames=frames, workers=1
        )
        clip_fps = args.clips * frames / (time.perf_counter() - t0)

    test_frames = [synth.render_image(np.random.default_rng(i), i % 4, 256)[0] for i in range(16)]
    t0 = time.perf_counter()
    for f in test_frames:
        detect_scan_region(f)
    detect_ms = (time.perf_counter() - t0) / len(test_frames) * 1000

    per_240 = 240 / img_n
    print(f"# synth speed, {platform.processor() or platform.machine()}, {cpus} CPUs visible, image side {size}")
    print("| step | time | ratio |")
    print("|---|---|---|")
    print(f"| speckle RF field, per-scatterer Python loop (scaled) | {naive_s:.2f} s | 1.0x |")
    print(f"| speckle RF field, one FFT convolution | {fft_s * 1000:.1f} ms | {naive_s / fft_s:.0f}x |")
    print(f"| synthesize images, 1 process | {img_1:.1f} images/s | |")
    print(f"| synthesize images, {cpus} processes | {img_n:.1f} images/s | {img_n / img_1:.2f}x |")
    print(f"| 240 images ({cpus} processes, measured) | {per_240:.1f} s | target <= 15 s |")
    print(
        f"| CPU time per image | {cpu_per_image * 1000:.0f} ms | 240 on 2 idle cores: {240 * cpu_per_image / 2:.1f} s |"
    )
    print(f"| clips (render + encode), 1 process | {clip_fps:.1f} frames/s | |")
    print(f"| scan-region detection, 256 px frame | {detect_ms:.1f} ms | |")
    print(
        json.dumps(
            {
                "image_size": size,
                "cpus": cpus,
                "naive_rf_s": round(naive_s, 3),
                "fft_rf_ms": round(fft_s * 1000, 2),
                "fft_speedup": round(naive_s / fft_s, 1),
                "images_per_s_1proc": round(img_1, 2),
                "images_per_s_nproc": round(img_n, 2),
                "seconds_per_240_images": round(per_240, 2),
                "cpu_ms_per_image": round(cpu_per_image * 1000, 1),
                "seconds_per_240_images_2_idle_cores": round(240 * cpu_per_image / 2, 2),
                "clip_frames_per_s": round(clip_fps, 2),
                "scan_detect_ms": round(detect_ms, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
