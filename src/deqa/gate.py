"""``deqa gate``: does a fresh pipeline run reproduce the committed one, on this CPU, and not regress?

Every stage must have run with exactly the inputs the committed ``dvc.lock`` records (command,
params values, hashes of the code and data it depends on), so code or data changed without a new
``dvc.lock`` fails on any CPU. Deps that another stage of the pipeline writes are checked at that
stage (by hash if it is ``exact``, not at all if it is ``tolerance``), so one upstream difference
fails one stage, the one that made it, and is not blamed on every stage downstream. What else
"reproducible" means, stage by stage, is data: the ``gate.yaml`` beside the pipeline's
``dvc.yaml`` (:func:`load_config`) lists

- ``exact``: the deterministic stages (``prepare``, ``validate``, ``soft_labels``,
  ``sensitivity``): their JSON files must equal the committed ones number for number and their
  outputs must have the committed hashes (``dvc.lock``), byte for byte, on any machine;
- ``tolerance``: the stages whose numbers come from float kernels (``base_model``, ``train``,
  ``evaluate``): another CPU takes other SIMD/BLAS kernels, which round differently, so each
  number may move by at most its tolerance; ``keys`` are ``fnmatch`` patterns over the dotted key
  path (list items by index: ``test.overall.confusion.2.3``; a file inside a metrics folder adds
  its name: ``metrics/evaluate/test.synthetic.json`` gives ``test.synthetic.srcc``), the first
  match wins and an unmatched key must be equal. The tolerances are measured with
  ``bench/bench_kernels.py`` under the :data:`KERNEL_SETS`;
- ``quality``: a metric (``FILE:KEY``) that must not fall below the committed value minus
  ``margin``.

A stage's JSON files are its DVC metrics (files or folders) and its other ``cache: false`` JSON
outputs: the files git holds (``docs/metrics.md``). Every stage of the ``dvc.yaml`` must appear
under ``exact`` or ``tolerance``, so a new stage cannot slip past the gate. The committed state is
read with ``git show <baseline>:<path>``. :func:`gate` runs the checks and returns ``(passed,
report lines)``; the command line is :mod:`deqa.commands.gate`.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_NAME = "gate.yaml"

_NUMPY_AVX512 = "X86_V4 AVX512_ICL AVX512_SPR"
KERNEL_SETS: dict[str, dict[str, str]] = {
    "default": {},
    # numpy's own SIMD kernels (numpy.show_runtime(), simd_extensions): an AVX-512 machine takes
    # the AVX2 ones (project issue 21), any machine the SSE4.2 baseline
    "numpy-avx2": {"NPY_DISABLE_CPU_FEATURES": _NUMPY_AVX512},
    "numpy-baseline": {"NPY_DISABLE_CPU_FEATURES": f"X86_V3 {_NUMPY_AVX512}"},
    # the OpenBLAS of numpy and scipy picks its kernels by CPU model
    "openblas-sandybridge": {"OPENBLAS_CORETYPE": "Sandybridge"},
    # glibc's libm (exp, log, sin...) has FMA/AVX2 and SSE2 variants that differ in the last bit
    "libm-sse2": {"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2,-FMA,-AVX"},
    # torch: its own kernels, MKL's BLAS, oneDNN
    "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "mkl-compatible": {"MKL_CBWR": "COMPATIBLE"},
    "onednn-avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    # another machine, everything at once: an AVX2 one (as issue 21's), an old SSE4.2 one
    "avx2-machine": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_CBWR": "COMPATIBLE",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "NPY_DISABLE_CPU_FEATURES": _NUMPY_AVX512,
        "OPENBLAS_CORETYPE": "Haswell",
    },
    "sse-machine": {
        "ATEN_CPU_CAPABILITY": "default",
        "MKL_CBWR": "COMPATIBLE",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "NPY_DISABLE_CPU_FEATURES": f"X86_V3 {_NUMPY_AVX512}",
        "OPENBLAS_CORETYPE": "Nehalem",
        "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2,-FMA,-AVX",
    },
}
"""Environment settings that make one x86-64 machine take the kernels another CPU would take
(torch's, MKL's, oneDNN's, numpy's, OpenBLAS's and the C library's), for ``bench/bench_kernels.py``
and the kernel-set test. A setting the CPU cannot lower (AVX-512 off on a machine without it) is
the default again."""
KERNEL_VARIABLES = tuple(sorted({k for env in KERNEL_SETS.values() for k in env}))


class GateError(ValueError):
    """A gate config or pipeline that cannot be checked; the message says which file and why."""


@dataclass(frozen=True)
class Rule:
    keys: str
    tolerance: float


@dataclass
class GateConfig:
    exact: list[str]
    tolerance: dict[str, list[Rule]]
    quality_metric: str
    margin: float
    path: Path = field(default_factory=Path)


def load_config(path: str | Path) -> GateConfig:
    """Read and check a ``gate.yaml``."""
    path = Path(path)
    if not path.is_file():
        raise GateError(f"{path}: no gate config (see deqa.gate for its format)")
    data = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(data) - {"exact", "tolerance", "quality"})
    if unknown:
        raise GateError(f"{path}: unknown key(s) {', '.join(unknown)}; known: exact, tolerance, quality")
    tolerance = {}
    for stage, rules in (data.get("tolerance") or {}).items():
        parsed = []
        for i, rule in enumerate(rules or []):
            if not isinstance(rule, dict) or set(rule) != {"keys", "tolerance"} or not float(rule["tolerance"]) >= 0:
                raise GateError(
                    f"{path}: tolerance.{stage}[{i}]: expected {{keys: PATTERN, tolerance: >= 0}}, got {rule!r}"
                )
            parsed.append(Rule(str(rule["keys"]), float(rule["tolerance"])))
        tolerance[stage] = parsed
    quality = data.get("quality") or {}
    if set(quality) != {"metric", "margin"}:
        raise GateError(f"{path}: quality: expected {{metric: FILE:KEY, margin: NUMBER}}, got {quality!r}")
    both = sorted(set(data.get("exact") or []) & set(tolerance))
    if both:
        raise GateError(f"{path}: stage(s) {', '.join(both)} listed under both exact and tolerance")
    return GateConfig(list(data.get("exact") or []), tolerance, str(quality["metric"]), float(quality["margin"]), path)


# --------------------------------------------------------------------------------------------
# the pipeline and its committed state
# --------------------------------------------------------------------------------------------
def pipeline_stages(dvcfile: str | Path) -> dict[str, list[Path]]:
    """Stage name -> its JSON files (absolute paths of files or folders), for one ``dvc.yaml``.

    The files git holds: its DVC metrics and its other ``cache: false`` outputs ending in ``.json``.
    """
    from dvc.repo import Repo

    dvcfile = Path(dvcfile).resolve()
    if not dvcfile.is_file():
        raise GateError(f"{dvcfile}: no such dvc.yaml")
    with Repo(str(dvcfile.parent)) as repo:
        stages = [s for s in repo.index.stages if Path(s.path).resolve() == dvcfile]
        return {
            s.name: [
                Path(o.fs_path).resolve()
                for o in s.outs
                if o.metric or (not o.use_cache and str(o.fs_path).endswith(".json"))
            ]
            for s in stages
        }


def git_root(path: Path) -> Path:
    res = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=path, capture_output=True, text=True)
    if res.returncode:
        raise GateError(f"{path}: not in a git repository (the gate compares with committed files)")
    return Path(res.stdout.strip())


def committed_text(path: Path, rev: str) -> str | None:
    """The content of ``path`` at git revision ``rev`` (None when absent there)."""
    root = git_root(path.parent if path.parent.exists() else Path.cwd())
    rel = Path(os.path.relpath(path.resolve(), root)).as_posix()
    res = subprocess.run(["git", "show", f"{rev}:{rel}"], cwd=root, capture_output=True, text=True)
    return res.stdout if res.returncode == 0 else None


def committed_json(path: Path, rev: str) -> Any:
    text = committed_text(path, rev)
    return json.loads(text) if text is not None else None


def committed_files(folder: Path, rev: str) -> list[str]:
    """The files under ``folder`` at git revision ``rev``, relative to it (sorted; [] if none)."""
    root = git_root(folder if folder.exists() else Path.cwd())
    rel = Path(os.path.relpath(folder.resolve(), root)).as_posix()
    res = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", rev, "--", f"{rel}/"], cwd=root, capture_output=True, text=True
    )
    return (
        sorted(Path(line).relative_to(rel).as_posix() for line in res.stdout.splitlines()) if not res.returncode else []
    )


def json_members(path: Path, rev: str) -> list[tuple[str, Path]]:
    """``(key prefix, file)`` for a JSON file (prefix ``""``) or each ``.json`` of a metrics folder,
    in the working tree or at ``rev`` (prefix: its relative path without ``.json``, ``/`` -> ``.``)."""
    if path.suffix == ".json" and not path.is_dir():
        return [("", path)]
    here = {f.relative_to(path).as_posix() for f in path.rglob("*.json")} if path.is_dir() else set()
    names = sorted(here | {f for f in committed_files(path, rev) if f.endswith(".json")})
    return [(name[: -len(".json")].replace("/", ".") + ".", path / name) for name in names]


def _lock_entry(lock: dict | None, stage: str) -> dict:
    return ((lock or {}).get("stages") or {}).get(stage) or {}


def lock_outputs(lock: dict | None, stage: str) -> dict[str, str]:
    """Output path -> content hash of one stage in a parsed ``dvc.lock``."""
    return {o["path"]: o.get("md5", "") for o in _lock_entry(lock, stage).get("outs", [])}


def changed_inputs(committed: dict | None, current: dict | None, stage: str, made_here: set[str]) -> list[str]:
    """What a stage ran with that the committed ``dvc.lock`` does not record: its command, a
    params value, or a dep's hash. Deps inside ``made_here`` (or folders of its paths) are left
    out: the outputs of the pipeline's other stages, checked where they are made (those of ``tolerance`` stages
    legitimately differ across CPUs, those of ``exact`` stages fail their own stage)."""
    old, new = _lock_entry(committed, stage), _lock_entry(current, stage)
    out = ["cmd"] if old.get("cmd") != new.get("cmd") else []
    params = [
        (f, k)
        for f in set(old.get("params") or {}) | set(new.get("params") or {})
        for k in set((old.get("params") or {}).get(f) or {}) | set((new.get("params") or {}).get(f) or {})
    ]
    out += sorted(
        f"params {k}"
        for f, k in params
        if ((old.get("params") or {}).get(f) or {}).get(k) != ((new.get("params") or {}).get(f) or {}).get(k)
    )
    deps = [{d["path"]: d.get("md5") for d in entry.get("deps", [])} for entry in (old, new)]

    def inside(p: str) -> bool:  # an output, a file in one, or a folder of outputs (dvclive/train)
        return any(p == o or p.startswith(o.rstrip("/") + "/") or o.startswith(p.rstrip("/") + "/") for o in made_here)

    out += sorted(p for p in set(deps[0]) | set(deps[1]) if not inside(p) and deps[0].get(p) != deps[1].get(p))
    return out


# --------------------------------------------------------------------------------------------
# comparison
# --------------------------------------------------------------------------------------------
@dataclass
class Difference:
    key: str
    base: Any
    run: Any
    tolerance: float | None  # None: not numbers, or a key present on one side only

    @property
    def delta(self) -> float:
        return abs(self.run - self.base) if self.tolerance is not None else math.inf

    @property
    def allowed(self) -> bool:
        return self.tolerance is not None and (self.delta <= self.tolerance or _both_nan(self.base, self.run))

    def __str__(self) -> str:
        if self.tolerance is None:
            return f"{self.key}: {self.base!r} -> {self.run!r}"
        return f"{self.key}: {self.base} -> {self.run} (|Δ| {self.delta:.3g}, tolerance {self.tolerance:g})"


def _both_nan(a: float, b: float) -> bool:
    return isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def compare(base: Any, run: Any, rules: list[Rule], where: str = "") -> list[Difference]:
    """Every key at which two JSON values differ, with the tolerance its rule allows."""
    if isinstance(base, dict) and isinstance(run, dict):
        out = []
        for k in sorted(set(base) | set(run), key=str):
            if k not in base or k not in run:
                out.append(Difference(f"{where}{k}", base.get(k, "<absent>"), run.get(k, "<absent>"), None))
            else:
                out += compare(base[k], run[k], rules, f"{where}{k}.")
        return out
    if isinstance(base, list) and isinstance(run, list) and len(base) == len(run):
        return [d for i, (x, y) in enumerate(zip(base, run, strict=True)) for d in compare(x, y, rules, f"{where}{i}.")]
    key = where[:-1]
    if _number(base) and _number(run):
        if base == run or _both_nan(base, run):
            return []
        tol = next((r.tolerance for r in rules if fnmatch.fnmatchcase(key, r.keys)), 0.0)
        return [Difference(key, base, run, tol)]
    return [] if base == run else [Difference(key, base, run, None)]


def lookup(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        elif isinstance(data, dict) and part in data:
            data = data[part]
        else:
            return None
    return data


# --------------------------------------------------------------------------------------------
# the checks
# --------------------------------------------------------------------------------------------
def _compare_files(paths: list[Path], rules: list[Rule], baseline: str, base_dir: Path) -> tuple[list[str], list[str]]:
    """Problems and notes of comparing a stage's JSON files (or folders) with the committed ones."""
    problems, notes, diffs, compared = [], [], [], []
    for path in paths:
        for prefix, f in json_members(path, baseline):
            name = os.path.relpath(f, base_dir)
            base = committed_json(f, baseline)
            if base is None:
                problems.append(f"{name} not committed at {baseline}")
            elif not f.is_file():
                problems.append(f"{name} missing (run dvc repro first)")
            else:
                found = compare(base, json.loads(f.read_text()), rules, prefix)
                bad = [d for d in found if not d.allowed]
                if bad:
                    problems.append(
                        f"{name}: {len(bad)} value(s) beyond tolerance, e.g. " + "; ".join(map(str, bad[:3]))
                    )
                diffs += found
                compared.append(name)
    if diffs and not problems:
        worst = max(diffs, key=lambda d: d.delta / d.tolerance if d.tolerance else 0)
        notes.append(f"{len(diffs)} value(s) within tolerance in {len(compared)} file(s), largest {worst}")
    elif compared and not problems:
        notes.append(f"{', '.join(compared)} identical" if len(compared) <= 2 else f"{len(compared)} files identical")
    return problems, notes


