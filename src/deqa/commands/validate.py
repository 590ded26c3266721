"""``deqa validate LABELS --format FORMAT``: the validation suite on a user's label file.

Exit codes: 0 everything passes (with ``--on-error quarantine``: the kept rows pass), 1 the
suite failed (the message lists each failed expectation with example rows and says where the
full list is), 2 the label file cannot be read (missing, empty, not CSV/JSON, wrong columns).
No row of the file can abort the run: each bad row is a reason in the report or the quarantine.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from deqa.schema import LABEL_FORMATS, SPLITS

log = logging.getLogger("deqa.validate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from deqa.config import ValidateConfig

    d = ValidateConfig()
    parser.add_argument("labels", metavar="LABELS", help="the label file to check")
    parser.add_argument(
        "--format",
        required=True,
        choices=[*LABEL_FORMATS, "manifest"],
        help="the label file's format (manifest: a deqa manifest CSV)",
    )
    parser.add_argument(
        "--root", default="", help="folder the image paths are relative to (default: the label file's folder)"
    )
    parser.add_argument(
        "--on-error",
        choices=["fail", "quarantine"],
        default="fail",
        help="fail (default): exit 1 on any failure; quarantine: set bad rows aside",
    )
    parser.add_argument("--report", default=None, help="write the JSON report (every failing row) to this file")
    parser.add_argument("--out", default=None, help="write manifest.csv and quarantine.csv here")
    parser.add_argument("--name", default=None, help="dataset name (default: the format)")
    parser.add_argument("--lo", type=float, default=None, help="scale minimum (default: observed min MOS)")
    parser.add_argument("--hi", type=float, default=None, help="scale maximum (default: observed max MOS)")
    parser.add_argument("--split", default="", help="force one split for every row")
    parser.add_argument(
        "--require-splits", default=None, help="comma-separated splits that must have rows (default: those present)"
    )
    parser.add_argument("--min-rows", type=int, default=d.min_rows)
    parser.add_argument("--min-side", type=int, default=d.min_side)
    parser.add_argument("--max-pixels", type=int, default=d.max_pixels)
    parser.add_argument("--vote-tolerance", type=float, default=d.vote_tolerance)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (also with -q)")


def read_labels(args: argparse.Namespace):
    """The rows to validate, annotated with line numbers and original texts (LabelImportError if unreadable)."""
    from deqa.importers import LabelImportError, import_labels, read_csv_rows

    if args.format != "manifest":
        return import_labels(
            args.labels,
            args.format,
            root=args.root,
            name=args.name,
            lo=args.lo,
            hi=args.hi,
            split=args.split,
            annotate=True,
        )
    path = Path(args.labels)
    if not path.is_file():
        raise LabelImportError(f"label file not found: {args.labels}")
    df = read_csv_rows(path, "manifest")
    if df.empty and not len(df.columns):
        raise LabelImportError(f"{args.labels}: the file is empty (a manifest needs a header row)")
    return df.fillna("")


def _where(args: argparse.Namespace) -> str:
    """Where the full list of failing rows is, in words."""
    places = []
    if args.report:
        places.append(f"the report {args.report}")
    if args.out and args.on_error == "quarantine":
        places.append(f"{Path(args.out) / 'quarantine.csv'}")
    return " and ".join(places) if places else "rerun with --report FILE to list every row"


def run(args: argparse.Namespace) -> int:
    from deqa.config import ValidateConfig
    from deqa.importers import LabelImportError
    from deqa.validation import summary, validate_manifest, write_outputs

    try:
        df = read_labels(args)
    except LabelImportError as exc:
        log.error("%s", exc)
        return 2
    cfg = ValidateConfig(
        on_error=args.on_error,
        min_rows=args.min_rows,
        min_side=args.min_side,
        max_pixels=args.max_pixels,
        vote_tolerance=args.vote_tolerance,
    )
    if args.require_splits is None:
        present = df["split"].dropna().astype(str).unique() if "split" in df.columns else []
        required = [s for s in SPLITS if s in set(present)]
    else:
        required = [s.strip() for s in args.require_splits.split(",") if s.strip()]
    progress = not (args.no_progress or getattr(args, "quiet", 0))
    result = validate_manifest(df, cfg, required_splits=required, progress=progress)
    write_outputs(result, args.out, args.report)
    print(summary(result, full_list=_where(args)))
    if args.report:
        print(f"report: {args.report}")
    if not result.success:
        log.error("%s", result.failure_text(full_list=_where(args)))
        return 1
    return 0
