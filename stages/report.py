"""Stage report: reports/report.html (self-contained) and reports/summary.md from every output.

Reads metrics/*.json, data/evaluate/predictions.csv, data/validate/report.json, the dvclive
training logs, params.yaml and (when ``report.experiments``) ``dvc exp show --json``; any missing
input becomes a "not available" section rather than an error.
"""

from __future__ import annotations

import sys
from pathlib import Path

from deqa.report import ReportSources, build_report
from deqa.stage import parse_stage_args

OUT = "reports"


def main(argv: list[str] | None = None) -> int:
    args, params = parse_stage_args(argv, __doc__)
    sources = ReportSources(base_dir=Path("."), params=args.params)
    paths = build_report(OUT, sources, params.report)
    print(f"report: {paths['html']} ({paths['html'].stat().st_size / 1024:.0f} KiB), {paths['summary']}")
    print(paths["summary"].read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
