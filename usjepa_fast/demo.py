"""``usfast demo``: the whole pipeline on built-in synthetic data, as a sequence of named stages.

Each stage is a function ``stage(ctx: DemoContext) -> dict`` that reads what earlier stages left in
``ctx.state``, prints a short human summary through ``ctx.echo`` and returns a JSON-serialisable
summary (collected in ``demo_summary.json``). Later parts of usfast append stages to :data:`STAGES`
(train, export, embed, evaluate) after the data stages:

1. ``synth``            synthesise an UltraBench-format dataset and drifting-probe clips
2. ``ultrabench``       read every split back through :class:`UltraBenchDataset` + :class:`Preprocessor`
3. ``folders``          the same files through the image- and video-folder readers (PyAV, DALI CPU)
4. ``scan_regions``     automatic scan-region detection vs the true masks, with an overlay picture
5. ``corpus``           the mixed pretraining corpus and its weighted sampler
6. ``train``            SALT stage 1 (pixel teacher) and stage 2 (student), tiny CPU recipes
7. ``export``           the student to ONNX, verified against PyTorch in ONNX Runtime
8. ``embed``            the clips through the ONNX graph, redundant frames skipped
9. ``evaluate``         linear probe + robustness: SALT student vs a random-init encoder
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from usjepa_fast.fileio import atomic_write_json, atomic_write_text

# 15% of the synthetic images go to the test split: ~210 test images, so a probe's macro F1 is read
# to a few points (a 33-image test split moved it by ±7 between seeds).
DEMO_IMAGES = 1400
# Synthetic data lands in OUT/<DATA_DIR>/ultrabench, so the probe tables name the task after it.
DATA_DIR = "synthetic_lesions"


@dataclass
class DemoContext:
    """What the stages share."""

    out_dir: Path
    n_images: int = DEMO_IMAGES
    n_clips: int = 8
    image_size: int = 256  # synthetic image side
    model_size: int = 224  # model input side used when reading the data back
    seed: int = 0
    teacher_steps: int = 200  # stage-1 pixel teacher steps (tiny recipe)
    student_steps: int = 300  # SALT student steps (tiny recipe)
    echo: Callable[[str], None] = print
    state: dict[str, Any] = field(default_factory=dict)  # objects handed from stage to stage
    summary: dict[str, Any] = field(default_factory=dict)  # stage name -> JSON summary


Stage = Callable[[DemoContext], dict]


def stage_synth(ctx: DemoContext) -> dict:
    from usjepa_fast.data.synth import synthesize

    s = synthesize(
        ctx.out_dir / DATA_DIR,
        n_images=ctx.n_images,
        n_clips=ctx.n_clips,
        image_size=ctx.image_size,
        seed=ctx.seed,
        workers=0,  # one process per CPU; the files do not depend on it
    )
    ctx.state["ultrabench"] = s.ultrabench_dir
    ctx.state["clips"] = s.clips_dir
    ctx.echo(f"  {s.n_images} images ({ctx.image_size}px) + {s.n_clips} clips in {s.seconds:.1f}s -> {s.out_dir}")
    ctx.echo(f"  classes {s.class_counts}")
    return {
        "seconds": round(s.seconds, 2),
        "class_counts": s.class_counts,
        "split_counts": s.split_counts,
        "clips": [p.name for p in s.clip_files],
    }


def stage_ultrabench(ctx: DemoContext) -> dict:
    from usjepa_fast.data.preprocess import PreprocessConfig, Preprocessor
    from usjepa_fast.data.ultrabench import SPLITS, UltraBenchDataset

    pre = Preprocessor(PreprocessConfig(image_size=ctx.model_size))
    out: dict[str, Any] = {}
    for split in SPLITS:
        ds = UltraBenchDataset(ctx.state["ultrabench"], split, transform=pre)
        item = ds[0]
        valid = float(np.mean([ds[i]["valid_patches"].float().mean().item() for i in range(min(8, len(ds)))]))
        out[split] = {
            "n": len(ds),
            "patients": len(set(ds.groups)),
            "class_counts": ds.class_counts(),
            "skipped": sum(ds.skipped.values()),
            "valid_patch_fraction": round(valid, 3),
        }
        ctx.echo(f"  {split:<10} {len(ds):4d} images, {len(set(ds.groups)):3d} patients, classes {ds.class_counts()}")
    ctx.echo(
        f"  item: image {tuple(item['image'].shape)} {item['image'].dtype}, scan_mask "
        f"{tuple(item['scan_mask'].shape)}, valid_patches {tuple(item['valid_patches'].shape)} "
        f"({out['train']['valid_patch_fraction']:.0%} of patches in the scan region)"
    )
    out["classes"] = ds.classes
    return out


def stage_folders(ctx: DemoContext) -> dict:
    from usjepa_fast.data.dali import DaliCpuDecoder, dali_available
    from usjepa_fast.data.folders import ImageFolderDataset, VideoFrameDataset
    from usjepa_fast.data.media import list_media
    from usjepa_fast.data.video import FrameSampling, PyAVDecoder

    images = ImageFolderDataset(ctx.state["ultrabench"] / "images", scan_mask="none")
    ctx.echo(f"  image folder: {len(images)} images, first {images[0]['image'].shape} {images[0]['image'].dtype}")
    sampling = FrameSampling(every_k=2, max_frames=12)
    videos = VideoFrameDataset(ctx.state["clips"], sampling)
    pyav = PyAVDecoder()
    per_clip = Counter(videos.paths[f].name for f, _, _ in videos.index)
    clips = {}
    for path in list_media(ctx.state["clips"], ("video",)):
        info = pyav.probe(path)
        clips[path.name] = {
            "codec": info.codec,
            "frames": info.num_frames,
            "fps": info.fps,
            "sampled": per_clip[path.name],
        }
        ctx.echo(
            f"  {path.name:<14} {info.codec:<6} {info.width}x{info.height} {info.num_frames} frames "
            f"@ {info.fps:g} fps -> {per_clip[path.name]} sampled (every 2nd, max 12)"
        )
    dali = None
    if dali_available():
        dec = DaliCpuDecoder()
        for path in list_media(ctx.state["clips"], ("video",)):
            if pyav.probe(path).codec in dec.CPU_CODECS:
                a = [f.image for f in dec.frames(path, sampling)]
                b = [f.image for f in pyav.frames(path, sampling)]
                diff = max(float(np.abs(x.astype(int) - y).mean()) for x, y in zip(a, b, strict=True))
                dali = {"file": path.name, "frames": len(a), "max_mean_abs_diff_vs_pyav": diff}
                ctx.echo(f"  DALI CPU decoded {path.name}: {len(a)} frames, mean |DALI - PyAV| <= {diff:.2f}")
                break
    else:
        ctx.echo("  DALI not installed: DALI CPU decoding skipped")
    return {"images": len(images), "video_frames": len(videos), "clips": clips, "dali": dali}


def stage_scan_regions(ctx: DemoContext, n_images: int = 48) -> dict:
    from PIL import Image

    from usjepa_fast.data.folders import VideoFrameDataset
    from usjepa_fast.data.scan_region import detect_scan_region, load_mask, mask_iou, mask_overlay
    from usjepa_fast.data.ultrabench import UltraBenchDataset
    from usjepa_fast.data.video import FrameSampling

    ds = UltraBenchDataset(ctx.state["ultrabench"], "train")
    ious, tiles = [], []
    t0 = time.perf_counter()
    for i in range(min(n_images, len(ds))):
        gray, true = ds.load(i)
        found = detect_scan_region(gray)
        ious.append(mask_iou(found, true))
        if len(tiles) < 8:
            tiles.append(mask_overlay(gray, found, reference=true))
    per_image = (time.perf_counter() - t0) / max(1, len(ious))
    clip_ious = {}
    videos = VideoFrameDataset(
        ctx.state["clips"], FrameSampling(max_frames=32), scan_mask="detect", cache_dir=ctx.out_dir / "mask_cache"
    )
    for path in videos.paths:
        found = videos.clip_mask(path)
        clip_ious[path.name] = round(mask_iou(found, load_mask(path.with_name(f"{path.stem}.scanmask.png"))), 4)
    size = tiles[0].shape[0]
    tiles = [t if t.shape[0] == size else np.asarray(Image.fromarray(t).resize((size, size))) for t in tiles]
    while len(tiles) % 4:
        tiles.append(np.zeros_like(tiles[0]))
    grid = np.concatenate([np.concatenate(tiles[r : r + 4], axis=1) for r in range(0, len(tiles), 4)], axis=0)
    overlay_path = ctx.out_dir / "scan_regions.png"
    Image.fromarray(grid).save(overlay_path)
    ctx.echo(
        f"  images: IoU with the true scan region mean {np.mean(ious):.3f}, min {np.min(ious):.3f} "
        f"over {len(ious)} images ({per_image * 1000:.0f} ms each)"
    )
    ctx.echo(f"  clips (temporal detection): IoU {clip_ious}")
    ctx.echo(f"  overlays (green = detected, magenta = true outline): {overlay_path}")
    return {
        "image_iou_mean": round(float(np.mean(ious)), 4),
        "image_iou_min": round(float(np.min(ious)), 4),
        "ms_per_image": round(per_image * 1000, 1),
        "clip_iou": clip_ious,
        "overlay": str(overlay_path),
    }


def stage_corpus(ctx: DemoContext) -> dict:
    from usjepa_fast.data.corpus import build_pretrain_corpus
    from usjepa_fast.data.preprocess import PreprocessConfig
    from usjepa_fast.data.sampler import CorpusSampler
    from usjepa_fast.data.video import FrameSampling

    # A small cap so that the demo shows the capping at work on small synthetic data.
    cap = 64
    corpus = build_pretrain_corpus(
        [str(ctx.state["ultrabench"]), str(ctx.state["clips"])],
        PreprocessConfig(image_size=ctx.model_size, train=True),
        cap=cap,
        sampling=FrameSampling(every_k=2),
    )
    # The trainer's sampler: weights min(size, cap), permutation streams inside each member.
    sampler = CorpusSampler.from_corpus(corpus, num_samples=2000, seed=ctx.seed)
    sampler.set_epoch(1)
    order = list(sampler)
    drawn = np.bincount([sampler.member_of(i) for i in order], minlength=len(corpus.datasets)) / len(order)
    rows = []
    for row, frac in zip(corpus.summary(), drawn, strict=True):
        ctx.echo(f"  {row['name']:<24} {row['size']:5d} items  weight {row['weight']:.3f}  drawn {frac:.3f}")
        rows.append({**row, "drawn": round(float(frac), 4)})
    # Resume check: a sampler restarted mid-epoch (as after a killed run) continues the same order.
    resumed = CorpusSampler.from_corpus(corpus, num_samples=2000, seed=ctx.seed)
    resumed.set_epoch(1, start=777)
    resume_exact = list(resumed) == order[777:]
    ctx.echo(f"  sampler resumed at item 777 of epoch 1 continues the same order: {resume_exact}")
    if not resume_exact:
        raise RuntimeError("the corpus sampler did not resume exactly; this is a bug")
    item = corpus[0]
    ctx.echo(f"  item keys {sorted(item)}; image {tuple(item['image'].shape)}")
    return {"cap": cap, "members": rows, "resume_exact": resume_exact}


def stage_train(ctx: DemoContext) -> dict:
    """SALT stage 1 (pixel teacher) then stage 2 (SALT student) with the tiny CPU recipes."""
    from usjepa_fast.train.pipeline import pretrain_two_stage

    result = pretrain_two_stage(
        [ctx.state["ultrabench"]],
        ctx.out_dir / "runs",
        teacher_steps=ctx.teacher_steps,
        student_steps=ctx.student_steps,
        seed=ctx.seed,
        progress=False,
        resume=True,  # a re-run of the demo continues (or skips) finished stages
    )
    ctx.state["student"] = result.student_path
    for label, run in (("teacher", result.teacher), ("student", result.student)):
        ctx.echo(
            f"  {label}: {run.step} steps, final loss {run.final_loss:.4f}, "
            f"{run.images_per_s:.1f} img/s -> {run.run_dir}"
        )
    ctx.echo(f"  export-ready student: {result.student_path}")
    return {
        "teacher_final_loss": result.teacher.final_loss,
        "student_final_loss": result.student.final_loss,
        "student_best_val_loss": result.student.best_val_loss,
        "student_images_per_s": round(result.student.images_per_s, 2),
        "student": str(result.student_path),
    }


def stage_export(ctx: DemoContext) -> dict:
    """The SALT student to ONNX, verified against PyTorch by ONNX Runtime before it is written."""
    from usjepa_fast.export import export_onnx

    res = export_onnx(ctx.state["student"], ctx.out_dir / "export" / "student.onnx", exporter="torchscript")
    ctx.state["onnx"] = res.onnx_path
    ctx.echo(
        f"  {res.onnx_path} ({res.exporter}, {res.precision}): ORT vs PyTorch rel err {res.parity.rel_err:.1e}, "
        f"min cosine {res.parity.cosine_min:.6f}"
    )
    return {"onnx": str(res.onnx_path), "rel_err": res.parity.rel_err, "cosine_min": res.parity.cosine_min}


def stage_embed(ctx: DemoContext) -> dict:
    """Every clip frame through the exported graph (ONNX Runtime), skipping near-identical frames."""
    from usjepa_fast.embed import EmbedOptions, embed_folder, load

    out = ctx.out_dir / "embeddings"
    summary = embed_folder(
        ctx.state["clips"],
        out,
        ctx.state["onnx"],
        backend="onnx",
        options=EmbedOptions(redundancy_threshold=1.0, progress=False),
    )
    features, index = load(out)
    ctx.echo(
        f"  {summary.files_embedded} clips, {summary.frames_embedded} frames embedded + "
        f"{summary.frames_duplicate} redundant frames mapped to their representative, "
        f"{summary.frames_per_s:.1f} frames/s on {summary.backend}; matrix {features.shape} -> {out}"
    )
    return {**summary.as_dict(), "matrix_shape": list(features.shape), "index_rows": len(index)}


def stage_evaluate(ctx: DemoContext) -> dict:
    """Linear probe + robustness: the SALT student against a random-init encoder of its architecture."""
    from usjepa_fast.probe.compare import probe_report

    student = str(ctx.state["student"])
    report = probe_report(
        ctx.state["ultrabench"],
        [student, f"random:{student}"],
        ctx.out_dir / "eval",
        names=["SALT student", "random init"],
        cache_dir=ctx.out_dir / "eval" / "cache",
        echo=False,
    )
    ctx.echo(report.markdown)
    task = report.tasks[0]
    scores = {enc: report.cell(enc, task).test.summary().fmt() for enc in report.encoders}
    n_test = int(report.cell(report.encoders[0], task).sizes.get("test", 0))
    caveat = demo_caveat(n_test, ctx.teacher_steps, ctx.student_steps)
    ctx.echo(caveat)
    report_md = ctx.out_dir / "eval" / "report.md"
    if report_md.is_file():
        atomic_write_text(report_md, report_md.read_text().rstrip("\n") + f"\n\n{caveat}\n")
    return {"macro_f1": scores, "task": task, "test_images": n_test, "caveat": caveat, "report": str(report_md)}


def demo_caveat(n_test: int, teacher_steps: int, student_steps: int) -> str:
    """The one line that says what the demo's tiny run can and cannot show."""
    return (
        f"Caveat: a {teacher_steps}+{student_steps}-step CPU run of a tiny ViT on synthetic images, probed on "
        f"{n_test} test images (mean ± std over probe seeds): it shows the pipeline works end to end; it cannot "
        "show whether SALT pretraining helps, which needs real ultrasound, full-length training and "
        "several training seeds (see the paper's table)."
    )


