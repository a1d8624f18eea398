"""The embed engine: sources -> decode workers -> cross-file batches -> backend -> a sink.

The one implementation of "frozen features of frames/images" in usfast: ``usfast embed``
(:func:`usjepa_fast.embed.embed_folder`, sink = the part writer of an output folder) and the probe's
feature extraction (:func:`usjepa_fast.embed.embed_split`, sink = an in-memory collector) both call
:func:`run_engine`, so they share batching, backend, decoder choice and preprocessing.

Data flow (one process)::

    sources (fid = position in the list)
      -> decode workers (threads, embed/decode.py): read/decode, scan region, change detector,
         preprocessing -> Chunk messages, bounded in frames by credits
      -> this thread: cross-file batches of batch_size -> backend (B, 3, S, S) -> (B, D)
      -> per finished file: sink.add(fid, src, features (n, D) float32, rows) | sink.fail(...)

``tokens="scan"``: every chunk carries the patches of its file's scan region (``Chunk.keep``); a batch
of frames from several files is one ragged batch (:class:`~usjepa_fast.masking.RaggedIndex`: each
frame its own patch count, packed) and the backend runs ``backend(x, keep)``: only those patches go
through the encoder, the pooled feature averages them. Redundant-frame skipping happens before
(skipped frames never reach a batch), so the two savings multiply.

Decoding overlaps inference: PyAV, numpy and torch release the GIL in their C loops, so a worker
decodes and preprocesses the next frames while ONNX Runtime/PyTorch run the current batch; at most
``prefetch`` batches of frames wait ahead of inference. A file whose frames cannot be read is
logged, counted and handed to ``sink.fail``; the run goes on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from usjepa_fast.embed import store
from usjepa_fast.embed.decode import (
    STOP,
    Abort,
    Chunk,
    End,
    Fail,
    FilePreparer,
    ImageReader,
    PixelTransform,
    PixelTransformError,
    apply_pixel_transform,
    decode_worker,
    preprocess_on_device,
)
from usjepa_fast.embed.options import EmbedOptions
from usjepa_fast.embed.sources import Source
from usjepa_fast.errors import BackendUnavailableError, UsfastError

log = logging.getLogger("usfast")


class Sink(Protocol):
    """Where finished files go. ``features (n, D)`` float32; ``rows`` index into them (0..n-1)."""

    def add(self, fid: int, src: Source, features: np.ndarray, rows: list[store.FrameRow]) -> None: ...

    def fail(self, fid: int, src: Source, reason: str) -> None: ...


class PartSink:
    """Folder output: every finished file goes to the rank's :class:`~usjepa_fast.embed.store.PartWriter`
    with the stamp it had when the run started (resume state) and, when ``status_of(fid, src)`` is
    given, how completely it decoded; failures are kept in ``.failed`` (rel path -> reason), so an
    interrupted run still knows them."""

    def __init__(
        self,
        writer: store.PartWriter,
        stamps: Sequence[store.FileStamp],
        status_of: Callable[[int, Source], store.FileStatus] | None = None,
    ) -> None:
        self.writer = writer
        self.stamps = list(stamps)
        self.status_of = status_of
        self.failed: dict[str, str] = {}
        self.added: list[str] = []

    def add(self, fid: int, src: Source, features: np.ndarray, rows: list[store.FrameRow]) -> None:
        status = self.status_of(fid, src) if self.status_of is not None else None
        self.writer.add_file(src.rel, self.stamps[fid], features, rows, status)
        self.added.append(src.rel)

    def fail(self, fid: int, src: Source, reason: str) -> None:
        self.failed[src.rel] = reason


class MemorySink:
    """In-memory collector (probes): features and rows per fid, failures per fid."""

    def __init__(self) -> None:
        self.features: dict[int, np.ndarray] = {}
        self.rows: dict[int, list[store.FrameRow]] = {}
        self.failed: dict[int, str] = {}

    def add(self, fid: int, src: Source, features: np.ndarray, rows: list[store.FrameRow]) -> None:
        self.features[fid] = features
        self.rows[fid] = rows

    def fail(self, fid: int, src: Source, reason: str) -> None:
        self.failed[fid] = reason


@dataclass
class EngineStats:
    files_embedded: int = 0
    files_failed: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # source rel path -> reason
    frames_embedded: int = 0  # frames that went through the model
    frames_duplicate: int = 0  # sampled frames skipped as redundant (still in the rows)
    seconds: float = 0.0
    tokens_kept: int = 0  # tokens="scan": patch tokens that went through the encoder ...
    tokens_total: int = 0  # ... out of the frames' full grids (kept fraction = kept / total)


class _FileState:
    __slots__ = ("src", "entries", "feats", "pending", "ended")

    def __init__(self, src: Source) -> None:
        self.src = src
        self.entries: list[tuple[int, float, int]] = []
        self.feats: list[np.ndarray] = []
        self.pending = 0  # rows sent to the batcher whose features have not come back yet
        self.ended = False


def finish_rows(state: _FileState, clip_pool: bool) -> tuple[np.ndarray, list[store.FrameRow]]:
    """A finished file's features ``(n, D)`` and its rows (duplicates point at their representative)."""
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


