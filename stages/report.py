"""Stage report: ``<out>/report.html`` (self-contained) and ``<out>/summary.md`` from every output.

Every input path is an option named after its :class:`deqa.report.ReportSources` field
(``--predictions``, ``--evaluate-detail``, ...), plus the params file, whose every key the
report shows, and the images of the predictions (thumbnails; their folders must be declared deps).
A missing input becomes a "not available" section rather than an error.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's deqa

from deqa.report import ReportSources, build_report
from deqa.stage import image_roots, parse_stage_args, require_deps

INPUTS = [f.name for f in dataclasses.fields(ReportSources) if f.name not in ("base_dir", "params")]


def main(argv: list[str] | None = None) -> int:
    args, params = parse_stage_args(
        argv, __doc__, out="output folder", **{name: f"input: {name.replace('_', ' ')}" for name in INPUTS}
    )
    require_deps(image_roots(args.predictions))  # thumbnails
    sources = ReportSources(base_dir=Path("."), params=args.params, **{name: getattr(args, name) for name in INPUTS})
    paths = build_report(args.out, sources, params.report)
    print(f"report: {paths['html']} ({paths['html'].stat().st_size / 1024:.0f} KiB), {paths['summary']}")
    print(paths["summary"].read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
