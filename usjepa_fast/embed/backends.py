"""Inference backends for frozen encoders: PyTorch, ONNX Runtime, OpenVINO, TensorRT.

Every backend is a callable ``backend(x (B, 3, S, S) float32) -> (B, D) float32`` (a torch tensor on
``backend.device``) with ``.info`` (:class:`~usjepa_fast.models.frozen.EncoderInfo`: input size,
mean/std, pooling, width), ``.precision`` and ``.name`` (what runs, e.g. ``torch-eager-cpu-bf16``,
``onnx-cpu-int8``, ``openvino-cpu-bf16``, ``tensorrt-fp16``).

**Kept tokens** (``--tokens scan``): every backend also takes ``backend(x, keep)`` with ``keep`` a
:class:`~usjepa_fast.masking.RaggedIndex` (one sequence of patch indices per frame: its scan-region
patches), runs only those patches and pools over them; ``backend.keep_unsupported`` is None when it
can, else the one-line reason. PyTorch runs them packed (:mod:`usjepa_fast.models.kept_tokens`);
ONNX Runtime, OpenVINO and TensorRT run an export with the kept-token input
(``export_onnx(keep_input=True)``: ``keep (B, K)`` int64 padded with ``-1``), which
``open_backend(..., tokens="scan")`` writes on the fly for a PyTorch-loadable spec.

``open_backend(spec, backend="auto", precision="auto")`` runs an ``.onnx`` export (sidecar beside it)
or a TensorRT ``.engine`` itself and opens every other spec form (timm name, ``random:SPEC``, usfast
``.safetensors`` / run dir, checkpoint + ``arch``, ``zoo:NAME=PATH``) through the one resolver,
:func:`usjepa_fast.models.resolve.resolve_encoder`. For a PyTorch-loadable spec the ONNX, int8 and
TensorRT forms are produced on the fly (:func:`usjepa_fast.export.export_onnx`,
:func:`usjepa_fast.export.quantize_onnx`, both parity-checked) into the cache folder it names, keyed by
the weights' hash.

``auto`` is a rule, not a race (nothing is timed, so every run on one machine makes the same
choice; see :mod:`usjepa_fast.embed.precision` for the precision rule and :func:`auto_runtime` for the
runtime): an ``.engine``/``.onnx`` file runs in its own runtime; on a CUDA GPU, TensorRT fp16 when
installed, else PyTorch with bf16 (Ampere+) or fp16 autocast; on the CPU, the precision the ISA runs
natively (bf16 on AMX-BF16/AVX512-BF16 for models >= 256 wide, fp32 otherwise) in OpenVINO when it is
installed and the precision is bf16 (the ONNX export it reads is written once into the cache folder
the log names), else in PyTorch eager (bf16 autocast through oneDNN), which writes nothing. int8 is
an explicit choice (``--precision int8 --calibration DIR``: it needs the user's frames). Every
non-fp32 backend passes the fp32 parity gate on its first batch
(:class:`~usjepa_fast.embed.precision.GatedBackend`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from usjepa_fast.data.cache import cache_root
from usjepa_fast.errors import BackendUnavailableError, UsfastError
from usjepa_fast.fileio import replace_file, temp_name

log = logging.getLogger("usfast")

BackendName = Literal["auto", "torch", "onnx", "openvino", "tensorrt"]
BACKENDS = ("auto", "torch", "onnx", "openvino", "tensorrt")


@runtime_checkable
class Backend(Protocol):
    info: Any  # EncoderInfo
    name: str
    device: torch.device

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


TOKEN_MODES = ("all", "scan")


def keep_unsupported(runner: Any) -> str | None:
    """Why ``runner`` cannot take kept tokens (``runner(x, keep)``), or None when it can; objects
    that do not declare it (plain callables) cannot."""
    if not hasattr(runner, "keep_unsupported"):
        return f"{getattr(runner, 'name', type(runner).__name__)} does not declare a kept-token call"
    return runner.keep_unsupported


def padded_keep(keep: Any, device: torch.device | None = None) -> np.ndarray | torch.Tensor:
    """The kept-token input of an export for ``keep``: ``(B, K)`` int64 padded with -1 (numpy on the CPU)."""
    from usjepa_fast.models.kept_tokens import pad_keep

    out = pad_keep(keep.to(device or "cpu"))
    return out if device is not None and device.type == "cuda" else out.cpu().numpy()


def export_keep_input(export: dict[str, Any], path: Path) -> tuple[bool, str | None]:
    """(whether the export ``path`` has the kept-token input, why not in one line or None), from its
    sidecar's ``export`` block: what ONNX Runtime, OpenVINO and TensorRT backends declare."""
    if export.get("keep"):
        return True, None
    if path.suffix in (".engine", ".plan"):
        return False, f"{path.name} was built without a kept-token input; build it from a --keep-input export"
    return False, f"{path.name} has no kept-token input; export it with `usfast export --keep-input`"


