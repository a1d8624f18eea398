"""The SALT / EMA / pixel pretraining loop.

One optimizer step (:meth:`Trainer.train_step`) has four named phases per micro-batch:

1. **teacher forward** — the frozen teacher (SALT) or the EMA copy (I-JEPA) embeds the *full*
   image once, under ``no_grad``: ``(B, 3, S, S) -> (B, N, Dt)``; stage 1 uses normalised pixels
   ``(B, N, p*p)`` instead;
2. **student forward** — the context encoder runs only on the kept context tokens, packed
   ``(Tc, Ds)`` (every sample keeps its whole context: the batch is ragged, see masking/), the
   predictor puts mask tokens at the target positions and regresses ``(Tt, Dt)``;
3. **loss** — :func:`usjepa_fast.kernels.salt_smooth_l1` gathers the teacher tokens at the target
   patches (teacher tokens flattened to ``(1, B*N, Dt)``, flat target indices ``(1, Tt)``),
   optionally layer-normed, and averages the Smooth-L1 over real target tokens only;
4. **update** — lr / weight-decay schedules, gradient clipping, AdamW, and the EMA update; atomic
   with respect to Ctrl-C (SIGINT is held for the phase, see below).

Masks are drawn off the critical path: a one-thread pool draws them (vectorised numpy, then the
host-side index plans of the encoder and predictor) while the main thread runs the teacher
forward, from a generator seeded by ``(seed, step, micro, rank)``, so they are identical after a
resume and independent of data-loader workers. Loss and gradient norm stay on the device and are
read once per log interval (the non-finite-loss check runs there and before every checkpoint), so
a step has no host sync of its own. Everything else that resume needs (weights, optimizer, data
position, RNG states) is in the rolling checkpoints; with ``data.num_workers=0`` an interrupted +
resumed CPU run reproduces the uninterrupted weights bit for bit (with workers, data order and
masks are still exact but augmentation draws come from worker RNGs whose assignment shifts with
the resume point). Under DDP every rank's RNG state is gathered into the checkpoint, so a resume
with the same world size continues each rank's stream. A Ctrl-C (KeyboardInterrupt) during the
forward/backward writes a checkpoint of the state at the start of that step; one during the update
phase is deferred until the step is complete (and logged), and the checkpoint holds the state after
it, so a resume never applies a step twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from usjepa_fast.config import from_dict, load_yaml, save_config, to_dict
from usjepa_fast.data.sampler import CorpusSampler
from usjepa_fast.errors import ConfigError, DataError, Terminated, UsfastError, note_saved
from usjepa_fast.fileio import atomic_write_json, atomic_write_text, check_output_dir, folder_lock
from usjepa_fast.hardware import bf16_training_pays
from usjepa_fast.kernels import salt_smooth_l1, set_backend
from usjepa_fast.masking.multiblock import MaskBatch, MultiBlockMaskCollator, usrc_drawable
from usjepa_fast.masking.ragged import RaggedIndex
from usjepa_fast.models.pixel import patchify_gray, pixel_target_dim
from usjepa_fast.models.predictor import Predictor
from usjepa_fast.models.registry import create
from usjepa_fast.models.teacher import Teacher, ema_teacher, frozen_teacher
from usjepa_fast.models.vit import VisionTransformer
from usjepa_fast.progress import LogProgress
from usjepa_fast.train import checkpoint as ckpt
from usjepa_fast.train.config import TrainConfig, resume_changes
from usjepa_fast.train.data import build_pretrain_data, collate_pretrain
from usjepa_fast.train.schedules import lr_at, momentum_at, wd_at

log = logging.getLogger("usfast")
CKPT_FORMAT = "usfast-train/1"


SUMMARY_FILE = "summary.json"  # RUN/summary.json: the RunSummary of the run's last invocation


@dataclass
class RunSummary:
    """What a finished (or stopped) run produced."""

    run_dir: Path
    step: int  # optimizer steps completed in total
    total_steps: int
    final_loss: float  # mean training loss of the last logged interval
    best_val_loss: float | None
    student_path: Path | None  # export-ready student.safetensors (None when stopped early)
    checkpoint: Path | None  # last rolling checkpoint written
    elapsed_s: float  # wall time of this invocation
    images_per_s: float  # training throughput of this invocation (all ranks)
    resumed_from: int | None = None
    mask_fallbacks: dict[str, int] = field(default_factory=dict)
    # data.sources problems: unreadable / short / failed inputs (path -> reason) and their counts
    inputs: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_pref: str) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return DistInfo(rank, world, local, False)
    cuda = torch.cuda.is_available() and device_pref in ("auto", "cuda")
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return DistInfo(rank, world, local, True)


def resolve_device(pref: str, info: DistInfo) -> torch.device:
    if pref == "auto":
        return torch.device(f"cuda:{info.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if pref.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"run.device={pref} but CUDA is not available here; use run.device=auto or cpu")
    if pref == "cuda":
        return torch.device(f"cuda:{info.local_rank}")
    return torch.device(pref)


class JEPAModel(nn.Module):
    """Student context encoder + predictor as one module (one DDP / torch.compile unit)."""

    def __init__(self, student: VisionTransformer, predictor: Predictor) -> None:
        super().__init__()
        self.student = student
        self.predictor = predictor

    def forward(self, images: torch.Tensor, masks: MaskBatch) -> torch.Tensor:
        context = self.student(images, masks.context)  # (Tc, Ds): only context tokens are encoded
        return self.predictor(context, masks.context, masks.target)  # (Tt, Dt), in target order

    def prepare(self, masks: MaskBatch) -> None:
        """Build the host-side index plans of ``masks`` now (the mask thread calls this)."""
        n = self.student.num_patches
        masks.context.layout(per_sample=True)
        masks.context.flat(n)
        masks.target.flat(n)
        self.predictor.plan(masks.context, masks.target)


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """I-JEPA grouping: no weight decay on biases and 1-D (norm) parameters."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "apply_wd": True}, {"params": no_decay, "apply_wd": False, "weight_decay": 0.0}]


