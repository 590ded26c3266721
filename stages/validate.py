"""Stage ``validate``: run the great-expectations suite on the prepared manifest.

Reads ``--manifest`` and the images it names; writes ``--out`` (``manifest.csv`` with the kept
rows, ``quarantine.csv`` with the bad rows and their reasons, ``report.json``) and ``--metrics``.
With ``validate.on_error: fail`` any failed expectation stops the pipeline with a message listing
the failures and example rows (no traceback).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's deqa

import pandas as pd

from deqa.stage import image_roots, parse_stage_args, require_deps
from deqa.validation import summary, validate_manifest, write_outputs


def main(argv: list[str] | None = None) -> int:
    args, params = parse_stage_args(
        argv, __doc__, manifest="manifest CSV to check", out="output folder", metrics="metrics JSON file"
    )
    start = time.perf_counter()
    manifest = pd.read_csv(args.manifest, dtype=str, keep_default_na=False)
    require_deps(image_roots(args.manifest))
    result = validate_manifest(manifest, params.validate, progress=True)
    write_outputs(result, args.out, f"{args.out}/report.json", args.metrics)
    print(summary(result))
    print(f"validate: report -> {args.out}/report.json ({time.perf_counter() - start:.1f} s)")
    if not result.success:
        raise SystemExit(result.message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
