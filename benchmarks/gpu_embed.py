"""Frozen-feature throughput on one GPU: ``usfast embed`` backends vs timm eager fp32 (step 4 of the GPU check).

For each encoder (ViT-B/16 and ViT-S/16 at 224 px, random init: throughput does not depend on the
weights), rows of model-only frames/s on pre-processed frames already on the GPU (the ceiling),
batch ``--batch``:

  timm_eager_fp32      the peer: the timm model eager in fp32 under ``inference_mode`` (torch's
                       default matmul precision, TF32 off), what a hand-written script runs
  torch_bf16_eager     ``open_backend(..., "torch", "cuda", precision="bf16")``: autocast bf16
  torch_bf16_compiled  the same with ``compile=True`` (``torch.compile(dynamic=True)``)
  onnx_cuda_fp32       ONNX Runtime's CUDA provider on the usfast export (skipped, with a line, when
                       the image's onnxruntime has no CUDAExecutionProvider)
  tensorrt_fp16        TensorRT (skipped, with a line, when ``tensorrt`` does not import)

then end to end on synthetic H.264 clips (PyAV decode, preprocessing, batching, shards, index):

  e2e_peer_fp32        the hand-written loop of ``embed_throughput.py`` (PyAV + timm eager fp32)
  e2e_usfast_bf16      ``embed_folder`` with the fastest torch bf16 backend of the ceiling rows

Ratios: each row / timm_eager_fp32 of the same model (model-only), e2e_usfast / e2e_peer, and the
pipeline efficiency e2e_usfast / its own ceiling (what decode costs on this host). Rows are printed
as they are measured, each under its own time limit; compiled rows get ``--compile-limit``.
Last line: JSON.

``--dry-run``: the same rows on the CPU at tiny sizes (ViT-Ti/16 only, 32 px, 8 frames, one 8-frame clip; the
compiled row compiles with dynamo's ``eager`` backend; ONNX Runtime on its CPU provider): proves
every row starts, no figure.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ (for _steps, embed_throughput)

from _steps import emit, finish, guarded_row, start  # noqa: E402

MODELS = {"vit_base_patch16_224": "ViT-B/16", "vit_small_patch16_224": "ViT-S/16"}
NAMES = {**MODELS, "vit_tiny_patch16_224": "ViT-Ti/16"}  # + the dry run's encoder
CEILING_ROWS = ("timm_eager_fp32", "torch_bf16_eager", "torch_bf16_compiled", "onnx_cuda_fp32", "tensorrt_fp16")


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batch", type=int, default=256, help="frames per inference call")
    p.add_argument("--frames", type=int, default=1024, help="pre-processed frames per ceiling row")
    p.add_argument("--clips", type=int, default=8, help="synthetic clips for the end-to-end rows")
    p.add_argument("--clip-frames", type=int, default=64)
    p.add_argument("--rows", default=",".join(CEILING_ROWS))
    p.add_argument("--row-limit", type=float, default=30.0, help="seconds per row")
    p.add_argument("--compile-limit", type=float, default=60.0, help="seconds per compiled / exported row")
    p.add_argument("--dry-run", action="store_true")
    return p.parse_args()


def open_row(row: str, model: str, device: str, work: Path, img_size: int | None, dry: bool):
    """The backend of one ceiling row, or a string saying why this machine cannot run it."""
    import torch

    from usjepa_fast.embed import open_backend
    from usjepa_fast.embed.backends import TorchBackend
    from usjepa_fast.export.tensorrt import tensorrt_available
    from usjepa_fast.models.resolve import resolve_encoder

    if row == "timm_eager_fp32":
        return TorchBackend(resolve_encoder(model, img_size=img_size), device, "fp32")
    if row == "torch_bf16_eager":
        return open_backend(model, "torch", device, precision="bf16", img_size=img_size)
    if row == "torch_bf16_compiled":
        b = open_backend(model, "torch", device, precision="bf16", img_size=img_size, compile=not dry)
        if dry:  # what compile=True does, with dynamo's eager backend (no inductor C++ codegen on 2 cores)
            inner = getattr(b, "candidate", b)  # the parity gate wraps non-fp32 backends
            inner._fn = torch.compile(inner.encoder, dynamic=True, backend="eager")
            b.name = inner.name = inner.name.replace("eager", "compiled(dynamo eager backend)")
        return b
    if row == "onnx_cuda_fp32":
        import onnxruntime as ort

        if not dry and "CUDAExecutionProvider" not in ort.get_available_providers():
            providers = ", ".join(ort.get_available_providers())
            return f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (it has {providers}): not in this image"
        kw = {"precision": "fp32", "img_size": img_size, "cache_dir": work / "cache", "exporter": "torchscript"}
        return open_backend(model, "onnx", device, **kw)
    if row == "tensorrt_fp16":
        if not tensorrt_available():
            return "tensorrt does not import here (or no CUDA device): not in this image"
        return open_backend(model, "tensorrt", device, precision="fp16", img_size=img_size, cache_dir=work / "cache")
    raise ValueError(f"unknown row {row!r}; use one of {', '.join(CEILING_ROWS)}")


def print_row(r: dict) -> None:
    lead = f"{r['model']:<9} {r['row']:<20}"
    if "timeout" in r or "error" in r:
        emit(f"{lead} {'TIMEOUT' if 'timeout' in r else 'failed'}: {r.get('timeout') or r.get('error')}")
    elif "skipped" in r:
        emit(f"{lead} skipped: {r['skipped']}")
    else:
        opened = f"{r['open_s']:>7.1f}" if "open_s" in r else f"{'-':>7}"
        emit(f"{lead} {r['frames_per_s']:>10.1f} {opened}  {r.get('backend', '')}")


def main() -> int:
    args = _parse()
    import torch

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from embed_throughput import ceiling, make_clips, peer, usfast_embed

    from usjepa_fast.data.preprocess import preprocess_batch
    from usjepa_fast.models.resolve import resolve_encoder

    dry = args.dry_run or not torch.cuda.is_available()
    if dry:
        args.batch, args.frames, args.clips, args.clip_frames = 4, 8, 1, 8
        if args.models == ",".join(MODELS):  # one small encoder runs every code path (ViT-B's export: ~40 s here)
            args.models = "vit_tiny_patch16_224"
    device = "cpu" if dry else "cuda"
    img_size = 32 if dry else None
    t0 = time.perf_counter()
    facts = start("embed", "frozen-feature throughput, ViT-B/16 and ViT-S/16, vs timm eager fp32", dry)
    emit(f"# TF32 matmul allowed: {torch.backends.cuda.matmul.allow_tf32} (the fp32 peer runs torch's default)")
    work = Path(tempfile.mkdtemp(prefix="usfast_gpu_embed_"))
    rows: list[dict] = []
    try:
        clips_made: dict = {}
        with guarded_row(clips_made, args.row_limit):  # PyAV writes them: an image without av loses e2e only
            clips = make_clips(work / "synth", args.clips, args.clip_frames, 64 if dry else 256)
            files = sorted(p for p in clips.iterdir() if p.suffix in (".mp4", ".webm", ".avi"))
        no_clips = clips_made.get("error") or clips_made.get("timeout")
        emit(
            f"# batch {args.batch}; ceiling on {args.frames} pre-processed frames on the {device}; end to end on "
            + (f"no clips ({no_clips})" if no_clips else f"{len(files)} clips x {args.clip_frames} frames")
        )
        emit(f"{'model':<9} {'row':<20} {'frames/s':>10} {'open s':>7}  backend")
        for model in args.models.split(","):
            info = resolve_encoder(model, img_size=img_size).info
            gen = torch.Generator().manual_seed(0)
            raw = torch.randint(0, 256, (args.frames, 64, 64), generator=gen, dtype=torch.uint8)
            x = preprocess_batch(raw, None, info.input_size, info.mean, info.std).to(device)  # (N, 3, S, S)
            fastest: tuple[float, object] | None = None
            for row in args.rows.split(","):
                record: dict = {"model": NAMES.get(model, model), "row": row, "kind": "model_only"}
                limit = args.compile_limit if row in ("torch_bf16_compiled", "onnx_cuda_fp32", "tensorrt_fp16") else (
                    args.row_limit
                )  # fmt: skip
                backend = None
                with guarded_row(record, limit):
                    t = time.perf_counter()
                    backend = open_row(row, model, device, work, img_size, dry)
                    if isinstance(backend, str):
                        record["skipped"], backend = backend, None
                    else:
                        record["backend"] = backend.name
                        record["frames_per_s"] = round(ceiling(backend, x, args.batch), 1)
                        record["open_s"] = round(time.perf_counter() - t, 1)  # open + warm-up + timed frames
                print_row(record)
                rows.append(record)
                better = fastest is None or record.get("frames_per_s", 0.0) > fastest[0]
                if "frames_per_s" in record and row.startswith("torch_bf16") and better:
                    fastest = (record["frames_per_s"], backend)
            del x
            # end to end: the peer's loop, then embed_folder with the fastest torch bf16 backend
            for row in ("e2e_peer_fp32", "e2e_usfast_bf16"):
                record = {"model": NAMES.get(model, model), "row": row, "kind": "end_to_end"}
                if no_clips:
                    record["skipped"] = f"no synthetic clips: {no_clips}"
                elif row == "e2e_usfast_bf16" and fastest is None:
                    record["skipped"] = "no torch bf16 ceiling row finished"
                else:
                    with guarded_row(record, args.row_limit):
                        if row == "e2e_peer_fp32":
                            encoder = resolve_encoder(model, img_size=img_size).eval().to(device)
                            seconds, _, n = peer(files, encoder, batch=args.batch)
                            record.update(
                                frames=n, frames_per_s=round(n / seconds, 1), backend="PyAV + timm eager fp32"
                            )
                        else:
                            seconds, summary = usfast_embed(clips, work / "out", fastest[1], batch_size=args.batch)
                            n = summary.frames_embedded
                            record.update(frames=n, frames_per_s=round(n / seconds, 1), backend=fastest[1].name,
                                          ceiling_frames_per_s=fastest[0])  # fmt: skip
                print_row(record)
                rows.append(record)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ratios = {}
    for model in {r["model"] for r in rows}:
        got = {r["row"]: r["frames_per_s"] for r in rows if r["model"] == model and "frames_per_s" in r}
        peer_fps = got.get("timm_eager_fp32")
        for row, fps in got.items():
            if peer_fps and row in CEILING_ROWS and row != "timm_eager_fp32":
                ratios[f"{model} {row} vs timm_eager_fp32"] = round(fps / peer_fps, 3)
        if "e2e_usfast_bf16" in got and "e2e_peer_fp32" in got:
            ratios[f"{model} e2e usfast vs e2e peer"] = round(got["e2e_usfast_bf16"] / got["e2e_peer_fp32"], 3)
            e2e = next(r for r in rows if r["model"] == model and r["row"] == "e2e_usfast_bf16")
            ratios[f"{model} e2e usfast vs its ceiling"] = round(
                got["e2e_usfast_bf16"] / e2e["ceiling_frames_per_s"], 3
            )
    for key, value in sorted(ratios.items()):
        emit(f"{'# dry run, not a figure: ' if dry else ''}{key}: {value}x")
    failed = [r for r in rows if "error" in r]
    status = "failed" if failed or not rows else "partial" if any("timeout" in r for r in rows) else "ok"
    payload = {"args": vars(args), "rows": rows, "ratios": ratios}
    return finish("embed", facts, dry, time.perf_counter() - t0, status, **payload)


if __name__ == "__main__":
    sys.exit(main())
