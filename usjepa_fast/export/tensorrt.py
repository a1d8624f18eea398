"""TensorRT engines from usfast ONNX exports (TensorRT 10 and 11 Python APIs), and a runner.

Precision comes from the ONNX graph: the network is built *strongly typed* (TensorRT 11 knows no
other mode and has no FP16 builder flag; TensorRT 10 gets the ``STRONGLY_TYPED`` creation flag), so
an fp16 engine is built from an fp16 export (``usfast export --precision fp16``) and an fp32 engine
from an fp32 one. One optimisation profile covers the batch range (and, for an export with the
kept-token input ``keep (batch, tokens)`` int64, the token axis from 1 to every patch, tuned for
``opt_tokens``); a persistent timing cache makes rebuilds (other batch ranges, other files of the
same architecture) take seconds instead of minutes.

Everything here needs ``tensorrt`` and a CUDA GPU; imports are guarded and raise
:class:`BackendUnavailableError` with the fix.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from usjepa_fast.errors import BackendUnavailableError, UsfastError
from usjepa_fast.fileio import atomic_write_bytes

log = logging.getLogger("usfast")


def tensorrt_available() -> bool:
    """True when ``tensorrt`` imports and a CUDA device is visible."""
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means unavailable
        return False
    return torch.cuda.is_available()


def _import_trt():
    try:
        import tensorrt as trt
    except Exception as exc:  # noqa: BLE001
        raise BackendUnavailableError(
            f"TensorRT is not installed ({exc.__class__.__name__}); pip install 'usjepa-fast[gpu]' "
            "(tensorrt>=10) on a machine with an NVIDIA GPU, or use --backend onnx"
        ) from None
    if not torch.cuda.is_available():
        raise BackendUnavailableError("TensorRT needs a CUDA GPU and none is visible; use --backend onnx or torch")
    return trt


def _trt_major(trt: Any) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except ValueError:
        return 10


def _logger(trt: Any):
    return trt.Logger(trt.Logger.WARNING)


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path | None = None,
    *,
    min_batch: int = 1,
    opt_batch: int = 32,
    max_batch: int = 128,
    workspace_gib: float = 4.0,
    timing_cache: str | Path | None = None,
    opt_tokens: float = 0.6,
) -> Path:
    """Build and serialise an engine for ``onnx_path`` (a usfast export with its sidecar).

    ``timing_cache``: file read before and written after the build (default: ``timing.cache`` beside
    the engine). The ONNX sidecar is copied beside the engine (``<engine stem>.json``) with the engine
    facts added, so ``open_backend(engine)`` needs nothing else. ``opt_tokens``: the share of the
    patches a kept-token engine is tuned for (scan regions keep ~0.5-0.8). Returns the engine path.
    """
    from usjepa_fast.export.onnx_export import read_export_sidecar, sidecar_path_for, write_export_sidecar

    trt = _import_trt()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise UsfastError(f"ONNX file {onnx_path} does not exist; run `usfast export` first")
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise UsfastError(f"batch range min {min_batch} <= opt {opt_batch} <= max {max_batch} does not hold")
    info, export = read_export_sidecar(sidecar_path_for(onnx_path))
    engine_path = Path(engine_path) if engine_path is not None else onnx_path.with_suffix(".engine")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path = Path(timing_cache) if timing_cache is not None else engine_path.parent / "timing.cache"

    logger = _logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    if _trt_major(trt) < 11:
        # TensorRT 10: opt in to strong typing (precision from the graph's types, i.e. the fp16 export)
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UsfastError(f"TensorRT cannot parse {onnx_path}: {errors[:400]}; re-export with the other --exporter")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if export.get("precision", "fp32") == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        # TensorRT lets FP32 layers use TF32 (10-bit mantissa inputs) by default on Ampere and later,
        # which misses fp32's parity tolerance (check_engine: rel 1e-4): an fp32 engine is IEEE fp32
        config.clear_flag(trt.BuilderFlag.TF32)
    s = info.input_size
    profile = builder.create_optimization_profile()
    profile.set_shape(
        "pixels", (min_batch, info.in_chans, s, s), (opt_batch, info.in_chans, s, s), (max_batch, info.in_chans, s, s)
    )
    keep = export.get("keep")
    token_range = None
    if keep:  # the kept-token input: rows of 1..N patch indices (padded with -1)
        n = int(keep["max_tokens"])
        token_range = [1, max(1, min(n, round(opt_tokens * n))), n]
        profile.set_shape(
            str(keep.get("name", "keep")),
            (min_batch, token_range[0]),
            (opt_batch, token_range[1]),
            (max_batch, token_range[2]),
        )
    config.add_optimization_profile(profile)
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    # ignore_mismatch=True: a cache from another GPU/TensorRT version is discarded, not fatal
    config.set_timing_cache(cache, True)

    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UsfastError(f"TensorRT failed to build an engine from {onnx_path}; see the TensorRT log above")
    atomic_write_bytes(engine_path, bytes(serialized))
    updated = config.get_timing_cache()
    if updated is not None:
        atomic_write_bytes(cache_path, bytes(updated.serialize()))
    engine_export = dict(export)
    engine_export.update(
        kind="tensorrt",
        file=engine_path.name,
        onnx=onnx_path.name,
        tensorrt=str(trt.__version__),
        batch_range=[min_batch, opt_batch, max_batch],
        token_range=token_range,
        device=torch.cuda.get_device_name(),
    )
    sidecar = sidecar_path_for(engine_path)
    if sidecar.resolve() == sidecar_path_for(onnx_path).resolve():
        # engine beside its ONNX with the same stem: keep one sidecar, add the engine facts to it
        engine_export = {
            **export,
            "tensorrt_engine": {
                k: engine_export[k] for k in ("file", "tensorrt", "batch_range", "token_range", "device")
            },
        }
    write_export_sidecar(info, sidecar, engine_export)
    log.info(
        "tensorrt: built %s in %.1fs (batch %d..%d, timing cache %s)",
        engine_path,
        time.perf_counter() - t0,
        min_batch,
        max_batch,
        cache_path,
    )
    return engine_path


_TRT_TO_TORCH = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "BOOL": torch.bool,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
}


class TensorRTRunner:
    """Execute a serialised engine on torch CUDA tensors (``execute_async_v3`` on the current stream)."""

    def __init__(self, engine_path: str | Path, device: torch.device | str | None = None) -> None:
        trt = _import_trt()
        self.trt = trt
        self.device = torch.device(device or "cuda")
        engine_path = Path(engine_path)
        if not engine_path.is_file():
            raise UsfastError(f"TensorRT engine {engine_path} does not exist; build it with `usfast export --tensorrt`")
        with torch.cuda.device(self.device):
            runtime = trt.Runtime(_logger(trt))
            self.engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
            if self.engine is None:
                raise UsfastError(
                    f"TensorRT cannot load {engine_path} (built by another TensorRT version or GPU?); "
                    "rebuild it with `usfast export --tensorrt`"
                )
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._runtime = runtime  # the engine must not outlive its runtime

    def _dtype(self, name: str) -> torch.dtype:
        return _TRT_TO_TORCH[self.engine.get_tensor_dtype(name).name]

    def __call__(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``x (B, 3, S, S)`` (and, for a kept-token engine, ``keep (B, K)`` int64 padded with -1) ->
        every output as a CUDA tensor (pooled first)."""
        given = {"pixels": x} if keep is None else {"pixels": x, "keep": keep}
        if set(given) != set(self.inputs):
            raise UsfastError(f"TensorRT engine takes inputs {self.inputs}; got {sorted(given)}")
        bound = []  # keep the device copies alive until the launch
        for name in self.inputs:
            t = given[name].to(self.device, dtype=self._dtype(name), non_blocking=True).contiguous()
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
            bound.append(t)
        outs = []
        for out_name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(out_name))
            out = torch.empty(shape, dtype=self._dtype(out_name), device=self.device)
            self.context.set_tensor_address(out_name, out.data_ptr())
            outs.append(out)
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise UsfastError(
                "TensorRT execution failed (batch outside the engine's profile?); rebuild with a wider --max-batch"
            )
        return outs


