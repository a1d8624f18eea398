"""Tiny synthetic videos for tests: every container, edit lists, truncated files, folder snapshots."""

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


def remux_with_edit_list(src: Path, dst: Path, trim_frames: int) -> Path:
    """Copy ``src``'s packets into ``dst`` (.mov/.mp4) shifted ``trim_frames`` frames earlier: the muxer
    writes an edit list that hides them, so the container lists every packet but presents fewer
    frames (what real camera/editor ``.mov`` exports do)."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = inp.streams.video[0]
        shift = int(round(trim_frames / (float(stream.average_rate) * stream.time_base)))
        ostream = out.add_stream_from_template(stream)
        for packet in inp.demux(stream):
            if packet.dts is None:
                continue
            packet.pts -= shift
            packet.dts -= shift
            packet.stream = ostream
            out.mux(packet)
    return dst


def truncate_after_index(src: Path, dst: Path, keep: float = 0.6) -> Path:
    """``src`` remuxed with its index (moov) first, then cut to ``keep`` of its bytes: the header still
    advertises every frame, the data for the last ones is gone (an interrupted copy or upload)."""
    import av

    tmp = dst.with_name(dst.stem + ".full" + dst.suffix)
    with av.open(str(src)) as inp, av.open(str(tmp), "w", options={"movflags": "faststart"}) as out:
        stream = inp.streams.video[0]
        ostream = out.add_stream_from_template(stream)
        for packet in inp.demux(stream):
            if packet.dts is None:
                continue
            packet.stream = ostream
            out.mux(packet)
    data = tmp.read_bytes()
    tmp.unlink()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def folder_state(root: Path) -> list[tuple[str, int, int]]:
    """Every entry under ``root`` (hidden ones included) with its size and mtime: what a reader must not change."""
    import os

    state = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            state.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns))
    return sorted(state)


def write_broken_clips(base: Path, size: int = 96, seed: int = 11):
    """A clip folder as real exports look, built with the simulator's writer and PyAV remuxing, in
    ``base/clips`` (sources in ``base/src``): ``edit_list.mov`` lists 30 frames and presents 24 (its edit
    list hides 6), ``truncated.mp4`` has its index first and lost the second half of its data,
    ``black_start.mp4`` (fan) starts with 10 black frames, ``good.mp4`` (linear) is clean, and
    ``gone.mp4`` is a dangling symbolic link. Returns a namespace (root, src, fan_true, linear_true)."""
    from types import SimpleNamespace

    from usjepa_fast.data import synth

    src, root = base / "src", base / "clips"
    src.mkdir()
    root.mkdir()
    rng = np.random.default_rng(seed)
    fan, fan_true, _ = synth.render_clip(rng, 1, size, 30, None, "fan")
    linear, linear_true, _ = synth.render_clip(rng, 2, size, 24, None, "linear")
    synth.write_video(fan, src / "fan.mp4", fps=10)
    remux_with_edit_list(src / "fan.mp4", root / "edit_list.mov", trim_frames=6)
    truncate_after_index(src / "fan.mp4", root / "truncated.mp4", keep=0.5)
    black = fan.copy()
    black[:10] = 0
    synth.write_video(black, root / "black_start.mp4", fps=10)
    synth.write_video(linear, root / "good.mp4", fps=10)
    (root / "gone.mp4").symlink_to(src / "deleted.mp4")
    return SimpleNamespace(root=root, src=src, fan_true=fan_true, linear_true=linear_true)
