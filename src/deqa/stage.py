"""Shared plumbing for the thin ``stages/<name>.py`` scripts."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from deqa.config import ConfigError, Params, load_params


def parse_stage_args(argv: list[str] | None, description: str) -> tuple[argparse.Namespace, Params]:
    """Parse the common ``--params`` flag and load the typed params (exit 2 on a bad file)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
    except ConfigError as exc:
        raise SystemExit(f"error: {args.params}: {exc}") from None
    return args, params


def set_threads(n: int) -> None:
    """Pin torch (and BLAS) to ``n`` threads; on a busy 2-core machine 1 is much faster."""
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    import torch

    torch.set_num_threads(n)


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as stable, indented JSON (a ``dvc metrics`` file, a report...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")
