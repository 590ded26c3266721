"""Benchmark: default training, the previous ``deqa.training`` against the current one, in one run.

Both versions run the real ``train()`` with the params file's settings (default: ``params.yaml``:
3 epochs of 16 pairs on the multistage MobileNetV2 tiny model, feature cache on) on the default
data (``data/soft_labels/`` and ``models/base/``, built by ``dvc repro soft_labels base_model``;
read, never written), each in a child process of its own (one torch thread), one after the other
and alternating over ``--repeat`` rounds. The previous version is the ``src/deqa/training.py``
that preceded ``deqa.data`` in git history (``--old-rev`` overrides), written to a temporary
module at run time; it runs on the current versions of the modules it imports.

Per run: optimizer steps/s over the whole ``train()`` call (validation, hashing and saving
included), over the first epoch counted from the call (set-up, and the feature-cache fill that the
current version does before its first step, included) and over the later epochs (features cached;
their validation included), all per second of wall-clock time and per second of the
process's CPU time (a steadier measure on a shared machine: one torch thread, so the two agree on
an idle one), and peak RSS (``resource.getrusage``). Separately, in this process: collation alone, the
processor on every batch (the previous path) against batches assembled from per-image entries
(:class:`deqa.data.EncodingCache`, filled beforehand), same batches.

    .venv/bin/python bench/bench_train.py [--repeat 1] [--epochs 3] [--params params.yaml]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
LABELS, BASE = Path("data/soft_labels"), Path("models/base")


def old_source(rev: str | None) -> tuple[str, str]:
    """(revision, text) of the previous ``src/deqa/training.py``."""
    if rev is None:
        added = subprocess.run(
            ["git", "-C", str(REPO), "log", "--diff-filter=A", "--format=%H", "--", "src/deqa/data.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if not added:
            raise SystemExit("cannot find the commit that added src/deqa/data.py; pass --old-rev")
        rev = added[-1] + "^"
    text = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{rev}:src/deqa/training.py"], capture_output=True, text=True, check=True
    ).stdout
    return rev, text


def child(version: str, params_file: str, epochs: int, old_file: str | None) -> dict:
    """One training run in this (child) process; returns timings."""
    import torch

    torch.set_num_threads(1)
    from deqa.config import load_params

    if version == "old":
        spec = importlib.util.spec_from_file_location("deqa_training_previous", old_file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    else:
        import deqa.training as module
    params = load_params(params_file)
    params.train.epochs = epochs
    stamps = []
    loss = module.deqa_loss

    def timed_loss(*args, **kwargs):  # one call per optimizer step (grad_accum 1)
        stamps.append((time.perf_counter(), time.process_time()))
        return loss(*args, **kwargs)

    module.deqa_loss = timed_loss
    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        summary = module.train(
            params, str(LABELS), str(BASE), f"{tmp}/model", f"{tmp}/ckpt", f"{tmp}/live", progress=False
        )
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    per_epoch, n = summary["total_steps"] // epochs, len(stamps)
    res = {
        "version": version,
        "steps": summary["steps"],
        "seconds": seconds,
        "cpu_seconds": cpu,
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "val_srcc": [h["val_srcc"] for h in summary.get("history", [])],
    }
    for clock, name in ((0, "wall"), (1, "cpu")):  # steps per second of wall-clock and of CPU time
        res[f"{name}_whole"] = summary["steps"] / (seconds if clock == 0 else cpu)
        start = t0 if clock == 0 else c0  # from the call: set-up and (current version) the cache fill included
        res[f"{name}_epoch1"] = per_epoch / (stamps[per_epoch][clock] - start) if n > per_epoch else 0.0
        res[f"{name}_later"] = (
            (n - 1 - per_epoch) / (stamps[-1][clock] - stamps[per_epoch][clock]) if n > per_epoch + 1 else 0.0
        )
    return res


def collation(params_file: str, batches: int) -> dict:
    """images/s of collation alone: processor on every batch vs batches assembled from entries."""
    import torch

    torch.set_num_threads(1)
    from deqa.config import load_params
    from deqa.data import Collator, Examples, PairDataset
    from deqa.modeling import Conversation, load_processor

    params = load_params(params_file)
    conv = Conversation(load_processor(BASE))
    ex = Examples.from_csv(LABELS / "train.csv")
    pairs, bp = PairDataset(ex.dataset, params.base.seed), params.train.batch_pairs
    chunks = [[pairs[i] for i in range(s * bp, (s + 1) * bp)] for s in range(batches)]
    fast, slow = Collator(conv, ex, params.base.seed), Collator(conv, ex, params.base.seed, fast=False)
    for c in chunks:  # fill the per-image entries of these images, as the first epoch does
        fast.pairs(c)
    res = {}
    for name, collate in (
        ("processor every batch", slow),
        ("assembled from entries", fast),
        ("processor every batch", slow),
    ):
        t0 = time.perf_counter()
        for c in chunks:
            collate.pairs(c)
        res[name] = max(res.get(name, 0.0), batches * 2 * bp / (time.perf_counter() - t0))
    res["entries hit"] = fast.encoder.state == "on"
    return res


def run_child(version: str, args, old_file: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        version,
        "--params",
        args.params,
        "--epochs",
        str(args.epochs),
        "--old-file",
        old_file,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{version} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=1, help="rounds of (previous, current) runs")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--old-rev", default=None, help="git revision of the previous training.py")
    ap.add_argument("--collate-batches", type=int, default=20)
    ap.add_argument("--child", choices=["old", "new"], help=argparse.SUPPRESS)
    ap.add_argument("--old-file", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.params, args.epochs, args.old_file)))
        return 0
    if not (LABELS / "train.csv").exists() or not (BASE / "config.json").exists():
        raise SystemExit(f"{LABELS}/train.csv or {BASE}/config.json not found: run `dvc repro soft_labels base_model`")
    import torch

    rev, text = old_source(args.old_rev)
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"1 thread; previous training.py from {rev}; {args.epochs} epochs"
    )
    with tempfile.TemporaryDirectory() as tmp:
        old_file = str(Path(tmp) / "deqa_training_previous.py")
        Path(old_file).write_text(text)
        runs = {"old": [], "new": []}
        for r in range(args.repeat):
            for version in ("old", "new") if r % 2 == 0 else ("new", "old"):
                res = run_child(version, args, old_file)
                runs[version].append(res)
                print(
                    f"{version}: {res['steps']} steps in {res['seconds']:.1f} s wall, {res['cpu_seconds']:.1f} s CPU; "
                    f"peak RSS {res['rss_mib']:.0f} MiB; val SRCC {[round(v, 4) for v in res['val_srcc']]}",
                    flush=True,
                )
    print(f"{'steps/s (best run of each)':34s} {'previous':>9s} {'current':>9s} {'speed-up':>9s}")
    for clock in ("wall", "cpu"):
        for part, label in (("whole", "whole run"), ("epoch1", "set-up + epoch 1"), ("later", "later epochs")):
            key = f"{clock}_{part}"
            old_v, new_v = (max(r[key] for r in runs[v]) for v in ("old", "new"))
            print(f"{label + ', ' + clock + ' clock':34s} {old_v:9.2f} {new_v:9.2f} {new_v / old_v:8.2f}x")
    col = collation(args.params, args.collate_batches)
    print(
        f"collation alone: processor every batch {col['processor every batch']:.0f} images/s, "
        f"assembled from entries {col['assembled from entries']:.0f} images/s "
        f"({col['assembled from entries'] / col['processor every batch']:.1f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
