"""Clips as they really are, learnt by decoding: their frame lists, and the one scan region of a file.

Container metadata is a claim, not a fact: real ``.mov``/``.mp4`` files list samples that an edit list
trims from presentation, or that a truncated ``mdat`` no longer holds (a clip "of 210 frames" that
decodes 192). So a clip's frame list (:func:`clip_index`) comes from decoding it once, without
converting pixels, and is cached under ``<cache>/clip_index/`` keyed by the file's resolved path,
size and mtime (``data.cache``). A clip that ends early keeps the frames it has; the shortfall is
logged once per clip and process, never fatal.

:func:`find_scan_mask` (``scan_mask`` = its mask) is the one scan region of a media file for every
command (embed, ``usfast masks``, training, prepare), with the name of its source: a provided mask
wins, then a DICOM object's Ultrasound Regions, else a cached detection. A clip's region is detected
on :data:`MASK_FRAMES` frames spread over the whole clip (:func:`spread_frames`), always decoded with
PyAV (a DICOM cine: by the DICOM reader), so the answer depends on the file alone: not on the
caller's decoder, its ``FrameSampling`` or which frame it happens to see first (often black).
:func:`frames_with_scan_mask` is the same detection done during prepare's own decoding pass.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from usjepa_fast.data.cache import cache_root, entry_name, file_key, publish
from usjepa_fast.data.media import is_dicom_file, media_kind_by_name, read_image_gray, to_uint8
from usjepa_fast.data.scan_region import (
    ScanMaskCache,
    detect_clip_region,
    detect_scan_region,
    load_mask,
    sidecar_mask_path,
)
from usjepa_fast.data.video import (
    Frame,
    FrameSampling,
    PyAVDecoder,
    VideoDecoder,
    _frame_to_gray,
    _Sampler,
    base_decoder,
)
from usjepa_fast.errors import DataError

log = logging.getLogger("usfast")

# Bump when what an index holds (or how it is measured) changes, so cached indexes are rebuilt.
INDEX_VERSION = 1
# Frames spread over a clip for its scan region. On synthetic clips with black leads, fades, black
# ends and title cards, 8..32 spread frames all reach IoU ~0.97 with blank frames dropped
# (benchmarks/clip_scan_region.py); 16 leaves margin for noisy real clips at ~35 ms per clip.
MASK_FRAMES = 16
SCAN_MASK_MODES = ("auto", "detect")
MASK_CACHE_MODES = ("cache", "beside")
# Where a file's scan mask came from: a mask given by the caller (an UltraBench record's), the
# <stem>.scanmask.png beside the file, the DICOM header's B-mode regions, detection on the pixels, or
# the whole frame because detection found nothing.
MASK_SOURCES = ("provided", "sidecar", "dicom-regions", "detected", "whole-frame")

_reported: set[str] = set()  # clip keys whose shortfall was logged in this process
_warned_masks: set[str] = set()  # provided masks whose shape mismatch was logged


@dataclass(frozen=True)
class ClipIndex:
    """What decoding a clip found.

    ``timestamps[i]`` is the timestamp (s since the first frame, display order) of decodable frame
    ``i``, exactly as the decoder's ``frames()`` yields it, so a ``FrameSampling`` rule applied to
    them selects the frames that decoding will produce.
    """

    timestamps: tuple[float, ...]
    listed: int  # frames the container advertises: its header count, else its non-empty packets
    trimmed: int = 0  # packets the container itself marks as discarded (edit list)
    stopped: str | None = None  # why decoding ended before the stream did (truncated/corrupt); None: clean
    decoder: str = "pyav"

    @property
    def num_frames(self) -> int:
        return len(self.timestamps)

    @property
    def shortfall(self) -> int:
        """Frames the container lists that do not decode."""
        return max(0, self.listed - self.num_frames)

    def describe(self, path: str | Path) -> str:
        """One line for logs and summaries."""
        why = []
        if self.trimmed:
            why.append(f"{self.trimmed} trimmed by its edit list")
        if self.stopped:
            why.append(f"decoding stopped: {self.stopped}")
        detail = f" ({'; '.join(why)})" if why else ""
        return f"{path}: the container lists {self.listed} frames, {self.num_frames} decode{detail}; using those"


def _container_counts(path: Path) -> tuple[int, int]:
    """(frames the container advertises, packets its edit list discards), from the header and a
    demux pass (no decoding); (0, 0) when the container cannot even be demuxed."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return 0, 0
            stream = container.streams.video[0]
            header = int(stream.frames or 0)
            packets = discarded = 0
            for packet in container.demux(stream):
                if packet.size:
                    packets += 1
                    discarded += int(packet.is_discard)
    except (av.FFmpegError, OSError, ValueError):
        return 0, 0
    return max(header, packets), discarded


