"""How the embed engine samples, skips, batches and stores: :class:`EmbedOptions`, validated up front.

Every field is checked when the options are built (and again when a run starts, in case a caller
mutated them), so a bad value fails in one line naming the option, its value and the valid range
*before* a model is loaded or an ONNX graph exported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from usjepa_fast.config import bad_value, check_choice, check_int, check_number

KINDS = ("image", "video")
DTYPES = ("float16", "float32")
CHANGE_CHECKS = ("mtime", "hash")
WHAT = "embed option"
TOKENS = ("all", "scan")


@dataclass
class EmbedOptions:
    """How ``embed_folder`` samples, skips, batches and stores (CLI flags map 1:1)."""

    batch_size: int = 32  # frames per inference call (cross-file)
    every_k: int = 1  # keep every k-th frame of a clip
    fps: float | None = None  # resample clips to this frame rate (by timestamps); None = native
    max_frames: int | None = None  # at most this many sampled frames per clip
    clip_pool: bool = False  # one row per clip: the mean of its frame features (frame_index -1)
    redundancy_threshold: float | None = None  # skip frames whose thumbnail MAD (0-255) vs the last
    #   embedded frame is below this; None = off (default: every sampled frame is embedded)
    redundancy_size: int = 32  # thumbnail side of the change detector
    scan_region: bool = True  # percentile window + change detector inside the scan region
    #   (dataset masks for UltraBench, detected once per clip/image otherwise); False = whole frame
    dtype: Literal["float16", "float32"] = "float16"  # feature storage (fp16 halves disk, ~1e-3 rel err)
    decoder: str = "auto"  # "auto" | "pyav" | "dali" (CPU, VP9/MJPEG) | "dali-gpu" (NVDEC)
    decode_workers: int | None = None  # decode threads; None = 1 on small CPUs, more with a GPU
    prefetch: int = 4  # decoded frames allowed ahead of inference, in batches (>= 2; bounds memory)
    part_rows: int = 8192  # commit a part once this many rows are buffered (--commit-rows; a part
    #   holds whole files)
    commit_every_s: float = 60.0  # ... or once this many seconds passed since the last commit
    #   (--commit-every-s): an interrupt or a crash loses at most this much finished work
    change_check: Literal["mtime", "hash"] = "mtime"  # how a changed input file is recognised
    kinds: tuple[str, ...] = ("image", "video")  # media kinds taken from a folder
    splits: tuple[str, ...] | None = None  # UltraBench splits (None = all present)
    progress: bool = True  # tqdm bar on stderr: files, frames/s, ETA
    tokens: Literal["all", "scan"] = "all"  # scan: only the patches inside each frame's scan region go
    #   through the encoder and the pooled feature averages them (black surround and burned-in text
    #   cost nothing); all: every patch (ViTs only for scan; conv nets refuse)
    patch_coverage: float = 0.5  # scan: a patch is kept when at least this share of its pixels is scan
    #   region (data.scan_region.patch_validity; 0 = any pixel, the old "touches" rule)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> EmbedOptions:
        """Raise :class:`ConfigError` for the first invalid field; returns ``self``."""
        from usjepa_fast.data.ultrabench import SPLITS
        from usjepa_fast.data.video import DECODERS

        _int(self.batch_size, "batch_size", 1)
        _int(self.every_k, "every_k", 1)
        if self.fps is not None and not (_is_number(self.fps) and self.fps > 0 and math.isfinite(self.fps)):
            _bad("fps", self.fps, "a frame rate > 0, or None for the native rate")
        if self.max_frames is not None:
            _int(self.max_frames, "max_frames", 1, "or None for every sampled frame")
        if self.redundancy_threshold is not None and not (
            _is_number(self.redundancy_threshold) and 0 <= self.redundancy_threshold <= 255
        ):
            _bad("redundancy_threshold", self.redundancy_threshold, "a gray-level difference in [0, 255], or None")
        _int(self.redundancy_size, "redundancy_size", 4)
        for name in ("clip_pool", "scan_region", "progress"):
            if not isinstance(getattr(self, name), bool):
                _bad(name, getattr(self, name), "true or false")
        _choice(self.dtype, "dtype", DTYPES)
        _choice(self.decoder, "decoder", DECODERS)
        if self.decode_workers is not None:
            _int(self.decode_workers, "decode_workers", 1, "or None for the default")
        _int(self.prefetch, "prefetch", 2)
        _int(self.part_rows, "part_rows", 1)
        check_number(self.commit_every_s, "commit_every_s", 0, lo_open=True, what=WHAT, extra="(seconds)")
        _choice(self.change_check, "change_check", CHANGE_CHECKS)
        _choice(self.tokens, "tokens", TOKENS)
        if not (_is_number(self.patch_coverage) and 0 <= self.patch_coverage <= 1):
            _bad("patch_coverage", self.patch_coverage, "a share of a patch's pixels in [0, 1] (default 0.5)")
        if self.tokens == "scan" and not self.scan_region:
            _bad("tokens", self.tokens, "all with scan_region=false (scan tokens need the scan region), or scan")
        if not self.kinds or any(k not in KINDS for k in self.kinds):
            _bad("kinds", self.kinds, f"a non-empty subset of {list(KINDS)}")
        if self.splits is not None and (not self.splits or any(s not in SPLITS for s in self.splits)):
            _bad("splits", self.splits, f"a non-empty subset of {list(SPLITS)}, or None for all present")
        return self

    def sampling(self) -> Any:
        """The :class:`~usjepa_fast.data.video.FrameSampling` these options describe."""
        from usjepa_fast.data.video import FrameSampling

        return FrameSampling(every_k=self.every_k, fps=self.fps, max_frames=self.max_frames)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bad(name: str, value: Any, valid: str) -> None:
    raise bad_value(name, value, valid, WHAT)


def _int(value: Any, name: str, lo: int, extra: str = "") -> None:
    check_int(value, name, lo, what=WHAT, extra=extra)


def _choice(value: Any, name: str, choices: tuple[str, ...]) -> None:
    check_choice(value, name, choices, what=WHAT)