class Trainer:
    """Owns models, optimizer, data position and run directory of one training run."""

    def __init__(
        self,
        cfg: TrainConfig,
        resume: bool = False,
        train_dataset: Dataset | None = None,
        val_dataset: Dataset | None = None,
        train_sizes: list[int] | None = None,
    ) -> None:
        self.cfg = cfg
        self.dist = init_distributed(cfg.run.device)
        self.device = resolve_device(cfg.run.device, self.dist)
        set_backend(cfg.run.kernels)
        if cfg.run.num_threads:
            torch.set_num_threads(cfg.run.num_threads)
        self.run_dir = Path(cfg.run.out_dir)
        self._validate_config()
        self._lock = None
        self._claim_run_dir(resume)  # output path, lock, resume rules: before any model is built
        pays, why = bf16_training_pays(self.device)
        self.use_bf16 = cfg.run.precision == "bf16" or (cfg.run.precision == "auto" and pays)
        log.info(
            "precision: %s (run.precision=%s; %s)", "bf16 autocast" if self.use_bf16 else "fp32", cfg.run.precision, why
        )
        self.grid = (cfg.data.image_size // cfg.model.patch_size,) * 2
        self.collator = MultiBlockMaskCollator(cfg.mask, self.grid, seed=cfg.run.seed)
        # One worker: masks are drawn while the main thread runs the teacher forward.
        self._mask_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usfast-masks")
        self.interrupt_requested = False  # a Ctrl-C / SIGTERM arrived during the update phase (deferred)
        self.interrupt_signal = signal.SIGINT

        # Models: identical init on every rank (seeded), then per-rank RNG for dropout/augmentation.
        torch.manual_seed(cfg.run.seed)
        self.student, self.predictor, self.teacher = self._build_models()
        self.model = JEPAModel(self.student, self.predictor).to(self.device)
        if self.teacher is not None:
            self.teacher.to(self.device)
        self._seed_process(cfg.run.seed * 1000 + self.dist.rank + 1)
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model), lr=cfg.optim.start_lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps
        )
        self.step_model: nn.Module = self.model
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        if self.dist.world_size > 1:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
            self.step_model = self.ddp
        if cfg.run.compile:
            self.step_model = torch.compile(self.step_model)

        # Data
        self.pretrain_data = None
        train_clips = None
        if train_dataset is None:
            self.pretrain_data = build_pretrain_data(cfg.data, cfg.model.patch_size, cfg.run.seed)
            train_dataset, val_dataset = self.pretrain_data.train, self.pretrain_data.val
            train_sizes, train_clips = self.pretrain_data.sizes, self.pretrain_data.clips
        self.failed_inputs: dict[str, str] = {}  # files DataLoader workers failed to read (path -> reason)
        self.train_dataset, self.val_dataset = train_dataset, val_dataset
        # members weighted by min(size, data.cap); a dataset given without member sizes is one member
        # (a plain permutation per epoch)
        self.sampler = CorpusSampler(
            train_sizes or [len(train_dataset)],
            cfg.data.cap if train_sizes else None,
            seed=cfg.run.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            clips=train_clips,  # clip members: data.frames_per_visit frames of a clip per visit
            frames_per_visit=cfg.data.frames_per_visit,
        )
        if self.sampler.per_rank < cfg.data.batch_size:
            raise ConfigError(
                f"data.batch_size={cfg.data.batch_size} exceeds the {self.sampler.per_rank} training frames per "
                "process; lower data.batch_size or add data"
            )
        self.epoch, self.consumed = 0, 0  # data position: epoch and micro-batches consumed in it
        self._batches: Iterator[dict[str, torch.Tensor]] | None = None
        self.step = 0
        self.best_val: float | None = None
        self.resumed_from: int | None = None
        self.fallbacks: dict[str, int] = {}
        try:
            self._prepare_run_dir(resume)
        except BaseException:
            self.close()
            raise

    # -- set-up -----------------------------------------------------------------------------------
    def _validate_config(self) -> None:
        cfg = self.cfg
        cfg.validate()  # every range (TrainConfig.validate); below: what needs more than one key
        if cfg.teacher.tokens == "scan" and not (cfg.objective.kind == "salt" and cfg.mask.usrc):
            raise ConfigError(
                "teacher.tokens=scan runs the frozen teacher on USrc's scan-region patches: it needs "
                "objective.kind=salt and mask.usrc=true (or set teacher.tokens=full)"
            )
        if cfg.objective.kind == "salt" and not cfg.teacher.spec:
            raise ConfigError(
                "objective.kind=salt needs teacher.spec (a run dir / .safetensors, zoo:URFM=PATH, a checkpoint + "
                "teacher.arch, or a timm name); train one with objective.kind=pixel first"
            )

    def _seed_process(self, seed: int) -> None:
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)

    def _build_models(self) -> tuple[VisionTransformer, Predictor, Teacher | None]:
        cfg, m = self.cfg, self.cfg.model
        student = create(
            m.student,
            img_size=cfg.data.image_size,
            patch_size=m.patch_size,
            embed_dim=m.embed_dim,
            depth=m.depth,
            num_heads=m.num_heads,
            drop_path_rate=m.drop_path_rate,
            mean=tuple(cfg.data.mean),
            std=tuple(cfg.data.std),
        )
        teacher: Teacher | None = None
        kind = cfg.objective.kind
        if kind == "salt":
            t = cfg.teacher
            teacher_bf16 = self.use_bf16 if t.bf16 is None else t.bf16
            teacher = frozen_teacher(
                t.spec, t.arch, self.grid, bf16=teacher_bf16, mean=t.mean, std=t.std, student_patch=m.patch_size
            )
            teacher.set_input_normalisation(cfg.data.mean, cfg.data.std)
            if t.tokens == "scan" and teacher.keep_unsupported is not None:
                raise ConfigError(f"teacher.tokens=scan: {teacher.keep_unsupported}; use teacher.tokens=full")
            out_dim = teacher.width
        elif kind == "ema":
            # the target encoder runs under the trainer's precision (run.precision), as the student does
            teacher = ema_teacher(student, cfg.data.mean, cfg.data.std, bf16=self.use_bf16)
            out_dim = student.embed_dim
        else:
            out_dim = pixel_target_dim(m.patch_size, cfg.objective.pixel_pool)
        predictor = create(
            m.predictor,
            in_dim=student.embed_dim,
            out_dim=out_dim,
            grid=self.grid,
            embed_dim=m.predictor_embed_dim,
            depth=m.predictor_depth,
            num_heads=m.predictor_num_heads,
            per_block=m.predictor_per_block,
        )
        return student, predictor, teacher  # type: ignore[return-value]

    def _claim_run_dir(self, resume: bool) -> None:
        """Check ``run.out_dir`` can be written, lock it (rank 0) and apply the resume rules: a fresh
        run never reuses a folder that holds a run; a resumed one may change only resumable keys
        (``train.config.RESUMABLE_KEYS``) of its ``config.yaml``."""
        check_output_dir(self.run_dir, what="run.out_dir")
        if self.dist.is_main:
            self._lock = folder_lock(self.run_dir, "usfast train")
        try:
            stored = self.run_dir / "config.yaml"
            has_ckpt = ckpt.latest_checkpoint(self.run_dir) is not None
            if not resume and (has_ckpt or stored.is_file()):
                raise UsfastError(
                    f"{self.run_dir} already holds a run ({'checkpoints' if has_ckpt else 'config.yaml'}); pass "
                    "--resume to continue it, or set run.out_dir to a new directory"
                )
            self._stored_config: TrainConfig | None = None
            self._config_changes: list[tuple[str, Any, Any]] = []
            if resume and stored.is_file():
                self._stored_config = from_dict(TrainConfig, load_yaml(stored))
                self._config_changes = resume_changes(self._stored_config, self.cfg)
        except BaseException:
            self._release_lock()
            raise

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _prepare_run_dir(self, resume: bool) -> None:
        latest = ckpt.latest_checkpoint(self.run_dir)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if latest is not None:
            self.load_checkpoint(latest)
            self.resumed_from = self.step
            if self.cfg.optim.steps < self.step:
                raise ConfigError(
                    f"--resume: optim.steps={self.cfg.optim.steps} is below the {self.step} steps {self.run_dir} has "
                    "already taken; set optim.steps >= that to extend the run"
                )
            if self.dist.is_main:
                self._truncate_metrics(self.step)
                self.best_val = _best_logged(self.best_val, self.run_dir / "metrics.jsonl", self.step)
            log.info("resumed %s at step %d (epoch %d, batch %d)", self.run_dir, self.step, self.epoch, self.consumed)
        elif resume:
            log.info("no checkpoint in %s: starting from scratch", self.run_dir)
        if self.dist.is_main:
            self._write_config()

    def _write_config(self) -> None:
        """``config.yaml`` (the run's effective config). A resume that changes resumable keys first
        keeps the previous file as ``config_history/NNN.yaml`` (never overwritten silently)."""
        path = self.run_dir / "config.yaml"
        if not path.is_file():
            save_config(self.cfg, path)
            return
        if not self._config_changes:
            return
        history = self.run_dir / "config_history"
        history.mkdir(exist_ok=True)
        n = len([p for p in history.glob("[0-9][0-9][0-9].yaml")])
        change = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in self._config_changes)
        kept = history / f"{n:03d}.yaml"
        header = f"# config.yaml of this run until step {self.step}; then replaced by a --resume with: {change}\n"
        atomic_write_text(kept, header + path.read_text())
        save_config(self.cfg, path)
        log.info("config.yaml updated on resume (%s); the previous one is kept as %s", change, kept)

    # -- data -------------------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, sampler: Any, seed: int) -> DataLoader:
        # An explicit generator keeps DataLoader set-up from drawing on the global RNG, so creating
        # an iterator at a resume point does not shift the augmentation stream.
        return DataLoader(
            dataset,
            batch_size=self.cfg.data.batch_size,
            sampler=sampler,
            num_workers=self.cfg.data.num_workers,
            collate_fn=collate_pretrain,
            drop_last=sampler is self.sampler,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            generator=torch.Generator().manual_seed(seed),
        )

    def next_batch(self) -> dict[str, torch.Tensor]:
        """Next training micro-batch; rolls over epochs and tracks the position for resume."""
        while True:
            if self._batches is None:
                self.sampler.set_epoch(self.epoch, start=self.consumed * self.cfg.data.batch_size)
                seed = self.cfg.run.seed * 1_000_003 + self.epoch * 7 + self.dist.rank
                self._batches = iter(self._loader(self.train_dataset, self.sampler, seed))
            try:
                batch = next(self._batches)
            except StopIteration:
                self._batches = None
                self.epoch, self.consumed = self.epoch + 1, 0
                continue
            self.consumed += 1
            self.failed_inputs.update(batch.pop("failed", {}))
            return batch

    def input_report(self) -> dict[str, Any]:
        """The corpus's unreadable / short inputs plus the files that failed during this run."""
        if self.pretrain_data is None:
            return {}
        report = self.pretrain_data.report()
        report["failed"] = {**report["failed"], **self.failed_inputs}
        report["counts"] = {k: len(report[k]) for k in ("unreadable", "short", "failed")}
        return report

    def _draw_masks(self, batch_size: int, valid: torch.Tensor | None, seed_parts: tuple[int, ...]) -> MaskBatch:
        """Mask thread: draw, build the index plans on the host, pin for an async copy."""
        rng = np.random.default_rng([self.cfg.run.seed, *seed_parts])
        masks = self.collator.sample(batch_size, valid, rng)
        self.model.prepare(masks)
        return masks.pin_memory() if self.device.type == "cuda" else masks

    def masks_async(self, batch: dict[str, torch.Tensor], seed_parts: tuple[int, ...]) -> Future[MaskBatch]:
        """Start drawing the masks of ``batch`` (seeded by ``(run.seed, *seed_parts)``) in the mask thread."""
        return self._mask_pool.submit(
            self._draw_masks, batch["image"].shape[0], batch.get("valid_patches"), tuple(seed_parts)
        )

    def collect_masks(self, pending: Future[MaskBatch]) -> MaskBatch:
        """Wait for the mask thread, count its fallbacks, and move the masks to the device."""
        masks = pending.result()
        for key, n in masks.fallbacks.items():
            if key not in self.fallbacks:
                log.warning("USrc masking fallback '%s' used (see usjepa_fast.masking.multiblock); counting", key)
            self.fallbacks[key] = self.fallbacks.get(key, 0) + n
        return masks.to(self.device, non_blocking=True)

    def sample_masks(self, batch: dict[str, torch.Tensor], seed_parts: tuple[int, ...]) -> MaskBatch:
        """The masks of ``batch`` on the device, drawn synchronously (same draw as the async path)."""
        return self.collect_masks(self.masks_async(batch, seed_parts))

    def close(self) -> None:
        """Stop the mask thread and release the run folder's lock (``run`` does this; call it when
        driving a Trainer by hand)."""
        self._mask_pool.shutdown(wait=True, cancel_futures=True)
        self._release_lock()

    # -- the step ---------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16)

    def targets(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Phase 1: what the predictor regresses, for every patch: (B, N, Dt). ``teacher.tokens=scan``:
        the teacher embeds only the patches USrc draws from (``valid (B, gh, gw)``, the batch's
        ``valid_patches``; the rows of the others are zeros and no target addresses them)."""
        if self.teacher is None:
            return patchify_gray(images, self.cfg.model.patch_size, self.cfg.objective.pixel_pool)  # (B, N, q*q)
        if self.cfg.teacher.tokens == "scan":
            if valid is None:
                raise DataError("teacher.tokens=scan needs 'valid_patches' in every batch (scan masks)")
            drawable = usrc_drawable(valid.to("cpu", torch.bool), self.cfg.mask.min_keep)  # the collator's rule
            keep = RaggedIndex.from_mask(drawable.reshape(drawable.shape[0], 1, -1)).to(images.device)
            return self.teacher(images, keep)  # no_grad inside
        return self.teacher(images)  # no_grad inside

    def loss(self, pred: torch.Tensor, targets: torch.Tensor, masks: MaskBatch) -> torch.Tensor:
        """Phase 3: Smooth-L1 between packed predictions (Tt, Dt) and the targets (B, N, Dt) at the
        target patches; the mean runs over the Tt real target tokens (no pads exist)."""
        obj = self.cfg.objective
        b, n, d = targets.shape
        flat_idx = masks.target.flat(n)[None]  # (1, Tt): sample * N + patch
        return salt_smooth_l1(
            pred[None], targets.reshape(1, b * n, d), flat_idx, beta=obj.beta, normalize_target=obj.normalize_target
        )

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over ``grad_accum`` micro-batches; returns its metrics.

        ``loss`` and ``grad_norm`` are 0-d device tensors (read them at log intervals, not per step).
        """
        accum = self.cfg.optim.grad_accum
        self.model.train()
        total_loss = torch.zeros((), device=self.device)  # summed on device: no host sync in the step
        n_images = 0
        for micro in range(accum):
            batch = self.next_batch()
            pending = self.masks_async(batch, (self.step, micro, self.dist.rank))  # drawn in the mask thread
            images = batch["image"].to(self.device, non_blocking=True)  # (B, 3, S, S)
            # Phase 1: teacher forward (full image, no grad), overlapping with the mask draw.
            with self._autocast():
                targets = self.targets(images, batch.get("valid_patches"))
            masks = self.collect_masks(pending)  # ragged: context (Tc,), targets (Tt,) on the device
            # DDP all-reduces gradients only on the last micro-batch of the step.
            sync = self.ddp.no_sync() if self.ddp is not None and micro < accum - 1 else contextlib.nullcontext()
            with sync:
                # Phase 2: student forward on context tokens + predictor.
                with self._autocast():
                    pred = self.step_model(images, masks)  # (Tt, Dt)
                # Phase 3: loss (float32 inside the kernel).
                loss = self.loss(pred, targets, masks)
                (loss / accum).backward()
            total_loss += loss.detach()
            n_images += images.shape[0]
        lr, wd, grad_norm, momentum = self.update()
        return {
            "loss": total_loss / accum,
            "lr": lr,
            "wd": wd,
            "grad_norm": grad_norm,
            "momentum": momentum,
            "images": float(n_images * self.dist.world_size),
        }

    def update(self) -> tuple[float, float, torch.Tensor | float, float]:
        """Phase 4: scheduled lr / weight decay, clipping, AdamW, EMA and the step counter.

        Atomic with respect to Ctrl-C: SIGINT is held until the phase is over and then reported
        through ``interrupt_requested``, so an interrupt can never leave updated weights with the
        step counter and data position of the step before (a resume would apply the step twice).
        """
        cfg, o = self.cfg, self.cfg.optim
        lr = lr_at(self.step, o.steps, o.warmup_steps, o.start_lr, o.lr, o.final_lr)
        wd = wd_at(self.step, o.steps, o.weight_decay, o.final_weight_decay)
        with _signals_deferred(self._request_interrupt):
            for group in self.optimizer.param_groups:
                group["lr"] = lr
                group["weight_decay"] = wd if group["apply_wd"] else 0.0
            grad_norm: torch.Tensor | float = float("nan")
            if o.clip_grad > 0:  # a device tensor: read at the log interval
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.clip_grad)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            momentum = float("nan")
            if self.teacher is not None and self.teacher.is_ema:
                momentum = momentum_at(self.step, o.steps, *cfg.teacher.ema_momentum)
                self.teacher.ema_update(self.student, momentum)
            self.step += 1
        return lr, wd, grad_norm, momentum

    def _request_interrupt(self, signum: int = signal.SIGINT) -> None:
        self.interrupt_requested = True
        self.interrupt_signal = signum

    # -- validation -------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean SALT loss on the hold-out with fixed masks (comparable across evaluations)."""
        if self.val_dataset is None or len(self.val_dataset) == 0:
            return None
        self.model.eval()
        indices = list(range(len(self.val_dataset)))[self.dist.rank :: self.dist.world_size]
        loader = self._loader(self.val_dataset, indices, seed=0)
        total = torch.zeros(2, dtype=torch.float64, device=self.device)  # (loss * images, images)
        for i, batch in enumerate(loader):
            if self.cfg.run.val_batches is not None and i >= self.cfg.run.val_batches:
                break
            pending = self.masks_async(batch, (999_999, i, self.dist.rank))  # fixed masks per batch
            images = batch["image"].to(self.device)
            with self._autocast():
                targets = self.targets(images, batch.get("valid_patches"))
            masks = self.collect_masks(pending)
            with self._autocast():
                pred = self.model(images, masks)
            loss = self.loss(pred, targets, masks)
            total[0] += loss.double() * images.shape[0]
            total[1] += images.shape[0]
        if self.dist.world_size > 1:
            dist.all_reduce(total)
        self.model.train()
        total = total.cpu()  # the one host sync of the validation pass
        return float(total[0] / total[1]) if total[1] > 0 else None

    # -- checkpoints ------------------------------------------------------------------------------
    def state(self, position: tuple[int, int] | None = None, rng: dict[str, Any] | None = None) -> dict[str, Any]:
        epoch, consumed = position if position is not None else (self.epoch, self.consumed)
        return {
            "format": CKPT_FORMAT,
            "step": self.step,
            "epoch": epoch,
            "consumed": consumed,
            "student": self.student.state_dict(),
            "predictor": self.predictor.state_dict(),
            "teacher": self.teacher.encoder.state_dict() if self.teacher is not None and self.teacher.is_ema else None,
            "optimizer": self.optimizer.state_dict(),
            "rng": rng if rng is not None else ckpt.rng_state(),
            "best_val": self.best_val,
            "config": to_dict(self.cfg),
            "student_timm": self.student.timm_spec(),
            # prepared corpus root -> fingerprint: a resume over other frames would not be exact
            "data_fingerprints": self.state_fingerprints(),
        }

    def save_checkpoint(self, collective: bool = True, **kwargs: Any) -> Path | None:
        """Rank 0 writes; with ``collective`` every rank must call (their RNG states are gathered)."""
        rng_ranks = None
        if self.dist.world_size > 1 and collective:
            rng_ranks = [None] * self.dist.world_size
            dist.all_gather_object(rng_ranks, ckpt.rng_state())
        if not self.dist.is_main:
            return None
        state = self.state(**kwargs)
        state["rng_ranks"] = rng_ranks
        return ckpt.save_rolling(state, self.run_dir, self.step, self.cfg.run.keep_last)

    def load_checkpoint(self, path: Path) -> None:
        state = ckpt.load_training_state(path)
        if state.get("format") != CKPT_FORMAT:
            raise UsfastError(f"{path} is not a usfast training checkpoint (format {state.get('format')!r})")
        saved, now = state.get("data_fingerprints"), self.state_fingerprints()
        changed = [] if saved is None else sorted(r for r in set(saved) | set(now) if saved.get(r) != now.get(r))
        if changed:
            raise UsfastError(
                f"{path} was trained on another version of prepared corpus {changed[0]} (fingerprint "
                f"{saved.get(changed[0])} then, {now.get(changed[0])} now); restore that corpus or start a new run"
            )
        self.student.load_state_dict(state["student"])
        self.predictor.load_state_dict(state["predictor"])
        if state.get("teacher") is not None and self.teacher is not None and self.teacher.is_ema:
            self.teacher.encoder.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.epoch, self.consumed = state["step"], state["epoch"], state["consumed"]
        self.best_val = state.get("best_val")
        ranks = state.get("rng_ranks")
        if self.dist.world_size == 1:
            ckpt.set_rng_state(state["rng"])
        elif ranks is not None and len(ranks) == self.dist.world_size:
            ckpt.set_rng_state(ranks[self.dist.rank])  # each rank continues its own stream
        else:  # other world size, or a checkpoint written by rank 0 alone (Ctrl-C): fresh streams
            log.warning("checkpoint %s has no RNG state for %d ranks; reseeding", path, self.dist.world_size)
            self._seed_process(self.cfg.run.seed * 1000 + self.dist.rank + 1 + self.step)
        self._batches = None

    def state_fingerprints(self) -> dict[str, str]:
        """Prepared corpus root -> fingerprint of this run's ``data.sources`` (empty for other inputs)."""
        return self.pretrain_data.fingerprints if self.pretrain_data is not None else {}

    def export_student(self) -> Path | None:
        """Write the export-ready ``student.safetensors`` + ``student.json`` (timm-loadable)."""
        if not self.dist.is_main:
            return None
        from usjepa_fast.models.frozen import save_export_ready

        info = self.student.encoder_info(
            f"usfast-{self.cfg.objective.kind}-{self.cfg.model.student}", self.cfg.data.mean, self.cfg.data.std
        )
        return save_export_ready(self.student, info, self.run_dir / "student.safetensors")

    # -- metrics ----------------------------------------------------------------------------------
    def _truncate_metrics(self, step: int) -> None:
        """Drop metrics lines written after the checkpoint we resume from (a killed run's tail)."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        atomic_write_text(path, "".join(line + "\n" for line in kept))  # a crash here must not lose the history

    def last_logged_loss(self) -> float:
        """Training loss of the newest metrics row (a resumed run that had no step left to do)."""
        path = self.run_dir / "metrics.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
        losses = [r["loss"] for r in rows if r.get("loss") is not None]
        return float(losses[-1]) if losses else float("nan")

    def log_metrics(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}
        with open(self.run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(clean) + "\n")


@contextlib.contextmanager
def _signals_deferred(on_interrupt: Callable[[int], None]) -> Iterator[None]:
    """Hold SIGINT and SIGTERM for the duration of the block, then hand them on.

    Python's default SIGINT handler (KeyboardInterrupt) and usfast's SIGTERM handler (``errors.
    Terminated``, marked ``usfast_terminates``) become ``on_interrupt(signum)`` after the block, so the
    caller raises at a point where its state is consistent; another Python handler is called late;
    the default SIGTERM action (no handler installed) runs late; an ignored signal stays ignored.
    Outside the main thread (signals cannot be handled there) or when a handler was installed
    outside Python, that signal is not held.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    held = [s for s, h in previous.items() if h is not None]
    received: list[int] = []
    for s in held:
        signal.signal(s, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for s in held:
            signal.signal(s, previous[s])
        for s in dict.fromkeys(received):
            handler = previous[s]
            if handler is signal.default_int_handler or getattr(handler, "usfast_terminates", False):
                on_interrupt(s)
            elif handler is signal.SIG_DFL:
                signal.raise_signal(s)
            elif callable(handler):
                handler(s, None)


def _best_logged(best: float | None, metrics: Path, step: int) -> float | None:
    """The lowest of ``best`` (from the checkpoint) and every ``val_loss`` logged up to ``step``: with
    the checkpoint written before validation, a run killed right after a validation still knows it."""
    if not metrics.is_file():
        return best
    for line in metrics.read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        val = row.get("val_loss")
        if val is not None and row.get("step", step + 1) <= step and (best is None or val < best):
            best = float(val)
    return best


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON has no NaN
    return value


def _progress(trainer: Trainer) -> Any:
    """A tqdm bar on a terminal, periodic log lines otherwise (``usjepa_fast.progress``); rank 0 only."""
    if not (trainer.cfg.run.progress and trainer.dist.is_main):
        return None
    from usjepa_fast.progress import progress

    return progress(trainer.cfg.optim.steps, "usfast train", "step", initial=trainer.step)


def _log_line(step: int, total: int, loss: float, lr: float, ips: float, eta_s: float) -> str:
    """timm ``train.py``-style record: ``step 40/300 (13%)  loss 0.4312  lr 1.00e-03  12.3 img/s  ETA 0:03:21``."""
    from usjepa_fast.progress import format_eta

    return (
        f"step {step}/{total} ({100.0 * step / max(total, 1):.0f}%)  loss {loss:.4f}  lr {lr:.2e}  "
        f"{ips:.1f} img/s  ETA {format_eta(eta_s)}"
    )


def run(
    cfg: TrainConfig, resume: bool = False, train_dataset: Dataset | None = None, val_dataset: Dataset | None = None
) -> RunSummary:
    """Train (or resume) one run described by ``cfg``; see the module doc for the step anatomy.

    ``train_dataset`` / ``val_dataset`` replace ``cfg.data.sources`` (in-memory data for tests and
    benchmarks); items are dicts with ``image (3, S, S)`` and, for USrc, ``valid_patches``.
    """
    t_start = time.perf_counter()
    trainer = Trainer(cfg, resume=resume, train_dataset=train_dataset, val_dataset=val_dataset)
    r = cfg.run
    total = cfg.optim.steps
    stop_at = total if r.stop_after is None else min(total, trainer.step + r.stop_after)
    bar = _progress(trainer)
    last_ckpt: Path | None = None
    # The window's loss sum stays on the device; it is read (one sync) at log and checkpoint steps.
    window_loss, window_n, window_images, window_t = torch.zeros((), device=trainer.device), 0, 0.0, time.perf_counter()
    run_images, final_loss = 0.0, float("nan")

    def check_finite(window_sum: float) -> None:
        if not math.isfinite(window_sum):
            raise UsfastError(
                f"training loss became {window_sum} by step {trainer.step}; lower optim.lr or enable "
                f"optim.clip_grad, then resume from {ckpt.latest_checkpoint(trainer.run_dir)}"
            )

    try:
        while trainer.step < stop_at:
            position, rng, step_before = (trainer.epoch, trainer.consumed), ckpt.rng_state(), trainer.step
            try:
                metrics = trainer.train_step()
                window_loss += metrics["loss"]
                window_n += 1
                window_images += metrics["images"]
                run_images += metrics["images"]
                step = trainer.step
                if step % r.log_every == 0 or step == stop_at:
                    window_sum = float(window_loss)  # the host sync of this log interval
                    check_finite(window_sum)
                    elapsed = time.perf_counter() - window_t
                    final_loss = window_sum / window_n
                    ips = window_images / max(elapsed, 1e-9)
                    grad_norm = metrics["grad_norm"]
                    trainer.log_metrics(
                        {
                            "step": step,
                            "epoch": trainer.epoch,
                            "loss": final_loss,
                            "lr": metrics["lr"],
                            "wd": metrics["wd"],
                            "grad_norm": float(grad_norm),
                            "momentum": metrics["momentum"],
                            "images_per_s": ips,
                        }
                    )
                    if bar is not None:
                        bar.set_postfix(loss=f"{final_loss:.4f}", lr=f"{metrics['lr']:.2e}", img_s=f"{ips:.1f}")
                    if trainer.dist.is_main and (bar is None or isinstance(bar, LogProgress)):
                        # no terminal bar (progress off, or a log file): one timm-style line per log step
                        steps_s = (step - (trainer.resumed_from or 0)) / max(time.perf_counter() - t_start, 1e-9)
                        eta = (stop_at - step) / steps_s if steps_s > 0 else float("inf")
                        log.info("%s", _log_line(step, total, final_loss, metrics["lr"], ips, eta))
                    window_loss, window_n, window_images, window_t = (
                        torch.zeros_like(window_loss),
                        0,
                        0.0,
                        time.perf_counter(),
                    )
                if bar is not None:
                    bar.update(1)
                if trainer.interrupt_requested:  # Ctrl-C / SIGTERM during the update: the step is complete
                    raise (
                        Terminated(trainer.interrupt_signal)
                        if trainer.interrupt_signal == signal.SIGTERM
                        else (KeyboardInterrupt())
                    )
                # Checkpoint first, then validate: a crash in (or right after) validation loses no
                # step; a resume recovers the best loss from metrics.jsonl (_best_logged).
                if step % r.ckpt_every == 0 or step == stop_at:
                    if window_n:  # never checkpoint weights a non-finite loss has already reached
                        check_finite(float(window_loss))
                    last_ckpt = trainer.save_checkpoint()
                if step % r.val_every == 0 or step == total:
                    rng_before_val = ckpt.rng_state()  # validation must not shift the training stream
                    val = trainer.validate()
                    ckpt.set_rng_state(rng_before_val)
                    if val is not None:
                        trainer.log_metrics({"step": step, "val_loss": val})
                        if trainer.best_val is None or val < trainer.best_val:
                            trainer.best_val = val
                            if trainer.dist.is_main:
                                ckpt.atomic_torch_save(trainer.state(), trainer.run_dir / "best.pt")
                if step % r.log_every == 0:  # throughput windows exclude validation and checkpoint time
                    window_t = time.perf_counter()
            except KeyboardInterrupt as exc:
                if trainer.step == step_before:
                    # Interrupted in the forward/backward: roll back to the start of the step (exact).
                    trainer.optimizer.zero_grad(set_to_none=True)
                    last_ckpt = trainer.save_checkpoint(collective=False, position=position, rng=rng)
                else:  # the update finished (SIGINT is deferred past it): the post-step state is exact
                    last_ckpt = trainer.save_checkpoint(collective=False)
                text = (
                    f"checkpoint {last_ckpt} at step {trainer.step}/{total}; "
                    f"resume with `usfast train --resume {trainer.run_dir}`"
                )
                log.warning("interrupted: %s", text)
                note_saved(exc, text)
                raise
    finally:
        trainer.close()
        if bar is not None:
            bar.close()
    student_path = trainer.export_student() if trainer.step >= total else None
    if trainer.dist.world_size > 1:
        dist.barrier()
    if trainer.dist.initialised_here:
        dist.destroy_process_group()
    elapsed = time.perf_counter() - t_start
    if math.isnan(final_loss) and trainer.dist.is_main:
        final_loss = trainer.last_logged_loss()
    summary = RunSummary(
        run_dir=trainer.run_dir,
        step=trainer.step,
        total_steps=total,
        final_loss=final_loss,
        best_val_loss=trainer.best_val,
        student_path=student_path,
        checkpoint=last_ckpt,
        elapsed_s=elapsed,
        images_per_s=run_images / max(elapsed, 1e-9),
        resumed_from=trainer.resumed_from,
        mask_fallbacks=dict(trainer.fallbacks),
        inputs=trainer.input_report(),
    )
    if trainer.dist.is_main:
        fields = {k: _jsonable(v) for k, v in dataclasses.asdict(summary).items()}
        atomic_write_json(trainer.run_dir / SUMMARY_FILE, fields, indent=2)
    return summary


def read_run_summary(run_dir: str | Path) -> RunSummary | None:
    """The :class:`RunSummary` a run wrote last (``RUN/summary.json``), or None when it has none (or an
    unreadable one): a caller can tell a finished run from its folder without entering training."""
    path = Path(run_dir) / SUMMARY_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    names = {f.name for f in dataclasses.fields(RunSummary)}
    data = {k: v for k, v in data.items() if k in names}
    for key in ("run_dir", "student_path", "checkpoint"):
        if data.get(key) is not None:
            data[key] = Path(data[key])
    if data.get("final_loss") is None:
        data["final_loss"] = float("nan")  # written as null: strict JSON has no NaN
    try:
        return RunSummary(**data)
    except TypeError:  # a summary missing required fields
        return None
