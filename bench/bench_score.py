"""Benchmark: scoring throughput, batched against batch 1 on the same images in the same run.

Scores ``--images`` images with :class:`deqa.scoring.Scorer` (the pipeline's ``models/deqa`` by
default) at batch 1 (what ``pyiqa`` does) and at ``--batch-size``, checks that the scores agree
(batch invariance), and reports images/s, the speed-up and the process's peak RSS. Images: the
real LIVE-C test images in ``../shared/realdata/livec`` (500x500 photos) when present, else the
synthetic ones in ``data/prepare/images``.

    .venv/bin/python bench/bench_score.py [--model models/deqa] [--images 96] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from deqa.scoring import Scorer, to_pil  # noqa: E402

LIVEC = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "livec" / "images"


def pick_images(n: int) -> list[str]:
    for folder in (LIVEC, Path("data/prepare/images")):
        files = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".jpg", ".png", ".webp"))
        if files:
            return [str(p) for p in files[:n]]
    raise SystemExit("no images found: run `dvc repro prepare` or provide ../shared/realdata/livec")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/deqa")
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args(argv)
    paths = pick_images(args.images)
    scorer = Scorer.from_pretrained(args.model)
    images = [to_pil(p) for p in paths]  # decode once: both runs score the same in-memory images
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread, "
          f"{len(images)} images from {Path(paths[0]).parent}, model {args.model}")
    scorer.score(images[:2], batch_size=2, progress=False)  # warm-up
    results = {}
    for bs in (1, args.batch_size):
        t0 = time.perf_counter()
        results[bs] = scorer.score(images, batch_size=bs, progress=False)
        dt = time.perf_counter() - t0
        print(f"batch {bs:3d}: {len(images) / dt:7.1f} images/s ({dt:.2f} s)")
        results[f"t{bs}"] = dt
    diff = float(np.abs(results[1].mean - results[args.batch_size].mean).max())
    print(f"speed-up batch {args.batch_size} vs 1: {results['t1'] / results[f't{args.batch_size}']:.2f}x; "
          f"max |score difference| {diff:.2e}")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