def _decode_times(
    path: Path, decoder: VideoDecoder, keep: _SpreadKeeper | None = None
) -> tuple[list[float], str | None]:
    """Timestamps of every frame ``decoder`` yields (PyAV: without pixel conversion) and why decoding
    stopped early (None if it did not). ``keep`` collects spread frames on the way (PyAV only).
    Raises DataError when not a single frame decodes."""
    times: list[float] = []
    stopped = None
    decoder = base_decoder(decoder)
    try:
        if isinstance(decoder, PyAVDecoder):
            for index, t, frame in decoder.raw_frames(path):
                times.append(t)
                if keep is not None:
                    keep.offer(index, t, frame)
        else:  # any other decoder: its own frames() is the truth about what it yields
            for f in decoder.frames(path, FrameSampling()):
                times.append(f.timestamp)
    except DataError as exc:
        if not times:
            raise
        stopped = str(exc)
    return times, stopped


def _index_entry(path: Path, decoder_name: str, cache_dir: str | Path | None) -> tuple[str, Path]:
    key = file_key(path, f"i{INDEX_VERSION}", decoder_name)
    return key, cache_root(cache_dir) / "clip_index" / entry_name(path, key, ".json")


def _read_index(entry: Path) -> ClipIndex | None:
    try:
        raw = json.loads(entry.read_text())
        raw["timestamps"] = tuple(float(t) for t in raw["timestamps"])
        index = ClipIndex(**raw)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError):
        log.debug("ignoring unreadable clip index %s", entry)
        return None
    return index if index.timestamps else None


def _store_index(entry: Path, index: ClipIndex) -> None:
    publish(entry, lambda tmp: tmp.write_text(json.dumps(asdict(index))))


def _new_index(path: Path, entry: Path, times: list[float], stopped: str | None, decoder_name: str) -> ClipIndex:
    """The index of a clip just decoded (timestamps + why it stopped), with the container's claims; stored."""
    listed, trimmed = _container_counts(path)
    index = ClipIndex(tuple(times), max(listed, len(times)), trimmed, stopped, decoder_name)
    _store_index(entry, index)
    return index


def _report(path: Path, key: str, index: ClipIndex) -> None:
    if (index.shortfall or index.stopped) and key not in _reported:
        _reported.add(key)
        log.warning("short clip %s", index.describe(path))


