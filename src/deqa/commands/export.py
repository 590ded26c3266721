"""``deqa export``: merge a LoRA adapter into its base model and save a standalone checkpoint.

Never destroys data: the export is built in a temporary folder beside ``--output`` and moved into
place only when complete; ``--overwrite`` replaces a non-empty output only then; an output that
contains the repository or the model is refused. Exit 0 on success, 2 on any error (nothing
changed).
"""

from __future__ import annotations

import argparse
import sys

from deqa.export import DTYPES, export


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__.split("\n\n")[0].split(": ", 1)[1]
    p.add_argument("--model", default="models/deqa", help="trained adapter folder (default: models/deqa)")
    p.add_argument("--output", "-o", required=True, help="folder for the merged checkpoint")
    p.add_argument("--base", default=None, help="base checkpoint (default: from the adapter's deqa_model.json)")
    p.add_argument(
        "--metrics",
        default="data/evaluate/metrics.json",
        help="evaluation metrics for the model card, if present (default: data/evaluate/metrics.json, "
        "the evaluate stage's detail)",
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", *DTYPES],
        help="merge dtype (default auto: as the base checkpoint is stored, e.g. bf16)",
    )
    p.add_argument("--device", default="auto", help="merge device: auto (GPU if any), cpu, cuda, cuda:1...")
    p.add_argument("--license", default=None, help="license of the merged model (default: the base model's)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder (after success)")


def run(args: argparse.Namespace) -> int:
    try:
        out = export(
            args.model,
            args.output,
            base=args.base,
            metrics_file=args.metrics,
            overwrite=args.overwrite,
            dtype=args.dtype,
            device=args.device,
            license=args.license,
        )
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {args.model} -> {out}")
    return 0
