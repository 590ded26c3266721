"""Benchmark: validate a 10,000-row manifest (the ``validate`` stage's suite, all checks on).

Builds a synthetic dataset big enough for ``--rows`` (``crops_per_photo`` picked to fit, 128 px
PNGs, under ``bench/out/``, reused when present), takes its first ``--rows`` rows and times
:func:`deqa.validation.validate_manifest` end to end, plus its two parts: the per-image file checks
(Pillow open/verify/load, path containment, hashing) and the rest (frame building and the GX run).

    .venv/bin/python bench/bench_validate.py [--rows 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import pandas as pd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="bench/out/validate")
    args = parser.parse_args(argv)

    from deqa.config import SourceConfig, SyntheticConfig, ValidateConfig
    from deqa.importers import load_sources
    from deqa.synthetic import BASE_PHOTOS
    from deqa.validation import validate_manifest
    from deqa.validation.facts import file_facts

    per_crop = 6 * 5 + 1
    crops = math.ceil(args.rows / (len(BASE_PHOTOS) * per_crop))
    out = Path(args.out) / f"crops{crops}"
    manifest_path = out / "manifest.csv"
    if not manifest_path.exists():
        t = time.perf_counter()
        df = load_sources([SourceConfig()], synthetic=SyntheticConfig(crops_per_photo=crops), out_dir=out)
        df.to_csv(manifest_path, index=False)
        print(f"built {len(df)} synthetic rows in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    # shuffle (seeded) before cutting so that every split keeps rows
    df = pd.read_csv(manifest_path, dtype=str, keep_default_na=False).sample(frac=1.0, random_state=0)
    df = df.iloc[: args.rows].reset_index(drop=True)
    if len(df) < args.rows:
        raise SystemExit(f"only {len(df)} rows available")
    cfg = ValidateConfig()
    validate_manifest(df.iloc[:50], cfg, required_splits=[])  # warm-up: imports, GX start-up

    totals, files = [], []
    for _ in range(args.repeat):
        t = time.perf_counter()
        result = validate_manifest(df, cfg)
        totals.append(time.perf_counter() - t)
        t = time.perf_counter()
        file_facts(df, cfg.min_side, cfg.max_pixels)
        files.append(time.perf_counter() - t)
    assert result.success and result.report["kept"] == args.rows, result.message
    total, fc = statistics.median(totals), statistics.median(files)
    n_exp = len(result.report["expectations"])
    print(
        f"rows: {args.rows}, expectations: {n_exp}, repeats: {args.repeat}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}"
    )
    print(
        f"validate_manifest total: median {total:.2f} s (runs: {', '.join(f'{x:.2f}' for x in totals)}) "
        f"= {args.rows / total:,.0f} rows/s"
    )
    print(f"  per-image file checks: {fc:.2f} s ({1e3 * fc / args.rows:.2f} ms/image)")
    print(f"  frame building + GX suite + report: {total - fc:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