def _readers(lock: dict | None, outputs: list[str]) -> list[str]:
    """The stages of a parsed ``dvc.lock`` whose deps are (inside) one of ``outputs``."""
    inside = lambda p, o: p == o or p.startswith(o.rstrip("/") + "/")  # noqa: E731
    stages = ((lock or {}).get("stages") or {}).items()
    return [n for n, e in stages if any(inside(d["path"], o) for d in e.get("deps", []) for o in outputs)]


def _check_stage(
    stage: str,
    files: list[Path],
    cfg: GateConfig,
    baseline: str,
    base_dir: Path,
    locks: tuple[dict | None, dict | None],
) -> tuple[bool, str]:
    exact = stage in cfg.exact
    problems, notes = _compare_files(files, [] if exact else cfg.tolerance[stage], baseline, base_dir)
    made_here = {p for name in (*cfg.exact, *cfg.tolerance) for lock in locks for p in lock_outputs(lock, name)}
    inputs = changed_inputs(*locks, stage, made_here)
    if inputs:
        problems.append(
            f"ran with inputs the committed dvc.lock does not record: {', '.join(inputs[:6])}"
            " (commit dvc.lock and metrics after dvc repro)"
        )
    if exact:
        committed, current = (lock_outputs(lock, stage) for lock in locks)
        changed = sorted(p for p in set(committed) | set(current) if committed.get(p) != current.get(p))
        if changed:
            readers = _readers(locks[1], changed)
            problems.append(
                f"outputs differ from the committed dvc.lock: {', '.join(changed)}"
                + (f" (read by {', '.join(readers)})" if readers else "")
            )
        else:
            notes.append(f"outputs identical ({', '.join(sorted(current)) or 'none'})")
    kind = "exact" if exact else "tolerance"
    text = "; ".join(problems or notes) or "no metrics"
    return not problems, f"{'ok  ' if not problems else 'FAIL'} {stage:12s} {kind:9s} {text}"


