"""The one resolver: an encoder spec (what a user types after ``-e`` or ``teacher.spec``) -> a frozen
torch encoder. Every command that takes an encoder (train's teacher, embed, export, probe,
robustness, compare) comes through here; ``embed.backends.open_backend`` runs the ONNX / TensorRT
files itself and hands every other form to :func:`resolve_encoder`.

Spec forms (:func:`parse_encoder_spec` says which one a string is):

========== ============================================ ==========================================
form       written as                                   weights, normalisation, pooling
========== ============================================ ==========================================
timm       ``vit_small_patch16_224``                    random init from ``seed`` (no hub
                                                        downloads); timm's default mean/std
random     ``random:SPEC[@seed]``                       random init of SPEC's architecture with
                                                        SPEC's input size / mean / std / pooling
usfast     ``runs/salt`` or ``.../student.safetensors`` the file, rebuilt from its ``.json``
           (with ``student.json`` beside it)            sidecar; the sidecar's mean/std/pool
checkpoint ``urfm.pth`` + ``arch=vit_base_patch16_224`` the file (any wrapper/prefix layout);
                                                        timm's default mean/std for ``arch``
zoo        ``zoo:URFM=/ckpt/urfm.pth``                  the zoo entry's loader, key remaps,
                                                        mean/std, pooling, input size and arch
runtime    ``model.onnx``, ``model.engine``             refused here (one line): run by
                                                        ``embed.backends.open_backend``
========== ============================================ ==========================================

``arch`` names the timm architecture of a raw checkpoint. For the other forms the architecture is
already known, so an ``arch`` equal to it is accepted (recipes set ``teacher.arch``) and any other
``arch`` is a one-line :class:`UsfastError`, never a timm traceback further down. ``mean`` / ``std``
replace the declared normalisation (raw checkpoints, whose normalisation timm cannot know).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from usjepa_fast.errors import CheckpointError, UsfastError
from usjepa_fast.models.checkpoints import file_sha256, load_state_dict_flexible, read_checkpoint
from usjepa_fast.models.frozen import EncoderInfo, FrozenEncoder, build_timm_model, read_sidecar
from usjepa_fast.models.zoo import ZooEntry, parse_zoo_spec, remap_state_dict, zoo_entry

log = logging.getLogger("usfast")

Form = Literal["timm", "random", "usfast", "checkpoint", "zoo", "runtime"]
RUNTIME_SUFFIXES = (".onnx", ".engine", ".plan")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".tar", ".ckpt")
POOLS = ("mean", "cls")
RUN_DIR_STUDENT = "student.safetensors"
SPEC_FORMS_HELP = (
    "a timm name, a usfast run dir / .safetensors, a checkpoint with --arch, zoo:NAME=PATH, random:SPEC[@seed], "
    "or an .onnx / .engine file"
)


@dataclass(frozen=True)
class EncoderSpec:
    """A parsed encoder spec: which form it is and what it points at."""

    form: Form
    text: str  # the spec as written
    path: Path | None = None  # weights file (usfast: the .safetensors; zoo / checkpoint / runtime: the file)
    name: str = ""  # timm: the model name; checkpoint: the arch; zoo: the entry name
    base: EncoderSpec | None = None  # random: the spec whose architecture is copied
    seed: int | None = None  # random: the @seed suffix (None = the caller's seed)
    entry: ZooEntry | None = field(default=None, compare=False)  # zoo: the entry (tests may pass a variant)

    @property
    def sidecar(self) -> Path | None:
        """The usfast ``.json`` description beside a ``.safetensors`` (usfast form only)."""
        return self.path.with_suffix(".json") if self.form == "usfast" and self.path is not None else None

    @classmethod
    def for_zoo(cls, entry: ZooEntry, checkpoint: str | Path) -> EncoderSpec:
        """The zoo form for an entry object (e.g. a test variant of a paper baseline)."""
        path = Path(checkpoint)
        if not path.is_file():
            raise UsfastError(f"{entry.name} checkpoint {path} does not exist; pass the local weights file")
        return cls("zoo", f"zoo:{entry.name}={path}", path, entry.name, entry=entry)


def _split_seed(body: str) -> tuple[str, int | None]:
    head, sep, tail = body.rpartition("@")
    if sep and tail.isdigit():
        return head, int(tail)
    return body, None


def _run_dir_student(path: Path) -> Path:
    candidate = path / RUN_DIR_STUDENT
    if not candidate.is_file():
        raise UsfastError(
            f"{path} is a directory without {RUN_DIR_STUDENT} (a finished usfast run writes it); pass a checkpoint file"
        )
    return candidate


def parse_encoder_spec(spec: str | Path | EncoderSpec, arch: str | None = None) -> EncoderSpec:
    """Say which form ``spec`` is (see the module doc); one-line errors for what is none of them.

    Only cheap checks happen here (files exist, the zoo entry exists, a raw checkpoint has ``arch``);
    reading a sidecar and checking ``arch`` against it is :func:`resolve_encoder`'s job.
    """
    if isinstance(spec, EncoderSpec):
        return spec
    text = str(spec).strip()
    if not text:
        raise UsfastError(f"empty encoder spec; pass {SPEC_FORMS_HELP}")
    if text.startswith("random:"):
        body, seed = _split_seed(text[len("random:") :])
        if not body:
            raise UsfastError(
                f"{text!r}: random: needs a spec, e.g. random:runs/salt or random:vit_small_patch16_224@1"
            )
        base = parse_encoder_spec(body, arch)
        if base.form in ("random", "runtime"):
            what = "another random: spec" if base.form == "random" else "an ONNX / TensorRT file"
            raise UsfastError(
                f"{text}: random: copies the architecture of a torch-loadable spec (timm name, usfast run dir, "
                f"checkpoint + arch, zoo:NAME=PATH), not {what}"
            )
        return EncoderSpec("random", text, base.path, base.name, base=base, seed=seed)
    zoo = parse_zoo_spec(text)
    if zoo is not None:
        entry = zoo_entry(zoo[0])
        path = Path(zoo[1]).expanduser()
        if entry.loader == "usfast" and path.is_dir():
            path = _run_dir_student(path)
        if not path.is_file():
            raise UsfastError(
                f"{text}: {entry.name} checkpoint {path} does not exist; pass the local weights file (nothing is "
                "downloaded)"
            )
        return EncoderSpec("zoo", text, path, entry.name, entry=entry)
    path = Path(text).expanduser()
    if path.suffix.lower() in RUNTIME_SUFFIXES:
        return EncoderSpec("runtime", text, path)
    if path.is_dir():
        return EncoderSpec("usfast", text, _run_dir_student(path))
    if path.is_file():
        if path.suffix == ".safetensors" and path.with_suffix(".json").is_file():
            return EncoderSpec("usfast", text, path)
        if arch is None:
            raise CheckpointError(
                f"checkpoint {path} has no usfast sidecar ({path.with_suffix('.json').name}); pass its timm "
                f"architecture (--arch / teacher.arch, e.g. vit_base_patch16_224 for URFM) or zoo:NAME={path}"
            )
        return EncoderSpec("checkpoint", text, path, arch)
    import timm

    if timm.is_model(text):
        return EncoderSpec("timm", text, name=text)
    if arch is not None or path.suffix.lower() in CHECKPOINT_SUFFIXES or "/" in text:
        raise CheckpointError(f"checkpoint {text} does not exist; check the path")
    raise UsfastError(
        f"'{text}' is neither an existing file nor a timm model name; pass a checkpoint path, a usfast run dir, "
        "zoo:NAME=PATH or a timm name"
    )


# ----------------------------------------------------------------------------------------------
# plans: what to build, from which weights, with which declared normalisation


@dataclass
class _Plan:
    timm_name: str
    timm_kwargs: dict[str, Any]
    name: str  # EncoderInfo.name
    source: str  # EncoderInfo.source: a spec that re-opens this encoder
    pool: str
    mean: tuple[float, float, float] | None = None  # None = timm's default config of the model
    std: tuple[float, float, float] | None = None
    input_size: int | None = None  # declared side when the model does not say (zoo entries)
    weights: Path | None = None  # None = random init
    entry: ZooEntry | None = None  # zoo (timm loader): key remaps / filter of the release layout
    sidecar: Path | None = None  # usfast: the description the weights must fit
    plain_fallback: bool = False  # timm name / raw checkpoint: non-ViT models take {"num_classes": 0}


def _base_name(timm_name: str) -> str:
    return timm_name.split(".", 1)[0]  # drop a pretrained tag: vit_base_patch16_224.augreg_in21k


def _check_arch(arch: str | None, declared: str, what: str) -> None:
    if arch is not None and _base_name(arch) != _base_name(declared):
        raise UsfastError(
            f"{what}: its architecture is {declared}, but arch={arch} was given; drop the arch (--arch, or "
            f"--set teacher.arch=null) or set it to {declared}"
        )


def _vit_kwargs(pool: str) -> dict[str, Any]:
    # fc_norm=False keeps the final LayerNorm on every token (I-JEPA/MAE layout: norm, then pool),
    # so patch tokens and both poolings come out of one forward_features call.
    return {"num_classes": 0, "global_pool": "token" if pool == "cls" else "avg", "fc_norm": False}


def _plan(spec: EncoderSpec, arch: str | None, pool: str | None, img_size: int | None) -> _Plan:
    if spec.form in ("timm", "checkpoint"):
        pool = pool or "mean"
        kwargs = _vit_kwargs(pool)
        if img_size is not None:
            kwargs["img_size"] = img_size
        if spec.form == "timm":
            _check_arch(arch, spec.name, f"encoder spec {spec.name} (a timm name)")
            return _Plan(spec.name, kwargs, spec.name, spec.name, pool, plain_fallback=True)
        assert spec.path is not None
        source = str(spec.path.resolve())
        return _Plan(spec.name, kwargs, spec.path.stem, source, pool, weights=spec.path, plain_fallback=True)
    if spec.form == "usfast":
        assert spec.path is not None and spec.sidecar is not None
        declared = read_sidecar(spec.sidecar)
        _check_arch(arch, declared.timm_name, f"{spec.path} (per its sidecar {spec.sidecar.name})")
        kwargs = dict(declared.timm_kwargs)
        if pool is not None and pool != declared.pool:
            if pool == "cls" and declared.num_prefix_tokens == 0:
                raise UsfastError(f"encoder {spec.path} has no class token; use --pool mean")
            kwargs.update(_vit_kwargs(pool))
        if img_size is not None and img_size != declared.input_size:
            kwargs["img_size"] = img_size
        return _Plan(
            declared.timm_name,
            kwargs,
            declared.name,
            str(spec.path.resolve()),
            pool or declared.pool,
            mean=declared.mean,
            std=declared.std,
            weights=spec.path,
            sidecar=spec.sidecar,
        )
    if spec.form == "zoo":
        entry = spec.entry or zoo_entry(spec.name)
        assert spec.path is not None
        if not entry.supported or entry.timm_name is None:
            raise UsfastError(
                f"{entry.name} ({entry.architecture}) cannot be loaded by usfast: {entry.notes} Embed it with the "
                "authors' code and pass the features directory instead"
            )
        source = f"zoo:{entry.name}={spec.path.resolve()}"
        if entry.loader == "usfast":  # a usfast export: its sidecar is the description (arch checked there)
            plan = _plan(EncoderSpec("usfast", str(spec.path), spec.path), arch, pool, img_size)
            plan.name, plan.source = entry.name, source
            return plan
        _check_arch(arch, entry.timm_name, f"zoo entry {entry.name}")
        kwargs = dict(entry.timm_kwargs)
        if img_size is not None:
            kwargs["img_size"] = img_size
        return _Plan(
            entry.timm_name,
            kwargs,
            entry.name,
            source,
            pool or entry.pool,
            mean=tuple(entry.mean),
            std=tuple(entry.std),
            input_size=img_size or entry.input_size,
            weights=spec.path,
            entry=entry,
        )
    raise AssertionError(f"no plan for form {spec.form}")  # random / runtime are handled by the callers


def _build(plan: _Plan, device: str | None = None) -> nn.Module:
    """The timm module of ``plan`` (``device="meta"``: structure only, no init and no memory)."""
    with torch.device(device) if device is not None else contextlib.nullcontext():
        try:
            return build_timm_model(plan.timm_name, plan.timm_kwargs)
        except UsfastError:
            if not plan.plain_fallback or plan.pool == "cls":
                raise
            # Not a ViT (no global_pool="avg"/fc_norm): a plain headless model, pooled by us.
            plan.timm_kwargs = {"num_classes": 0}
            return build_timm_model(plan.timm_name, plan.timm_kwargs)


def _load_weights(model: nn.Module, plan: _Plan) -> str:
    """Load ``plan.weights`` into ``model``; returns the file's sha256 (the cache identity)."""
    assert plan.weights is not None
    path = plan.weights
    if plan.entry is not None:
        entry = plan.entry
        state = remap_state_dict(entry, read_checkpoint(path))
        if entry.timm_filter:
            module_name, fn_name = entry.timm_filter.split(":")
            try:
                state = getattr(importlib.import_module(module_name), fn_name)(state, model)
            except (RuntimeError, ValueError, KeyError) as exc:
                first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else exc.__class__.__name__
                raise CheckpointError(
                    f"{path} is not in the {entry.name} release layout ({entry.release_format}): {first}"
                ) from None
        load_state_dict_flexible(
            model, state, label=str(path), hint=f"is it a {entry.name} checkpoint ({entry.release_format})?"
        )
    elif plan.sidecar is not None:
        load_state_dict_flexible(
            model,
            path,
            hint=f"the weights do not match their sidecar {plan.sidecar}; restore the matching pair or re-export it",
        )
    else:
        load_state_dict_flexible(model, path)
    return file_sha256(path)


