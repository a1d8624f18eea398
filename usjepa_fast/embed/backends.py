"""Inference backends for frozen encoders: PyTorch, ONNX Runtime, TensorRT; ``auto`` picks the fastest.

Every backend is a callable ``backend(x (B, 3, S, S) float32) -> (B, D) float32`` (a torch tensor on
``backend.device``) with ``.info`` (:class:`~usjepa_fast.models.frozen.EncoderInfo`: input size,
mean/std, pooling, width) and ``.name`` (what runs, e.g. ``onnx-cpu-fp32`` or ``torch-cuda-bf16``).

``open_backend(spec, backend="auto")`` runs an ``.onnx`` export (sidecar beside it) or a TensorRT
``.engine`` itself and opens every other spec form (timm name, ``random:SPEC``, usfast
``.safetensors`` / run dir, checkpoint + ``arch``, ``zoo:NAME=PATH``) through the one resolver,
:func:`usjepa_fast.models.resolve.resolve_encoder`. For a
PyTorch-loadable spec the ONNX and TensorRT forms are produced on the fly through
:func:`usjepa_fast.export.export_onnx` (parity-checked) and cached by the weights' hash.

``auto``: with a TensorRT engine or an ``.onnx`` file, that file's runtime. Otherwise on a CUDA GPU:
TensorRT when installed (an fp16 engine, built once and cached), else PyTorch with bf16 autocast;
on the CPU: PyTorch eager vs ONNX Runtime are *timed* on one batch and the faster is used (ORT's
fused graph usually wins on x86; the choice and the timings are logged).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from usjepa_fast.errors import BackendUnavailableError, UsfastError

log = logging.getLogger("usfast")

BackendName = Literal["auto", "torch", "onnx", "tensorrt"]
BACKENDS = ("auto", "torch", "onnx", "tensorrt")


@runtime_checkable
class Backend(Protocol):
    info: Any  # EncoderInfo
    name: str
    device: torch.device

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def available_cpus() -> int:
    """CPUs this process may run on (cgroup/affinity aware, unlike os.cpu_count())."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# ----------------------------------------------------------------------------------------------
# PyTorch


class TorchBackend:
    """A FrozenEncoder in inference mode; ``precision`` bf16/fp16 = autocast (CUDA only);
    ``compile=True`` wraps it in ``torch.compile`` (worth it for long runs on a GPU)."""

    def __init__(
        self,
        encoder: nn.Module,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        compile: bool = False,
        threads: int | None = None,
    ) -> None:
        self.device = torch.device(device)
        if precision not in ("fp32", "bf16", "fp16"):
            raise UsfastError(f"torch backend precision {precision!r}; use fp32, bf16 or fp16")
        if precision != "fp32" and self.device.type != "cuda":
            raise UsfastError(
                f"--precision {precision} is for CUDA GPUs (this x86 CPU has no fast half-precision "
                "matmul); use fp32 on the CPU"
            )
        if threads:
            torch.set_num_threads(threads)
        self.info = encoder.info
        self.encoder = encoder.eval().to(self.device)
        self._fn = torch.compile(self.encoder, dynamic=True) if compile else self.encoder
        self._autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.name = f"torch-{'compiled' if compile else 'eager'}-{self.device.type}-{precision}"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        with torch.inference_mode():
            if self._autocast is not None:
                with torch.autocast(self.device.type, dtype=self._autocast):
                    out = self._fn(x)
            else:
                out = self._fn(x)
        return out.float()  # (B, D)


# ----------------------------------------------------------------------------------------------
# ONNX Runtime


