"""Benchmark: training and scoring on 2 CPU processes against 1, side by side in one run.

* ``train``: the default train stage (``stages/train.py``, ``params.yaml``, the default data
  ``data/soft_labels``, ``models/base`` and ``data/features`` from ``dvc repro soft_labels features``;
  read, never written) as one process (``python stages/train.py``) and as two gloo ranks (``deqa launch -n 2
  --cpu stages/train.py``), one torch thread per process, alternating over ``--rounds``; outputs
  under ``--work``. Per run: wall time, CPU time of the whole process tree, optimizer steps and
  steps/s, pairs trained per second (a step of N ranks trains N x ``batch_pairs`` pairs), the val
  SRCC of the selected epoch, and the load average before and after.
* ``score``: ``deqa score`` on the first ``--images`` sorted BIQ2021 photos
  (``../shared/realdata/biq2021/images``) with ``--model``: one process with one torch thread, one
  process with two, two ``--shard I/2`` array-job tasks side by side (their ``--merge`` timed
  apart), and ``deqa launch -n 2 --cpu score`` (two ranks of one thread each, each
  scoring its shard, rank 0 merging), alternating over ``--rounds``. Per run: wall time, images/s,
  CPU time, the peak RSS of the largest process (``ru_maxrss`` of the waited process tree: one
  ``deqa score`` process, or the largest rank), the load average; and the largest score difference
  of each run against the first one-process run (the union must equal it to 1e-6).

    python bench/bench_distributed.py train [--rounds 1]
    python bench/bench_distributed.py score --model models/deqa [--images 2000] [--rounds 1]
    python bench/bench_distributed.py ray --model models/deqa [--images 1000]

* ``ray``: the same photos through :func:`deqa.ray_scoring.score_paths` on a local Ray cluster
  (``ray.init(num_cpus=2)`` on 127.0.0.1, 2 actors of 1 CPU and 1 torch thread each; start-up of the
  cluster and the actors included) against ``deqa score`` in one process with one thread.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIQ = REPO.parent / "shared" / "realdata" / "biq2021" / "images"
BIN = Path(sys.executable).parent


def _env(threads: int = 1) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env


def measure(cmd: list[str], env: dict[str, str], log: Path) -> dict:
    """Run ``cmd``; wall time, CPU time and peak RSS of its process tree, load average around it."""
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} exited {code}; see {log}")
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "load_before": load0,
        "load_after": os.getloadavg()[0],
        "exit": code,
    }


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def train_cmd(processes: int, out: Path) -> list[str]:
    stage = ["stages/train.py", "--params", "params.yaml", "--labels", "data/soft_labels", "--base", "models/base"]
    stage += ["--features", "data/features"]  # the features stage's store: no tower pass in training
    stage += ["--out", str(out / "model"), "--checkpoints", str(out / "ckpt"), "--live", str(out / "live")]
    stage += ["--metrics", str(out / "metrics.json")]
    if processes == 1:
        return [sys.executable, *stage]
    return [str(BIN / "deqa"), "launch", "-n", str(processes), "--cpu", "--threads", "1", *stage]


def bench_train(args) -> list[dict]:
    import yaml

    batch_pairs = yaml.safe_load((REPO / "params.yaml").read_text())["train"]["batch_pairs"]
    rows = []
    for r in range(args.rounds):
        for processes in (1, 2):
            out = Path(args.work) / f"train-{processes}p-{r}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            row = {"processes": processes, "round": r, **measure(train_cmd(processes, out), _env(), out / "log.txt")}
            metrics = json.loads((out / "metrics.json").read_text())
            row.update(steps=metrics["steps"], val_srcc=metrics["val_srcc"])
            row["steps_per_s"] = row["steps"] / row["wall_s"]
            row["pairs_per_s"] = row["steps"] * batch_pairs * processes / row["wall_s"]
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------
def score_cmd(variant: str, model: str, images: Path, out: Path) -> tuple[list[str], dict]:
    common = ["score", "--model", model, str(images), "-o", str(out), "--no-progress"]
    if variant == "1 process, 1 thread":
        return [str(BIN / "deqa"), *common, "--threads", "1"], _env(1)
    if variant == "1 process, 2 threads":
        return [str(BIN / "deqa"), *common, "--threads", "2"], _env(2)
    if variant == VARIANTS[3]:  # two array-job tasks side by side (docs/distributed.md); merged after
        deqa, shards = shlex.quote(str(BIN / "deqa")), [shlex.quote(str(p)) for p in shard_paths(out)]
        args = shlex.join([*common[:-3], "--no-progress", "--threads", "1"])
        jobs = " & ".join(f"{deqa} {args} --shard {i}/2 -o {p}" for i, p in enumerate(shards))
        return ["sh", "-c", f"rm -f {' '.join(shards)}; {jobs} & wait"], _env(1)
    return [str(BIN / "deqa"), "launch", "-n", "2", "--cpu", "--threads", "1", *common], _env(1)


def shard_paths(out: Path) -> list[Path]:
    return [out.with_suffix(f".shard{i}.csv") for i in range(2)]


def merge_shards(out: Path) -> float:
    """``deqa score --merge`` of the shard jobs' outputs into ``out``; its wall time."""
    t0 = time.perf_counter()
    cmd = [str(BIN / "deqa"), "score", "--merge", *map(str, shard_paths(out)), "-o", str(out)]
    subprocess.run(cmd, cwd=REPO, env=_env(1), check=True, capture_output=True)
    return time.perf_counter() - t0


