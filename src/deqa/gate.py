"""``deqa gate``: the CI check that a pipeline run reproduces and does not regress.

Two checks against the metrics committed at a git revision (``--baseline``, default ``HEAD``):

- **reproducibility** (``--repro``, on by default): every ``dvc metrics`` file of the pipeline
  (``metrics/*.json``) must equal the committed one, number for number (``--tolerance``, default
  1e-9, absorbs JSON float round-trips only). The default pipeline is deterministic on CPU (seeds,
  one thread, stable ordering), so any difference means something changed that the commit did
  not record.
- **quality**: the held-out SRCC (``test.overall.srcc`` of ``metrics/evaluate.json`` by default,
  ``--metric``) must not fall below the committed value minus ``--margin`` (default 0.02, about
  the width of the bootstrap interval's half on the 1,860 synthetic test images).

Run after ``dvc repro`` (both checks) or after a ``dvc exp run`` (``--no-repro``: quality only).
Exit 0 when every check passes, 1 otherwise; the table printed says which failed.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

METRICS_DIR = "metrics"


def committed(path: str, rev: str) -> Any:
    """The JSON content of ``path`` at git revision ``rev`` (None when absent there)."""
    res = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
    return json.loads(res.stdout) if res.returncode == 0 else None


def differences(a: Any, b: Any, tol: float, where: str = "") -> list[str]:
    """Paths at which two JSON values differ (numbers beyond ``tol``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{where}{k} (only in {'baseline' if k in a else 'run'})")
            else:
                out += differences(a[k], b[k], tol, f"{where}{k}.")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, tol, f"{where}{i}.")]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return [] if math.isclose(a, b, rel_tol=0, abs_tol=tol) else [f"{where[:-1]}: {a} -> {b}"]
    return [] if a == b else [f"{where[:-1]}: {a!r} -> {b!r}"]


def lookup(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def gate(baseline: str = "HEAD", repro: bool = True, metric: str = "evaluate:test.overall.srcc",
         margin: float = 0.02, tolerance: float = 1e-9, metrics_dir: str = METRICS_DIR) -> tuple[bool, list[str]]:
    """Run the checks; returns (passed, report lines)."""
    lines, ok = [], True
    if repro:
        files = sorted(Path(metrics_dir).glob("*.json"))
        if not files:
            return False, [f"FAIL reproducibility: no metrics files in {metrics_dir}/ (run dvc repro first)"]
        for f in files:
            base = committed(f.as_posix(), baseline)
            if base is None:
                ok = False
                lines.append(f"FAIL reproducibility {f}: not committed at {baseline}")
                continue
            diff = differences(base, json.loads(f.read_text()), tolerance)
            ok &= not diff
            lines.append(f"{'ok  ' if not diff else 'FAIL'} reproducibility {f}"
                         + ("" if not diff else f": {len(diff)} value(s) differ, e.g. " + "; ".join(diff[:3])))
    name, _, key = metric.partition(":")
    path = f"{metrics_dir}/{name}.json"
    base_v = lookup(committed(path, baseline), key)
    run_v = lookup(json.loads(Path(path).read_text()), key) if Path(path).exists() else None
    if base_v is None or run_v is None:
        ok = False
        lines.append(f"FAIL quality {path}:{key}: missing (baseline {base_v}, run {run_v})")
    else:
        good = run_v >= base_v - margin
        ok &= good
        lines.append(f"{'ok  ' if good else 'FAIL'} quality {path}:{key} = {run_v:.4f} "
                     f"(committed {base_v:.4f}, floor {base_v - margin:.4f})")
    return ok, lines


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__.split("\n\n")[0] + " Exit 0 if every check passes, 1 otherwise."
    p.add_argument("--baseline", default="HEAD", help="git revision holding the committed metrics (default HEAD)")
    p.add_argument("--no-repro", dest="repro", action="store_false",
                   help="skip the reproducibility check (for experiments, whose metrics differ by design)")
    p.add_argument("--metric", default="evaluate:test.overall.srcc",
                   help="FILE:KEY of the quality metric (default evaluate:test.overall.srcc)")
    p.add_argument("--margin", type=float, default=0.02, help="allowed drop of the quality metric (default 0.02)")
    p.add_argument("--tolerance", type=float, default=1e-9, help="numeric tolerance of the reproducibility check")


def run(args: argparse.Namespace) -> int:
    ok, lines = gate(args.baseline, args.repro, args.metric, args.margin, args.tolerance)
    print("\n".join(lines))
    print("gate: PASSED" if ok else "gate: FAILED", file=sys.stderr if not ok else sys.stdout)
    return 0 if ok else 1