class OnnxBackend:
    """ONNX Runtime session over a usfast export.

    CPU: all graph optimisations, ``intra_op_num_threads`` = the CPUs we may use (or ``threads``),
    one inter-op thread (a ViT graph is a chain, parallel branches buy nothing) and **no spinning**:
    spinning worker threads would steal the cores our decode thread needs between batches. CUDA:
    TensorRT then CUDA execution providers when the GPU and the provider libraries are present,
    inputs/outputs bound to torch CUDA memory (no host round trip).

    ``fuse=True`` (CPU, fp32 graphs): run ONNX Runtime's offline transformer optimizer once
    (SkipLayerNormalization / BiasGelu contrib-op fusions that the session-time optimizer misses on
    exported ViTs; measured ~1.2x on 2 AVX2 cores), re-check the fused graph against the exported one
    and cache it; any failure falls back to the exported graph with a warning.
    """

    def __init__(
        self,
        onnx_path: str | Path,
        device: torch.device | str = "cpu",
        threads: int | None = None,
        spin: bool = False,
        trt_cache_dir: str | Path | None = None,
        fuse: bool = True,
        cache_dir: str | Path | None = None,
    ) -> None:
        import onnxruntime as ort

        from usjepa_fast.export.onnx_export import read_export_sidecar, sidecar_path_for

        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise UsfastError(f"ONNX file {onnx_path} does not exist; export one with `usfast export`")
        self.info, self.export = read_export_sidecar(sidecar_path_for(onnx_path))
        self.device = torch.device(device)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        so.inter_op_num_threads = 1
        so.intra_op_num_threads = threads or available_cpus()
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        providers: list[Any] = ["CPUExecutionProvider"]
        self.fused = False
        if self.device.type != "cuda" and fuse and self.export.get("precision", "fp32") == "fp32":
            fused = fused_cpu_graph(onnx_path, self.info, cache_dir)
            if fused is not None:
                onnx_path, self.fused = fused, True
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise BackendUnavailableError("--device cuda but no CUDA GPU is visible; use --device cpu")
            avail = set(ort.get_available_providers())
            dev_id = self.device.index or 0
            gpu: list[Any] = []
            if "TensorrtExecutionProvider" in avail:
                cache = str(Path(trt_cache_dir or onnx_path.parent / "ort_trt_cache"))
                gpu.append(
                    (
                        "TensorrtExecutionProvider",
                        {
                            "device_id": dev_id,
                            "trt_engine_cache_enable": True,
                            "trt_engine_cache_path": cache,
                            "trt_timing_cache_enable": True,
                        },
                    )
                )
            if "CUDAExecutionProvider" in avail:
                gpu.append(("CUDAExecutionProvider", {"device_id": dev_id}))
            if not gpu:
                raise BackendUnavailableError(
                    "this onnxruntime has no CUDA provider; pip uninstall -y onnxruntime onnxruntime-gpu && "
                    "pip install onnxruntime-gpu (the CPU and GPU wheels cannot coexist)"
                )
            providers = gpu + providers
        try:
            self.session = ort.InferenceSession(str(onnx_path), so, providers=providers)
        except Exception as exc:  # noqa: BLE001 - TRT EP fails to load without libnvinfer; retry with CUDA only
            if self.device.type != "cuda":
                raise UsfastError(f"ONNX Runtime cannot load {onnx_path} ({exc}); re-export it") from None
            log.warning("onnx: TensorRT provider unavailable (%s); using the CUDA provider", str(exc).splitlines()[0])
            providers = [p for p in providers if not (isinstance(p, tuple) and p[0] == "TensorrtExecutionProvider")]
            self.session = ort.InferenceSession(str(onnx_path), so, providers=providers)
        used = self.session.get_providers()[0]
        if self.device.type == "cuda" and used == "CPUExecutionProvider":
            raise BackendUnavailableError(
                "ONNX Runtime could not use the GPU (CUDA libraries missing?); use --backend torch"
            )
        self.provider = used
        short = {"TensorrtExecutionProvider": "trt", "CUDAExecutionProvider": "cuda"}.get(used, "cpu")
        self.name = f"onnx-{short}-{self.export.get('precision', 'fp32')}"
        self._out = [o.name for o in self.session.get_outputs()][0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            x = x.detach().to("cpu", torch.float32)
            out = self.session.run([self._out], {"pixels": x.contiguous().numpy()})[0]
            return torch.from_numpy(np.asarray(out, dtype=np.float32))
        x = x.to(self.device, torch.float32, non_blocking=True).contiguous()
        out = torch.empty((x.shape[0], self.info.width), dtype=torch.float32, device=self.device)
        dev_id = self.device.index or 0
        binding = self.session.io_binding()
        binding.bind_input("pixels", "cuda", dev_id, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output(self._out, "cuda", dev_id, np.float32, tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # ORT runs on its own stream
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return out


def fused_cpu_graph(onnx_path: Path, info: Any, cache_dir: str | Path | None = None) -> Path | None:
    """``onnx_path`` with ORT's transformer fusions applied (cached by the graph's hash), or None when
    the optimizer fails or the fused graph does not reproduce the original within fp32 tolerance."""
    import onnxruntime as ort

    from usjepa_fast.embed.store import file_sha256

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / "onnx" / f"{onnx_path.stem}-{file_sha256(onnx_path)[:16]}.ortcpu.onnx"
    if target.is_file():
        return target
    try:
        from onnxruntime.transformers import optimizer

        target.parent.mkdir(parents=True, exist_ok=True)
        for name in ("onnxruntime.transformers", "fusion_base", "fusion_utils", "onnx_model", "onnx_model_bert"):
            logging.getLogger(name).setLevel(logging.WARNING)  # the optimizer logs every fusion at INFO
        # opt_level=0: only the pattern fusions; the session applies ORT's own graph optimisations later
        model = optimizer.optimize_model(
            str(onnx_path),
            model_type="vit",
            # standard ViTs use 64-wide heads (tiny 3, small 6, base 12, large 16 heads)
            num_heads=max(1, info.width // 64),
            hidden_size=info.width,
            opt_level=0,
            use_gpu=False,
        )
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        model.save_model_to_file(str(tmp))
        so = ort.SessionOptions()
        so.log_severity_level = 3
        s = info.input_size
        x = np.random.default_rng(0).standard_normal((2, info.in_chans, s, s)).astype(np.float32)
        ref = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"]).run(None, {"pixels": x})[0]
        got = ort.InferenceSession(str(tmp), so, providers=["CPUExecutionProvider"]).run(None, {"pixels": x})[0]
        rel = float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), 1e-12))
        if not rel <= 1e-4:
            tmp.unlink(missing_ok=True)
            log.warning(
                "onnx: fused CPU graph differs from %s (rel err %.1e); using the exported graph", onnx_path, rel
            )
            return None
        os.replace(tmp, target)
        return target
    except Exception as exc:  # noqa: BLE001 - the fusion is an optimisation; never fatal
        log.warning("onnx: transformer fusion skipped for %s (%s)", onnx_path.name, str(exc).splitlines()[0][:200])
        return None


# ----------------------------------------------------------------------------------------------
# TensorRT


class TensorRTBackend:
    """A serialised TensorRT engine (built by :func:`usjepa_fast.export.build_engine`)."""

    def __init__(self, engine_path: str | Path, device: torch.device | str | None = None) -> None:
        from usjepa_fast.export.onnx_export import read_export_sidecar, sidecar_path_for
        from usjepa_fast.export.tensorrt import TensorRTRunner

        engine_path = Path(engine_path)
        self.info, self.export = read_export_sidecar(sidecar_path_for(engine_path))
        self.runner = TensorRTRunner(engine_path, device)
        self.device = self.runner.device
        self.name = f"tensorrt-{self.export.get('precision', 'fp32')}"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner(x)[0].float()


# ----------------------------------------------------------------------------------------------
# resolution


def default_cache_dir() -> Path:
    return Path(os.environ.get("USFAST_CACHE_DIR", Path.home() / ".cache" / "usfast"))


def _export_key(info: Any, precision: str, exporter: str) -> str:
    blob = json.dumps(
        [info.source_hash, info.timm_name, info.timm_kwargs, info.pool, precision, exporter, torch.__version__],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_onnx(
    encoder: nn.Module, precision: str = "fp32", exporter: str = "dynamo", cache_dir: str | Path | None = None
) -> Path:
    """The encoder exported to ONNX (parity-checked), reusing an earlier export of the same weights."""
    from usjepa_fast.export.onnx_export import export_onnx, sidecar_path_for

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = (
        root / "onnx" / f"{encoder.info.name.replace('/', '_')}-{_export_key(encoder.info, precision, exporter)}.onnx"
    )
    if path.is_file() and sidecar_path_for(path).is_file():
        return path
    log.info("onnx: exporting %s once (cached at %s)", encoder.info.name, path)
    export_onnx(encoder, path, precision=precision, exporter=exporter)  # type: ignore[arg-type]
    return path


def _time_backend(b: Backend, x: torch.Tensor, reps: int = 2) -> float:
    b(x)  # warm-up: allocations, ORT's first-run graph preparation
    if b.device.type == "cuda":
        torch.cuda.synchronize(b.device)
    t0 = time.perf_counter()
    for _ in range(reps):
        b(x)
    if b.device.type == "cuda":
        torch.cuda.synchronize(b.device)
    return (time.perf_counter() - t0) / reps


def open_backend(
    spec: str | Path,
    backend: str = "auto",
    device: str | torch.device | None = None,
    *,
    precision: str | None = None,
    compile: bool = False,
    threads: int | None = None,
    arch: str | None = None,
    pool: str | None = None,
    img_size: int | None = None,
    seed: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    exporter: str = "dynamo",
    cache_dir: str | Path | None = None,
    timing_batch: int = 8,
) -> Backend:
    """Resolve ``spec`` into a ready backend (see the module docstring for ``auto``).

    ``precision``: torch ``fp32``/``bf16``/``fp16`` (autocast, GPU); for ONNX/TensorRT built on the
    fly, the export precision (default fp32 on the CPU, fp16 for TensorRT). ``arch`` / ``pool`` /
    ``img_size`` / ``seed`` / ``mean`` / ``std``: as in ``resolve_encoder`` (torch-loadable specs).
    """
    from usjepa_fast.models.resolve import parse_encoder_spec, resolve_encoder

    if backend not in BACKENDS:
        raise UsfastError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError("--device cuda but no CUDA GPU is visible; use --device cpu")
    parsed = parse_encoder_spec(spec, arch)  # one-line errors for malformed specs before any work
    path = parsed.path or Path(parsed.text)
    suffix = path.suffix.lower() if parsed.form == "runtime" else ""
    if backend == "tensorrt" or suffix in (".engine", ".plan"):
        from usjepa_fast.export.tensorrt import _import_trt

        _import_trt()  # clear message when TensorRT or a GPU is missing, before any export work
        if dev.type != "cuda":
            raise BackendUnavailableError("TensorRT runs on CUDA devices only; drop --device cpu or use --backend onnx")
    if suffix == ".onnx":
        if backend not in ("auto", "onnx"):
            raise UsfastError(
                f"{path} is an ONNX file; use --backend onnx (or auto), or pass the checkpoint for {backend}"
            )
        b: Backend = OnnxBackend(path, dev, threads=threads, cache_dir=cache_dir)
        log.info("backend: %s (%s)", b.name, path.name)
        return b
    if suffix in (".engine", ".plan"):
        if backend not in ("auto", "tensorrt"):
            raise UsfastError(f"{path} is a TensorRT engine; use --backend tensorrt (or auto)")
        b = TensorRTBackend(path, dev)
        log.info("backend: %s (%s)", b.name, path.name)
        return b

    encoder = resolve_encoder(parsed, arch=arch, pool=pool, img_size=img_size, seed=seed, mean=mean, std=std)
    if backend == "torch":
        b = TorchBackend(encoder, dev, precision or "fp32", compile=compile, threads=threads)
    elif backend == "onnx":
        b = OnnxBackend(
            cached_onnx(encoder, precision or "fp32", exporter, cache_dir), dev, threads=threads, cache_dir=cache_dir
        )
    elif backend == "tensorrt":
        b = _tensorrt_from_encoder(encoder, dev, precision or "fp16", exporter, cache_dir)
    elif dev.type == "cuda":
        b = _auto_cuda(encoder, dev, precision, compile, exporter, cache_dir)
    else:
        b = _auto_cpu(encoder, dev, threads, exporter, cache_dir, timing_batch, compile)
    log.info("backend: %s for %s", b.name, encoder.info.name)
    return b


def _tensorrt_from_encoder(
    encoder: nn.Module, dev: torch.device, precision: str, exporter: str, cache_dir: str | Path | None
) -> Backend:
    from usjepa_fast.export.tensorrt import build_engine

    onnx_path = cached_onnx(encoder, precision, exporter, cache_dir)
    engine = onnx_path.with_name(onnx_path.stem + f"-{torch.cuda.get_device_name(dev).replace(' ', '_')}.engine")
    if not engine.is_file():
        build_engine(onnx_path, engine)
    return TensorRTBackend(engine, dev)


def _auto_cuda(
    encoder: nn.Module,
    dev: torch.device,
    precision: str | None,
    compile: bool,
    exporter: str,
    cache_dir: str | Path | None,
) -> Backend:
    from usjepa_fast.export.tensorrt import tensorrt_available

    if tensorrt_available():
        try:
            return _tensorrt_from_encoder(encoder, dev, "fp16", exporter, cache_dir)
        except Exception as exc:  # noqa: BLE001 - any build problem: fall back to PyTorch, say why
            log.warning("backend auto: TensorRT path failed (%s); using PyTorch", str(exc).splitlines()[0][:200])
    # bf16 autocast keeps fp32's range (no overflow in attention logits) at fp16 speed on Ampere+
    return TorchBackend(encoder, dev, precision or "bf16", compile=compile)


def _auto_cpu(
    encoder: nn.Module,
    dev: torch.device,
    threads: int | None,
    exporter: str,
    cache_dir: str | Path | None,
    timing_batch: int,
    compile: bool,
) -> Backend:
    candidates: list[Backend] = [TorchBackend(encoder, dev, "fp32", compile=compile, threads=threads)]
    try:
        onnx_path = cached_onnx(encoder, "fp32", exporter, cache_dir)
        candidates.append(OnnxBackend(onnx_path, dev, threads=threads, cache_dir=cache_dir))
    except UsfastError as exc:
        log.warning("backend auto: ONNX Runtime path unavailable (%s); using PyTorch", exc)
        return candidates[0]
    s = encoder.info.input_size
    x = torch.randn(timing_batch, encoder.info.in_chans, s, s, generator=torch.Generator().manual_seed(0))
    timings = [(_time_backend(c, x), c) for c in candidates]
    best = min(timings, key=lambda tc: tc[0])[1]
    log.info(
        "backend auto: %s", ", ".join(f"{c.name} {timing_batch / t:.1f} img/s" for t, c in timings) + f" -> {best.name}"
    )
    return best
