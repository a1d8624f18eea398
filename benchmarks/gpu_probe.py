"""Linear probes on GPU vs CPU: time and agreement (step 5 of the GPU check).

On the synthetic feature cases of ``benchmarks/probe_speed.py`` (frozen-encoder-like features,
``SYNTHETIC_CASES``: 2000 x 768 / 8 classes, 500 x 768 / 4, 780 x 384 / 3, 2000 x 384 / 4, its
first split, z-scored with train statistics), each probe protocol runs on the CPU (the faster of 1
thread and all the host's cores, per row: the CPU's best configuration) and on the GPU:

  sweep   ``train_sweep`` (the default preset: C x lr heads trained together, top-k averaged);
          time = the fastest of ``--repeats`` calls
  paper   ``train_paper`` (the paper protocol, 5 seeds); one call

Per row: seconds and test macro F1 (mean over seeds); per case: CPU / GPU time and the GPU - CPU
macro-F1 difference (the two devices should agree to float summation order: the JSON's
``max_f1_gap_points``). Rows are printed as measured, each under its own time limit. Last line: JSON.

``--dry-run``: the same rows at tiny sizes (one case, 200 x 64) with both "devices" on the CPU:
proves every row starts, no figure.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ (for _steps, probe_speed)

from _steps import emit, finish, guarded_row, start  # noqa: E402


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="sweep calls per row (fastest kept)")
    p.add_argument("--protocols", default="sweep,paper")
    p.add_argument("--row-limit", type=float, default=20.0, help="seconds per row")
    p.add_argument("--dry-run", action="store_true")
    return p.parse_args()


def run(protocol: str, xs, y, tr, va, te, c: int, device: str, repeats: int) -> dict:
    """One protocol on one device: seconds (fastest of ``repeats`` for the sweep) and test macro F1."""
    import numpy as np
    import torch

    from usjepa_fast.probe.linear import PaperConfig, SweepConfig, train_paper, train_sweep

    times, heads = [], None
    for _ in range(repeats if protocol == "sweep" else 1):
        t0 = time.perf_counter()
        if protocol == "sweep":
            heads = train_sweep(xs[tr], y[tr], xs[va], y[va], c, config=SweepConfig(standardize=False), device=device)
        else:
            heads = train_paper(xs[tr], y[tr], xs[va], y[va], c, config=PaperConfig(standardize=False), device=device)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    f1 = heads.evaluate(xs[te], y[te]).summary("macro_f1")
    return {"seconds": round(float(np.min(times)), 4), "macro_f1": round(100 * f1.mean, 2),
            "macro_f1_std": round(100 * f1.std, 2)}  # fmt: skip


def main() -> int:
    args = _parse()
    import numpy as np
    import torch
    from probe_speed import SYNTHETIC_CASES, make_features, stratified_split

    from usjepa_fast.embed.backends import available_cpus

    dry = args.dry_run or not torch.cuda.is_available()
    # probe_speed caps BLAS threads at 2 on import; torch's are ours. Dry run: 1 (2 threads on a shared
    # 2-core machine make the paper protocol ~20x slower)
    cpu_threads = [1] if dry else sorted({1, available_cpus()})
    torch.set_num_threads(cpu_threads[-1])
    cases = [("synthetic 200x64, 3 cls (dry run)", dict(n=200, d=64, c=3), (0.7, 0.15))] if dry else SYNTHETIC_CASES
    devices = {"cpu": "cpu", "gpu": "cpu" if dry else "cuda"}
    if dry:
        args.repeats = 1
    t0 = time.perf_counter()
    facts = start("probe", "linear probes (sweep, paper) on GPU vs CPU, probe_speed.py's synthetic features", dry)
    emit(f"# CPU side: the faster of {cpu_threads} torch threads per row; sweep time = fastest of {args.repeats} calls")
    emit(f"{'case':<34} {'protocol':<7} {'device':<6} {'seconds':>9} {'macro F1':>9}")
    rows = []
    for name, kw, fractions in cases:
        x, y = make_features(**kw)
        tr, va, te = stratified_split(y, seed=0, fractions=fractions)
        mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6
        xs, c = ((x - mu) / sd).astype(np.float32), int(y.max()) + 1
        for protocol in args.protocols.split(","):
            for side, device in devices.items():
                record = {"case": name, "protocol": protocol, "device": side}
                with guarded_row(record, args.row_limit):
                    # the CPU's best configuration: 1 thread or all of them (small heads often favour 1)
                    for threads in cpu_threads if device == "cpu" else [torch.get_num_threads()]:
                        torch.set_num_threads(threads)
                        got = run(protocol, xs, y, tr, va, te, c, device, args.repeats)
                        if "seconds" not in record or got["seconds"] < record["seconds"]:
                            record.update(got, threads=threads)
                    torch.set_num_threads(cpu_threads[-1])
                lead = f"{name:<34} {protocol:<7} {side:<6}"
                if "seconds" in record:
                    emit(f"{lead} {record['seconds']:>9.3f} {record['macro_f1']:>9.2f}  ({record['threads']} threads)")
                else:
                    emit(f"{lead} {'TIMEOUT' if 'timeout' in record else 'failed'}: "
                         f"{record.get('timeout') or record.get('error')}")  # fmt: skip
                rows.append(record)

    ratios, gaps = {}, []
    for name, _, _ in cases:
        for protocol in args.protocols.split(","):
            got = {r["device"]: r for r in rows if r["case"] == name and r["protocol"] == protocol and "seconds" in r}
            if len(got) == 2:
                ratios[f"{name} {protocol} cpu/gpu time"] = round(got["cpu"]["seconds"] / got["gpu"]["seconds"], 2)
                gaps.append(abs(got["gpu"]["macro_f1"] - got["cpu"]["macro_f1"]))
    for key, value in ratios.items():
        emit(f"{'# dry run, not a figure: ' if dry else ''}{key}: {value}x")
    emit(f"# max |macro F1 gpu - cpu|: {max(gaps) if gaps else 'n/a'} points")
    failed = [r for r in rows if "error" in r]
    status = "failed" if failed or not rows else "partial" if any("timeout" in r for r in rows) else "ok"
    payload = {"args": vars(args), "rows": rows, "ratios": ratios, "max_f1_gap_points": max(gaps) if gaps else None}
    return finish("probe", facts, dry, time.perf_counter() - t0, status, **payload)


if __name__ == "__main__":
    sys.exit(main())
