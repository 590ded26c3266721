"""How far do a pipeline's numbers move when this machine takes another CPU's kernels? (sizes ``deqa gate``)

Another CPU takes other SIMD/BLAS/libm kernels, whose float results differ in the last bits. This
script makes one machine take them, the way another CPU would, with the environment settings of
:data:`deqa.gate.KERNEL_SETS` (numpy's SIMD dispatch, OpenBLAS's core type, glibc's libm variant,
torch's ATen capability, MKL's code path, oneDNN's ISA, and two whole "other machines"), and for
each setting, in a scratch clone of the repository's HEAD:

1. runs every stage of the pipeline cold (``dvc repro --force``: the deterministic stages too,
   since numpy's, OpenBLAS's and libm's kernels reach them),
2. runs ``deqa gate`` against the committed HEAD and keeps its verdict and lines,
3. reads the numbers of every stage's committed JSON files (those the gate compares) and the
   output hashes of ``dvc.lock``.

It then prints the gate verdict per setting, which outputs were byte-identical across settings
(every ``exact`` stage's must be), the spread (max - min over the settings) of each number grouped
by the key patterns of ``gate.yaml``, and a suggested ``tolerance:`` block for ``gate.yaml`` (2x
the largest spread seen, rounded up; compare it with the rules in place before pasting it).
Settings this CPU cannot lower (AVX-512 off on a machine without it: same numpy, OpenBLAS and torch
kernels as an earlier setting) are skipped, with the reason; ``--all`` runs them anyway.

    python bench/bench_kernels.py                              # default pipeline: ~3 min per setting on 2 cores
    python bench/bench_kernels.py --pipeline real --json bench/out/kernels-real.json
                                                               # real/dvc.yaml: needs ../shared/realdata, ~11 min each
    python bench/bench_kernels.py --settings default,numpy-baseline,sse-machine
    python bench/bench_kernels.py --size tiny                  # the test suite's tiny default pipeline (seconds)

Run it on the code whose tolerances you set (the trained stages' spreads depend on the training
code), after committing ``dvc.lock`` and the metrics of a ``dvc repro`` on it: the gate lines
compare each setting with that commit (``--rebaseline`` first runs and commits a baseline in the
clone instead, for a HEAD whose ``dvc.lock`` is not of its code). ``BENCHMARKS.md`` ("Kernel sets")
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
sys.path.insert(0, str(ROOT / "src"))  # this checkout's deqa

from deqa.gate import KERNEL_SETS, KERNEL_VARIABLES, json_members, pipeline_stages  # noqa: E402

BIN = Path(sys.executable).parent
TINY = {
    "prepare.synthetic": {"crops_per_photo": 1, "image_size": 64},
    "model.tiny": {"image_size": 64, "hidden_size": 32, "intermediate_size": 64, "layers": 1, "heads": 2},
    "train": {"epochs": 1, "batch_pairs": 8, "checkpoint_every": 10},
    "sensitivity": {"image_size": 64, "scenes_per_kind": 1, "severities": 3},
    "evaluate": {"bootstrap": 20},
}
# key patterns reported (and suggested for gate.yaml), per stage; first match wins
PATTERNS = (
    "steps",
    "trainable_params",
    "selected.*",
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
PROBE = """
import json, os, threadpoolctl, numpy
from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
try:
    import torch
    aten = torch.backends.cpu.get_cpu_capability()
except Exception as exc:
    aten = f"no torch ({exc})"
