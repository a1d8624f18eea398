"""Clips as they really are, learnt by decoding: their frame lists, and the one scan region of a file.

Container metadata is a claim, not a fact: real ``.mov``/``.mp4`` files list samples that an edit list
trims from presentation, or that a truncated ``mdat`` no longer holds (a clip "of 210 frames" that
decodes 192). So a clip's frame list (:func:`clip_index`) comes from decoding it once, without
converting pixels, and is cached under ``<cache>/clip_index/`` keyed by the file's resolved path,
size and mtime (``data.cache``). A clip that ends early keeps the frames it has; the shortfall is
logged once per clip and process, never fatal.

:func:`scan_mask` is the one scan region of a media file for every command (embed, ``usfast masks``,
training, prepare): a provided mask wins, else a cached detection. A clip's region is detected on
:data:`MASK_FRAMES` frames spread over the whole clip (:func:`spread_frames`), always decoded with
PyAV, so the answer depends on the file alone: not on the caller's decoder, its ``FrameSampling`` or
which frame it happens to see first (often black).
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from usjepa_fast.data.cache import cache_root, entry_name, file_key, publish
from usjepa_fast.data.media import media_kind, read_image_gray
from usjepa_fast.data.scan_region import (
    ScanMaskCache,
    detect_clip_region,
    detect_scan_region,
    load_mask,
    sidecar_mask_path,
)
from usjepa_fast.data.video import Frame, FrameSampling, PyAVDecoder, VideoDecoder, _frame_to_gray
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
    decodes fewer frames than its container lists is logged (once per process) and indexed as is.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"video {path} does not exist; check the path")
    decoder = decoder or PyAVDecoder()
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
    decoder = decoder or PyAVDecoder()

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
    :func:`clip_index`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"video {path} does not exist; check the path")
    decoder = PyAVDecoder()
    keeper = _SpreadKeeper(k)
    times, stopped = _decode_times(path, decoder, keeper)
    key, entry = _index_entry(path, decoder.name, cache_dir)
    if not entry.is_file():
        _report(path, key, _new_index(path, entry, times, stopped, decoder.name))
    return [Frame(index=i, timestamp=t, image=_frame_to_gray(f)) for i, t, f in keeper.pick(len(times))]


def _frame_shape(path: Path, kind: str) -> tuple[int, int]:
    if kind == "image":
        from PIL import Image

        try:
            with Image.open(path) as img:
                return img.size[1], img.size[0]
        except OSError as exc:
            raise DataError(f"image {path} cannot be read ({exc.__class__.__name__}); re-export or remove it") from None
    info = PyAVDecoder().probe(path)
    return info.height, info.width


def _detect(path: Path, kind: str, cache_dir: str | Path | None) -> np.ndarray:
    if kind == "image":
        return detect_scan_region(read_image_gray(path))
    frames = spread_frames(path, MASK_FRAMES, cache_dir)
    shape = frames[0].image.shape
    # A clip whose frame size changes mid-stream: detect on the frames of its first size.
    stack = np.stack([f.image for f in frames if f.image.shape == shape])  # (k, H, W)
    return detect_clip_region(stack)


def scan_mask(
    path: str | Path,
    *,
    mode: str = "auto",
    provided: str | Path | None = None,
    cache_dir: str | Path | None = None,
    mask_cache: str = "cache",
) -> np.ndarray:
    """The scan region of image or clip ``path``: bool ``(H, W)``, the same array whoever asks.

    ``mode="auto"``: ``provided`` (e.g. an UltraBench record's mask file) or else the sidecar
    ``<stem>.scanmask.png`` wins when present (one whose shape differs from the frames is ignored with
    a warning); ``"detect"`` ignores both. Otherwise the region is detected (an image on itself, a clip
    on :data:`MASK_FRAMES` spread frames with blank/dark ones dropped) and cached in
    ``<cache>/scan_masks/`` (``mask_cache="beside"``: a hidden file next to the media, only when
    asked). When nothing is found (a blank clip) the whole frame is returned (all True).
    """
    path = Path(path)
    if mode not in SCAN_MASK_MODES:
        raise DataError(f"scan mask mode '{mode}' is not one of {SCAN_MASK_MODES}")
    if mask_cache not in MASK_CACHE_MODES:
        raise DataError(f"mask cache '{mask_cache}' is not one of {MASK_CACHE_MODES}")
    kind = media_kind(path)
    if kind is None:
        raise DataError(f"{path} is neither an image nor a video usfast reads; cannot find its scan region")
    if not path.is_file():
        raise DataError(f"{path} does not exist; cannot find its scan region")
    if mode == "auto":
        given = Path(provided) if provided is not None else sidecar_mask_path(path)
        if provided is not None or given.is_file():
            mask = load_mask(given)
            shape = _frame_shape(path, kind)
            if mask.shape == shape:
                return mask
            if str(given) not in _warned_masks:
                _warned_masks.add(str(given))
                log.warning(
                    "scan mask %s is %s but %s frames are %s; detecting the region instead",
                    given,
                    mask.shape,
                    path,
                    shape,
                )
    cache = ScanMaskCache(cache_dir, beside=mask_cache == "beside")
    mask = cache.get(path, lambda: _detect(path, kind, cache_dir))
    return mask if mask.any() else np.ones(mask.shape, dtype=bool)