def open_runner(
    encoder: Any,
    backend: str,
    device: str | torch.device | None,
    backend_kwargs: dict[str, Any] | None,
    tokens: str = "all",
) -> Any:
    """``encoder`` as is when it is already an opened backend/encoder (``.info``, ``.name``,
    ``.device``, callable), else :func:`~usjepa_fast.embed.backends.open_backend` of the spec
    (``tokens="scan"``: one that runs kept tokens, refused in one line where it cannot)."""
    from usjepa_fast.embed.backends import Backend, open_backend

    if isinstance(encoder, Backend):
        return encoder
    return open_backend(encoder, backend, device, **{"tokens": tokens, **(backend_kwargs or {})})


def make_decoder(name: str, device: torch.device) -> Any:
    """The decoder for ``name`` from the one registry (``data.video.get_decoder``); one FFmpeg thread
    per clip: our parallelism is across files, and on small CPUs extra FFmpeg threads only fight the
    inference threads."""
    from usjepa_fast.data.video import get_decoder, resolve_decoder

    concrete = resolve_decoder(name, device)
    if concrete == "dali-gpu" and device.type != "cuda":
        raise BackendUnavailableError(
            "--decoder dali-gpu needs the inference backend on a CUDA device; use --decoder pyav"
        )
    return get_decoder(concrete, device, threads=1)


