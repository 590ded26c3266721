"""Benchmark: ``deqa score`` memory on 10,000 images and throughput of each decoder, this checkout.

Two measurements of the current scoring code:

* ``memory``: peak RSS of a whole ``deqa score`` process (``os.wait4``) on ``--small`` and
  ``--large`` generated JPEGs (``--size`` px, written once under ``--work``); streaming must keep
  the large run within 1.5x of the small run's peak.
* ``throughput``: images/s on ``--real`` real JPEGs (``../shared/realdata/biq2021/images``, 512 px),
  decoding included: every image decoded first and then ``Scorer.score`` on the list, against
  ``Scorer.iter_score`` with ``decoder`` none / thread / process, in alternating rounds; the
  median of ``--rounds`` is reported with the CPU seconds each variant used (this process and its
  worker) and the machine's load average, and the largest score difference between variants.

To compare with another revision, run the same command in a checkout of it (``git worktree add
../old REV``) on the same machine and load; ``BENCHMARKS.md`` keeps the numbers measured so far.

    .venv/bin/python bench/bench_score.py --model models/deqa [memory] [throughput]
"""

from __future__ import annotations

import argparse
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

REPO = Path(__file__).resolve().parents[1]
BIQ = REPO.parent / "shared" / "realdata" / "biq2021" / "images"


def make_images(folder: Path, n: int, size: int) -> Path:
    """``n`` distinct JPEGs of ``size`` px (random smooth colour fields), written once."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    have = len(list(folder.glob("*.jpg")))
    rng = np.random.default_rng(have)
    for i in range(have, n):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        im = Image.fromarray(small).resize((size, size), Image.BILINEAR)
        im.save(folder / f"im{i:05d}.jpg", quality=90)
    return folder


def peak_rss(cmd: list[str]) -> tuple[float, float, int]:
    """(peak RSS MiB, seconds, exit code) of one child process."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        raise SystemExit(f"{' '.join(cmd[:4])}...: exit {code}: {proc.stderr.read()[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t, code


def memory(args) -> None:
    work = Path(args.work)
    by = {}
    for n in (args.small, args.large):
        folder = make_images(work / f"n{n}", n, args.size)
        cmd = [
            sys.executable,
            "-m",
            "deqa.cli",
            "score",
            str(folder),
            "--model",
            args.model,
            "--batch-size",
            str(args.batch_size),
            "--no-progress",
            "-o",
            str(work / f"out_{n}.csv"),
        ]
        mib, secs, code = peak_rss(cmd)
        by[n] = mib
        print(f"memory: {n:6d} images: peak RSS {mib:7.0f} MiB, {secs:6.1f} s, exit {code}", flush=True)
    print(f"memory: {args.large} / {args.small} images: {by[args.large] / by[args.small]:.2f}x (target <= 1.5x)")


def throughput(args) -> None:
    import torch

    torch.set_num_threads(1)
    from deqa.images import load_image
    from deqa.scoring import Scorer

    paths = sorted(str(p) for p in BIQ.glob("*.jpg"))[: args.real]
    if len(paths) < args.real:
        raise SystemExit(f"only {len(paths)} images in {BIQ}")
    scorer = Scorer.from_pretrained(args.model, batch_size=args.batch_size)

    def decode_first():
        return scorer.score([load_image(p) for p in paths], progress=False).mean

    def cpu() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    def streamed(decoder):
        import numpy as np

        return np.concatenate([b.result.mean for b in scorer.iter_score(paths, args.batch_size, decoder=decoder)])

    variants = {
        "decode all, then score": decode_first,
        **{f"streamed, decoder={d}": (lambda d=d: streamed(d)) for d in ("none", "thread", "process")},
    }
    scorer.score(paths[:4], progress=False)  # warm-up
    times = {name: [] for name in variants}
    cpus = {name: [] for name in variants}
    scores = {}
    for r in range(args.rounds):
        for name, fn in variants.items():
            load = os.getloadavg()[0]
            t, c = time.perf_counter(), cpu()
            scores[name] = fn()
            dt, dc = time.perf_counter() - t, cpu() - c
            times[name].append(dt)
            cpus[name].append(dc)
            print(
                f"throughput round {r + 1}: {name:30s} {len(paths) / dt:6.1f} images/s, "
                f"{1000 * dc / len(paths):5.1f} CPU ms/image (load {load:.1f})",
                flush=True,
            )
    base = statistics.median(times["decode all, then score"])
    ref = scores["decode all, then score"]
    for name, ts in times.items():
        med = statistics.median(ts)
        print(
            f"throughput: {name:30s} median {len(paths) / med:6.1f} images/s, {base / med:4.2f}x decode-first, "
            f"{1000 * statistics.median(cpus[name]) / len(paths):5.1f} CPU ms/image; "
            f"max |score - decode-first| {float(abs(scores[name] - ref).max()):.1e}"
        )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("parts", nargs="*", help="memory, throughput (default: both)")
    ap.add_argument("--model", default="models/deqa")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "deqa-bench-score"))
    ap.add_argument("--small", type=int, default=100)
    ap.add_argument("--large", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=256, help="side of the generated JPEGs (memory part)")
    ap.add_argument("--real", type=int, default=2_000, help="real 512 px JPEGs (throughput part)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args(argv)
    args.parts = args.parts or ["memory", "throughput"]
    if set(args.parts) - {"memory", "throughput"}:
        ap.error(f"unknown part(s): {', '.join(sorted(set(args.parts) - {'memory', 'throughput'}))}")
    import torch

    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"1 torch thread, model {args.model}, batch {args.batch_size}"
    )
    if "memory" in args.parts:
        memory(args)
    if "throughput" in args.parts:
        throughput(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
