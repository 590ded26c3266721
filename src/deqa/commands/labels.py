"""``deqa labels FILE``: print the soft-label discretisation table of a user's label file.

``FILE`` is a manifest CSV or any format :mod:`deqa.importers` reads (KonIQ, KADID and generic
CSVs are recognised from their columns; otherwise ``--format``). Exit 0, or 2 with a one-line
error when the file cannot be read.
"""

from __future__ import annotations

import argparse
import json
import logging

from deqa.importers import load_label_file
from deqa.labels import DENSITIES, KINDS, dataset_metrics, format_metrics

log = logging.getLogger("deqa.labels")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``deqa labels``."""
    from deqa.config import SoftLabelsConfig

    d = SoftLabelsConfig()
    parser.add_argument("file", metavar="FILE", help="label file (a manifest CSV, KonIQ, KADID, generic CSV, ...)")
    parser.add_argument(
        "--format",
        default=None,
        help="layout of FILE (default: detected from its columns; manifest or one of deqa.schema.LABEL_FORMATS)",
    )
    parser.add_argument("--name", default=None, help="dataset name (importers only)")
    parser.add_argument("--lo", type=float, default=None, help="lower MOS bound (default: observed min)")
    parser.add_argument("--hi", type=float, default=None, help="upper MOS bound (default: observed max)")
    parser.add_argument("--kind", choices=KINDS, default=d.kind, help=f"labels to assess (default: {d.kind})")
    parser.add_argument("--density", choices=DENSITIES, default=d.density, help=f"default: {d.density}")
    parser.add_argument(
        "--std-min", type=float, default=d.std_min, help=f"binary fallback below this s (default: {d.std_min})"
    )
    parser.add_argument(
        "--max-mean-error",
        type=float,
        default=d.max_mean_error,
        help=f"binary fallback above this |sum k q_k - m| (default: {d.max_mean_error})",
    )
    parser.add_argument("--renormalise", action="store_true", help="renormalise soft labels after clipping")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")


def run(args: argparse.Namespace) -> int:
    """Print the discretisation table (or JSON) of ``args.file``."""
    from deqa.config import SoftLabelsConfig

    config = SoftLabelsConfig(
        kind=args.kind,
        density=args.density,
        std_min=args.std_min,
        max_mean_error=args.max_mean_error,
        renormalise=args.renormalise,
    )
    importer_options = {k: v for k, v in (("name", args.name), ("lo", args.lo), ("hi", args.hi)) if v is not None}
    try:
        manifest = load_label_file(args.file, args.format, **importer_options)
        metrics = dataset_metrics(manifest, config)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        log.error("%s", exc)
        return 2
    if args.json:
        print(json.dumps(metrics, indent=2, sort_keys=True))
    else:
        print(
            f"{args.file}: {args.kind} labels (density {args.density}) against one-hot, "
            f"m and s on [1, 5]; errors are means of |label - Gaussian|"
        )
        print(format_metrics(metrics, args.kind))
    return 0