def run_engine(
    backend: Any,
    sources: Sequence[Source],
    opts: EmbedOptions,
    sink: Sink,
    *,
    reader: ImageReader | None = None,
    pixel_transform: PixelTransform | None = None,
) -> EngineStats:
    """Embed ``sources`` with ``backend`` (``.info``, ``.name``, ``.device``, ``__call__((B, 3, S, S)) ->
    (B, D)``) and hand each finished file to ``sink``.

    ``reader(fid, src) -> (gray, mask)`` reads image sources (default: ``sources.read_image``);
    ``pixel_transform(pixels, scan masks (n, S, S), fid) -> pixels`` runs on every preprocessed chunk.
    Workers stop and the queue is drained on any exception (a crash, Ctrl-C), which propagates.
    """
    from usjepa_fast.embed.backends import available_cpus, keep_unsupported
    from usjepa_fast.masking.ragged import RaggedIndex

    opts.validate()
    stats = EngineStats()
    if opts.tokens == "scan" and keep_unsupported(backend) is not None:
        raise UsfastError(f"--tokens scan: {keep_unsupported(backend)}; use --tokens all")
    if not sources:
        return stats
    t0 = time.perf_counter()
    device = torch.device(backend.device)
    decoder = None if all(s.kind == "image" for s in sources) else make_decoder(opts.decoder, device)
    cpus = available_cpus()
    n_workers = opts.decode_workers or (max(1, min(8, cpus // 2)) if device.type == "cuda" else max(1, cpus // 4))
    n_workers = max(1, min(n_workers, len(sources)))
    prep = FilePreparer(backend.info, opts, device, decoder, reader, pixel_transform)
    work: queue.Queue = queue.Queue()
    for fid, src in enumerate(sources):
        work.put((fid, src))
    for _ in range(n_workers):
        work.put(STOP)
    out: queue.Queue = queue.Queue()  # bounded in frames by prep.credits
    threads = [
        threading.Thread(target=decode_worker, args=(prep, work, out), daemon=True, name=f"usfast-decode-{i}")
        for i in range(n_workers)
    ]
    for t in threads:
        t.start()

    states = {fid: _FileState(src) for fid, src in enumerate(sources)}
    ended: set[int] = set()  # files whose worker is done; finished once their last batch is back
    pending: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []  # (fid, (n, 3, S, S), keep) waiting
    grid = int(backend.info.input_size) // int(getattr(backend.info, "patch_size", 16) or 16)
    pending_rows = 0
    bar = _progress(len(sources), opts.progress)
    stopped = 0

    def tick() -> None:
        if bar is not None:
            dt = max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix_str(f"{(stats.frames_embedded + stats.frames_duplicate) / dt:.1f} frames/s", refresh=False)
            bar.update(1)

    def fail(fid: int, st: _FileState, reason: str) -> None:
        log.warning("embed: skipping %s: %s", st.src.rel, reason)
        stats.failed[st.src.rel] = reason
        stats.files_failed += 1
        sink.fail(fid, st.src, reason)
        tick()

    def finish_ready() -> None:
        # only ended files are scanned (a few at a time), not every file of the run
        for fid in sorted(f for f in ended if states[f].pending == 0):
            ended.discard(fid)
            st = states.pop(fid)
            feats, rows = finish_rows(st, opts.clip_pool)
            if not rows:
                fail(fid, st, f"{st.src.path}: no frames were sampled (check --every-k/--fps/--max-frames)")
                continue
            sink.add(fid, st.src, feats, rows)
            stats.files_embedded += 1
            stats.frames_duplicate += sum(1 for r in rows if r.duplicate_of >= 0)
            tick()

    def run_batch(limit: int) -> None:
        """Run the model on up to ``limit`` pending rows (a full batch, or the remainder at the end)."""
        nonlocal pending, pending_rows
        take, n = [], 0
        while pending and n < limit:
            fid, x, keep = pending[0]
            k = min(limit - n, x.shape[0])
            take.append((fid, x[:k], keep))
            if k == x.shape[0]:
                pending.pop(0)
            else:
                pending[0] = (fid, x[k:], keep)
            n += k
        pending_rows -= n
        batch = torch.cat([x for _, x, _ in take]) if len(take) > 1 else take[0][1]  # (B, 3, S, S)
        if opts.tokens == "scan":
            # one ragged batch: frame i keeps its file's patches (lengths on the host: no device sync)
            idx = torch.cat([keep.repeat(x.shape[0]) for _, x, keep in take])
            lens = torch.tensor([int(keep.numel()) for _, x, keep in take for _ in range(x.shape[0])])
            stats.tokens_kept += int(lens.sum())
            stats.tokens_total += n * grid * grid
            y = backend(batch, RaggedIndex(idx, lens))
        else:
            y = backend(batch)
        if y.ndim != 2 or y.shape[0] != n:
            raise UsfastError(
                f"encoder {backend.name} returned shape {tuple(y.shape)} for {n} images; expected (B, D) pooled"
            )
        feats = y.detach().float().cpu().numpy()  # (B, D)
        pos = 0
        for fid, x, _ in take:
            st = states.get(fid)
            k = x.shape[0]
            if st is not None:
                st.feats.append(feats[pos : pos + k])
                st.pending -= k
            pos += k
        stats.frames_embedded += n
        prep.credits.release(n)
        finish_ready()

    try:
        while stopped < n_workers:
            msg = out.get()
            if msg is STOP:
                stopped += 1
                continue
            if isinstance(msg, Abort):
                raise msg.error
            if isinstance(msg, Fail):
                st = states.pop(msg.fid, None)
                ended.discard(msg.fid)
                if st is not None:
                    dropped = sum(x.shape[0] for f, x, _ in pending if f == msg.fid)
                    pending = [p for p in pending if p[0] != msg.fid]
                    pending_rows -= dropped
                    if dropped:
                        prep.credits.release(dropped)
                    fail(msg.fid, st, msg.reason)
                continue
            st = states.get(msg.fid)
            if st is None:
                continue
            if isinstance(msg, End):
                st.ended = True
                ended.add(msg.fid)
                finish_ready()
                continue
            chunk: Chunk = msg
            st.entries.extend(chunk.entries)
            x = chunk.pixels
            if x is None and chunk.raw is not None:
                x = preprocess_on_device(chunk.raw, backend.info, device)
                try:
                    x = apply_pixel_transform(pixel_transform, x, chunk.raw[1], chunk.fid)
                except PixelTransformError as exc:
                    raise exc.error from None
            if x is not None and x.shape[0]:
                if opts.tokens == "scan" and chunk.keep is None:
                    raise UsfastError(f"decode worker sent frames of {st.src.rel} without their scan-region patches")
                pending.append((chunk.fid, x, chunk.keep))
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
    stats.seconds = time.perf_counter() - t0
    if stats.tokens_total:
        log.info(
            "embed: --tokens scan ran %d of %d patch tokens (%.1f%%) at patch coverage %.2f",
            stats.tokens_kept,
            stats.tokens_total,
            100.0 * stats.tokens_kept / stats.tokens_total,
            opts.patch_coverage,
        )
    return stats


def _progress(total: int, enabled: bool):
    from usjepa_fast.progress import progress

    return progress(total, "embed", "file", enabled=enabled)  # a bar on a terminal, log lines otherwise
