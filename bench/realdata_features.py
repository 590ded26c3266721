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

import torch

import realdata_common as rc


def time_extraction(paths: list[str], size: int, threads: int, n: int = 64) -> dict:
    torch.set_num_threads(threads)
    rc.extract(paths[:16], size)  # warm-up
    _, t = rc.extract(paths[:n], size)
    return {"size": size, "threads": threads, "decode_ms": 1000 * t["decode_s"] / n,
            "tower_ms": 1000 * t["tower_s"] / n}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[224])
    ap.add_argument("--time-only", action="store_true")
    args = ap.parse_args(argv)
    biq, livec = rc.biq_frame(), rc.livec_frame()
    biq_paths = [str(rc.BIQ / p) for p in biq["image"]]
    livec_paths = [str(rc.LIVEC / p) for p in livec["image"]]
    if args.time_only:
        load = Path("/proc/loadavg").read_text().split()[:3]
        print(f"machine: {platform.processor() or platform.machine()}, load average {load}")
        for size in args.sizes:
            for threads in (1, 2):
                r = time_extraction(biq_paths, size, threads)
                print(f"size {size:4d} threads {threads}: decode+resize {r['decode_ms']:.1f} ms/img, "
                      f"tower+stats {r['tower_ms']:.1f} ms/img")
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
