"""Export a frozen encoder to ONNX, verified against PyTorch in ONNX Runtime before it is written.

Graph: input ``pixels (batch, 3, S, S)`` float32, output ``pooled (batch, D)`` float32 and,
optionally, ``tokens (batch, N, D)``; the batch axis is dynamic. The pooling is the encoder's own
(:mod:`usjepa_fast.models.frozen` defaults to the mean of the final-normed patch tokens because JEPA
students have no class token and an MAE teacher's class token gets no training signal).

``precision="fp16"`` stores fp16 weights and computes in fp16 but keeps float32 graph inputs and
outputs (explicit Cast nodes at both ends): consumers feed the same tensors either way, and
TensorRT 10/11 strongly-typed builds take their precision from these explicit types.

**Kept-token input** (``keep_input=True``, ViTs only: :mod:`usjepa_fast.models.kept_tokens`): a second
input ``keep (batch, tokens)`` int64 holds, per row, the indices in ``[0, N)`` of the patches to run
(raster order is what usfast sends) followed by ``-1`` padding; the token axis is dynamic (``1..N``).
Only those patches go through the encoder (class / register tokens always), ``pooled`` averages the
real ones. A row of all ``arange(N)`` is the dense forward. Padding by value, not a length input,
keeps one integer tensor per row for ONNX Runtime and TensorRT alike (a TensorRT profile covers the
token axis); lengths are computed in the graph. The parity gate compares ORT on padded rows with the
PyTorch packed path on the same indices, with row lengths and a token count that differ from the
traced ones (which proves both axes dynamic).

Exporter: ``"dynamo"`` (``torch.export`` based, the default of torch >= 2.9) or ``"torchscript"``
(the legacy tracer: several times faster to run, deprecated upstream). Either way the written graph
is checked in ONNX Runtime against the PyTorch fp32 encoder on a batch whose size differs from the
traced one (which also proves the batch axis is really dynamic); beyond the tolerance nothing is
written and :class:`ExportParityError` says by how much it missed.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from usjepa_fast.errors import OutputPathError, UsfastError
from usjepa_fast.fileio import atomic_write_json, replace_file, temp_name

log = logging.getLogger("usfast")

Precision = Literal["fp32", "fp16"]
Exporter = Literal["dynamo", "torchscript"]
EXPORT_FORMAT = "usfast-export/1"

# Parity tolerances, stated: max |ort - torch| relative to max |torch| over the check batch, and the
# lowest per-sample cosine similarity. fp32 graphs differ from PyTorch only by kernel summation
# order (~1e-6); fp16 graphs carry fp16 rounding through every layer of the network (~1e-3).
# Reduced precisions (fp16, bf16, int8) are judged on the pooled features' direction, which is what a
# linear probe reads: below this lowest per-row cosine vs fp32 a reduced graph or backend is refused.
# Read at call time (quantize_onnx, embed.precision.GatedBackend), so one figure rules everywhere.
REDUCED_PRECISION_MIN_COSINE = 0.999
DEFAULT_TOLERANCE: dict[str, tuple[float, float]] = {
    "fp32": (1e-4, 0.99999),
    "fp16": (3e-2, REDUCED_PRECISION_MIN_COSINE),
}


class ExportParityError(UsfastError):
    """The exported graph does not reproduce the PyTorch encoder within the tolerance."""


@dataclass
class ParityReport:
    max_abs_err: float
    rel_err: float  # max_abs_err / max |reference|
    cosine_min: float
    batch: int

    def ok(self, rel_tol: float, cos_tol: float) -> bool:
        return bool(np.isfinite(self.rel_err) and self.rel_err <= rel_tol and self.cosine_min >= cos_tol)


@dataclass
class ExportResult:
    onnx_path: Path
    sidecar_path: Path
    info: Any  # EncoderInfo
    parity: ParityReport
    precision: str
    exporter: str
    seconds: float


def sidecar_path_for(model_path: str | Path) -> Path:
    """``model.onnx`` / ``model.engine`` -> ``model.json`` (what embed reads beside a model file)."""
    return Path(model_path).with_suffix(".json")


def write_export_sidecar(info: Any, path: Path, export: dict[str, Any]) -> None:
    """The encoder description (``EncoderInfo`` fields) plus an ``export`` block describing the file."""
    data = info.to_json()
    data["export"] = export
    atomic_write_json(path, data)


def read_export_sidecar(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """``(EncoderInfo, export block)`` from a sidecar written by :func:`export_onnx`."""
    from usjepa_fast.models.frozen import EncoderInfo

    path = Path(path)
    if not path.is_file():
        raise UsfastError(f"sidecar {path} is missing; export the model with `usfast export` (it writes both files)")
    try:
        data = json.loads(path.read_text())
        export = dict(data.pop("export", {}))
        return EncoderInfo.from_json(data), export
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UsfastError(f"sidecar {path} is not a usfast encoder description ({exc}); re-export the model") from None


KEEP_PAD = -1  # value that pads the rows of the kept-token input


class _ExportModule(nn.Module):
    """Wrap a FrozenEncoder: one ``forward_features`` -> pooled (and tokens), fp32 at the boundary;
    with a second input ``keep (B, K)`` only the kept patches run (:mod:`usjepa_fast.models.kept_tokens`)."""

    def __init__(self, encoder: nn.Module, tokens: bool, half: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.tokens = tokens
        self.half = half

    def forward(
        self, x: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.half:
            x = x.half()
        pooled, patch = self.encoder.features(x, keep)  # (B, D), (B, N, D): the encoder's own pooling
        if not self.tokens:
            return pooled.float()
        return pooled.float(), patch.float()


def _ort_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def example_keep(batch: int, num_patches: int, tokens: int, generator: torch.Generator) -> torch.Tensor:
    """``(batch, tokens)`` kept-token rows of different lengths (1..tokens), padded with ``-1``: the
    export's trace and check inputs (row 0 is full length)."""
    rows = []
    for b in range(batch):
        n = tokens if b == 0 else int(torch.randint(1, tokens + 1, (1,), generator=generator))
        idx = torch.randperm(num_patches, generator=generator)[:n].sort().values
        rows.append(torch.cat([idx, torch.full((tokens - n,), KEEP_PAD, dtype=torch.int64)]))
    return torch.stack(rows)


