"""Claim: probe features through the embed engine cost no more than a dedicated extraction loop.

Since issue 9 the probe has no extraction loop of its own: ``probe.features.split_features`` runs
``embed.embed_split`` (the engine behind ``usfast embed``). The baseline is the best version of the
loop it replaced, re-implemented here: ``UltraBenchDataset`` items with the evaluation
``Preprocessor`` (the dataset's scan masks), one loader thread preparing batch k+1 while the model
runs batch k, the same torch model at the same batch size. Both run in one process, alternating,
``--rounds`` times (which side runs first alternates); the table shows per-round images/s, the
median of the per-round ratios (engine / loop) and the wall time spent *outside* the model's
forward (the pipelines' own cost, which a busy machine disturbs far less than the ratio: on a
shared 2-core machine the model time itself drifts by 2x between minutes). The features must agree
(max abs diff, cosine).

    python benchmarks/probe_features.py [--model vit_small_patch16_224] [--images 160] [--rounds 3]

The model is randomly initialised (no hub downloads); speed does not depend on the weights. The last
output line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_header  # noqa: E402


class TimedModel(torch.nn.Module):
    """The encoder, with the seconds spent inside its forward counted (the rest is pipeline overhead)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.info, self.seconds = inner, inner.info, 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        y = self.inner(x)
        self.seconds += time.perf_counter() - t0
        return y


def loop_features(encoder, dataset, batch_size: int) -> np.ndarray:
    """The replaced design: thread-prefetched batches of preprocessed dataset items."""
    n = len(dataset)

    def load(start: int) -> torch.Tensor:
        return torch.stack([dataset[i]["image"] for i in range(start, min(n, start + batch_size))])

    feats = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        nxt = pool.submit(load, 0)
        for start in range(0, n, batch_size):
            x = nxt.result()
            if start + batch_size < n:
                nxt = pool.submit(load, start + batch_size)
            feats.append(encoder(x).cpu().numpy())
    return np.concatenate(feats)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vit_small_patch16_224")
    ap.add_argument("--images", type=int, default=160)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from usjepa_fast.data.synth import synthesize
    from usjepa_fast.models.resolve import resolve_encoder
    from usjepa_fast.probe.features import FeatureCache, open_encoder, open_split, split_features

    header = machine_header()
    work = Path(tempfile.mkdtemp(prefix="usfast-probe-features-"))
    synthesize(work, n_images=args.images, n_clips=0, image_size=args.size, seed=0)
    root = work / "ultrabench"
    timed = TimedModel(resolve_encoder(args.model, seed=0))
    enc = open_encoder(timed, device="cpu")
    ds = open_split(root, "train", enc.info)
    n = len(ds)
    rows, ratios = [], []
    ref = got = None
    for r in range(args.rounds):
        timings, model_s = {}, {}
        # alternate which runs first, so a load change on a shared machine does not favour one side
        for side in ("loop", "engine") if r % 2 == 0 else ("engine", "loop"):
            t0, timed.seconds = time.perf_counter(), 0.0
            if side == "loop":
                ref = loop_features(enc, ds, args.batch_size)
            else:
                cache = FeatureCache(work / f"cache{r}")
                got = split_features(enc, root, "train", cache, args.batch_size, dataset=ds).x
            timings[side] = time.perf_counter() - t0
            model_s[side] = timed.seconds
        over = {k: timings[k] - model_s[k] for k in timings}
        rows.append((r, n / timings["loop"], n / timings["engine"], over["loop"], over["engine"]))
        ratios.append(timings["loop"] / timings["engine"])
    diff = float(np.abs(got - ref).max())
    cos = float(((got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))).min())
    for line in header:
        print(line)
    threads = torch.get_num_threads()
    print(f"# {args.model}, {n} train images of {args.size} px, batch {args.batch_size}, torch threads {threads}")
    print(
        "| round | loop img/s | engine img/s | engine / loop | loop s outside the model | engine s outside the model |"
    )
    print("|---|---|---|---|---|---|")
    for (r, a, b, oa, ob), q in zip(rows, ratios, strict=True):
        print(f"| {r} | {a:.2f} | {b:.2f} | {q:.3f} | {oa:.2f} | {ob:.2f} |")
    median = statistics.median(ratios)
    over_loop = statistics.median(row[3] for row in rows)
    over_engine = statistics.median(row[4] for row in rows)
    print(
        f"median engine/loop speed ratio {median:.3f}; wall time outside the model (median) loop {over_loop:.2f} s, "
        f"engine {over_engine:.2f} s for {n} images; features max abs diff {diff:.2e}, cosine min {cos:.6f}"
    )
    print(
        json.dumps(
            {
                "model": args.model,
                "images": n,
                "rounds": [
                    {
                        "loop_img_s": round(a, 3),
                        "engine_img_s": round(b, 3),
                        "loop_overhead_s": round(oa, 3),
                        "engine_overhead_s": round(ob, 3),
                    }
                    for _, a, b, oa, ob in rows
                ],
                "engine_vs_loop": round(median, 3),
                "overhead_s": {"loop": round(over_loop, 3), "engine": round(over_engine, 3)},
                "max_abs_diff": diff,
                "cosine_min": cos,
                "machine": header,
            }
        )
    )


if __name__ == "__main__":
    main()
