"""Helpers for the data-layer tests: tiny synthetic videos in every container."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# suffix -> (codec, pixel format) for PyAV encoding of test clips
CONTAINERS = {
    ".mp4": ("libx264", "yuv420p"),
    ".avi": ("mpeg4", "yuv420p"),
    ".mov": ("libx264", "yuv420p"),
    ".mkv": ("libx264", "yuv420p"),
    ".webm": ("libvpx-vp9", "yuv420p"),
    ".gif": ("gif", "rgb8"),
}


def moving_frames(n: int = 12, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """``(n, h, w)`` uint8 frames: a textured rectangle region that shifts by 1 px per frame on black."""
    rng = np.random.default_rng(seed)
    tex = rng.integers(40, 220, size=(h, w + n), dtype=np.uint8)
    frames = np.zeros((n, h, w), np.uint8)
    for t in range(n):
        frames[t, 6 : h - 6, 8 : w - 8] = tex[6 : h - 6, 8 + t : w - 8 + t]
    return frames


def write_clip(path: Path, frames: np.ndarray, fps: int = 10) -> Path:
    """Encode gray ``(T, H, W)`` frames into ``path`` (container/codec from the suffix)."""
    import av

    codec, pix_fmt = CONTAINERS[path.suffix]
    with av.open(str(path), mode="w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if codec == "libvpx-vp9":
            s.options = {"deadline": "realtime", "cpu-used": "8"}
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="gray").reformat(format=pix_fmt)
            vf.pts = i
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path