def _reference_outputs(reference: nn.Module, x: torch.Tensor, keep: torch.Tensor | None) -> tuple:
    """PyTorch fp32 outputs for the check batch: with ``keep``, the packed kept-token path (a
    ``RaggedIndex`` of the same rows), so the gate also checks padded-vs-packed."""
    from usjepa_fast.models.kept_tokens import unpad_keep

    with torch.inference_mode():
        ref = reference(x) if keep is None else reference(x, unpad_keep(keep))
    return ref if isinstance(ref, tuple) else (ref,)


def _parity(
    sess, reference: nn.Module, x: torch.Tensor, tokens: bool, keep: torch.Tensor | None = None
) -> ParityReport:
    refs = _reference_outputs(reference, x, keep)
    feeds = {"pixels": x.numpy()} if keep is None else {"pixels": x.numpy(), "keep": keep.numpy()}
    outs = sess.run(None, feeds)
    if len(outs) != len(refs):
        raise ExportParityError(f"exported graph has {len(outs)} outputs, expected {len(refs)}; re-export")
    max_abs, ref_max, cos_min = 0.0, 0.0, 1.0
    for r, o in zip(refs, outs, strict=True):
        r = r.float().reshape(r.shape[0], -1)
        o = torch.from_numpy(np.asarray(o, dtype=np.float32)).reshape(r.shape[0], -1)
        if o.shape != r.shape:
            raise ExportParityError(f"exported output shape {tuple(o.shape)} != PyTorch {tuple(r.shape)}")
        max_abs = max(max_abs, float((o - r).abs().max()))
        ref_max = max(ref_max, float(r.abs().max()))
        cos_min = min(cos_min, float(torch.nn.functional.cosine_similarity(o, r, dim=1).min()))
    rel = max_abs / max(ref_max, 1e-12)
    return ParityReport(
        max_abs_err=max_abs,
        rel_err=rel if np.isfinite(max_abs) else float("inf"),
        cosine_min=cos_min,
        batch=int(x.shape[0]),
    )


