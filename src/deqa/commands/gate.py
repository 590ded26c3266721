"""``deqa gate``: the CI check that a pipeline run reproduces the committed one and does not regress.

Run after ``dvc repro`` (every check of :mod:`deqa.gate`) or after a ``dvc exp run``
(``--no-repro``: the quality floor only). ``--pipeline real`` (or ``--dvcfile real/dvc.yaml``)
checks another pipeline of the repository against its own ``gate.yaml`` and metrics. Exit 0 when
every check passes, 1 when one fails, 2 when the pipeline or its gate config cannot be read.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from deqa.gate import KERNEL_VARIABLES, GateError, gate


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__.split("\n\n")[0].split(": ", 1)[1]
    where = p.add_mutually_exclusive_group()
    where.add_argument("--dvcfile", default="dvc.yaml", help="the pipeline's dvc.yaml (default: dvc.yaml)")
    where.add_argument("--pipeline", metavar="FOLDER", help="shorthand for --dvcfile FOLDER/dvc.yaml")
    p.add_argument("--baseline", default="HEAD", help="git revision holding the committed metrics (default HEAD)")
    p.add_argument("--config", help="gate config (default: gate.yaml beside the dvc.yaml)")
    p.add_argument(
        "--no-repro",
        dest="repro",
        action="store_false",
        help="check the quality floor only (for experiments, whose metrics differ by design)",
    )
    p.add_argument(
        "--metric",
        help="FILE:KEY of the quality metric, FILE relative to the dvc.yaml folder (default: from the gate config)",
    )
    p.add_argument("--margin", type=float, help="allowed drop of the quality metric (default: from the gate config)")


def run(args: argparse.Namespace) -> int:
    dvcfile = Path(args.pipeline) / "dvc.yaml" if args.pipeline else Path(args.dvcfile)
    try:
        ok, lines = gate(dvcfile, args.baseline, args.repro, args.config, args.metric, args.margin)
    except GateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    chosen = [f"{k}={os.environ[k]}" for k in KERNEL_VARIABLES if os.environ.get(k)]
    print(f"kernels: {' '.join(chosen) if chosen else 'as this CPU picks them'} (deqa.gate.KERNEL_SETS)")
    print("\n".join(lines))
    print("gate: PASSED" if ok else "gate: FAILED", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1