def _check_quality(cfg: GateConfig, baseline: str, base_dir: Path) -> tuple[bool, str]:
    file, _, key = cfg.quality_metric.rpartition(":")
    path = (base_dir / file).resolve()
    base_v = lookup(committed_json(path, baseline), key)
    run_v = lookup(json.loads(path.read_text()), key) if path.is_file() else None
    where = f"{os.path.relpath(path, base_dir)}:{key}"
    if not _number(base_v) or not _number(run_v):
        return False, f"FAIL {'quality':12s} {where}: missing (committed {base_v}, run {run_v})"
    floor = base_v - cfg.margin
    good = run_v >= floor
    return good, (
        f"{'ok  ' if good else 'FAIL'} {'quality':12s} {where} = {run_v:.4f} "
        f"(committed {base_v:.4f}, floor {floor:.4f})"
    )


def gate(
    dvcfile: str | Path = "dvc.yaml",
    baseline: str = "HEAD",
    repro: bool = True,
    config: str | Path | None = None,
    metric: str | None = None,
    margin: float | None = None,
) -> tuple[bool, list[str]]:
    """Check one pipeline against ``baseline``; returns (passed, report lines).

    ``config`` defaults to the ``gate.yaml`` beside ``dvcfile``; ``metric`` (``FILE:KEY``, FILE
    relative to the ``dvc.yaml`` folder) and ``margin`` override its ``quality`` block.
    ``repro=False`` checks the quality floor only (after an experiment, whose metrics differ).
    """
    dvcfile = Path(dvcfile).resolve()
    base_dir = dvcfile.parent
    cfg = load_config(config or base_dir / CONFIG_NAME)
    cfg.quality_metric = metric or cfg.quality_metric
    cfg.margin = cfg.margin if margin is None else margin
    results = []
    if repro:
        stages = pipeline_stages(dvcfile)
        unlisted = sorted(set(stages) - set(cfg.exact) - set(cfg.tolerance))
        if unlisted:
            raise GateError(
                f"{cfg.path}: stage(s) {', '.join(unlisted)} of {dvcfile.name} have no rule; "
                "list each under exact or tolerance"
            )
        lock_file = base_dir / "dvc.lock"
        base_lock = committed_text(lock_file, baseline)
        locks = (
            yaml.safe_load(base_lock) if base_lock else None,
            yaml.safe_load(lock_file.read_text()) if lock_file.is_file() else None,
        )
        results += [_check_stage(name, files, cfg, baseline, base_dir, locks) for name, files in stages.items()]
    results.append(_check_quality(cfg, baseline, base_dir))
    return all(ok for ok, _ in results), [line for _, line in results]
