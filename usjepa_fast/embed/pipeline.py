"""``embed_folder``: media files -> sampled frames -> encoder features in an output directory.

Data flow (one rank)::

    files (this rank's share, minus already-embedded ones)
      -> decode workers (threads: PyAV/DALI decode, change detector, scan region, preprocessing)
      -> queue of per-file chunks (<= batch_size frames each), bounded in frames by credits
      -> main thread: cross-file batches of batch_size -> backend -> per-file features
      -> PartWriter (atomic parts) -> merge -> index.csv + embed.json

Decoding overlaps inference: PyAV, numpy and torch release the GIL in their C loops, so one worker
thread decodes and preprocesses the next frames while ONNX Runtime/PyTorch run the current batch;
at most ``prefetch`` batches of frames wait ahead of inference, so memory stays flat. On a GPU the
workers hand over *uint8* frames in pinned memory and preprocessing (percentile window,
antialiased resize, normalisation) runs on the device, so the host never touches float pixels; with
``decoder="dali-gpu"`` frames are decoded by NVDEC and never leave the GPU at all.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from usjepa_fast.embed import store
from usjepa_fast.embed.redundancy import ChangeDetector
from usjepa_fast.embed.sharding import assign_shares, barrier, env_rank_world
from usjepa_fast.embed.sources import Source, list_sources, read_image, source_mask
from usjepa_fast.errors import DataError, UsfastError

log = logging.getLogger("usfast")


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
    part_rows: int = 8192  # rows per committed part (a part holds whole files)
    change_check: Literal["mtime", "hash"] = "mtime"  # how a changed input file is recognised
    kinds: tuple[str, ...] = ("image", "video")  # media kinds taken from a folder
    splits: tuple[str, ...] | None = None  # UltraBench splits (None = all present)
    progress: bool = True  # tqdm bar on stderr: files, frames/s, ETA


@dataclass
class EmbedSummary:
    out_dir: Path
    backend: str
    rank: int
    world_size: int
    files_total: int  # files in this rank's share
    files_embedded: int  # embedded in this run
    files_resumed: int  # already done by an earlier run (unchanged) and skipped
    files_failed: int
    failed: dict[str, str] = field(default_factory=dict)  # rel path -> reason
    frames_embedded: int = 0  # frames that went through the model
    frames_duplicate: int = 0  # sampled frames skipped as redundant (still in the index)
    seconds: float = 0.0
    index_rows: int | None = None  # after the merge (rank 0), else None

    @property
    def frames_per_s(self) -> float:
        """Sampled frames (embedded + skipped duplicates) per second of wall time."""
        return (self.frames_embedded + self.frames_duplicate) / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        d["frames_per_s"] = self.frames_per_s
        return d


# ----------------------------------------------------------------------------------------------
# worker -> consumer messages


@dataclass
class _Chunk:
    fid: int
    # per sampled frame in order: (frame_index, timestamp, duplicate_of); entries with
    # duplicate_of == -1 correspond, in order, to the rows of ``pixels``
    entries: list[tuple[int, float, int]]
    pixels: torch.Tensor | None  # (n, 3, S, S) float32 preprocessed, or None (all duplicates)
    raw: tuple[torch.Tensor, torch.Tensor | None] | None = None  # GPU path: uint8 (n,H,W), masks


@dataclass
class _End:
    fid: int


@dataclass
class _Fail:
    fid: int
    reason: str


_STOP = object()


class _Preparer:
    """Frames of one file -> chunks (runs in a worker thread)."""

    def __init__(self, info: Any, opts: EmbedOptions, device: torch.device, decoder: Any, sampling: Any) -> None:
        self.info = info
        self.opts = opts
        self.device = device
        self.decoder = decoder
        self.sampling = sampling
        self.chunk = max(1, opts.batch_size)
        self.gpu_pre = device.type == "cuda"
        self.cancel = threading.Event()  # set by the consumer when the run aborts
        # One credit per decoded frame waiting for inference: the queue is bounded in frames, not
        # messages, so an image folder (one frame per message) prefetches as deep as a video does.
        self.credits = threading.Semaphore(max(2, opts.prefetch) * self.chunk)

    def _send(self, out: queue.Queue, chunk: _Chunk) -> bool:
        """Put ``chunk`` once its frames have credits; False if the run was cancelled meanwhile."""
        rows = (
            0
            if chunk.pixels is None and chunk.raw is None
            else int((chunk.pixels if chunk.pixels is not None else chunk.raw[0]).shape[0])
        )
        for _ in range(rows):
            while not self.credits.acquire(timeout=0.1):
                if self.cancel.is_set():
                    return False
        out.put(chunk)
        return True

    def _pixels(self, images: list[np.ndarray], mask: np.ndarray | None) -> tuple[torch.Tensor | None, Any]:
        """Preprocess same-shape gray frames -> ((n, 3, S, S) float32, None) or (None, raw) for the GPU."""
        from usjepa_fast.data.preprocess import PreprocessConfig, Preprocessor, preprocess_batch

        info = self.info
        if images[0].dtype != np.uint8:
            # 16-bit images: the per-item path keeps the full range for the percentile window
            pre = Preprocessor(
                PreprocessConfig(
                    image_size=info.input_size, mean=tuple(info.mean), std=tuple(info.std), patch_size=info.patch_size
                )
            )
            return torch.stack([pre(im, mask)["image"] for im in images]), None
        frames = torch.from_numpy(np.stack(images))  # (n, H, W) uint8
        masks = None
        if mask is not None:
            masks = torch.from_numpy(np.ascontiguousarray(mask)).unsqueeze(0).expand(len(images), -1, -1)
        if self.gpu_pre:
            # pinned host memory: the consumer's copy to the GPU is asynchronous and DMA-driven
            frames = frames.pin_memory()
            masks = masks.contiguous().pin_memory() if masks is not None else None
            return None, (frames, masks)
        return preprocess_batch(frames, masks, info.input_size, tuple(info.mean), tuple(info.std)), None

    def run(self, fid: int, src: Source, out: queue.Queue) -> None:
        detector = (
            ChangeDetector(self.opts.redundancy_threshold, self.opts.redundancy_size)
            if self.opts.redundancy_threshold is not None
            else None
        )
        if src.kind == "image":
            image = read_image(src)
            mask = source_mask(src, image) if self.opts.scan_region else None
            pixels, raw = self._pixels([image], mask)
            if self._send(out, _Chunk(fid, [(0, 0.0, -1)], pixels, raw)):
                out.put(_End(fid))
            return
        if self.opts.decoder == "dali-gpu":
            from usjepa_fast.embed.dali_gpu import embed_chunks_dali_gpu

            for chunk in embed_chunks_dali_gpu(fid, src, self.info, self.opts, self.sampling, self.device, detector):
                if not self._send(out, chunk):
                    return
            out.put(_End(fid))
            return
        mask: np.ndarray | None = None
        entries: list[tuple[int, float, int]] = []
        images: list[np.ndarray] = []
        shape: tuple[int, ...] | None = None

        def emit() -> bool:
            nonlocal entries, images
            pixels, raw = self._pixels(images, mask) if images else (None, None)
            sent = self._send(out, _Chunk(fid, entries, pixels, raw))
            entries, images = [], []
            return sent

        for frame in self.decoder.frames(src.path, self.sampling):
            if self.cancel.is_set():
                return
            img = frame.image
            if shape is None:
                shape = img.shape
                # One scan-region detection per clip, on its first sampled frame; the same mask sets
                # the percentile window of every frame and the change detector's comparison area.
                mask = source_mask(src, img) if self.opts.scan_region else None
                if detector is not None:
                    detector.reset(mask)
            elif img.shape != shape:
                raise DataError(
                    f"video {src.path} changes frame size mid-stream ({shape} -> {img.shape}); re-encode it"
                )
            dup = detector.check(frame.index, img) if detector is not None else -1
            entries.append((frame.index, float(frame.timestamp), dup))
            if dup < 0:
                images.append(img)
            # bound the chunk by frames to embed, and by entries so a long still segment still streams
            if (len(images) >= self.chunk or len(entries) >= 8 * self.chunk) and not emit():
                return
        if entries and not emit():
            return
        out.put(_End(fid))


def _worker(prep: _Preparer, todo: queue.Queue, out: queue.Queue) -> None:
    while True:
        item = todo.get()
        if item is _STOP or prep.cancel.is_set():
            out.put(_STOP)
            return
        fid, src = item
        try:
            prep.run(fid, src, out)
        except (DataError, UsfastError) as exc:
            out.put(_Fail(fid, str(exc)))
        except Exception as exc:  # noqa: BLE001 - a bad file must never stop the run; log and count it
            out.put(_Fail(fid, f"{src.path}: unexpected {exc.__class__.__name__}: {exc}"))


def _resolve_decoder(name: str, device: Any) -> str:
    """``auto``: NVDEC through DALI when the encoder runs on a GPU and DALI can use it (frames never
    leave the GPU), else PyAV on the CPU (DALI's CPU decoder refuses H.264/MPEG-4)."""
    if name != "auto" or getattr(device, "type", "cpu") != "cuda":
        return name
    from usjepa_fast.embed.dali_gpu import dali_gpu_available

    return "dali-gpu" if dali_gpu_available() else "pyav"


def _make_decoder(name: str) -> Any:
    from usjepa_fast.data.video import get_decoder

    if name in ("auto", "pyav"):
        from usjepa_fast.data.video import PyAVDecoder

        # one FFmpeg thread per clip: our parallelism is across the pipeline, and on 2 cores extra
        # FFmpeg threads only fight the inference threads
        return PyAVDecoder(threads=1)
    if name == "dali":
        return _DaliCpuWithFallback(get_decoder("dali"))
    if name == "dali-gpu":
        from usjepa_fast.embed.dali_gpu import dali_gpu_available

        if not dali_gpu_available():
            from usjepa_fast.errors import BackendUnavailableError

            raise BackendUnavailableError("--decoder dali-gpu needs NVIDIA DALI and a CUDA GPU; use --decoder pyav")
        return None
    raise UsfastError(f"unknown decoder {name!r}; use auto, pyav, dali or dali-gpu")


class _DaliCpuWithFallback:
    """DALI's CPU decoder for the codecs it handles (VP8/VP9/MJPEG), PyAV for everything else."""

    name = "dali"

    def __init__(self, dali: Any) -> None:
        from usjepa_fast.data.video import PyAVDecoder

        self.dali = dali
        self.pyav = PyAVDecoder(threads=1)

    def frames(self, path: Path, sampling: Any):
        from usjepa_fast.errors import BackendUnavailableError

        try:
            supported = self.dali.supports(path)
        except DataError:
            supported = False  # let PyAV produce the precise error for this file
        if not supported:
            yield from self.pyav.frames(path, sampling)
            return
        try:
            yield from self.dali.frames(path, sampling)
        except BackendUnavailableError:
            yield from self.pyav.frames(path, sampling)


# ----------------------------------------------------------------------------------------------
# consumer


class _FileState:
    __slots__ = ("src", "stamp", "entries", "feats", "pending", "ended")

    def __init__(self, src: Source, stamp: store.FileStamp) -> None:
        self.src = src
        self.stamp = stamp
        self.entries: list[tuple[int, float, int]] = []
        self.feats: list[np.ndarray] = []
        self.pending = 0  # rows sent to the batcher whose features have not come back yet
        self.ended = False


def _finish_rows(state: _FileState, clip_pool: bool) -> tuple[np.ndarray, list[store.FrameRow]]:
    feats = np.concatenate(state.feats, axis=0) if state.feats else np.zeros((0, 0), np.float32)
    rows: list[store.FrameRow] = []
    row_of: dict[int, int] = {}
    n = 0
    for frame_index, t, dup in state.entries:
        if dup < 0:
            row_of[frame_index] = n
            rows.append(store.FrameRow(frame_index, t, n, -1))
            n += 1
        else:
            rows.append(store.FrameRow(frame_index, t, row_of[dup], dup))
    if clip_pool and state.src.kind == "video" and rows:
        # mean over every sampled frame: a skipped duplicate counts with its representative's features
        pooled = feats[[r.row for r in rows]].mean(axis=0, keepdims=True)  # (1, D)
        return pooled, [store.FrameRow(-1, float(np.mean([r.timestamp for r in rows])), 0, -1)]
    return feats, rows


def embed_folder(
    input_path: str | Path,
    out_dir: str | Path,
    encoder: Any,
    *,
    backend: str = "auto",
    device: str | torch.device | None = None,
    options: EmbedOptions | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    merge: bool = True,
    backend_kwargs: dict[str, Any] | None = None,
) -> EmbedSummary:
    """Embed every image/video under ``input_path`` (folder, file, or UltraBench dir) into ``out_dir``.

    ``encoder``: a spec for :func:`usjepa_fast.embed.backends.open_backend` (timm name, checkpoint,
    ``.onnx``, ``.engine``) or an already opened backend. ``rank``/``world_size`` default to
    torchrun's environment; each rank embeds its deterministic share, and with ``merge=True`` rank 0
    writes ``index.csv`` after a barrier (without a process group, call :func:`merge` yourself
    once all ranks are done). Re-running resumes: unchanged files already committed are skipped.
    """
    from usjepa_fast.embed.backends import Backend, available_cpus, open_backend

    opts = options or EmbedOptions()
    if opts.batch_size < 1:
        raise UsfastError(f"batch size {opts.batch_size} must be >= 1")
    out_dir = Path(out_dir)
    env_rank, env_world = env_rank_world()
    rank = env_rank if rank is None else rank
    world_size = env_world if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise UsfastError(f"rank {rank} outside world size {world_size}")

    sources = list_sources(input_path, opts.kinds, opts.splits)
    if not sources:
        raise DataError(f"{input_path} holds no images or videos ({', '.join(opts.kinds)}); check the path")
    sizes = [s.path.stat().st_size for s in sources]
    mine = [sources[i] for i in assign_shares(sizes, world_size)[rank]]

    b: Backend = (
        encoder if isinstance(encoder, Backend) else open_backend(encoder, backend, device, **(backend_kwargs or {}))
    )
    t0 = time.perf_counter()

    # resume: skip files whose latest committed part has the same stamp
    by_hash = opts.change_check == "hash"
    previous = store.latest_stamps(store.read_parts(out_dir))
    todo: list[tuple[Source, store.FileStamp]] = []
    resumed = 0
    for src in mine:
        stamp = store.FileStamp.of(src.path, with_hash=by_hash)
        old = previous.get(src.rel)
        if old is not None and old[0].same_as(stamp, by_hash):
            resumed += 1
            continue
        if old is not None:
            log.info("embed: %s changed since it was embedded; embedding it again", src.rel)
        todo.append((src, stamp))
    summary = EmbedSummary(out_dir, b.name, rank, world_size, len(mine), 0, resumed, 0)
    writer = store.PartWriter(out_dir, rank, opts.dtype, opts.part_rows)
    if resumed:
        log.info("embed: %d of %d files already embedded (unchanged); resuming with %d", resumed, len(mine), len(todo))

    if todo:
        _run(b, todo, opts, writer, summary, available_cpus())
    writer.flush()
    store.write_failures(out_dir, rank, summary.failed)
    summary.seconds = time.perf_counter() - t0
    manifest = _manifest(b, opts, input_path)
    if merge:
        if world_size == 1:
            _, summary.index_rows = merge_outputs(out_dir, input_path, opts, manifest)
        elif barrier(world_size):
            if rank == 0:
                _, summary.index_rows = merge_outputs(out_dir, input_path, opts, manifest)
            barrier(world_size)  # nobody reads index.csv before rank 0 has written it
        else:
            log.warning(
                "embed: rank %d of %d finished without a process group; run "
                "`usfast embed --merge-only` once all ranks are done",
                rank,
                world_size,
            )
    if summary.failed:
        log.warning(
            "embed: %d file(s) could not be read and were skipped:\n  %s",
            len(summary.failed),
            "\n  ".join(f"{p}: {r}" for p, r in sorted(summary.failed.items())),
        )
    return summary


def _manifest(b: Any, opts: EmbedOptions, input_path: str | Path) -> dict[str, Any]:
    opts_d = asdict(opts)
    opts_d.pop("progress", None)
    return {"encoder": b.info.to_json(), "backend": b.name, "input": str(Path(input_path).resolve()), "options": opts_d}


def merge_outputs(
    out_dir: str | Path,
    input_path: str | Path | None = None,
    options: EmbedOptions | None = None,
    manifest: dict[str, Any] | None = None,
) -> tuple[Path, int]:
    """The merge step: one ``index.csv`` (+ ``embed.json``) over every rank's parts.

    With ``input_path``, rows of files no longer in the input are dropped. Returns (index, rows)."""
    out_dir = Path(out_dir)
    keep = None
    if input_path is not None:
        opts = options or EmbedOptions()
        keep = [s.rel for s in list_sources(input_path, opts.kinds, opts.splits)]
    previous = {}
    if (out_dir / "embed.json").is_file():
        import json

        previous = json.loads((out_dir / "embed.json").read_text())
    manifest = dict(manifest or {k: v for k, v in previous.items() if k in ("encoder", "backend", "input", "options")})
    failed = store.read_failures(out_dir)
    manifest["failed"] = failed
    manifest["files_failed"] = len(failed)
    return store.merge_index(out_dir, keep, manifest)


def _run(
    b: Any,
    todo: Sequence[tuple[Source, store.FileStamp]],
    opts: EmbedOptions,
    writer: store.PartWriter,
    summary: EmbedSummary,
    cpus: int,
) -> None:
    from usjepa_fast.data.video import FrameSampling

    sampling = FrameSampling(every_k=opts.every_k, fps=opts.fps, max_frames=opts.max_frames)
    device = b.device
    opts = replace(opts, decoder=_resolve_decoder(opts.decoder, device))
    decoder = _make_decoder(opts.decoder)
    n_workers = opts.decode_workers or (max(1, min(8, cpus // 2)) if device.type == "cuda" else max(1, cpus // 4))
    prep = _Preparer(b.info, opts, device, decoder, sampling)
    work: queue.Queue = queue.Queue()
    for fid, (src, _) in enumerate(todo):
        work.put((fid, src))
    for _ in range(n_workers):
        work.put(_STOP)
    out: queue.Queue = queue.Queue()  # bounded in frames by prep.credits
    threads = [
        threading.Thread(target=_worker, args=(prep, work, out), daemon=True, name=f"usfast-decode-{i}")
        for i in range(n_workers)
    ]
    for t in threads:
        t.start()

    states = {fid: _FileState(src, stamp) for fid, (src, stamp) in enumerate(todo)}
    pending: list[tuple[int, torch.Tensor]] = []  # (fid, (n, 3, S, S)) waiting for a batch
    pending_rows = 0
    bar = _progress(len(todo), opts.progress)
    t_start = time.perf_counter()
    stopped = 0

    def run_batch(limit: int) -> None:
        """Run the model on up to ``limit`` pending rows (a full batch, or the remainder at the end)."""
        nonlocal pending, pending_rows
        take, n = [], 0
        while pending and n < limit:
            fid, x = pending[0]
            k = min(limit - n, x.shape[0])
            take.append((fid, x[:k]))
            if k == x.shape[0]:
                pending.pop(0)
            else:
                pending[0] = (fid, x[k:])
            n += k
        pending_rows -= n
        batch = torch.cat([x for _, x in take]) if len(take) > 1 else take[0][1]  # (B, 3, S, S)
        feats = b(batch).detach().float().cpu().numpy()  # (B, D)
        pos = 0
        for fid, x in take:
            st = states.get(fid)
            k = x.shape[0]
            if st is not None:
                st.feats.append(feats[pos : pos + k])
                st.pending -= k
            pos += k
        summary.frames_embedded += n
        prep.credits.release(n)
        finish_ready()

    def finish_ready() -> None:
        for fid in [f for f, st in states.items() if st.ended and st.pending == 0]:
            st = states.pop(fid)
            feats, rows = _finish_rows(st, opts.clip_pool)
            if not rows:
                _fail(fid, st, f"{st.src.path}: no frames were sampled (check --every-k/--fps/--max-frames)")
                continue
            writer.add_file(st.src.rel, st.stamp, feats, rows)
            summary.files_embedded += 1
            summary.frames_duplicate += sum(1 for r in rows if r.duplicate_of >= 0)
            _tick()

    def _fail(fid: int, st: _FileState, reason: str) -> None:
        log.warning("embed: skipping %s: %s", st.src.rel, reason)
        summary.failed[st.src.rel] = reason
        summary.files_failed += 1
        _tick()

    def _tick() -> None:
        if bar is not None:
            dt = max(time.perf_counter() - t_start, 1e-9)
            bar.set_postfix_str(
                f"{(summary.frames_embedded + summary.frames_duplicate) / dt:.1f} frames/s", refresh=False
            )
            bar.update(1)

    try:
        while stopped < n_workers:
            msg = out.get()
            if msg is _STOP:
                stopped += 1
                continue
            if isinstance(msg, _Fail):
                st = states.pop(msg.fid, None)
                if st is not None:
                    dropped = sum(x.shape[0] for f, x in pending if f == msg.fid)
                    pending = [(f, x) for f, x in pending if f != msg.fid]
                    pending_rows -= dropped
                    if dropped:
                        prep.credits.release(dropped)
                    _fail(msg.fid, st, msg.reason)
                continue
            st = states.get(msg.fid)
            if st is None:
                continue
            if isinstance(msg, _End):
                st.ended = True
                finish_ready()
                continue
            st.entries.extend(msg.entries)
            x = msg.pixels
            if x is None and msg.raw is not None:
                x = _device_preprocess(msg.raw, b.info, device)
            if x is not None and x.shape[0]:
                pending.append((msg.fid, x))
                pending_rows += x.shape[0]
                st.pending += x.shape[0]
            while pending_rows >= opts.batch_size:
                run_batch(opts.batch_size)
        while pending_rows:
            run_batch(opts.batch_size)
        finish_ready()
    finally:
        if bar is not None:
            bar.close()
        # After an exception here (a crash, Ctrl-C): tell workers to stop after their current frame,
        # and keep draining the queue so that none stays blocked on a full one.
        prep.cancel.set()
        while any(t.is_alive() for t in threads):
            try:
                while True:
                    out.get_nowait()
            except queue.Empty:
                pass
            for t in threads:
                t.join(timeout=0.05)


def _device_preprocess(raw: tuple[torch.Tensor, torch.Tensor | None], info: Any, device: torch.device) -> torch.Tensor:
    from usjepa_fast.data.preprocess import preprocess_batch

    frames, masks = raw
    frames = frames.to(device, non_blocking=True)
    masks = masks.to(device, non_blocking=True) if masks is not None else None
    return preprocess_batch(frames, masks, info.input_size, tuple(info.mean), tuple(info.std))


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="file", desc="embed", dynamic_ncols=True, mininterval=0.5)