def _info(model: nn.Module, plan: _Plan, source_hash: str) -> EncoderInfo:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    patch_embed = getattr(model, "patch_embed", None)
    img = getattr(patch_embed, "img_size", None)
    if img is not None:
        input_size = int(img[0] if isinstance(img, Sequence) else img)
    else:
        input_size = int(plan.input_size or cfg.get("input_size", (3, 224, 224))[-1])
    patch = getattr(patch_embed, "patch_size", (16, 16))
    num_prefix = int(getattr(model, "num_prefix_tokens", 0))
    if plan.pool == "cls" and num_prefix == 0:
        raise UsfastError(f"encoder {plan.name} has no class token; use --pool mean")
    return EncoderInfo(
        name=plan.name,
        input_size=input_size,
        mean=plan.mean or tuple(float(m) for m in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=plan.std or tuple(float(s) for s in cfg.get("std", (0.229, 0.224, 0.225))),
        pool=plan.pool,
        width=int(getattr(model, "num_features", getattr(model, "embed_dim", 0))),
        patch_size=int(patch[0] if isinstance(patch, Sequence) else patch),
        num_prefix_tokens=num_prefix,
        source=plan.source,
        source_hash=source_hash,
        timm_name=plan.timm_name,
        timm_kwargs=dict(plan.timm_kwargs),
    )


def _triple(values: Sequence[float] | float | None, key: str) -> tuple[float, float, float] | None:
    if values is None:
        return None
    vals = [values] if isinstance(values, (int, float)) else list(values)
    if len(vals) == 1:
        vals = vals * 3  # gray ultrasound: one value for the three replicated channels
    try:
        out = tuple(float(v) for v in vals)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or not all(math.isfinite(v) for v in out) or (key == "std" and min(out) <= 0):
        rule = "3 positive numbers" if key == "std" else "3 numbers"
        raise UsfastError(f"encoder {key} {values!r} must be {rule} (0-1 pixel scale), e.g. [0.485, 0.456, 0.406]")
    return out  # type: ignore[return-value]


def _check_pool(pool: str | None) -> None:
    if pool is not None and pool not in POOLS:
        raise UsfastError(f"pool {pool!r}: use mean (average of the patch tokens) or cls (the class token)")


def _refuse_runtime(spec: EncoderSpec) -> UsfastError:
    kind = "an ONNX" if (spec.path and spec.path.suffix.lower() == ".onnx") else "a TensorRT"
    return UsfastError(
        f"{spec.text} is {kind} file: embed / probe / robustness / compare run it (embed.backends.open_backend), "
        "but this needs the PyTorch encoder; pass the checkpoint or run dir it was exported from "
        "(`usfast export --check FILE` verifies an existing export)"
    )


def _materialise(
    spec: str | Path | EncoderSpec,
    arch: str | None,
    pool: str | None,
    img_size: int | None,
    seed: int,
    mean: Sequence[float] | float | None,
    std: Sequence[float] | float | None,
    load: bool,
) -> tuple[nn.Module, EncoderInfo]:
    parsed = parse_encoder_spec(spec, arch)
    _check_pool(pool)
    mean_t, std_t = _triple(mean, "mean"), _triple(std, "std")
    if img_size is not None and (not isinstance(img_size, int) or img_size <= 0):
        raise UsfastError(f"img_size {img_size!r} must be a positive integer (input side in pixels)")
    if parsed.form == "runtime":
        raise _refuse_runtime(parsed)
    device = None if load else "meta"
    if parsed.form == "random":
        assert parsed.base is not None
        seed = parsed.seed if parsed.seed is not None else seed
        plan = _plan(parsed.base, arch, pool, img_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = _build(plan, device)
        kwargs_hash = hashlib.sha256(json.dumps(plan.timm_kwargs, sort_keys=True, default=str).encode()).hexdigest()
        info = _info(model, plan, f"random-init:{plan.timm_name}:{kwargs_hash[:12]}:{seed}" if load else "")
        info.name, info.source = f"random-init {plan.name}", f"random:{plan.source}@{seed}"
    else:
        plan = _plan(parsed, arch, pool, img_size)
        if plan.weights is None:  # a timm name: random init, seeded
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                model = _build(plan, device)
            source_hash = f"random-init:{plan.timm_name}:{seed}"
            if load:
                log.warning(
                    "encoder %s: random initialisation (seed %d); no weights are downloaded here", plan.name, seed
                )
        else:
            model = _build(plan, device)
            source_hash = _load_weights(model, plan) if load else ""
        info = _info(model, plan, source_hash)
    if mean_t is not None:
        info.mean = mean_t
    if std_t is not None:
        info.std = std_t
    return model, info


def resolve_encoder(
    spec: str | Path | EncoderSpec,
    arch: str | None = None,
    pool: str | None = None,
    img_size: int | None = None,
    seed: int = 0,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
) -> FrozenEncoder:
    """Open ``spec`` (any form of the module doc but ``runtime``) as a :class:`FrozenEncoder` on the CPU.

    ``pool``: "mean" | "cls" (None = the sidecar's / zoo entry's, else "mean"); ``img_size``:
    rebuild at another input side (position embeddings resampled when the weights load);
    ``seed``: the random init of timm names and ``random:`` specs without ``@seed``;
    ``mean`` / ``std``: replace the declared normalisation (3 numbers, or one for all channels).
    """
    model, info = _materialise(spec, arch, pool, img_size, seed, mean, std, load=True)
    return FrozenEncoder(model, info)


def describe_encoder(
    spec: str | Path | EncoderSpec,
    arch: str | None = None,
    pool: str | None = None,
    img_size: int | None = None,
    seed: int = 0,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
) -> EncoderInfo:
    """The :class:`EncoderInfo` :func:`resolve_encoder` would give, without reading weights or running
    timm's init (the module is built on the meta device); ``source_hash`` is left empty."""
    return _materialise(spec, arch, pool, img_size, seed, mean, std, load=False)[1]


def encoder_from_info(info: EncoderInfo) -> FrozenEncoder:
    """Re-open the encoder an ``EncoderInfo`` (e.g. an export sidecar) describes, from its ``source``."""
    seed = 0
    if info.source_hash.startswith("random-init:"):
        with contextlib.suppress(ValueError):
            seed = int(info.source_hash.rsplit(":", 1)[1])
    arch = info.timm_name or None
    try:
        parsed = parse_encoder_spec(info.source, arch=arch)
    except UsfastError as exc:
        raise UsfastError(
            f"the encoder source {info.source} recorded for {info.name} cannot be opened ({exc}); pass the "
            "checkpoint explicitly"
        ) from None
    return resolve_encoder(
        parsed,
        arch=arch,
        pool=info.pool,
        img_size=info.timm_kwargs.get("img_size"),
        seed=seed,
        mean=info.mean,
        std=info.std,
    )
