"""Probe: cache the frozen MobileNetV2 tower's block statistics of BIQ2021 and LIVE-C, per image size,
and time feature extraction (decode + resize, and the tower) on 1 and 2 threads.

    nice -n 10 .venv/bin/python bench/realdata_features.py --sizes 224 128 384 512 288
    .venv/bin/python bench/realdata_features.py --time-only --sizes 128 224 288 384 512

Caches land in ``$R_CACHE`` (default ``/tmp/r-cache``) as ``{biq2021,livec}_{size}.npz``.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

import realdata_common as rc


def time_extraction(
    paths: list[str], size: int, threads: int, n: int = 64, stats=("mean", "std"), layers: str = "stages"
) -> dict:
    """Wall and CPU ms per image: decode + resize, and the tiny model's own tower (micro-batches)."""
    from deqa.tiny import MobileNetV2VisionConfig, MobileNetV2VisionModel, load_imagenet_weights

    torch.set_num_threads(threads)
    tower = MobileNetV2VisionModel(MobileNetV2VisionConfig(image_size=size, stats=stats, layers=layers))
    load_imagenet_weights(tower)
    tower.eval()
    w0 = time.perf_counter()
    batch = rc.normalise(np.stack([rc.load_rgb(p, size) for p in paths[:n]]))
    w1 = time.perf_counter()
    with torch.no_grad():
        tower(batch[:8])  # warm-up
        w2, c2 = time.perf_counter(), time.process_time()
        for chunk in batch.split(32):
            tower(chunk)
    w3, c3 = time.perf_counter(), time.process_time()
    return {
        "size": size,
        "threads": threads,
        "decode_ms": 1000 * (w1 - w0) / n,
        "tower_ms": 1000 * (w3 - w2) / n,
        "tower_cpu_ms": 1000 * (c3 - c2) / n,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[224])
    ap.add_argument("--time-only", action="store_true")
    ap.add_argument("--stats", nargs="+", default=["mean", "std"], help="read-out timed by --time-only")
    ap.add_argument("--layers", default="stages")
    args = ap.parse_args(argv)
    biq, livec = rc.biq_frame(), rc.livec_frame()
    biq_paths = [str(rc.BIQ / p) for p in biq["image"]]
    livec_paths = [str(rc.LIVEC / p) for p in livec["image"]]
    if args.time_only:
        load = Path("/proc/loadavg").read_text().split()[:3]
        print(f"machine: {platform.processor() or platform.machine()}, load average {load}")
        for size in args.sizes:
            for threads in (1, 2):
                r = time_extraction(biq_paths, size, threads, stats=args.stats, layers=args.layers)
                print(
                    f"size {size:4d} threads {threads}: decode+resize {r['decode_ms']:.1f} ms/img, "
                    f"tower {r['tower_ms']:.1f} ms/img wall, {r['tower_cpu_ms']:.1f} ms/img CPU",
                    flush=True,
                )
        return 0
    torch.set_num_threads(1)
    for size in args.sizes:
        for name, paths in (("biq2021", biq_paths), ("livec", livec_paths)):
            t0 = time.perf_counter()
            feats = rc.cached_features(name, paths, size)
            print(f"{name}@{size}: {feats.shape} in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
