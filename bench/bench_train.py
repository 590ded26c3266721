"""Benchmark: the default training (``deqa.training.train``) of this checkout, steps/s and memory.

Runs the real ``train()`` with the params file's settings (default: ``params.yaml``: 3 epochs of
16 pairs on the multistage MobileNetV2 tiny model, feature cache on) on the default data
(``data/soft_labels/`` and ``models/base/``, built by ``dvc repro soft_labels base_model``; read,
never written), ``--repeat`` times, each in a child process of its own (one torch thread).

Per run: optimizer steps/s over the whole ``train()`` call (validation, hashing and saving
included), over the first epoch counted from the call (set-up and the feature-cache fill before
the first step included) and over the later epochs (features cached; their validation
included), per second of wall-clock time and per second of the process's CPU time (steadier on a
shared machine: one torch thread, so the two agree on an idle one), and peak RSS
(``resource.getrusage``). The best and the median run are reported.

To compare with another revision, run the same command in a checkout of it (e.g. ``git worktree
add ../old REV``) right after this one, on the same machine and load. ``BENCHMARKS.md`` keeps the
numbers measured so far.

    .venv/bin/python bench/bench_train.py [--repeat 1] [--epochs 3] [--params params.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

LABELS, BASE = Path("data/soft_labels"), Path("models/base")


def child(params_file: str, epochs: int) -> dict:
    """One training run in this (child) process; returns timings."""
    import torch

    torch.set_num_threads(1)
    import deqa.training as training
    from deqa.config import load_params

    params = load_params(params_file)
    params.train.epochs = epochs
    stamps = []
    loss = training.deqa_loss

    def timed_loss(*args, **kwargs):  # one call per optimizer step (grad_accum 1)
        stamps.append((time.perf_counter(), time.process_time()))
        return loss(*args, **kwargs)

    training.deqa_loss = timed_loss
    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        summary = training.train(
            params, str(LABELS), str(BASE), f"{tmp}/model", f"{tmp}/ckpt", f"{tmp}/live", progress=False
        )
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    per_epoch, n = summary["total_steps"] // epochs, len(stamps)
    res = {
        "steps": summary["steps"],
        "seconds": seconds,
        "cpu_seconds": cpu,
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "val_srcc": [h["val_srcc"] for h in summary.get("history", [])],
    }
    for clock, name in ((0, "wall"), (1, "cpu")):  # steps per second of wall-clock and of CPU time
        res[f"{name}_whole"] = summary["steps"] / (seconds if clock == 0 else cpu)
        start = t0 if clock == 0 else c0  # from the call: set-up and the cache fill included
        end = (
            stamps[per_epoch][clock] if n > per_epoch else start + (seconds if clock == 0 else cpu)
        )  # 1 epoch: the call
        res[f"{name}_epoch1"] = per_epoch / (end - start) if n >= per_epoch else 0.0
        res[f"{name}_later"] = (
            (n - 1 - per_epoch) / (stamps[-1][clock] - stamps[per_epoch][clock]) if n > per_epoch + 1 else 0.0
        )
    return res


def run_child(args) -> dict:
    cmd = [sys.executable, __file__, "--child", "--params", args.params, "--epochs", str(args.epochs)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"training run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=1, help="training runs, one after the other")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.params, args.epochs)))
        return 0
    if not (LABELS / "train.csv").exists() or not (BASE / "config.json").exists():
        raise SystemExit(f"{LABELS}/train.csv or {BASE}/config.json not found: run `dvc repro soft_labels base_model`")
    import torch

    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"1 thread; {args.epochs} epochs; load average {os.getloadavg()[0]:.1f}"
    )
    runs = []
    for _ in range(args.repeat):
        res = run_child(args)
        runs.append(res)
        print(
            f"run {len(runs)}: {res['steps']} steps in {res['seconds']:.1f} s wall, {res['cpu_seconds']:.1f} s CPU; "
            f"peak RSS {res['rss_mib']:.0f} MiB; val SRCC {[round(v, 4) for v in res['val_srcc']]}",
            flush=True,
        )
    print(f"{'steps/s':34s} {'best':>9s} {'median':>9s}")
    for clock in ("wall", "cpu"):
        for part, label in (("whole", "whole run"), ("epoch1", "set-up + epoch 1"), ("later", "later epochs")):
            values = [r[f"{clock}_{part}"] for r in runs]
            print(f"{label + ', ' + clock + ' clock':34s} {max(values):9.2f} {statistics.median(values):9.2f}")
    print(f"peak RSS {max(r['rss_mib'] for r in runs):.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
