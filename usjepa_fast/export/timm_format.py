"""The timm / Hugging Face folder of an encoder: ``model.safetensors`` + ``config.json``.

``timm.create_model("local-dir:DIR", pretrained=True)`` (timm >= 1.0's ``local-dir:`` source, read
by ``timm.models._hub.load_model_config_from_path``) rebuilds the model from ``config.json`` --
``architecture``, ``model_args`` (the constructor arguments), ``num_classes`` and a
``pretrained_cfg`` with the input size, mean/std and interpolation -- and loads
``model.safetensors`` into it, with no usfast installed. The folder is also what ``timm`` pushes to
the Hugging Face hub (``hf-hub:`` reads the same two files). With ``num_classes=0`` timm's
``model(x)`` returns the pooled features, which the export checks equal usfast's own
(:meth:`usjepa_fast.models.frozen.FrozenEncoder.features`) before the folder appears.

usfast's preprocessing (grayscale, percentile rescale in the scan region, resize to ``S x S``,
3 channels, normalise) is recorded in the ``usfast`` block of ``config.json``; timm's data config
covers the resize and normalisation (``crop_pct`` 1.0: the whole frame, no crop).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from usjepa_fast.errors import UsfastError
from usjepa_fast.export.onnx_export import ExportParityError, ParityReport, _parity

log = logging.getLogger("usfast")

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
TIMM_FORMAT = "usfast-timm/1"
# The folder holds the encoder's own fp32 weights and timm runs the same modules: only kernel
# dispatch differs (fused vs math attention), so the check is tight.
DEFAULT_TOLERANCE = (1e-5, 0.99999)  # (max relative error, min cosine)
PREPROCESSING = (
    "grayscale; intensities rescaled to the 2nd-98th percentile inside the scan region; whole frame resized "
    "(bilinear, antialiased) to input_size; gray replicated to 3 channels; normalised with mean/std"
)


@dataclass
class TimmExportResult:
    out_dir: Path
    weights_path: Path
    config_path: Path
    info: Any  # EncoderInfo
    parity: ParityReport
    seconds: float


def _pool_args(model: nn.Module, pool: str) -> dict[str, Any]:
    """Constructor arguments that make timm's own head pool the way the encoder does."""
    want = "token" if pool == "cls" else "avg"
    current = getattr(model, "global_pool", None)
    if not isinstance(current, str) or current == want:
        return {}
    args: dict[str, Any] = {"global_pool": want}
    if isinstance(getattr(model, "fc_norm", None), nn.Identity) and "fc_norm" in _init_params(model):
        args["fc_norm"] = False  # timm ViTs default fc_norm=True for avg pooling; this encoder has none
    return args


def _init_params(model: nn.Module) -> set[str]:
    import inspect

    return set(inspect.signature(type(model).__init__).parameters)


def timm_config(encoder: nn.Module, parity: ParityReport | None = None) -> dict[str, Any]:
    """``config.json`` for ``encoder`` (a :class:`~usjepa_fast.models.frozen.FrozenEncoder`)."""
    info = encoder.info
    model = encoder.model
    args = {k: v for k, v in info.timm_kwargs.items()}
    args.update(_pool_args(model, info.pool))
    args["num_classes"] = 0
    try:
        json.dumps(args)
    except (TypeError, ValueError) as exc:
        raise UsfastError(f"{info.name}: its timm arguments are not JSON ({exc}); no timm folder for it") from None
    s = int(info.input_size)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    pretrained_cfg = {
        "input_size": [int(info.in_chans), s, s],
        "fixed_input_size": bool(cfg.get("fixed_input_size", True)),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": [float(v) for v in info.mean],
        "std": [float(v) for v in info.std],
        "num_classes": 0,
        "pool_size": None,
        "first_conv": cfg.get("first_conv", "patch_embed.proj"),
        "classifier": cfg.get("classifier", "head"),
        "description": f"{info.name}, exported by usfast (pool: {info.pool})",
    }
    usfast = info.to_json()
    usfast.update({"format": TIMM_FORMAT, "preprocessing": PREPROCESSING})
    if parity is not None:
        usfast["parity"] = {"rel_err": parity.rel_err, "cosine_min": parity.cosine_min, "batch": parity.batch}
    return {
        "architecture": info.timm_name.split(".", 1)[0],
        "num_classes": 0,
        "num_features": int(info.width),
        "global_pool": args.get("global_pool", getattr(model, "global_pool", "")) or "",
        "model_args": args,
        "pretrained_cfg": pretrained_cfg,
        "usfast": usfast,
    }


def load_timm_dir(path: str | Path) -> nn.Module:
    """``timm.create_model("local-dir:PATH", pretrained=True)`` in eval mode (what users run)."""
    import timm

    return timm.create_model(f"local-dir:{Path(path).resolve()}", pretrained=True).eval()


