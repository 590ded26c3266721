"""Benchmark: ``deqa score`` memory on 10,000 images and throughput with the background decoder.

Two measurements, each side by side with the scoring code before issue #12 (``--old-rev``, read
with ``git show REV:src/deqa/scoring.py`` into a temporary module) in the same run:

* ``memory``: peak RSS of a whole ``deqa score`` process (``os.wait4``) on ``--small`` and
  ``--large`` generated JPEGs (``--size`` px, written once under ``--work``). The new code must
  stay within 1.5x of its small-run peak; the old code, which decodes every image before scoring,
  is run on ``--small`` and ``--old-large`` images to show its growth.
* ``throughput``: images/s on ``--real`` real JPEGs (``../shared/realdata/biq2021/images``, 512 px),
  decoding included: the old path (decode everything, then ``Scorer.score``) against
  ``Scorer.iter_score`` with ``decoder`` none / thread / process, in alternating rounds; the
  median of ``--rounds`` is reported with the CPU seconds each variant used (this process and its
  worker) and the machine's load average. Score differences against the old path are reported
  apart for the images with an EXIF orientation tag (now shown upright) and for the rest.

    .venv/bin/python bench/bench_score.py --model models/deqa [memory] [throughput]
"""

from __future__ import annotations

import argparse
import importlib.util
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


def old_scoring(rev: str):
    """The scoring module as it was at ``rev``, imported from a temporary file."""
    code = subprocess.run(
        ["git", "show", f"{rev}:src/deqa/scoring.py"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.gettempdir()) / f"deqa_old_scoring_{rev}.py"
    path.write_text(code)
    spec = importlib.util.spec_from_file_location("deqa_old_scoring", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def child(kind: str, rev: str, argv: list[str]) -> int:
    """Run ``deqa score`` with the old (``kind == "old"``) or the current code."""
    if kind == "new":
        from deqa.cli import main

        return main(["score", *argv])
    module = old_scoring(rev)
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


def memory(args) -> None:
    work = Path(args.work)
    rows = []
    for kind, n in (("old", args.small), ("old", args.old_large), ("new", args.small), ("new", args.large)):
        folder = make_images(work / f"n{n}", n, args.size)
        cmd = [
            sys.executable,
            __file__,
            "--child",
            kind,
            "--old-rev",
            args.old_rev,
            "--",
            str(folder),
            "--model",
            args.model,
            "--batch-size",
            str(args.batch_size),
            "--no-progress",
            "-o",
            str(work / f"out_{kind}_{n}.csv"),
        ]
        mib, secs, code = peak_rss(cmd)
        rows.append((kind, n, mib, secs))
        print(f"memory: {kind} code, {n:6d} images: peak RSS {mib:7.0f} MiB, {secs:6.1f} s, exit {code}", flush=True)
    by = {(k, n): mib for k, n, mib, _ in rows}
    print(
        f"memory: new {args.large} / new {args.small} images: {by[('new', args.large)] / by[('new', args.small)]:.2f}x "
        f"(target <= 1.5x); old {args.old_large} / old {args.small}: "
        f"{by[('old', args.old_large)] / by[('old', args.small)]:.2f}x"
    )


def throughput(args) -> None:
    import torch

    torch.set_num_threads(1)
    from deqa.scoring import Scorer

    old = old_scoring(args.old_rev)
    paths = sorted(str(p) for p in BIQ.glob("*.jpg"))[: args.real]
    if len(paths) < args.real:
        raise SystemExit(f"only {len(paths)} images in {BIQ}")
    scorer = Scorer.from_pretrained(args.model, batch_size=args.batch_size)
    old_scorer = old.Scorer(scorer.model, scorer.processor, scorer.device, batch_size=args.batch_size)

    def run_old():
        return old_scorer.score([old.to_pil(p) for p in paths], progress=False).mean

    def cpu() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    def run_new(decoder):
        import numpy as np

        return np.concatenate([b.result.mean for b in scorer.iter_score(paths, args.batch_size, decoder=decoder)])

    variants = {
        "old (decode all, then score)": run_old,
        **{f"new, decoder={d}": (lambda d=d: run_new(d)) for d in ("none", "thread", "process")},
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
    rotated = exif_rotated(paths)
    base = statistics.median(times["old (decode all, then score)"])
    ref = scores["old (decode all, then score)"]
    for name, ts in times.items():
        med = statistics.median(ts)
        diff = abs(scores[name] - ref)
        print(
            f"throughput: {name:30s} median {len(paths) / med:6.1f} images/s, {base / med:4.2f}x old, "
            f"{1000 * statistics.median(cpus[name]) / len(paths):5.1f} CPU ms/image; max |score - old| "
            f"{float(diff[~rotated].max()):.1e} ({int((~rotated).sum())} upright), "
            f"{float(diff[rotated].max()) if rotated.any() else 0:.2f} ({int(rotated.sum())} EXIF-rotated)"
        )


def exif_rotated(paths: list[str]):
    """A boolean array: the files whose EXIF orientation tag asks for a rotation or flip."""
    import numpy as np
    from PIL import Image

    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(im.getexif().get(0x0112, 1) not in (1, None))
    return np.array(out)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        sep = argv.index("--")
        return child(argv[1], argv[argv.index("--old-rev") + 1], argv[sep + 1 :])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("parts", nargs="*", help="memory, throughput (default: both)")
    ap.add_argument("--model", default="models/deqa")
    ap.add_argument("--old-rev", default="eaa986c", help="git revision of the scoring code before issue #12")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "deqa-bench-score"))
    ap.add_argument("--small", type=int, default=100)
    ap.add_argument("--large", type=int, default=10_000)
    ap.add_argument("--old-large", type=int, default=1_000)
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
        f"1 torch thread, model {args.model}, batch {args.batch_size}, old code: {args.old_rev}"
    )
    if "memory" in args.parts:
        memory(args)
    if "throughput" in args.parts:
        throughput(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
