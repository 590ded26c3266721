"""Build the report from a pipeline checkout's outputs and check it in headless Chromium.

    python bench/bench_report.py --base-dir . --out /tmp/deqa-report [--width 1280]

Reads the outputs under ``--base-dir`` (``data/evaluate/``, ``metrics/``, ``data/validate/``,
``dvclive/train/``, ``params.yaml``), writes ``report.html`` and ``summary.md`` into ``--out``
(never into ``reports/`` unless asked), renders the page with :func:`deqa.report.browser.render_check`
and writes ``report.png`` (full-height screenshot) beside it. Prints the build and render times,
the page size, the images decoded and the sections seen; exit 1 when the render check fails, 2
when no Chromium is installed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from deqa.report import SECTIONS, ReportSources, build_report
from deqa.report.browser import find_chromium, render_check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-dir", default=".", help="checkout whose pipeline outputs are read (default .)")
    parser.add_argument("--out", default="/tmp/deqa-report", help="folder for report.html, summary.md, report.png")
    parser.add_argument("--width", type=int, default=1280, help="browser window width in px (default 1280)")
    args = parser.parse_args(argv)
    if find_chromium() is None:
        print("bench_report: no Chromium (apt-get install chromium, or set DEQA_CHROMIUM)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    paths = build_report(args.out, ReportSources(base_dir=Path(args.base_dir)))
    t1 = time.perf_counter()
    check = render_check(paths["html"], Path(args.out) / "report.png", tuple(i for i, _ in SECTIONS), args.width)
    t2 = time.perf_counter()
    size = paths["html"].stat().st_size
    print(f"build: {t1 - t0:.1f} s, {size / 1024:.0f} KiB; render check: {t2 - t1:.1f} s")
    print(f"page: {check.height} px high at {args.width} px; screenshot {check.screenshot} ({check.ink_share:.1%} ink)")
    print(f"images: {len(check.images) - len(check.broken_images)}/{len(check.images)} decoded")
    print(f"sections: {', '.join(check.sections)}")
    print("render check: OK" if check.ok else "render check: FAILED: " + "; ".join(check.problems))
    return 0 if check.ok else 1


if __name__ == "__main__":
    sys.exit(main())
