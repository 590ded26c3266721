"""Benchmark: DeQA soft labels for a million rows, vectorised against a plain per-row loop.

Both sides implement the same formulas (spec section 3: Gaussian weights, alpha/beta adjustment,
clipping, binary fallback) on the same rows in the same run; the per-row side is plain Python with
the ``math`` module. Prints the timings, the speed-up and the largest difference of any label
entry, and exits 1 when a goal (speed-up >= 100x, difference <= 1e-9, same fallback mask) is missed.
Times are this process's CPU time (one thread), which other jobs on a shared machine disturb far
less than wall-clock time.

    .venv/bin/python bench/bench_labels.py [--rows 1000000] [--density pdf]
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time

import numpy as np

from deqa.labels import gaussian_soft_labels

SQRT_2PI = math.sqrt(2.0 * math.pi)
LEVELS = (1, 2, 3, 4, 5)


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def soft_label_row(
    m: float, s: float, density: str = "pdf", std_min: float = 0.2, max_mean_error: float = 0.1
) -> tuple[list[float], bool]:
    """One row, the spec's formulas written out literally."""
    fallback = not (s >= std_min and s > 0)
    if not fallback:
        if density == "pdf":
            p = [math.exp(-0.5 * ((k - m) / s) ** 2) / (s * SQRT_2PI) for k in LEVELS]
        else:
            p = [_phi((k + 0.5 - m) / s) - _phi((k - 0.5 - m) / s) for k in LEVELS]
        a = sum(p)
        b = sum(k * pk for k, pk in zip(LEVELS, p, strict=False))
        alpha = (m - 3.0) / (b - 3.0 * a + 1e-9)
        beta = (1.0 - alpha * a) / 5.0
        q = [max(alpha * pk + beta, 0.0) for pk in p]
        fallback = not abs(sum(k * qk for k, qk in zip(LEVELS, q, strict=False)) - m) <= max_mean_error
    if fallback:
        mc = min(max(m, 1.0), 5.0)
        k = min(max(math.ceil(mc) - 1, 1), 4)
        q = [0.0] * 5
        q[k - 1] = k + 1 - mc
        q[k] = mc - k
    return q, fallback


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--density", choices=("pdf", "cdf"), default="pdf")
    parser.add_argument("--repeat", type=int, default=3, help="best of N for the vectorised side")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    # KonIQ-like normalised scores (KonIQ: m 3.57 +- 0.69, s 0.37..1.37), with a wider std range
    # so that both fallback rules fire (s < 0.2 for about 9% of the rows)
    m = np.clip(rng.normal(3.5, 0.8, args.rows), 1.0, 5.0)
    s = rng.uniform(0.1, 1.2, args.rows)

    times = []
    for _ in range(args.repeat):
        t0 = time.process_time()
        probs, fallback = gaussian_soft_labels(m, s, density=args.density)
        times.append(time.process_time() - t0)
    t_vec = min(times)

    m_list, s_list = m.tolist(), s.tolist()
    t0 = time.process_time()
    rows = [soft_label_row(mi, si, args.density) for mi, si in zip(m_list, s_list, strict=False)]
    t_row = time.process_time() - t0

    ref = np.array([q for q, _ in rows])
    ref_fallback = np.array([f for _, f in rows])
    diff = float(np.abs(probs - ref).max())
    mismatched = int((fallback != ref_fallback).sum())
    speedup = t_row / t_vec
    print(
        f"rows {args.rows:,}  density {args.density}  fallbacks {int(fallback.sum()):,}  "
        f"({platform.processor() or platform.machine()}, numpy {np.__version__})"
    )
    print(f"vectorised (best of {args.repeat}, CPU time): {t_vec * 1e3:.1f} ms")
    print(f"per-row loop (CPU time): {t_row:.2f} s")
    print(f"speed-up: {speedup:.0f}x   max |difference|: {diff:.1e}   fallback mismatches: {mismatched}")
    ok = speedup >= 100 and diff <= 1e-9 and mismatched == 0
    print("goals (>= 100x, <= 1e-9, same fallbacks):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
