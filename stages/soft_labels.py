"""Stage soft_labels: DeQA-Score level labels for every image of the validated manifest.

Reads ``data/validate/manifest.csv``; writes ``data/soft_labels/{train,val,test}.csv`` (the label
files of :data:`deqa.schema.LABEL_COLUMNS`) and ``metrics/discretisation.json`` (per dataset: how
much of each image's score distribution the labels keep, against one-hot labels). Params:
``soft_labels`` (kind, density, std_min, max_mean_error, renormalise). Paths are relative to the
working directory (the repository root under ``dvc repro``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from deqa.labels import dataset_metrics, label_table, read_manifest
from deqa.schema import SPLITS
from deqa.stage import parse_stage_args, write_json

MANIFEST, OUT, METRICS = "data/validate/manifest.csv", "data/soft_labels", "metrics/discretisation.json"


def main(argv: list[str] | None = None) -> int:
    _, params = parse_stage_args(argv, __doc__)
    config = params.soft_labels
    if not Path(MANIFEST).exists():
        raise SystemExit(f"error: {MANIFEST} not found (run the validate stage first: dvc repro validate)")
    try:
        manifest = read_manifest(MANIFEST)
        table = label_table(manifest, config)
        metrics = dataset_metrics(manifest, config)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    unknown = sorted(set(table["split"]) - set(SPLITS))
    if unknown:
        raise SystemExit(f"error: {MANIFEST}: unknown split(s) {unknown}; expected {', '.join(SPLITS)}")
    out = Path(OUT)
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        table[table["split"] == split].to_csv(out / f"{split}.csv", index=False)
    write_json(METRICS, metrics)
    counts = ", ".join(f"{split} {int((table['split'] == split).sum())}" for split in SPLITS)
    print(f"{config.kind} labels for {len(table)} images ({counts}) -> {OUT}; "
          f"{int(table['fallback'].sum())} binary fallbacks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