class _TimmAsSession:
    """Present a timm model like an ONNX Runtime session, so the export parity check is the ONNX one."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def run(self, _outputs: None, feeds: dict[str, Any]) -> list[Any]:
        with torch.inference_mode():
            return [self.model(torch.from_numpy(feeds["pixels"])).float().numpy()]


def _check_target(out_dir: Path) -> None:
    if out_dir.suffix == ".onnx" or out_dir.is_file():
        raise UsfastError(
            f"--format timm writes a folder ({WEIGHTS_NAME} + {CONFIG_NAME}); pass --out DIR, not the file {out_dir}"
        )
    if out_dir.is_dir():
        others = sorted(p.name for p in out_dir.iterdir() if p.name not in (WEIGHTS_NAME, CONFIG_NAME))
        if others:
            raise UsfastError(
                f"{out_dir} already holds {', '.join(others[:4])}; export into an empty or new folder (it would "
                "mix with the timm files)"
            )


def export_timm(
    encoder_spec: str | Path | nn.Module,
    out_dir: str | Path,
    *,
    arch: str | None = None,
    pool: str | None = None,
    img_size: int | None = None,
    seed: int = 0,
    check_batch: int = 2,
    tolerance: tuple[float, float] | None = None,
) -> TimmExportResult:
    """Write ``encoder_spec`` (a ``FrozenEncoder`` or any torch-loadable spec of
    :func:`~usjepa_fast.models.resolve.resolve_encoder`) as a timm folder ``out_dir``.

    The folder is assembled beside ``out_dir``, loaded back through timm's ``local-dir:`` source and
    its ``model(x)`` compared with usfast's pooled features (``tolerance``: max relative error, min
    cosine; default :data:`DEFAULT_TOLERANCE`); beyond it :class:`ExportParityError` and nothing is
    written. Then it is renamed into place (an earlier export there is replaced, ``config.json``
    last).
    """
    from safetensors.torch import save_file

    from usjepa_fast.kernels import use_backend
    from usjepa_fast.models.frozen import FrozenEncoder, build_timm_model
    from usjepa_fast.models.resolve import resolve_encoder

    out_dir = Path(out_dir)
    _check_target(out_dir)
    t0 = time.perf_counter()
    if isinstance(encoder_spec, FrozenEncoder):
        encoder = encoder_spec
    elif isinstance(encoder_spec, nn.Module):
        raise UsfastError("export_timm takes a FrozenEncoder (see usjepa_fast.models.frozen), not a bare nn.Module")
    else:
        encoder = resolve_encoder(encoder_spec, arch=arch, pool=pool, img_size=img_size, seed=seed)
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in encoder.parameters()):
        encoder = copy.deepcopy(encoder).cpu().float()  # a CPU fp32 copy; the caller's module stays put
    encoder = encoder.eval()
    info = encoder.info
    if not info.timm_name:
        raise UsfastError(f"{info.name} records no timm architecture; it cannot be written as a timm folder")
    config = timm_config(encoder)
    # The weights must be exactly the state dict of timm.create_model(architecture, **model_args).
    rebuilt = build_timm_model(config["architecture"], config["model_args"])
    state = {k: v.detach().contiguous().cpu() for k, v in encoder.model.state_dict().items()}
    try:
        rebuilt.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise UsfastError(
            f"timm's {config['architecture']}({config['model_args']}) does not take {info.name}'s weights ({first}); "
            "it cannot be written as a timm folder"
        ) from None

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "usfast": TIMM_FORMAT})
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(max(1, check_batch), info.in_chans, info.input_size, info.input_size, generator=gen)
        with use_backend("torch"):  # both sides on the reference kernels: the weights are what differs, if any
            try:
                loaded = load_timm_dir(tmp)
            except Exception as exc:  # noqa: BLE001 - timm raises many types; one line for the user
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
                raise UsfastError(f"timm cannot load the exported folder ({first}); timm >= 1.0 needed") from None
            report = _parity(_TimmAsSession(loaded), encoder, x, tokens=False)
        rel_tol, cos_tol = tolerance or DEFAULT_TOLERANCE
        if not report.ok(rel_tol, cos_tol):
            raise ExportParityError(
                f"timm's local-dir model differs from usfast's {info.name} beyond tolerance: relative error "
                f"{report.rel_err:.2e} (max {rel_tol:.0e}), cosine {report.cosine_min:.6f} (min {cos_tol}); "
                "nothing written"
            )
        config = timm_config(encoder, report)
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        if out_dir.is_dir():  # an earlier export: weights first, the config (the folder's index) last
            os.replace(tmp / WEIGHTS_NAME, out_dir / WEIGHTS_NAME)
            os.replace(tmp / CONFIG_NAME, out_dir / CONFIG_NAME)
        else:
            os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    dt = time.perf_counter() - t0
    log.info(
        "export: %s -> %s (timm %s, rel err %.1e, cosine %.6f, %.1fs)",
        info.name,
        out_dir,
        config["architecture"],
        report.rel_err,
        report.cosine_min,
        dt,
    )
    return TimmExportResult(out_dir, out_dir / WEIGHTS_NAME, out_dir / CONFIG_NAME, info, report, dt)