blas = sorted({i.get("architecture", "?") for i in threadpoolctl.threadpool_info() if i["internal_api"] == "openblas"})
print(json.dumps({"numpy": [f for f in __cpu_dispatch__ if __cpu_features__.get(f)], "openblas": blas, "aten": aten}))
"""


def _env(extra: dict[str, str], src: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (*KERNEL_VARIABLES, "DVC_STAGE", "DVC_ROOT", "PYTHONPATH")}
    return {
        **env,
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "DVC_NO_ANALYTICS": "1",
        **({"PYTHONPATH": str(src)} if src else {}),
        **{k: env.get(k, "deqa-bench") for k in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME")},
        **{k: env.get(k, "bench@deqa.invalid") for k in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL")},
        **extra,
    }


def _run(cmd: list[str], cwd: Path, extra: dict[str, str] | None = None, check: bool = True) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=_env(extra or {}, cwd / "src"), capture_output=True, text=True)
    if check and res.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return res.stdout + res.stderr


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))


def kernels(setting: str) -> dict:
    """The kernels a process takes under ``setting`` on this CPU (numpy's dispatch, OpenBLAS's core,
    torch's capability; MKL's, oneDNN's and libm's as the variables ask, where the CPU has more)."""
    env = KERNEL_SETS[setting]
    out = json.loads(_run([sys.executable, "-c", PROBE], ROOT, env).strip().splitlines()[-1])
    flags = _cpu_flags()
    onednn = env.get("ONEDNN_MAX_CPU_ISA", "")
    out["onednn"] = "" if onednn == "AVX2" and "avx512f" not in flags else onednn
    out["mkl"] = env.get("MKL_CBWR", "")
    out["libm"] = env.get("GLIBC_TUNABLES", "") if {"avx2", "fma", "avx"} & flags else ""
    return out


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


def _numbers(dvcfile: Path) -> dict[str, float]:
    """``stage:key`` -> number, over every stage's committed JSON files (the gate's keys)."""
    out = {}
    for stage, paths in pipeline_stages(dvcfile).items():
        for path in paths:
            for prefix, f in json_members(path, "HEAD"):
                if f.is_file():
                    out.update({f"{stage}:{k}": v for k, v in _flat(json.loads(f.read_text()), prefix).items()})
    return out


def _out_hashes(dvcfile: Path) -> dict[str, str]:
    lock = yaml.safe_load(dvcfile.with_name("dvc.lock").read_text())["stages"]
    return {f"{stage}:{o['path']}": o.get("md5", "") for stage, entry in lock.items() for o in entry.get("outs", [])}


def _clone(work: Path, pipeline: str, size: str) -> Path:
    repo = work / "repo"
    _run(["git", "clone", "-q", str(ROOT), str(repo)], work)
    _run(["dvc", "config", "--local", "core.analytics", "false"], repo)
    if pipeline != ".":
        shared = (ROOT.parent / "shared").resolve()  # real/data/*.dvc import ../shared/realdata
        if not (shared / "realdata").is_dir():
            raise SystemExit(f"--pipeline {pipeline} needs {shared}/realdata beside the checkout")
        (work / "shared").symlink_to(shared)
        _run(["dvc", "update", *map(str, sorted((repo / pipeline / "data").glob("*.dvc")))], repo)
    if size == "tiny":
        _shrink(repo / pipeline / "params.yaml")
        _run(["git", "commit", "-qam", "tiny size"], repo)
    return repo


PRIVATE_CACHES = ("feature-cache", "checkpoints")
"""The stages' private caches (git- and DVC-ignored, keyed by content, not by kernels): the
``features`` stage's per-image entries and ``train``'s resume checkpoints. A forced re-run would
serve the previous setting's tower outputs and resume its finished training from them."""


def measure(
    settings: list[str], pipeline: str, size: str, work: Path, save: Path | None = None, rebaseline: bool = False
) -> dict:
    repo = _clone(work, pipeline, size)
    dvcfile = repo / pipeline / "dvc.yaml"
    results = {}
    if rebaseline or size == "tiny":  # a baseline run of this code, committed in the clone
        t0 = time.perf_counter()
        _run(["dvc", "repro", str(dvcfile)], repo)
        _run(["git", "add", "-A"], repo)
        _run(["git", "commit", "-qm", "baseline: this code under the default kernels"], repo)
        results["baseline"] = {
            "env": {},
            "numbers": _numbers(dvcfile),
            "outs": _out_hashes(dvcfile),
            "seconds": time.perf_counter() - t0,
            "gate": [],
            "passed": True,
        }
        print(f"\n== baseline (default kernels, committed in the clone): {results['baseline']['seconds']:.0f} s")
    for name in settings:
        for private in PRIVATE_CACHES:  # else this setting would reuse the previous one's work
            shutil.rmtree(repo / pipeline / private, ignore_errors=True)
        t0 = time.perf_counter()
        _run(["dvc", "repro", "--force", str(dvcfile)], repo, KERNEL_SETS[name])
        seconds = time.perf_counter() - t0
        gate = _run(
            [sys.executable, "-m", "deqa.cli", "gate", "--dvcfile", str(dvcfile), "--baseline", "HEAD"],
            repo,
            check=False,
        )
        lines = [line for line in gate.splitlines() if line.startswith(("ok", "FAIL", "gate:", "error"))]
        results[name] = {
            "env": KERNEL_SETS[name],
            "numbers": _numbers(dvcfile),
            "outs": _out_hashes(dvcfile),
            "seconds": seconds,
            "gate": lines,
            "passed": "gate: PASSED" in gate,
        }
        print(f"\n== {name} {KERNEL_SETS[name] or ''}: {seconds:.0f} s", flush=True)
        print("\n".join(lines), flush=True)
        if save:  # after each setting: a long run interrupted keeps what it measured (--summarise)
            save.parent.mkdir(parents=True, exist_ok=True)
            save.write_text(json.dumps({"pipeline": pipeline, "size": size, "results": results}, indent=1))
    return results


def _round_up(x: float) -> float:
    if x <= 0:
        return 0.0
    exp = math.floor(math.log10(x))
    return math.ceil(round(x / 10**exp, 9)) * 10**exp