STAGES: list[tuple[str, Stage]] = [
    ("synth", stage_synth),
    ("ultrabench", stage_ultrabench),
    ("folders", stage_folders),
    ("scan_regions", stage_scan_regions),
    ("corpus", stage_corpus),
    ("train", stage_train),
    ("export", stage_export),
    ("embed", stage_embed),
    ("evaluate", stage_evaluate),
]


def run_demo(
    out_dir: Path,
    n_images: int | None = None,
    n_clips: int = 8,
    image_size: int = 256,
    seed: int = 0,
    stages: Sequence[str] | None = None,
    echo: Callable[[str], None] = print,
    teacher_steps: int = 200,
    student_steps: int = 300,
) -> DemoContext:
    """Run the demo stages (all, or the named subset in order) into ``out_dir``; writes
    ``out_dir/demo_summary.json`` and returns the context with every stage's summary.
    ``n_images=None``: :data:`DEMO_IMAGES`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = DemoContext(
        out_dir=out_dir,
        n_images=DEMO_IMAGES if n_images is None else n_images,
        n_clips=n_clips,
        image_size=image_size,
        seed=seed,
        teacher_steps=teacher_steps,
        student_steps=student_steps,
        echo=echo,
    )
    known = [name for name, _ in STAGES]
    wanted = list(stages) if stages is not None else known
    unknown = [s for s in wanted if s not in known]
    if unknown:
        from usjepa_fast.errors import UsfastError

        raise UsfastError(f"unknown demo stage(s) {unknown}; stages are {', '.join(known)}")
    t_all = time.perf_counter()
    for name, fn in STAGES:
        if name not in wanted:
            continue
        echo(f"[{name}]")
        t0 = time.perf_counter()
        result = fn(ctx)
        result["stage_seconds"] = round(time.perf_counter() - t0, 2)
        ctx.summary[name] = result
        atomic_write_json(out_dir / "demo_summary.json", ctx.summary, indent=1)
    echo(f"demo finished in {time.perf_counter() - t_all:.1f}s; summary in {out_dir / 'demo_summary.json'}")
    return ctx