def clip_index(path: str | Path, decoder: VideoDecoder | None = None, cache_dir: str | Path | None = None) -> ClipIndex:
    """The frames of clip ``path`` that ``decoder`` (default PyAV) really yields, decoded once and cached.

    Raises :class:`DataError` naming the file when it does not exist or no frame decodes. A clip that
    decodes fewer frames than its container lists is logged (once per process) and indexed as is. A
    DICOM cine is indexed from its header (its pixel-data walk checks every frame is present).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"video {path} does not exist; check the path")
    if is_dicom_file(path):
        from usjepa_fast.data.dicom import read_dicom_info

        info = read_dicom_info(path)
        return ClipIndex(tuple(info.timestamps), info.num_frames, decoder="dicom")
    decoder = base_decoder(decoder or PyAVDecoder())
    key, entry = _index_entry(path, decoder.name, cache_dir)
    index = _read_index(entry)
    if index is None:
        index = _new_index(path, entry, *_decode_times(path, decoder), decoder.name)
    _report(path, key, index)
    return index


def clip_indexes(
    paths: list[Path],
    decoder: VideoDecoder | None = None,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
) -> list[ClipIndex | DataError]:
    """:func:`clip_index` of many clips, in order; a clip that cannot be indexed gives its ``DataError``.

    Cache misses decode on up to ``workers`` threads (default: the CPU count, at most 8; FFmpeg
    decodes without the GIL), so indexing a large folder the first time scales with the cores.
    Decoders other than PyAV are indexed one clip at a time (their thread safety is their own).
    """
    decoder = base_decoder(decoder or PyAVDecoder())

    def one(path: Path) -> ClipIndex | DataError:
        try:
            return clip_index(path, decoder, cache_dir)
        except DataError as exc:
            return exc

    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    if workers <= 1 or len(paths) <= 1 or not isinstance(decoder, PyAVDecoder):
        return [one(Path(p)) for p in paths]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="usfast-index") as pool:
        return list(pool.map(one, [Path(p) for p in paths]))


def spread_positions(n: int, k: int) -> list[int]:
    """``min(n, k)`` of the positions ``0..n-1`` spread over the whole range, first frame included.

    They lie on a stride grid (the smallest power of two ``s`` with ``ceil(n / s) <= 2k``) so that one
    decoding pass can collect them without knowing ``n`` in advance (:class:`_SpreadKeeper`); the
    result depends on ``n`` and ``k`` only.
    """
    if n <= 0 or k <= 0:
        return []
    stride = 1
    while -(-n // stride) > 2 * k:
        stride *= 2
    m = -(-n // stride)  # grid points below n
    if m <= k:
        return [i * stride for i in range(m)]
    if k == 1:
        return [stride * ((m - 1) // 2)]
    return [stride * ((2 * j * (m - 1) + (k - 1)) // (2 * (k - 1))) for j in range(k)]


class _SpreadKeeper:
    """Keeps the items at multiples of a stride that doubles whenever more than ``2k`` are held, so at
    the end of a pass over ``n`` items it holds every grid point that :func:`spread_positions` can pick."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.stride = 1
        self.kept: dict[int, tuple[float, object]] = {}

    def offer(self, index: int, timestamp: float, frame: object) -> None:
        if index % self.stride:
            return
        self.kept[index] = (timestamp, frame)
        if len(self.kept) > 2 * self.k:
            self.stride *= 2
            self.kept = {i: v for i, v in self.kept.items() if i % self.stride == 0}

    def pick(self, n: int) -> list[tuple[int, float, object]]:
        return [(i, *self.kept[i]) for i in spread_positions(n, self.k)]


