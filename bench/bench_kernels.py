"""How far do trained metrics move when torch takes other CPU kernels? (sizes ``deqa gate``'s tolerances)

A pipeline run on another CPU reproduces the deterministic stages byte for byte, but training and
scoring take other SIMD/BLAS kernels there, whose float sums round differently. This script makes
one machine take other kernels, the way another CPU would, and measures the spread:

- ``ATEN_CPU_CAPABILITY`` = ``avx2`` / ``default`` (no SIMD): torch's own kernels (the default
  here is ``avx512`` where the CPU has it);
- ``MKL_CBWR=COMPATIBLE``: MKL's generic BLAS code path (MKL picks its kernels by CPU vendor and
  ISA: an Intel AVX-512 machine gets other sgemm kernels than an AMD one);
- ``ONEDNN_MAX_CPU_ISA=AVX2``: oneDNN's kernels (convolutions, some activations);
- all three at once (an AVX2-only machine with another BLAS).

It clones the repository's HEAD into a scratch folder, runs the pipeline up to ``soft_labels`` and ``sensitivity``
once, then ``dvc repro --force --single-item base_model train evaluate`` under each setting, and
prints, per metric, the values' spread (max - min over the settings) and whether the stages'
outputs were byte-identical (``dvc.lock`` hashes). ``--size tiny`` runs the test suite's tiny
pipeline (seconds) instead of the default (minutes per setting).

    python bench/bench_kernels.py                       # default size: ~5 min per setting on 2 cores
    python bench/bench_kernels.py --size tiny --settings default,aten-avx2
    python bench/bench_kernels.py --json bench/out/kernels.json

The spread per key pattern (``*.srcc``, ``*.kl``, ...) of the stages' metrics files is printed,
with a suggested ``gate.yaml`` block (2x the largest spread seen, rounded up). How sensitive the
trained metrics are depends on the training code (measured on one AMD EPYC at the default size:
largest spread 1e-5 with the training loop of b64fc9b, 2.4e-3 in val SRCC with the one of
16e2a40), so re-run this after changing training and update ``gate.yaml``; ``BENCHMARKS.md``
has the numbers.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SETTINGS = {
    "default": {},
    "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "mkl-compatible": {"MKL_CBWR": "COMPATIBLE"},
    "onednn-avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "avx2-machine": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}
STAGES = ("base_model", "train", "evaluate")
TINY = {
    "prepare.synthetic": {"crops_per_photo": 1, "image_size": 64},
    "model.tiny": {"image_size": 64, "hidden_size": 32, "intermediate_size": 64, "layers": 1, "heads": 2},
    "train": {"epochs": 1, "batch_pairs": 8, "checkpoint_every": 10},
    "evaluate": {"bootstrap": 20},
}
# key patterns the gate distinguishes; first match wins (gate.yaml uses the same order)
PATTERNS = (
    "steps",
    "trainable_params",
    "*.n",
    "*.confusion.*",
    "*.srcc*",
    "*.plcc*",
    "*.krcc",
    "*.rmse",
    "*.std_*",
    "*.entropy",
    "*.kl",
    "*.js",
    "*.w2",
    "*.monotonicity",
    "val_*",
    "*",
)


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "DVC_STAGE", "DVC_ROOT")
    }
    return {
        **env,
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "DVC_NO_ANALYTICS": "1",
        **extra,
    }


def _run(cmd: list[str], cwd: Path, extra: dict[str, str] | None = None) -> None:
    res = subprocess.run(cmd, cwd=cwd, env=_env(extra or {}), capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")


def _flat(data, prefix: str = "") -> dict[str, float]:
    if isinstance(data, dict):
        return {k: v for key, val in data.items() for k, v in _flat(val, f"{prefix}{key}.").items()}
    if isinstance(data, list):
        return {k: v for i, val in enumerate(data) for k, v in _flat(val, f"{prefix}{i}.").items()}
    return {prefix[:-1]: data} if isinstance(data, (int, float)) and not isinstance(data, bool) else {}


def _shrink(params_file: Path) -> None:
    params = yaml.safe_load(params_file.read_text())
    for dotted, values in TINY.items():
        section = params
        for part in dotted.split("."):
            section = section[part]
        section.update(values)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def _metrics_files(repo: Path) -> list[str]:
    """The metrics files (``metrics:`` outputs in dvc.yaml) of the measured stages."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    return [next(iter(m)) if isinstance(m, dict) else m for s in STAGES for m in stages[s].get("metrics", [])]


