"""The training config tree (``usfast train CONFIG --set optim.lr=1e-4``).

Load with :func:`load_train_config`; unknown keys are rejected by :mod:`usjepa_fast.config`. Every
field carries a why-comment; the shipped recipes live in ``usjepa_fast/configs/``:
``salt_vitb16_paper.yaml`` (US-JEPA ViT-B/16), ``salt_tiny_cpu.yaml`` (2 CPU cores) and
``pixel_teacher_tiny_cpu.yaml`` (stage 1: our own pixel teacher).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from usjepa_fast.config import check_int, check_number, flatten, load_config, load_yaml, to_dict
from usjepa_fast.errors import ConfigError
from usjepa_fast.masking.multiblock import MaskConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class DataConfig:
    """Where frames come from and how they become model inputs."""

    # prepared corpora (usfast prepare: the fast path), UltraBench dirs, folders of images/videos/DICOM
    sources: list[str] = field(default_factory=list)
    image_size: int = 224  # model input side; the token grid is image_size / patch_size
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # input normalisation recorded in the export
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    crop_scale: tuple[float, float] = (0.3, 1.0)  # random-resized-crop area range (I-JEPA)
    hflip: bool = True  # horizontal flips: ultrasound anatomy is left/right ambiguous on screen
    cap: int = 50_000  # per-source sampling cap of the mixed corpus (paper: balance 49 datasets)
    every_k: int = 1  # video sources: keep every k-th frame
    max_frames_per_clip: int | None = None  # video sources: at most this many frames per clip
    val_fraction: float = 0.05  # held-out fraction for the validation loss (paper: 5%), whole clips/patients
    batch_size: int = 128  # per process and per micro-step
    num_workers: int = 8  # DataLoader workers per process (0 = load in the training process)
    # clip members: frames of one clip read per sampler visit (one decode serves them; 1 = every frame
    # drawn on its own, which costs a clip decode per frame on raw video folders)
    frames_per_visit: int = 8
    cache_dir: str | None = None  # detected scan masks and clip indexes (None = $USFAST_CACHE_DIR or ~/.cache/usfast)
    mask_cache: Literal["cache", "beside"] = "cache"  # beside = hidden mask files next to the data (only if asked)
    # share of a patch's pixels that must be scan region for USrc to draw context / targets there (the
    # rule of `embed --patch-coverage`, data.scan_region.coverage_validity). 0 = any patch touching the
    # region. Measured (salt_vs_random, 3 seeds, 487 test images): 0.5 cost the tiny recipe's student 5.3
    # and its pixel teacher 3.4 macro-F1 points vs 0, so training keeps border patches; embed drops them.
    patch_coverage: float = 0.0


@dataclass
class ModelSection:
    """Student (context encoder) and predictor; names from ``usjepa_fast.models.list_models()``."""

    student: str = "usjepa_vit_base"  # registry name of the context encoder
    embed_dim: int | None = None  # overrides of the named student size (None = the name's default)
    depth: int | None = None
    num_heads: int | None = None
    patch_size: int = 16  # ViT patch side
    drop_path_rate: float = 0.0  # stochastic depth of the student (I-JEPA: none)
    predictor: str = "predictor_base"  # registry name of the predictor (paper: width 384, depth 12)
    predictor_embed_dim: int | None = None  # overrides of the named predictor size
    predictor_depth: int | None = None
    predictor_num_heads: int | None = None
    predictor_per_block: bool = True  # I-JEPA: predict each target block from the context alone


@dataclass
class TeacherConfig:
    """SALT teacher (objective=salt) or EMA settings (objective=ema)."""

    # usfast run dir / .safetensors (read through its sidecar), zoo:NAME=PATH (e.g. zoo:URFM=urfm.pth: the
    # zoo entry's layout and normalisation), checkpoint file (+arch), timm name or random:SPEC (ablations)
    spec: str = ""
    # timm architecture of a raw checkpoint, e.g. vit_base_patch16_224 for URFM; for run dirs and zoo:
    # specs it must agree with their own architecture (or be null)
    arch: str | None = None
    # teacher input normalisation (0-1 pixel scale); None = what the encoder declares (sidecar, zoo
    # entry, else timm's default for arch): set it for a raw checkpoint trained with other statistics
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    bf16: bool | None = None  # frozen teacher in bf16 autocast (targets are layer-normed anyway); None =
    #   follow run.precision
    # full: the frozen teacher embeds every patch; scan: only each image's USrc patches (its scan region,
    # data.scan_region's coverage rule), so black surround and burned-in text cost no teacher FLOPs (the
    # teacher's full-image forward is 45-69% of a CPU step). Targets never leave those patches under USrc,
    # but the teacher's latents change (its attention no longer sees the surround): an ablation knob,
    # not a free speedup. Needs objective.kind=salt, mask.usrc=true and a plain-ViT teacher.
    tokens: Literal["full", "scan"] = "full"
    # EMA mode: momentum ramps linearly (I-JEPA); the target encoder runs under run.precision, as the student
    ema_momentum: tuple[float, float] = (0.996, 1.0)


@dataclass
class ObjectiveConfig:
    """What the predictor regresses."""

    kind: Literal["salt", "ema", "pixel"] = "salt"  # frozen teacher / I-JEPA EMA / stage-1 pixels
    beta: float = 1.0  # Smooth-L1 beta (1.0 = PyTorch default, as in SALT)
    normalize_target: bool = True  # layer-norm teacher targets (pixel: per-patch normalised pixels)
    pixel_pool: int = 1  # pixel objective: average-pool factor inside a patch (>1 removes speckle)


@dataclass
class OptimConfig:
    """AdamW with a warmed-up cosine lr and a cosine weight-decay ramp (I-JEPA)."""

    steps: int = 100_000  # optimizer steps in the whole run (schedules are functions of the step)
    warmup_steps: int = 10_000  # linear lr warm-up from start_lr to lr
    start_lr: float = 2.0e-4  # lr at step 0
    lr: float = 1.0e-3  # peak lr (I-JEPA value for a 2048 global batch; scale with your batch)
    final_lr: float = 1.0e-6  # lr at the last step
    weight_decay: float = 0.04  # weight decay at step 0 (not on biases, norms, position embeddings)
    final_weight_decay: float = 0.4  # weight decay at the last step (cosine ramp)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1.0e-8
    clip_grad: float = 1.0  # max global grad norm (0 disables); guards against rare loss spikes
    grad_accum: int = 1  # micro-steps per optimizer step (effective batch = batch * accum * world)


@dataclass
class RunConfig:
    """Where results go and how the loop behaves."""

    out_dir: str = "runs/salt"  # run directory: config.yaml, metrics.jsonl, checkpoints/, student.*
    seed: int = 0  # model init, data order, masks and augmentation all derive from it
    device: str = "auto"  # auto = cuda:LOCAL_RANK when available, else cpu
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # bf16 autocast of student, predictor (and teacher,
    #   see teacher.bf16); auto = bf16 where it speeds up a training step (Ampere+ GPUs;
    #   usjepa_fast.hardware.bf16_training_pays), fp32 elsewhere (measured slower on AVX512-BF16 and
    #   AMX CPUs). fp16 needs loss scaling and int8 is inference-only, so neither trains here
    compile: bool = True  # torch.compile the student+predictor step (off for tiny CPU runs)
    kernels: Literal["auto", "triton", "torch"] = "auto"  # attention / loss kernel backend
    log_every: int = 10  # metrics.jsonl / progress-bar cadence in optimizer steps
    ckpt_every: int = 1000  # checkpoint cadence in optimizer steps (also written at the end)
    keep_last: int = 3  # rolling checkpoints kept (best.pt is kept separately)
    val_every: int = 1000  # validation-loss cadence in optimizer steps (also at the end)
    val_batches: int | None = None  # cap the validation pass (None = the whole hold-out)
    progress: bool = True  # tqdm progress bar on rank 0
    num_threads: int | None = None  # torch intra-op threads (None = torch default; 1 is fastest for tiny
    # models on a busy CPU, where thread contention costs more than it parallelises)
    stop_after: int | None = None  # stop (with a checkpoint) after this many steps in this invocation


@dataclass
class TrainConfig:
    """The whole training run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSection = field(default_factory=ModelSection)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> TrainConfig:
        """Raise :class:`ConfigError` naming the first key whose value is out of range; returns ``self``.

        Runs when the config is loaded and again when a ``Trainer`` starts, before any model is built."""
        w = "config key"
        d, m, o, r, k, obj = self.data, self.model, self.optim, self.run, self.mask, self.objective
        check_int(d.image_size, "data.image_size", 16, what=w)
        check_int(m.patch_size, "model.patch_size", 1, what=w)
        if d.image_size % m.patch_size:
            raise ConfigError(
                f"config key data.image_size={d.image_size} is not a multiple of model.patch_size={m.patch_size}; "
                "use a multiple"
            )
        for i, v in enumerate(d.std):
            check_number(v, f"data.std[{i}]", 0, lo_open=True, what=w)
        lo, hi = d.crop_scale
        if not (0 < lo <= hi <= 1):
            raise ConfigError(f"config key data.crop_scale={[lo, hi]!r} is invalid; use 0 < min <= max <= 1")
        check_int(d.cap, "data.cap", 1, what=w)
        check_int(d.every_k, "data.every_k", 1, what=w)
        if d.max_frames_per_clip is not None:
            check_int(d.max_frames_per_clip, "data.max_frames_per_clip", 1, what=w, extra="or null")
        check_number(d.val_fraction, "data.val_fraction", 0, 1, hi_open=True, what=w)
        check_number(d.patch_coverage, "data.patch_coverage", 0, 1, what=w)
        check_int(d.batch_size, "data.batch_size", 1, what=w)
        check_int(d.num_workers, "data.num_workers", 0, what=w)
        check_number(m.drop_path_rate, "model.drop_path_rate", 0, 1, hi_open=True, what=w)
        check_number(obj.beta, "objective.beta", 0, lo_open=True, what=w)
        check_int(obj.pixel_pool, "objective.pixel_pool", 1, what=w)
        check_int(o.steps, "optim.steps", 1, what=w)
        check_int(o.warmup_steps, "optim.warmup_steps", 0, what=w)
        for name in ("start_lr", "final_lr", "weight_decay", "final_weight_decay", "clip_grad"):
            check_number(getattr(o, name), f"optim.{name}", 0, what=w)
        check_number(o.lr, "optim.lr", 0, lo_open=True, what=w)
        check_number(o.eps, "optim.eps", 0, lo_open=True, what=w)
        for i, beta in enumerate(o.betas):
            check_number(beta, f"optim.betas[{i}]", 0, 1, hi_open=True, what=w)
        check_int(o.grad_accum, "optim.grad_accum", 1, what=w)
        for name in ("log_every", "ckpt_every", "keep_last", "val_every"):
            check_int(getattr(r, name), f"run.{name}", 1, what=w)
        if r.val_batches is not None:
            check_int(r.val_batches, "run.val_batches", 1, what=w, extra="or null")
        if r.stop_after is not None:
            check_int(r.stop_after, "run.stop_after", 1, what=w, extra="or null")
        if r.num_threads is not None:
            check_int(r.num_threads, "run.num_threads", 1, what=w, extra="or null")
        if not str(r.out_dir).strip():
            raise ConfigError("config key run.out_dir is empty; set it to the run directory (or pass --out)")
        check_int(k.num_target_blocks, "mask.num_target_blocks", 1, what=w)
        check_int(k.min_keep, "mask.min_keep", 1, what=w)
        check_int(k.max_tries, "mask.max_tries", 1, what=w)
        check_number(k.tau, "mask.tau", 0, 1, what=w)
        for name in ("target_scale", "context_scale"):
            lo, hi = getattr(k, name)
            if not (0 < lo <= hi <= 1):
                raise ConfigError(f"config key mask.{name}={[lo, hi]!r} is invalid; use 0 < min <= max <= 1")
        for name in ("target_aspect", "context_aspect"):
            lo, hi = getattr(k, name)
            if not (0 < lo <= hi):
                raise ConfigError(f"config key mask.{name}={[lo, hi]!r} is invalid; use 0 < min <= max")
        return self