def spread_frames(path: str | Path, k: int, cache_dir: str | Path | None = None) -> list[Frame]:
    """``k`` frames spread over the whole clip (:func:`spread_positions` of its decoded frame count),
    from one PyAV pass that holds at most ``2k + 1`` undecoded-to-numpy frames. The same file always
    gives the same frames. The pass also yields the clip's PyAV frame list, cached for
    :func:`clip_index`. A DICOM object: those positions of its header's frame list, decoded one by
    one (uint8)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"video {path} does not exist; check the path")
    if is_dicom_file(path):
        from usjepa_fast.data.dicom import iter_dicom_gray, read_dicom_info

        info = read_dicom_info(path)
        picked = spread_positions(info.num_frames, k)
        return [Frame(i, info.timestamps[i], to_uint8(g)) for i, g in iter_dicom_gray(info, picked)]
    decoder = PyAVDecoder()
    keeper = _SpreadKeeper(k)
    times, stopped = _decode_times(path, decoder, keeper)
    _remember_index(path, times, stopped, cache_dir)
    return [Frame(index=i, timestamp=t, image=_frame_to_gray(f)) for i, t, f in keeper.pick(len(times))]


def _remember_index(path: Path, times: list[float], stopped: str | None, cache_dir: str | Path | None) -> None:
    """Cache (and report) the PyAV frame list a full decoding pass just learnt, unless it is known."""
    key, entry = _index_entry(path, PyAVDecoder.name, cache_dir)
    if not entry.is_file():
        _report(path, key, _new_index(path, entry, times, stopped, PyAVDecoder.name))


def _kind(path: Path) -> str:
    """``"image"`` | ``"video"`` | ``"dicom"`` by name / preamble (a DICOM object is read by the DICOM
    reader whatever its frame count)."""
    kind = media_kind_by_name(path)
    if kind is None and is_dicom_file(path):
        return "dicom"
    if kind is None:
        raise DataError(f"{path} is neither an image nor a video usfast reads; cannot find its scan region")
    return kind


def _frame_shape(path: Path, kind: str) -> tuple[int, int]:
    if kind == "dicom":
        from usjepa_fast.data.dicom import read_dicom_info

        info = read_dicom_info(path)
        return info.rows, info.columns
    if kind == "image":
        from PIL import Image

        try:
            with Image.open(path) as img:
                return img.size[1], img.size[0]
        except OSError as exc:
            raise DataError(f"image {path} cannot be read ({exc.__class__.__name__}); re-export or remove it") from None
    info = PyAVDecoder().probe(path)
    return info.height, info.width


def _clip_region(frames: list[Frame]) -> np.ndarray:
    """The detection rule of a clip on its spread frames: a clip whose frame size changes mid-stream is
    detected on the frames of its first size."""
    shape = frames[0].image.shape
    return detect_clip_region(np.stack([f.image for f in frames if f.image.shape == shape]))  # (k, H, W)


def _detect(path: Path, kind: str, cache_dir: str | Path | None, image: np.ndarray | None) -> np.ndarray:
    if kind == "image":
        return detect_scan_region(read_image_gray(path) if image is None else image)
    if kind == "dicom":
        from usjepa_fast.data.dicom import read_dicom_info

        if read_dicom_info(path).num_frames == 1:
            return detect_scan_region(to_uint8(read_image_gray(path) if image is None else image))
    return _clip_region(spread_frames(path, MASK_FRAMES, cache_dir))


def _check_modes(mode: str, mask_cache: str) -> None:
    if mode not in SCAN_MASK_MODES:
        raise DataError(f"scan mask mode '{mode}' is not one of {SCAN_MASK_MODES}")
    if mask_cache not in MASK_CACHE_MODES:
        raise DataError(f"mask cache '{mask_cache}' is not one of {MASK_CACHE_MODES}")


def _declared(path: Path, kind: str, mode: str, provided: str | Path | None) -> tuple[np.ndarray, str] | None:
    """The provided / sidecar mask (when its shape fits) or the DICOM regions, with their source; None
    when the region has to be detected."""
    if mode != "auto":
        return None
    given = Path(provided) if provided is not None else sidecar_mask_path(path)
    if provided is not None or given.is_file():
        mask = load_mask(given)
        shape = _frame_shape(path, kind)
        if mask.shape == shape:
            return mask, "provided" if provided is not None else "sidecar"
        if str(given) not in _warned_masks:
            _warned_masks.add(str(given))
            log.warning(
                "scan mask %s is %s but %s frames are %s; detecting the region instead", given, mask.shape, path, shape
            )
    if kind == "dicom":  # the scanner's own B-mode region boxes, when the header has them
        from usjepa_fast.data.dicom import dicom_scan_region

        regions, source = dicom_scan_region(path)
        if regions is not None:
            return regions, source
    return None


def _checked(path: str | Path, mode: str, mask_cache: str) -> tuple[Path, str]:
    path = Path(path)
    _check_modes(mode, mask_cache)
    kind = _kind(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; cannot find its scan region")
    return path, kind


def _whole_if_empty(mask: np.ndarray) -> tuple[np.ndarray, str]:
    return (mask, "detected") if mask.any() else (np.ones(mask.shape, dtype=bool), "whole-frame")


def find_scan_mask(
    path: str | Path,
    *,
    mode: str = "auto",
    provided: str | Path | None = None,
    cache_dir: str | Path | None = None,
    mask_cache: str = "cache",
    image: np.ndarray | None = None,
) -> tuple[np.ndarray, str]:
    """The scan region of image or clip ``path`` and its source (one of :data:`MASK_SOURCES`):
    ``(bool (H, W), source)``, the same whoever asks.

    ``mode="auto"``: ``provided`` (e.g. an UltraBench record's mask file) or else the sidecar
    ``<stem>.scanmask.png`` wins when present (one whose shape differs from the frames is ignored with
    a warning), then a DICOM object's Ultrasound Regions; ``"detect"`` ignores all three. Otherwise the
    region is detected (an image on itself, a clip or cine loop on :data:`MASK_FRAMES` spread frames
    with blank/dark ones dropped) and cached in ``<cache>/scan_masks/`` (``mask_cache="beside"``: a
    hidden file next to the media, only when asked). When nothing is found (a blank clip) the whole
    frame is returned (all True, source ``"whole-frame"``). ``image``: the file's pixels when the
    caller has read them already (an image or single-frame DICOM is then not read again).
    """
    path, kind = _checked(path, mode, mask_cache)
    declared = _declared(path, kind, mode, provided)
    if declared is not None:
        return declared
    cache = ScanMaskCache(cache_dir, beside=mask_cache == "beside")
    return _whole_if_empty(cache.get(path, lambda: _detect(path, kind, cache_dir, image)))


def scan_mask(
    path: str | Path,
    *,
    mode: str = "auto",
    provided: str | Path | None = None,
    cache_dir: str | Path | None = None,
    mask_cache: str = "cache",
    image: np.ndarray | None = None,
) -> np.ndarray:
    """The scan region of image or clip ``path``: bool ``(H, W)``, the same array whoever asks (the mask
    of :func:`find_scan_mask`, which documents the rule)."""
    return find_scan_mask(path, mode=mode, provided=provided, cache_dir=cache_dir, mask_cache=mask_cache, image=image)[
        0
    ]


def declared_mask_source(path: str | Path, mode: str = "auto", provided: str | Path | None = None) -> str | None:
    """``"provided"`` / ``"sidecar"`` / ``"dicom-regions"``: where :func:`find_scan_mask` will take the
    region from without detecting (reads masks and headers, never pixels); None when it will detect."""
    path, kind = _checked(path, mode, "cache")
    declared = _declared(path, kind, mode, provided)
    return None if declared is None else declared[1]


@dataclass
class ClipRead:
    """What :func:`frames_with_scan_mask` read from a clip in one pass."""

    mask: np.ndarray  # (H, W) bool: scan_mask(path) of the same file
    source: str  # of MASK_SOURCES
    frames: list[tuple[int, float, Any]] | None  # (index, timestamp, convert(gray)); None: over the budget
    stopped: str | None  # why decoding ended before the stream did (the frames before it are kept)


def frames_with_scan_mask(
    path: str | Path,
    sampling: FrameSampling,
    *,
    convert: Callable[[np.ndarray], Any] | None = None,
    cache_dir: str | Path | None = None,
    mask_cache: str = "cache",
    max_bytes: int = 512 * 2**20,
) -> ClipRead:
    """A PyAV clip's sampled frames *and* its detected scan region from one decoding pass.

    For a clip whose region is not declared (no provided/sidecar mask) nor cached, ``scan_mask`` decodes
    the whole clip to pick its spread frames and the caller then decodes it again for its own frames;
    this does both at once: every frame is decoded, the spread ones are kept for detection, the
    sampled ones are converted to gray and passed through ``convert`` (e.g. a resize) and kept. The
    mask is exactly ``scan_mask(path, mode="detect")``'s (same frames, same rule) and is cached as it
    would be, so later callers get it from the cache. ``frames`` are those of
    ``PyAVDecoder().frames(path, sampling)``; ``None`` when the converted frames would exceed
    ``max_bytes`` (the caller then decodes the clip again). Raises :class:`DataError` when no frame
    decodes.
    """
    path, kind = _checked(path, "detect", mask_cache)
    if kind != "video":
        raise DataError(f"frames_with_scan_mask reads video files; {path} is a {kind}")
    cache = ScanMaskCache(cache_dir, beside=mask_cache == "beside")
    keeper = _SpreadKeeper(MASK_FRAMES)
    sampler = _Sampler(sampling)
    kept: list[tuple[int, float, Any]] | None = []
    size = 0
    times: list[float] = []
    stopped = None
    try:
        for index, t, frame in PyAVDecoder().raw_frames(path):
            times.append(t)
            keeper.offer(index, t, frame)
            if kept is not None and sampler.keep(t):
                out = _frame_to_gray(frame)
                out = convert(out) if convert is not None else out
                size += int(getattr(out, "nbytes", 0))
                kept.append((index, t, out))
                if size > max_bytes:  # too long to hold: the caller decodes the clip again
                    kept = None
    except DataError as exc:
        if not times:
            raise
        stopped = str(exc)
    _remember_index(path, times, stopped, cache_dir)
    picked = [Frame(index=i, timestamp=t, image=_frame_to_gray(f)) for i, t, f in keeper.pick(len(times))]
    mask, source = _whole_if_empty(cache.get(path, lambda: _clip_region(picked)))
    return ClipRead(mask, source, kept, stopped)
