"""Frozen-encoder features from folders of ultrasound videos/images, on PyTorch, ONNX Runtime or TensorRT.

Entry points
------------
* :func:`embed_folder` (``usfast embed``): a folder (recursive), a single file or an UltraBench
  directory -> an output directory (below); resumable, rank-sharded under ``torchrun``.
* :func:`load` - read an output directory back: ``(features (N, D) float32, index rows)``.
* :func:`embed_split` - a labelled UltraBench split -> :class:`SplitEmbedding` ``(x (N, D), y (N,),
  paths, failed)`` in memory: the probe's feature extraction, on the same engine.
* :func:`open_backend` - any encoder spec -> a callable ``(B, 3, S, S) -> (B, D)`` backend.

Modules: ``options`` (:class:`EmbedOptions`, validated up front), ``sources`` (what to embed),
``decode`` (decode workers: one file -> chunks), ``engine`` (:func:`run_engine`: batching consumer
feeding a :class:`Sink`), ``folder`` (:func:`embed_folder`, :func:`merge_outputs`), ``dataset``
(:func:`embed_split`), ``store`` (output directory), ``fingerprint`` (feature cache key),
``backends``, ``redundancy``, ``sharding``.

Output directory layout (plain numpy + CSV + JSON; no usfast needed to read it)
-------------------------------------------------------------------------------
::

    OUT/
      index.csv        one row per sampled frame (all ranks), columns:
                         path          source file, relative to the input folder (POSIX separators)
                         frame_index   frame number in the clip (0 for images, -1 for a clip-pooled row)
                         timestamp     seconds from the clip start (0 for images)
                         shard         feature file holding the row, relative to OUT (parts/....npy)
                         row           row in that file
                         duplicate_of  -1 if this frame was embedded; else the frame_index of the
                                       embedded frame that stands for it (redundancy skipping), and
                                       shard/row point at that frame's features
      embed.json       manifest: encoder (input size, mean/std, pooling, width, source hash), backend,
                       options, row/file counts, feature width, failed files with reasons
      parts/rRRR-SSSSSS.npy   features, float16 (default) or float32, shape (rows, D)
      parts/rRRR-SSSSSS.csv   the part's own rows (path, frame_index, timestamp, row, duplicate_of)
      parts/rRRR-SSSSSS.json  commit marker: source files in the part with size/mtime (resume state)
      parts/failed-rRRR.json  files rank RRR could not read in its last run

Reading it without usfast::

    import csv, numpy as np
    rows = list(csv.DictReader(open("OUT/index.csv")))
    X = np.stack([np.load("OUT/" + r["shard"], mmap_mode="r")[int(r["row"])] for r in rows])

Pixels: gray frame -> percentile window inside the scan region (a ``<stem>.scanmask.png`` beside a
file or an UltraBench mask when present, else detected once per clip on its first sampled frame;
``scan_region=False`` uses the whole frame) -> antialiased resize -> encoder mean/std, identical to
the data layer's evaluation preprocessing. Redundancy skipping (``redundancy_threshold``, off by
default) compares a 32 px block-mean thumbnail of each frame inside the scan region with the last
embedded frame and skips frames whose mean absolute difference is below the threshold (0-255 gray
levels; 1.0-2.0 catches a resting probe); skipped frames stay in the index with ``duplicate_of``.

Writes are atomic (temp file + rename, marker last); re-running the same command skips files whose
size and mtime (or content hash with ``change_check="hash"``) match the committed record and
re-embeds changed ones (the newest part wins in the merge). Unreadable files are logged, counted
and listed in ``embed.json``; the run goes on.
"""

from usjepa_fast.embed.backends import Backend, OnnxBackend, TensorRTBackend, TorchBackend, open_backend
from usjepa_fast.embed.dataset import SplitEmbedding, embed_split
from usjepa_fast.embed.engine import EngineStats, MemorySink, PartSink, Sink, run_engine
from usjepa_fast.embed.fingerprint import feature_key
from usjepa_fast.embed.folder import EmbedSummary, embed_folder, merge_outputs
from usjepa_fast.embed.options import EmbedOptions
from usjepa_fast.embed.redundancy import ChangeDetector
from usjepa_fast.embed.store import INDEX_COLUMNS, IndexRow, load, read_index

__all__ = [
    "INDEX_COLUMNS",
    "Backend",
    "ChangeDetector",
    "EmbedOptions",
    "EmbedSummary",
    "EngineStats",
    "IndexRow",
    "MemorySink",
    "OnnxBackend",
    "PartSink",
    "Sink",
    "SplitEmbedding",
    "TensorRTBackend",
    "TorchBackend",
    "embed_folder",
    "embed_split",
    "feature_key",
    "load",
    "merge_outputs",
    "open_backend",
    "read_index",
    "run_engine",
]