def all_keep(info: Any, batch: int) -> np.ndarray:
    """``(B, N)`` every patch: an export with a kept-token input run on whole frames."""
    n = (info.input_size // info.patch_size) ** 2
    return np.broadcast_to(np.arange(n, dtype=np.int64), (batch, n)).copy()


def available_cpus() -> int:
    """CPUs this process may run on (cgroup/affinity aware, unlike os.cpu_count())."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# ----------------------------------------------------------------------------------------------
# PyTorch


class TorchBackend:
    """A FrozenEncoder in inference mode; ``precision`` bf16/fp16 = autocast on the device (CUDA, or
    the CPU through oneDNN, which is fast with AMX-BF16/AVX512-BF16 and emulated otherwise);
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
        if threads:
            torch.set_num_threads(threads)
        self.info = encoder.info
        self.encoder = encoder.eval().to(self.device)
        self.keep_unsupported = keep_unsupported(encoder)
        self._fn = torch.compile(self.encoder, dynamic=True) if compile else self.encoder
        self._autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.precision = precision
        self.name = f"torch-{'compiled' if compile else 'eager'}-{self.device.type}-{precision}"

    def __call__(self, x: torch.Tensor, keep: Any = None) -> torch.Tensor:
        """(B, 3, S, S) -> (B, D); ``keep`` (RaggedIndex): only those patches, eager (a compiled
        module would recompile for every token count). On the CPU a ragged batch runs padded to
        its longest row (``pad_keep``): measured 1.3x faster than packed there (ViT-S/16, B=32 of
        80/90 tokens: the per-layer pad/unpad copies of packed attention cost more than the pads'
        FLOPs); equal rows (frames of one file) and CUDA run packed (a dense view with no mask /
        the Triton varlen kernel)."""
        x = x.to(self.device, non_blocking=True)
        if keep is not None and self.device.type == "cpu" and not keep.layout(per_sample=True).uniform:
            from usjepa_fast.models.kept_tokens import pad_keep

            keep = pad_keep(keep)
        run = (lambda: self._fn(x)) if keep is None else (lambda: self.encoder(x, keep.to(self.device)))
        with torch.inference_mode():
            if self._autocast is not None:
                with torch.autocast(self.device.type, dtype=self._autocast):
                    out = run()
            else:
                out = run()
        return out.float()  # (B, D)

    def fp32_reference(self) -> TorchBackend:
        """The same module without autocast (shares the weights: no copy), for the parity gate."""
        ref = TorchBackend.__new__(TorchBackend)
        ref.device, ref.info, ref.encoder, ref._fn = self.device, self.info, self.encoder, self.encoder
        ref.keep_unsupported = self.keep_unsupported
        ref._autocast, ref.precision, ref.name = None, "fp32", f"torch-eager-{self.device.type}-fp32"
        return ref


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
        self.keep_input, self.keep_unsupported = export_keep_input(self.export, onnx_path)
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
            fused = fused_cpu_graph(onnx_path, self.info, cache_dir, keep=self.keep_input)
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
        self.precision = str(self.export.get("precision", "fp32"))
        self.name = f"onnx-{short}-{self.precision}"
        self._out = [o.name for o in self.session.get_outputs()][0]

    def __call__(self, x: torch.Tensor, keep: Any = None) -> torch.Tensor:
        if keep is not None and not self.keep_input:
            raise UsfastError(f"kept tokens (--tokens scan): {self.keep_unsupported}")
        if self.device.type != "cuda":
            x = x.detach().to("cpu", torch.float32)
            feeds = {"pixels": x.contiguous().numpy()}
            if self.keep_input:
                feeds["keep"] = all_keep(self.info, x.shape[0]) if keep is None else padded_keep(keep)
            out = self.session.run([self._out], feeds)[0]
            return torch.from_numpy(np.asarray(out, dtype=np.float32))
        x = x.to(self.device, torch.float32, non_blocking=True).contiguous()
        out = torch.empty((x.shape[0], self.info.width), dtype=torch.float32, device=self.device)
        dev_id = self.device.index or 0
        binding = self.session.io_binding()
        binding.bind_input("pixels", "cuda", dev_id, np.float32, tuple(x.shape), x.data_ptr())
        if self.keep_input:
            k = (
                torch.from_numpy(all_keep(self.info, x.shape[0])).to(self.device)
                if keep is None
                else padded_keep(keep, self.device)
            ).contiguous()
            binding.bind_input("keep", "cuda", dev_id, np.int64, tuple(k.shape), k.data_ptr())
        binding.bind_output(self._out, "cuda", dev_id, np.float32, tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # ORT runs on its own stream
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return out


def fused_cpu_graph(onnx_path: Path, info: Any, cache_dir: str | Path | None = None, keep: bool = False) -> Path | None:
    """``onnx_path`` with ORT's transformer fusions applied (cached by the graph's hash), or None when
    the optimizer fails or the fused graph does not reproduce the original within fp32 tolerance."""
    import onnxruntime as ort

    from usjepa_fast.embed.store import file_sha256

    root = cache_root(cache_dir)
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
        tmp = temp_name(target, keep_suffix=True)
        model.save_model_to_file(str(tmp))
        so = ort.SessionOptions()
        so.log_severity_level = 3
        s = info.input_size
        x = np.random.default_rng(0).standard_normal((2, info.in_chans, s, s)).astype(np.float32)
        feeds = {"pixels": x}
        if keep:  # two rows of different lengths: the fused graph must keep the key mask
            k = all_keep(info, 2)
            k[1, k.shape[1] // 2 :] = -1
            feeds["keep"] = k
        ref = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        got = ort.InferenceSession(str(tmp), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        rel = float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), 1e-12))
        if not rel <= 1e-4:
            tmp.unlink(missing_ok=True)
            log.warning(
                "onnx: fused CPU graph differs from %s (rel err %.1e); using the exported graph", onnx_path, rel
            )
            return None
        replace_file(tmp, target)
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
        self.precision = str(self.export.get("precision", "fp32"))
        self.name = f"tensorrt-{self.precision}"
        self.keep_input, self.keep_unsupported = export_keep_input(self.export, engine_path)

    def __call__(self, x: torch.Tensor, keep: Any = None) -> torch.Tensor:
        if keep is not None and not self.keep_input:
            raise UsfastError(f"kept tokens (--tokens scan): {self.keep_unsupported}")
        if not self.keep_input:
            return self.runner(x)[0].float()
        k = torch.from_numpy(all_keep(self.info, x.shape[0])) if keep is None else padded_keep(keep, self.device)
        return self.runner(x, torch.as_tensor(k).to(self.device))[0].float()


# ----------------------------------------------------------------------------------------------
# resolution


def _export_key(info: Any, precision: str, exporter: str, keep_input: bool = False) -> str:
    parts = [info.source_hash, info.timm_name, info.timm_kwargs, info.pool, precision, exporter, torch.__version__]
    blob = json.dumps(parts + (["keep-input"] if keep_input else []), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_onnx(
    encoder: nn.Module,
    precision: str = "fp32",
    exporter: str = "dynamo",
    cache_dir: str | Path | None = None,
    keep_input: bool = False,
) -> Path:
    """The encoder exported to ONNX (parity-checked), reusing an earlier export of the same weights;
    ``keep_input``: the export with the kept-token input (``--tokens scan``)."""
    from usjepa_fast.export.onnx_export import export_onnx, sidecar_path_for

    root = cache_root(cache_dir)
    key = _export_key(encoder.info, precision, exporter, keep_input)
    path = root / "onnx" / f"{encoder.info.name.replace('/', '_')}-{key}.onnx"
    if path.is_file() and sidecar_path_for(path).is_file():
        return path
    log.info("onnx: exporting %s once (cached at %s)", encoder.info.name, path)
    export_onnx(encoder, path, precision=precision, exporter=exporter, keep_input=keep_input)  # type: ignore[arg-type]
    return path


def open_backend(
    spec: str | Path,
    backend: str = "auto",
    device: str | torch.device | None = None,
    *,
    precision: str | None = None,
    calibration: Any = None,
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
    tokens: str = "all",
) -> Backend:
    """Resolve ``spec`` into a ready backend (see the module docstring for ``auto``).

    ``precision``: ``auto`` (None) | ``fp32`` | ``bf16`` | ``fp16`` | ``int8``, resolved per runtime
    and hardware by :func:`usjepa_fast.embed.precision.resolve_precision`; anything but fp32 comes
    back wrapped in the fp32 parity gate. ``calibration`` (int8 only): ``(N, 3, S, S)`` preprocessed
    pixels or a media folder/file of the user's own frames. ``arch`` / ``pool`` / ``img_size`` /
    ``seed`` / ``mean`` / ``std``: as in ``resolve_encoder`` (torch-loadable specs). ``tokens="scan"``:
    a backend that also runs kept tokens (``backend(x, keep)``; ONNX / OpenVINO / TensorRT forms of a
    torch spec are exported with the kept-token input), refused in one line where it cannot.
    """
    from usjepa_fast.embed.precision import check_precision_name
    from usjepa_fast.models.resolve import parse_encoder_spec, resolve_encoder

    if backend not in BACKENDS:
        raise UsfastError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if tokens not in TOKEN_MODES:
        raise UsfastError(f"--tokens {tokens!r}: use all (every patch) or scan (scan-region patches only)")
    requested = check_precision_name(precision)
    if tokens == "scan" and requested == "int8":
        raise UsfastError("--precision int8 is calibrated on whole frames; use --tokens all, or fp32 / bf16 with scan")
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError("--device cuda but no CUDA GPU is visible; use --device cpu")
    if requested == "int8" and backend in ("auto", "onnx") and calibration is None:
        raise UsfastError("--precision int8 needs --calibration DIR (a few hundred frames of your own data)")
    if requested == "int8" and backend not in ("auto", "onnx"):
        raise UsfastError(f"--precision int8 runs through ONNX Runtime; use --backend onnx (not {backend})")
    parsed = parse_encoder_spec(spec, arch)  # one-line errors for malformed specs before any work
    path = parsed.path or Path(parsed.text)
    suffix = path.suffix.lower() if parsed.form == "runtime" else ""
    if backend == "tensorrt" or suffix in (".engine", ".plan"):
        from usjepa_fast.export.tensorrt import _import_trt

        _import_trt()  # clear message when TensorRT or a GPU is missing, before any export work
        if dev.type != "cuda":
            raise BackendUnavailableError("TensorRT runs on CUDA devices only; drop --device cpu or use --backend onnx")
    if backend == "openvino":
        from usjepa_fast.embed.openvino_backend import openvino_available

        if dev.type != "cpu":
            raise UsfastError("the OpenVINO backend runs on the CPU; use --device cpu or --backend torch")
        if not openvino_available():  # before any export work
            raise BackendUnavailableError("--backend openvino needs OpenVINO; pip install 'usjepa-fast[openvino]'")
    if suffix == ".onnx":
        b = _from_onnx_file(path, backend, dev, requested, calibration, threads, cache_dir)
        log.info("backend: %s (%s)", b.name, path.name)
        return _check_tokens(b, tokens)
    if suffix in (".engine", ".plan"):
        if backend not in ("auto", "tensorrt"):
            raise UsfastError(f"{path} is a TensorRT engine; use --backend tensorrt (or auto)")
        b = TensorRTBackend(path, dev)
        log.info("backend: %s (%s)", b.name, path.name)
        return _check_tokens(b, tokens)

    encoder = resolve_encoder(parsed, arch=arch, pool=pool, img_size=img_size, seed=seed, mean=mean, std=std)
    if tokens == "scan":
        _check_tokens(encoder, tokens)  # before any export work
    runtime = auto_runtime(dev, requested, encoder.info.width) if backend == "auto" else backend
    b = _from_encoder(
        encoder, runtime, dev, requested, calibration, compile, threads, exporter, cache_dir, backend, tokens == "scan"
    )
    log.info("backend: %s for %s%s", b.name, encoder.info.name, " (scan-region tokens)" if tokens == "scan" else "")
    return _check_tokens(b, tokens)


def _check_tokens(runner: Any, tokens: str) -> Any:
    """``runner`` as is, unless ``tokens="scan"`` and it cannot take kept tokens (one-line refusal)."""
    reason = keep_unsupported(runner) if tokens == "scan" else None
    if reason is not None:
        raise UsfastError(f"--tokens scan: {reason}; use --tokens all")
    return runner


def auto_runtime(device: torch.device | str, precision: str = "auto", width: int | None = None) -> str:
    """The runtime ``--backend auto`` uses for a PyTorch-loadable spec (the rule; nothing is timed):
    int8 -> ONNX Runtime; a CUDA device with TensorRT installed -> TensorRT; a CPU where the precision
    rule picks bf16 and OpenVINO is installed -> OpenVINO (measured on an AVX512-BF16 CPU: 3.0x the fp32
    peer's CPU time per frame, torch bf16 autocast 1.5x; benchmarks/embed_throughput.py); else PyTorch."""
    from usjepa_fast.embed.precision import resolve_precision

    if precision == "int8":
        return "onnx"
    dev = torch.device(device)
    if dev.type == "cuda":
        from usjepa_fast.export.tensorrt import tensorrt_available

        return "tensorrt" if tensorrt_available() else "torch"
    if dev.type == "cpu" and precision in ("auto", "bf16"):
        from usjepa_fast.embed.openvino_backend import openvino_available

        if resolve_precision(precision, "torch", dev, width=width).precision == "bf16" and openvino_available():
            return "openvino"
    return "torch"


def _gate(candidate: Any, reference: Any, choice: Any, auto: bool) -> Any:
    """Wrap a non-fp32 ``candidate``; for ``auto`` also check it now, on simulated B-mode frames, and
    fall back to ``reference`` (fp32) when it fails, so the backend's name is fixed before any work."""
    from usjepa_fast.embed.precision import GatedBackend, PrecisionParityError, simulated_gate_batch

    if choice.precision == "fp32":
        return candidate
    if not choice.native:
        log.warning(
            "precision %s on %s: this hardware only emulates it; expect it slower than fp32",
            choice.precision,
            candidate.name,
        )
    gated = GatedBackend(candidate, reference, choice.precision, reason=choice.reason)
    if not auto:
        return gated
    probe = GatedBackend(candidate, reference, choice.precision)
    try:
        report = probe.check(simulated_gate_batch(candidate.info), where="open-time check on simulated B-mode frames")
    except PrecisionParityError as exc:
        log.warning("precision auto: %s; using fp32", str(exc).split(": refused")[0])
        return reference
    log.info(
        "precision auto: %s picked (%s); open-time cosine %.6f", choice.precision, choice.reason, report.cosine_min
    )
    return gated


def _from_encoder(
    encoder: nn.Module,
    runtime: str,
    dev: torch.device,
    requested: str,
    calibration: Any,
    compile: bool,
    threads: int | None,
    exporter: str,
    cache_dir: str | Path | None,
    backend_request: str,
    keep_input: bool = False,
) -> Any:
    from usjepa_fast.embed.precision import resolve_precision

    auto = requested == "auto"
    if runtime == "tensorrt":
        choice = resolve_precision(requested, "tensorrt", dev)
        try:
            trt = _tensorrt_from_encoder(encoder, dev, choice.precision, exporter, cache_dir, keep_input)
        except Exception as exc:  # noqa: BLE001 - auto: any build problem falls back to PyTorch, saying why
            if backend_request != "auto":
                raise
            log.warning("backend auto: TensorRT path failed (%s); using PyTorch", str(exc).splitlines()[0][:200])
            return _from_encoder(
                encoder, "torch", dev, requested, None, compile, threads, exporter, cache_dir, "torch", keep_input
            )
        return _gate(trt, TorchBackend(encoder, dev, "fp32", threads=threads), choice, auto)
    if runtime == "torch":
        choice = resolve_precision(requested, "torch", dev, width=encoder.info.width)
        b = TorchBackend(encoder, dev, choice.precision, compile=compile, threads=threads)
        return _gate(b, b.fp32_reference(), choice, auto)
    if runtime == "openvino":
        from usjepa_fast.embed.openvino_backend import OpenVinoBackend

        choice = resolve_precision(requested, "openvino", dev, width=encoder.info.width)
        onnx_path = cached_onnx(encoder, "fp32", exporter, cache_dir, keep_input)
        b = OpenVinoBackend(onnx_path, choice.precision, threads=threads)
        return _gate(b, TorchBackend(encoder, dev, "fp32", threads=threads), choice, auto)
    # onnx
    choice = resolve_precision(requested, "onnx", dev, width=encoder.info.width)
    if choice.precision == "int8":
        fp32_path = cached_onnx(encoder, "fp32", exporter, cache_dir)
        return _int8_backend(fp32_path, calibration, dev, threads, cache_dir)
    b = OnnxBackend(
        cached_onnx(encoder, choice.precision, exporter, cache_dir, keep_input),
        dev,
        threads=threads,
        cache_dir=cache_dir,
    )
    return _gate(b, TorchBackend(encoder, dev, "fp32", threads=threads), choice, auto)


def _from_onnx_file(
    path: Path,
    backend: str,
    dev: torch.device,
    requested: str,
    calibration: Any,
    threads: int | None,
    cache_dir: str | Path | None,
) -> Any:
    """An ``.onnx`` export: ORT in the file's precision, OpenVINO over an fp32 file, or int8 from it."""
    from usjepa_fast.embed.precision import resolve_precision
    from usjepa_fast.export.onnx_export import read_export_sidecar, sidecar_path_for

    if backend not in ("auto", "onnx", "openvino"):
        raise UsfastError(f"{path} is an ONNX file; use --backend onnx, openvino (or auto), or pass the checkpoint")
    info, export = read_export_sidecar(sidecar_path_for(path)) if path.is_file() else (None, {})
    file_precision = str(export.get("precision", "fp32"))
    if backend == "openvino":
        from usjepa_fast.embed.openvino_backend import OpenVinoBackend

        choice = resolve_precision(requested, "openvino", dev, width=info.width if info is not None else None)
        b = OpenVinoBackend(path, choice.precision, threads=threads)
        return _gate(b, OnnxBackend(path, dev, threads=threads, fuse=False), choice, requested == "auto")
    if requested == "int8" and file_precision == "fp32":
        return _int8_backend(path, calibration, dev, threads, cache_dir)
    if requested not in ("auto", file_precision):
        raise UsfastError(
            f"{path.name} is a {file_precision} export; re-export it with --precision {requested} "
            "(or pass --precision auto to run it as it is)"
        )
    # the export parity gate ran when the file was written (recorded in its sidecar)
    return OnnxBackend(path, dev, threads=threads, cache_dir=cache_dir)


def _int8_backend(
    fp32_path: Path, calibration: Any, dev: torch.device, threads: int | None, cache_dir: str | Path | None
) -> Any:
    """int8 graph of ``fp32_path`` calibrated on ``calibration`` (cached by graph + frames), gated
    against the fp32 graph on the first batch."""
    from usjepa_fast.embed.precision import resolve_precision
    from usjepa_fast.embed.store import file_sha256
    from usjepa_fast.export.onnx_export import read_export_sidecar, sidecar_path_for
    from usjepa_fast.export.quantize import calibration_key, quantize_onnx

    if dev.type != "cpu":
        raise UsfastError("--precision int8 is a CPU path (ONNX Runtime on VNNI/AMX); use --device cpu")
    choice = resolve_precision("int8", "onnx", dev)
    info, _ = read_export_sidecar(sidecar_path_for(fp32_path))
    if isinstance(calibration, (str, Path)):
        from usjepa_fast.embed.calibration import calibration_pixels

        calibration = calibration_pixels(calibration, info)
    key = hashlib.sha256(f"{file_sha256(fp32_path)}|{calibration_key(calibration)}|static".encode()).hexdigest()[:16]
    root = cache_root(cache_dir)
    target = root / "onnx" / f"{fp32_path.stem}-int8-{key}.onnx"
    if not (target.is_file() and sidecar_path_for(target).is_file()):
        log.info(
            "int8: quantizing %s once with %d calibration frames (cached at %s)",
            fp32_path.name,
            len(calibration),
            target,
        )
        quantize_onnx(fp32_path, target, calibration)
    b = OnnxBackend(target, dev, threads=threads, cache_dir=cache_dir)
    ref = OnnxBackend(fp32_path, dev, threads=threads, cache_dir=cache_dir)
    return _gate(b, ref, choice, auto=False)


def _tensorrt_from_encoder(
    encoder: nn.Module,
    dev: torch.device,
    precision: str,
    exporter: str,
    cache_dir: str | Path | None,
    keep_input: bool = False,
) -> Backend:
    from usjepa_fast.export.tensorrt import build_engine

    onnx_path = cached_onnx(encoder, precision, exporter, cache_dir, keep_input)
    engine = onnx_path.with_name(onnx_path.stem + f"-{torch.cuda.get_device_name(dev).replace(' ', '_')}.engine")
    if not engine.is_file():
        build_engine(onnx_path, engine)
    return TensorRTBackend(engine, dev)
