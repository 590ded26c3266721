"""Stage study_report: the results table of a study, as DVC metrics and a report.

Reads ``--runs`` (the ``study`` stage's output folder, one subfolder per variant of
``study.variants``); writes ``--metrics`` (a DVC metrics folder of result rows: per variant the
mean and the sd of each metric over the splits, and its mean paired difference from ``deqa``),
``--detail`` (also the paired per-split differences and wins) and ``--out``
(``study.md`` and ``study.html``).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's deqa

from deqa.stage import parse_stage_args, write_json


def main(argv: list[str] | None = None) -> int:
    args, params = parse_stage_args(
        argv,
        __doc__,
        runs="the study stage's output folder (one subfolder per variant)",
        metrics="metrics folder: one result row per variant and statistic (docs/metrics.md)",
        detail="JSON file with every result (paired differences included)",
        out="report folder",
    )
    from deqa.study import headline, results_html, results_markdown, summarise

    runs = {}
    for name in params.study.variants:
        path = Path(args.runs) / name / "splits.json"
        if not path.is_file():
            raise SystemExit(f"error: {path} not found (run the study stage of variant {name})")
        runs[name] = json.loads(path.read_text())
    summary = summarise(runs)
    write_json(args.detail, summary)
    shutil.rmtree(args.metrics, ignore_errors=True)
    for name, row in headline(summary).items():
        write_json(Path(args.metrics) / f"{name}.json", {k: v for k, v in row.items() if v is not None})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = results_markdown(summary)
    (out / "study.md").write_text(text)
    (out / "study.html").write_text(results_html(summary))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