def check_engine(
    engine_path: str | Path,
    onnx_path: str | Path | None = None,
    *,
    batch: int = 4,
    tolerance: tuple[float, float] | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Compare the engine's pooled output with ONNX Runtime on the same random batch.

    Raises :class:`~usjepa_fast.export.onnx_export.ExportParityError` beyond ``tolerance``
    (default: the export precision's tolerance). Returns the measured figures.
    """
    from usjepa_fast.export.onnx_export import (
        DEFAULT_TOLERANCE,
        ExportParityError,
        _ort_session,
        read_export_sidecar,
        sidecar_path_for,
    )

    engine_path = Path(engine_path)
    info, export = read_export_sidecar(sidecar_path_for(engine_path))
    onnx_path = (
        Path(onnx_path)
        if onnx_path is not None
        else engine_path.with_name(export.get("onnx", engine_path.with_suffix(".onnx").name))
    )
    runner = TensorRTRunner(engine_path)
    s = info.input_size
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, info.in_chans, s, s, generator=gen)
    feeds, keep = {"pixels": x.numpy()}, None
    if export.get("keep"):
        from usjepa_fast.export.onnx_export import example_keep

        n = int(export["keep"]["max_tokens"])
        keep = example_keep(batch, n, max(1, (2 * n) // 3), gen)
        feeds["keep"] = keep.numpy()
    ref = np.asarray(_ort_session(onnx_path).run(None, feeds)[0], dtype=np.float32)
    got = runner(x.cuda(), None if keep is None else keep.cuda())[0].float().cpu().numpy()
    max_abs = float(np.abs(got - ref).max())
    rel = max_abs / max(float(np.abs(ref).max()), 1e-12)
    cos = torch.nn.functional.cosine_similarity(torch.from_numpy(got), torch.from_numpy(ref), dim=1)
    figures = {"max_abs_err": max_abs, "rel_err": rel, "cosine_min": float(cos.min()), "batch": batch}
    rel_tol, cos_tol = tolerance or DEFAULT_TOLERANCE[export.get("precision", "fp32")]
    if not (rel <= rel_tol and figures["cosine_min"] >= cos_tol):
        raise ExportParityError(
            f"TensorRT engine {engine_path.name} differs from ONNX Runtime: relative error {rel:.2e} "
            f"(max {rel_tol:.0e}), "
            f"cosine {figures['cosine_min']:.6f} (min {cos_tol}); rebuild from an fp32 export"
        )
    return figures