def _run_exporter(
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    exporter: str,
    tokens: bool,
    opset: int | None,
    keep: torch.Tensor | None = None,
) -> None:
    output_names = ["pooled", "tokens"] if tokens else ["pooled"]
    args = (example,) if keep is None else (example, keep)
    input_names = ["pixels"] if keep is None else ["pixels", "keep"]
    # ONNX protobuf caps a single file at 2 GiB; beyond that weights go to an external data file.
    big = sum(p.numel() * p.element_size() for p in module.parameters()) > 1_800_000_000
    if exporter == "dynamo":
        # the exporter's IR passes log every rewrite at INFO; keep `usfast -v` readable
        for name in ("onnx_ir", "onnxscript"):
            logging.getLogger(name).setLevel(logging.WARNING)
        batch = torch.export.Dim("batch", min=1, max=65536)
        dims: tuple = ({0: batch},)
        if keep is not None:
            info = module.encoder.info  # the token axis runs 1..N (every patch)
            n = (info.input_size // info.patch_size) ** 2
            dims = ({0: batch}, {0: batch, 1: torch.export.Dim("tokens", min=1, max=max(2, n))})
        program = torch.onnx.export(
            module,
            args,
            None,
            dynamo=True,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dims,
            opset_version=opset,
            external_data=big,
            verbose=False,
        )
        program.save(str(path), external_data=big)
    elif exporter == "torchscript":
        axes = {"pixels": {0: "batch"}, **{n: {0: "batch"} for n in output_names}}
        if keep is not None:
            axes["keep"] = {0: "batch", 1: "tokens"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's deprecation and TracerWarnings are expected
            torch.onnx.export(
                module,
                args,
                str(path),
                dynamo=False,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=axes,
                opset_version=opset or 17,
                do_constant_folding=True,
            )
    else:
        raise UsfastError(f"unknown ONNX exporter {exporter!r}; use dynamo or torchscript")


def export_onnx(
    encoder_spec: str | Path | nn.Module,
    out_path: str | Path,
    *,
    arch: str | None = None,
    pool: str | None = None,
    img_size: int | None = None,
    precision: Precision = "fp32",
    tokens: bool = False,
    keep_input: bool = False,
    exporter: Exporter = "dynamo",
    opset: int | None = None,
    check_batch: int = 3,
    tolerance: tuple[float, float] | None = None,
    seed: int = 0,
) -> ExportResult:
    """Export ``encoder_spec`` (a loaded ``FrozenEncoder`` or any torch-loadable spec of
    :func:`usjepa_fast.models.resolve.resolve_encoder`: timm name, usfast ``.safetensors`` / run dir,
    checkpoint + ``arch``, ``zoo:NAME=PATH``, ``random:SPEC``) to ``out_path`` (``.onnx``) plus
    ``<stem>.json`` sidecar. ``.onnx`` / ``.engine`` specs are refused in one line (see ``verify_onnx``).

    ``tolerance``: ``(max relative error, min cosine)``, default :data:`DEFAULT_TOLERANCE` per
    precision. Raises :class:`ExportParityError` (and writes nothing) when the ORT outputs miss it.
    ``keep_input``: add the kept-token input ``keep (batch, tokens)`` (see the module doc; pooled
    output only).
    """
    from usjepa_fast.kernels import use_backend
    from usjepa_fast.models.frozen import FrozenEncoder
    from usjepa_fast.models.resolve import resolve_encoder

    if precision not in DEFAULT_TOLERANCE:
        raise UsfastError(f"export precision {precision!r}; use fp32 or fp16")
    out_path = Path(out_path)
    if out_path.suffix != ".onnx":
        raise UsfastError(f"export target {out_path} must end in .onnx")
    if out_path.with_suffix(".safetensors").is_file():
        # <stem>.json is that checkpoint's own sidecar: writing ours there would clobber it
        raise UsfastError(
            f"{out_path} sits beside {out_path.with_suffix('.safetensors').name}, whose sidecar "
            f"{sidecar_path_for(out_path).name} the export would overwrite; choose another --out name or folder"
        )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if isinstance(encoder_spec, FrozenEncoder):
        encoder = encoder_spec
    elif isinstance(encoder_spec, nn.Module):
        raise UsfastError(
            "export_onnx takes a FrozenEncoder module (see usjepa_fast.models.frozen), not a bare nn.Module"
        )
    else:
        encoder = resolve_encoder(encoder_spec, arch=arch, pool=pool, img_size=img_size, seed=seed)
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in encoder.parameters()):
        encoder = copy.deepcopy(encoder).cpu().float()  # export on a CPU fp32 copy; the caller's module stays put
    encoder = encoder.eval()
    info = encoder.info
    s = info.input_size
    if keep_input and tokens:
        raise UsfastError("an export with a kept-token input writes pooled features only; drop --tokens")
    if keep_input and encoder.keep_unsupported is not None:
        raise UsfastError(f"no kept-token input for {info.name}: {encoder.keep_unsupported}; export it without one")
    reference = _ExportModule(encoder, tokens, half=False).eval()
    if precision == "fp16":
        half_encoder = copy.deepcopy(encoder).half()
        module = _ExportModule(half_encoder, tokens, half=True).eval()
    else:
        module = reference
    gen = torch.Generator().manual_seed(seed)
    example = torch.randn(2, info.in_chans, s, s, generator=gen)
    # a different batch size than the traced one: proves the batch axis is dynamic
    check = torch.randn(max(1, check_batch if check_batch != 2 else 3), info.in_chans, s, s, generator=gen)
    keep_example = keep_check = None
    if keep_input:
        n = (s // info.patch_size) ** 2
        # token counts that differ between trace and check: proves the token axis is dynamic
        keep_example = example_keep(example.shape[0], n, max(1, n // 2), gen)
        keep_check = example_keep(check.shape[0], n, max(1, (3 * n) // 4 if n > 2 else n), gen)

    tmp = temp_name(out_path, keep_suffix=True)
    try:
        # Kernel call sites take their PyTorch reference path: the graph must hold only standard ops.
        with use_backend("torch"), torch.inference_mode(False), torch.no_grad():
            try:
                _run_exporter(module, example, tmp, exporter, tokens, opset, keep_example)
            except UsfastError:
                raise
            except OSError as exc:  # writing the graph failed: a path problem, not the exporter's
                raise OutputPathError(
                    f"cannot write the ONNX export {out_path} ({exc.strerror or exc}); choose another --out"
                ) from None
            except Exception as exc:  # noqa: BLE001 - exporter failures are many types; report one line
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
                raise UsfastError(
                    f"ONNX export of {info.name} failed with the {exporter} exporter ({first[:300]}); "
                    f"try --exporter {'torchscript' if exporter == 'dynamo' else 'dynamo'}"
                ) from None
        try:
            sess = _ort_session(tmp)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise ExportParityError(
                f"ONNX Runtime cannot load the exported {info.name} graph ({exc}); try the other --exporter"
            ) from None
        report = _parity(sess, reference, check, tokens, keep_check)
        rel_tol, cos_tol = tolerance or DEFAULT_TOLERANCE[precision]
        if not report.ok(rel_tol, cos_tol):
            raise ExportParityError(
                f"exported {out_path.name} differs from PyTorch beyond tolerance: relative error "
                f"{report.rel_err:.2e} (max {rel_tol:.0e}), cosine {report.cosine_min:.6f} (min {cos_tol}); "
                "nothing written - use --precision fp32 or the other --exporter"
            )
        import onnx

        opset_used = max(
            (
                o.version
                for o in onnx.load(str(tmp), load_external_data=False).opset_import
                if o.domain in ("", "ai.onnx")
            ),
            default=0,
        )
        for ext in tmp.parent.glob(tmp.name + ".data"):  # external weights travel with the graph
            os.replace(ext, out_path.with_name(out_path.name + ".data"))
        replace_file(tmp, out_path)
    finally:
        with contextlib.suppress(OSError):  # a failed cleanup must never replace the real error
            tmp.unlink(missing_ok=True)
    sidecar = sidecar_path_for(out_path)
    export_block = {
        "format": EXPORT_FORMAT,
        "file": out_path.name,
        "kind": "onnx",
        "precision": precision,
        "outputs": ["pooled", "tokens"] if tokens else ["pooled"],
        "input": {"name": "pixels", "shape": ["batch", info.in_chans, s, s], "dtype": "float32"},
        "keep": keep_block(info) if keep_input else None,
        "exporter": exporter,
        "opset": int(opset_used),
        "torch": torch.__version__,
        "parity": {
            "max_abs_err": report.max_abs_err,
            "rel_err": report.rel_err,
            "cosine_min": report.cosine_min,
            "batch": report.batch,
            "tolerance": {"rel_err": rel_tol, "cosine_min": cos_tol},
        },
    }
    write_export_sidecar(info, sidecar, export_block)
    dt = time.perf_counter() - t0
    log.info(
        "export: %s -> %s (%s, %s exporter, rel err %.1e, cosine %.6f, %.1fs)",
        info.name,
        out_path,
        precision,
        exporter,
        report.rel_err,
        report.cosine_min,
        dt,
    )
    return ExportResult(out_path, sidecar, info, report, precision, exporter, dt)


def keep_block(info: Any) -> dict[str, Any]:
    """The sidecar's description of the kept-token input (None in the sidecar: no such input)."""
    g = info.input_size // info.patch_size
    return {
        "name": "keep",
        "shape": ["batch", "tokens"],
        "dtype": "int64",
        "pad": KEEP_PAD,
        "max_tokens": g * g,
        "order": "each row: kept patch indices in [0, N) first, then pad",
    }


def verify_onnx(
    onnx_path: str | Path,
    encoder_spec: str | Path | nn.Module | None = None,
    *,
    batch: int = 4,
    arch: str | None = None,
    seed: int = 0,
) -> ParityReport:
    """Re-run the ORT-vs-PyTorch comparison of an existing export (encoder from the sidecar's source
    unless ``encoder_spec`` is given)."""
    from usjepa_fast.models.frozen import FrozenEncoder
    from usjepa_fast.models.resolve import encoder_from_info, resolve_encoder

    onnx_path = Path(onnx_path)
    info, export = read_export_sidecar(sidecar_path_for(onnx_path))
    if isinstance(encoder_spec, FrozenEncoder):
        encoder = encoder_spec
    elif encoder_spec is not None:
        encoder = resolve_encoder(encoder_spec, arch=arch, pool=info.pool, seed=seed)
    else:
        encoder = encoder_from_info(info)  # the sidecar's recorded source
    reference = _ExportModule(encoder.eval().float(), "tokens" in export.get("outputs", []), half=False)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, info.in_chans, info.input_size, info.input_size, generator=gen)
    keep = None
    if export.get("keep"):
        n = int(export["keep"]["max_tokens"])
        keep = example_keep(batch, n, max(1, (2 * n) // 3), gen)
    return _parity(_ort_session(onnx_path), reference, x, "tokens" in export.get("outputs", []), keep)
