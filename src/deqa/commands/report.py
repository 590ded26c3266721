"""``deqa report``: the pipeline report, or with ``--experiments`` the DVC experiments page.

Argument parsing and printing only; the work is :func:`deqa.report.build_report` and
:func:`deqa.report.experiments.write_experiments_page`.
"""

from __future__ import annotations

import argparse

from deqa.report import ReportInputError, ReportSources, build_report
from deqa.report.experiments import markdown, write_experiments_page


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Write the pipeline report (reports/report.html, summary.md) from the outputs in the current "
        "directory, or with --experiments the page comparing DVC experiments (run it outside dvc repro)."
    )
    p.add_argument(
        "--out", default=None, help="report folder (default reports) or experiments page (default experiments.html)"
    )
    p.add_argument("--params", default="params.yaml", help="params file shown in the report (default params.yaml)")
    p.add_argument("--examples", type=int, default=4, help="best and worst images shown (default 4)")
    p.add_argument(
        "--experiments", action="store_true", help="write the DVC experiments page instead (dvc.api.exp_show)"
    )
    p.add_argument(
        "--rev", action="append", default=None, help="baseline git revision(s) of the experiments (default HEAD)"
    )
    p.add_argument("--num", type=int, default=1, help="experiments of the last NUM baseline commits (default 1)")


def run(args: argparse.Namespace) -> int:

    if args.experiments:
        try:
            path, table = write_experiments_page(args.out or "experiments.html", ".", args.rev, args.num)
        except Exception as exc:  # dvc raises its own error types (no repo, no git, bad rev)
            print(f"error: dvc experiments could not be read: {exc}")
            return 2
        print(markdown(table))
        print(f"experiments: {path} ({len(table.names)} runs)")
        return 0
    config = argparse.Namespace(examples=args.examples)
    try:
        paths = build_report(args.out or "reports", ReportSources(params=args.params), config)
    except ReportInputError as exc:
        print(f"error: {exc}")
        return 2
    print(f"report: {paths['html']}, {paths['summary']}")
    return 0