def _out_hashes(repo: Path) -> dict[str, str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {
        f"{stage}:{o['path']}": o.get("md5", "")
        for stage in STAGES
        for o in lock[stage].get("outs", [])
        if not o["path"].startswith("metrics/")
    }


def measure(settings: list[str], size: str, work: Path) -> dict:
    repo = work / "repo"
    _run(["git", "clone", "-q", str(ROOT), str(repo)], work)
    if size == "tiny":
        _shrink(repo / "params.yaml")
    _run(["dvc", "config", "--local", "core.analytics", "false"], repo)
    t0 = time.perf_counter()
    _run(["dvc", "repro", "soft_labels", "sensitivity"], repo)
    print(f"upstream stages: {time.perf_counter() - t0:.0f} s", flush=True)
    results = {}
    for name in settings:
        t0 = time.perf_counter()
        _run(["dvc", "repro", "--force", "--single-item", *STAGES], repo, SETTINGS[name])
        metrics = {}
        for f in _metrics_files(repo):
            metrics.update({f"{Path(f).stem}:{k}": v for k, v in _flat(json.loads((repo / f).read_text())).items()})
        results[name] = {"metrics": metrics, "outs": _out_hashes(repo), "seconds": time.perf_counter() - t0}
        print(f"{name}: {results[name]['seconds']:.0f} s", flush=True)
    return results


def _round_up(x: float) -> float:
    if x <= 0:
        return 0.0
    exp = math.floor(math.log10(x))
    return math.ceil(x / 10**exp) * 10**exp


def summarise(results: dict) -> dict:
    names = list(results)
    keys = sorted(set().union(*(r["metrics"] for r in results.values())))
    spread = {}
    for key in keys:
        values = [results[n]["metrics"].get(key) for n in names]
        values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
        spread[key] = max(values) - min(values) if values else 0.0
    groups: dict[str, dict] = {}
    for key, s in spread.items():
        file, _, inner = key.partition(":")
        pattern = next(p for p in PATTERNS if fnmatch.fnmatchcase(inner, p))
        g = groups.setdefault(f"{file}:{pattern}", {"max_spread": 0.0, "worst": key, "n": 0, "changed": 0})
        g["n"] += 1
        g["changed"] += s > 0
        if s > g["max_spread"]:
            g["max_spread"], g["worst"] = s, key
    outs = {k: len({results[n]["outs"].get(k) for n in names}) == 1 for k in results[names[0]]["outs"]}
    return {"settings": names, "spread": spread, "groups": groups, "outs_identical": outs}


def report(summary: dict) -> None:
    print(f"\nsettings: {', '.join(summary['settings'])}")
    print("\noutputs byte-identical across settings:")
    for k, same in summary["outs_identical"].items():
        print(f"  {k:40s} {'yes' if same else 'no'}")
    print(f"\n{'file:key pattern':32s} {'keys':>5s} {'changed':>8s} {'max spread':>12s}  worst key")
    for g, v in summary["groups"].items():
        print(f"{g:32s} {v['n']:5d} {v['changed']:8d} {v['max_spread']:12.3g}  {v['worst']}")
    print("\nsuggested gate.yaml tolerances (2x the largest spread, rounded up):")
    for g, v in summary["groups"].items():
        file, _, pattern = g.partition(":")
        print(f"  {file:9s} {{keys: {pattern!r}, tolerance: {_round_up(2 * v['max_spread']):.3g}}}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, from {', '.join(SETTINGS)}")
    p.add_argument("--size", choices=("default", "tiny"), default="default")
    p.add_argument("--json", help="also write the raw results and spreads to this file")
    p.add_argument("--keep", action="store_true", help="keep the scratch clone (printed)")
    args = p.parse_args(argv)
    settings = args.settings.split(",")
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        p.error(f"unknown setting(s) {unknown}")
    work = Path(tempfile.mkdtemp(prefix="deqa-kernels-"))
    try:
        results = measure(settings, args.size, work)
        summary = summarise(results)
        report(summary)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"size": args.size, "results": results, **summary}, indent=1))
    finally:
        if args.keep:
            print(f"scratch clone: {work / 'repo'}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