def summarise(results: dict) -> dict:
    names = list(results)
    keys = sorted(set().union(*(r["numbers"] for r in results.values())))
    spread = {}
    for key in keys:
        values = [results[n]["numbers"].get(key) for n in names]
        values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
        spread[key] = max(values) - min(values) if values else 0.0
    groups: dict[str, dict] = {}
    for key, s in spread.items():
        stage, _, inner = key.partition(":")
        pattern = next(p for p in PATTERNS if fnmatch.fnmatchcase(inner, p))
        g = groups.setdefault(f"{stage}:{pattern}", {"max_spread": 0.0, "worst": key, "n": 0, "changed": 0})
        g["n"] += 1
        g["changed"] += s > 0
        if s > g["max_spread"]:
            g["max_spread"], g["worst"] = s, key
    outs = {k: len({results[n]["outs"].get(k) for n in names}) == 1 for k in results[names[0]]["outs"]}
    passed = {n: results[n]["passed"] for n in names}
    return {"settings": names, "spread": spread, "groups": groups, "outs_identical": outs, "gate_passed": passed}


def report(summary: dict, skipped: dict[str, str]) -> None:
    print(f"\nsettings run: {', '.join(summary['settings'])}")
    for name, why in skipped.items():
        print(f"  skipped {name}: {why}")
    print("\ngate verdict per setting (against the committed HEAD):")
    for name, ok in summary["gate_passed"].items():
        print(f"  {name:22s} {'PASSED' if ok else 'FAILED'}")
    print("\noutputs byte-identical across settings:")
    for k, same in summary["outs_identical"].items():
        print(f"  {k:50s} {'yes' if same else 'no'}")
    print(f"\n{'stage:key pattern':34s} {'keys':>5s} {'changed':>8s} {'max spread':>12s}  worst key")
    for g, v in summary["groups"].items():
        print(f"{g:34s} {v['n']:5d} {v['changed']:8d} {v['max_spread']:12.3g}  {v['worst']}")
    print("\nsuggested gate.yaml tolerances (2x the largest spread, rounded up; 0: equal on every setting):")
    print("tolerance:")
    by_stage: dict[str, list[str]] = {}
    for g, v in summary["groups"].items():
        stage, _, pattern = g.partition(":")
        by_stage.setdefault(stage, []).append(
            f"    - {{keys: {json.dumps(pattern)}, tolerance: {_round_up(2 * v['max_spread']):.2g}}}"
        )
    for stage, rules in by_stage.items():
        print(f"  {stage}:")
        print("\n".join(rules))


def _distinct(settings: list[str]) -> tuple[list[str], dict[str, str]]:
    """The settings whose kernels differ from every earlier one's on this CPU, and why the others go."""
    seen: dict[str, str] = {}
    keep, skipped = [], {}
    for name in settings:
        signature = json.dumps(kernels(name), sort_keys=True)
        print(f"{name:22s} {signature}", flush=True)
        if signature in seen:
            skipped[name] = f"this CPU takes the same kernels as under {seen[signature]}"
        else:
            seen[signature] = name
            keep.append(name)
    return keep, skipped


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", default=",".join(KERNEL_SETS), help=f"comma-separated, from {', '.join(KERNEL_SETS)}")
    p.add_argument("--pipeline", default=".", help="folder of the pipeline's dvc.yaml (default: the repository root)")
    p.add_argument("--size", choices=("default", "tiny"), default="default", help="tiny: the default pipeline only")
    p.add_argument("--all", action="store_true", help="also run the settings that give this CPU the same kernels")
    p.add_argument(
        "--rebaseline",
        action="store_true",
        help="first run the pipeline under the default kernels and commit it in the clone as the baseline "
        "(when HEAD's dvc.lock is not of this code; the default kernels' numbers are then in the spreads)",
    )
    p.add_argument("--json", help="also write the raw results and spreads to this file")
    p.add_argument("--keep", action="store_true", help="keep the scratch clone (printed)")
    p.add_argument("--summarise", metavar="JSON", help="only print the summary of an earlier run's --json file")
    args = p.parse_args(argv)
    if args.summarise:
        data = json.loads(Path(args.summarise).read_text())
        summary = summarise(data["results"])
        report(summary, data.get("skipped", {}))
        return 0 if all(summary["gate_passed"].values()) else 1
    settings = args.settings.split(",")
    unknown = sorted(set(settings) - set(KERNEL_SETS))
    if unknown:
        p.error(f"unknown setting(s) {unknown}")
    if args.size == "tiny" and args.pipeline != ".":
        p.error("--size tiny shrinks the default pipeline only")
    if not (ROOT / args.pipeline / "dvc.yaml").is_file():
        p.error(f"no dvc.yaml in {ROOT / args.pipeline}")
    print("kernels per setting on this CPU:")
    settings, skipped = (settings, {}) if args.all else _distinct(settings)
    work = Path(tempfile.mkdtemp(prefix="deqa-kernels-"))
    try:
        save = Path(args.json) if args.json else None
        results = measure(settings, args.pipeline, args.size, work, save, args.rebaseline)
        summary = summarise(results)
        report(summary, skipped)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            data = {"pipeline": args.pipeline, "size": args.size, "skipped": skipped, "results": results, **summary}
            Path(args.json).write_text(json.dumps(data, indent=1))
    finally:
        if args.keep:
            print(f"scratch clone: {work / 'repo'}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if all(summary["gate_passed"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