def resolve_config_path(path: str | Path) -> Path:
    """A path as given, or the name of a shipped recipe (``salt_tiny_cpu`` / ``salt_tiny_cpu.yaml``)."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = CONFIG_DIR / (p.name if p.suffix else p.name + ".yaml")
    return shipped if shipped.is_file() else p


def load_train_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """YAML recipe (path or shipped name) + ``section.key=value`` overrides -> :class:`TrainConfig`
    (validated: see :meth:`TrainConfig.validate`)."""
    return load_config(TrainConfig, resolve_config_path(path) if path is not None else None, overrides).validate()


# ----------------------------------------------------------------------------------------------
# resume: what may change between the invocations of one run

# Keys a resumed run may change: they extend or shape the rest of the run without changing what the
# steps already taken meant (optim.steps stretches the schedules from the current step on; the
# others are cadence, logging and where/how fast it runs).
RESUMABLE_KEYS: tuple[str, ...] = (
    "optim.steps",
    "run.stop_after",
    "run.log_every",
    "run.ckpt_every",
    "run.val_every",
    "run.val_batches",
    "run.keep_last",
    "run.progress",
    "run.num_threads",
    "run.compile",
    "run.out_dir",
    "data.num_workers",
    "data.cache_dir",  # where detected scan masks are cached: the masks themselves do not change
    "data.mask_cache",
)


def resume_changes(stored: TrainConfig | dict[str, Any], new: TrainConfig) -> list[tuple[str, Any, Any]]:
    """``(key, stored value, new value)`` for every key that differs (run.out_dir compared as a
    resolved path). A key the stored config lacks (written by an older usfast) counts as its
    default, which is what resuming it runs with. Raises :class:`ConfigError` naming the first key
    outside :data:`RESUMABLE_KEYS`."""
    old_tree = to_dict(stored) if not isinstance(stored, dict) else stored
    old, cur = {**flatten(to_dict(TrainConfig())), **flatten(old_tree)}, flatten(to_dict(new))
    changes = []
    for key in sorted(set(old) | set(cur)):
        a, b = old.get(key), cur.get(key)
        same_dir = key == "run.out_dir" and a is not None and b is not None
        if same_dir and Path(str(a)).resolve() == Path(str(b)).resolve():
            continue
        if a == b or (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)):
            continue
        if key not in RESUMABLE_KEYS:
            raise ConfigError(
                f"--resume: {key}={b!r} differs from the run's {a!r} and cannot change mid-run (resumable: "
                f"{', '.join(RESUMABLE_KEYS)}); start a new run.out_dir for other settings"
            )
        changes.append((key, a, b))
    return changes


def load_resume_config(run_dir: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """The config of an existing run: ``RUN/config.yaml`` + only the ``overrides`` given now (a bare
    ``--resume`` needs no repeated ``--set``), with ``run.out_dir`` = ``run_dir``. The overrides are
    checked against :data:`RESUMABLE_KEYS` when the run starts (``Trainer``)."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(
            f"--resume {run_dir}: no config.yaml there (not a usfast run directory); pass the run directory "
            "that `usfast train` wrote, or start a new run without --resume"
        )
    stored = load_yaml(path)
    stored.setdefault("run", {})["out_dir"] = str(run_dir)
    return _from_stored(stored, overrides)


def _from_stored(stored: dict[str, Any], overrides: list[str] | None) -> TrainConfig:
    from usjepa_fast.config import apply_overrides, from_dict

    return from_dict(TrainConfig, apply_overrides(stored, list(overrides or []))).validate()