RAY_CHILD = r"""
import os, sys, time
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
import ray
from deqa.ray_scoring import score_paths
paths = sorted(os.path.join(sys.argv[1], f) for f in os.listdir(sys.argv[1]))
ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
         object_store_memory=200 * 2**20)
ray.data.DataContext.get_current().enable_progress_bars = False
rows = score_paths(paths, sys.argv[2], actors=2, batch_size=16)
import csv
with open(sys.argv[3], "w", newline="") as fh:
    w = csv.writer(fh)
    w.writerow(["path", "score"])
    w.writerows([r["path"], f"{r['score']:.6f}"] for r in rows if not r["error"])
ray.shutdown()
"""


def bench_ray(args) -> list[dict]:
    work = Path(args.work)
    images = _images(work, args.images)
    rows, reference = [], None
    for r in range(args.rounds):
        for i, variant in enumerate(("deqa score, 1 process, 1 thread", "Ray Data, 2 actors x 1 CPU")):
            out = work / f"ray-{i}-{r}.csv"
            out.unlink(missing_ok=True)
            if i == 0:
                cmd, env = score_cmd(VARIANTS[0], args.model, images, out)
            else:
                cmd, env = [sys.executable, "-c", RAY_CHILD, str(images), args.model, str(out)], _env(1)
            row = {"variant": variant, "round": r, **measure(cmd, env, work / f"ray-{i}-{r}.log")}
            scores = {os.path.basename(k): v for k, v in _scores(out).items()}
            reference = reference or scores
            assert scores.keys() == reference.keys(), "a run scored other images"
            row.update(images=len(scores), images_per_s=len(scores) / row["wall_s"])
            row["max_diff_vs_first"] = max(abs(scores[k] - reference[k]) for k in reference)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


VARIANTS = (
    "1 process, 1 thread",
    "1 process, 2 threads",
    "2 processes (deqa launch), 1 thread each",
    "2 shard jobs (--shard I/2) side by side",
)


def _scores(path: Path) -> dict[str, float]:
    with open(path) as fh:
        return {r["path"]: float(r["score"]) for r in csv.DictReader(fh) if r.get("score")}


def _images(work: Path, n: int) -> Path:
    """A folder of links to the first ``n`` sorted BIQ2021 photos."""
    images = work / f"biq2021-{n}"
    if not images.is_dir() or len(list(images.iterdir())) != n:
        shutil.rmtree(images, ignore_errors=True)
        images.mkdir(parents=True)
        for p in sorted(BIQ.iterdir())[:n]:
            (images / p.name).symlink_to(p)
    return images


def bench_score(args) -> list[dict]:
    work = Path(args.work)
    images = _images(work, args.images)
    rows, reference = [], None
    for r in range(args.rounds):
        for i, variant in enumerate(VARIANTS):
            if str(i) not in args.variants.split(","):
                continue
            out = work / f"score-{i}-{r}.csv"
            out.unlink(missing_ok=True)
            cmd, env = score_cmd(variant, args.model, images, out)
            row = {"variant": variant, "round": r, **measure(cmd, env, work / f"score-{i}-{r}.log")}
            if variant == VARIANTS[3]:  # the merge runs once per cluster job, after the shards: timed apart
                row["merge_s"] = merge_shards(out)
            scores = _scores(out)
            reference = reference or scores
            row["images"] = len(scores)
            row["images_per_s"] = len(scores) / row["wall_s"]
            row["max_diff_vs_first"] = max(abs(scores[k] - reference[k]) for k in reference)
            assert scores.keys() == reference.keys(), "a run scored other images"
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["train", "score", "ray"])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--work", default=str(REPO / "bench" / "out" / "distributed"))
    ap.add_argument("--model", default="models/deqa")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--variants", default="0,1,2,3", help="score: which of the variants, by index (0,1,2,3)")
    args = ap.parse_args(argv)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()}")
    rows = {"train": bench_train, "score": bench_score, "ray": bench_ray}[args.what](args)
    (Path(args.work) / f"{args.what}.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
