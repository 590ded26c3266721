"""Stage soft_labels: DeQA-Score level labels for every image of the validated manifest.

Reads ``--manifest``; writes ``<out>/{train,val,test}.csv`` (the label files of
:data:`deqa.schema.LABEL_COLUMNS`) and ``--metrics`` (per dataset: how much of each image's score
distribution the labels keep, against one-hot labels). Params: ``soft_labels``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's deqa

from deqa.labels import dataset_metrics, label_table, read_manifest
from deqa.schema import SPLITS
from deqa.stage import parse_stage_args, write_json


def main(argv: list[str] | None = None) -> int:
    args, params = parse_stage_args(
        argv,
        __doc__,
        manifest="validated manifest CSV",
        out="output folder for the label files",
        metrics="metrics JSON file",
    )
    config = params.soft_labels
    if not Path(args.manifest).exists():
        raise SystemExit(f"error: {args.manifest} not found (run the validate stage first)")
    try:
        manifest = read_manifest(args.manifest)
        table = label_table(manifest, config)
        metrics = dataset_metrics(manifest, config)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    unknown = sorted(set(table["split"]) - set(SPLITS))
    if unknown:
        raise SystemExit(f"error: {args.manifest}: unknown split(s) {unknown}; expected {', '.join(SPLITS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        table[table["split"] == split].to_csv(out / f"{split}.csv", index=False)
    write_json(args.metrics, metrics)
    counts = ", ".join(f"{split} {int((table['split'] == split).sum())}" for split in SPLITS)
    print(
        f"{config.kind} labels for {len(table)} images ({counts}) -> {out}; "
        f"{int(table['fallback'].sum())} binary fallbacks"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
