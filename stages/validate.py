"""Stage ``validate``: run the great-expectations suite on the prepared manifest.

Reads ``data/prepare/manifest.csv``; writes ``data/validate/`` (``manifest.csv`` with the kept
rows, ``quarantine.csv`` with the bad rows and their reasons, ``report.json``) and
``metrics/validate.json``. With ``validate.on_error: fail`` any failed expectation stops the
pipeline with a message listing the failures and example rows (no traceback).
"""

from __future__ import annotations

import sys
import time

import pandas as pd

from deqa.stage import parse_stage_args
from deqa.validation import summary, validate_manifest, write_outputs

IN = "data/prepare/manifest.csv"
OUT = "data/validate"


def main(argv: list[str] | None = None) -> int:
    _, params = parse_stage_args(argv, __doc__)
    start = time.perf_counter()
    manifest = pd.read_csv(IN, dtype=str, keep_default_na=False)
    result = validate_manifest(manifest, params.validate, progress=True)
    write_outputs(result, OUT, f"{OUT}/report.json", "metrics/validate.json")
    print(summary(result))
    print(f"validate: report -> {OUT}/report.json ({time.perf_counter() - start:.1f} s)")
    if not result.success:
        raise SystemExit(result.message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
