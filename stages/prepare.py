"""Stage ``prepare``: build the canonical manifest from the sources named in ``params.yaml``.

Writes ``data/prepare/manifest.csv`` (schema: :mod:`deqa.schema`) and, for the ``synthetic``
source, its images and KonIQ-layout label file under ``data/prepare/``.
"""

from __future__ import annotations

import sys
import time

from deqa.importers import LabelImportError, load_sources
from deqa.stage import parse_stage_args
from deqa.synthetic import SyntheticError

OUT = "data/prepare"


def main(argv: list[str] | None = None) -> int:
    _, params = parse_stage_args(argv, __doc__)
    cfg = params.prepare
    start = time.perf_counter()
    try:
        manifest = load_sources(cfg.sources, seed=params.base.seed, val_fraction=cfg.val_fraction,
                                test_fraction=cfg.test_fraction, synthetic=cfg.synthetic, out_dir=OUT)
    except (LabelImportError, SyntheticError) as exc:
        raise SystemExit(f"prepare: error: {exc}") from None
    manifest.to_csv(f"{OUT}/manifest.csv", index=False)
    print(f"prepare: {len(manifest)} rows -> {OUT}/manifest.csv ({time.perf_counter() - start:.1f} s)")
    for name, part in manifest.groupby("dataset", sort=False):
        counts = part["split"].value_counts().to_dict()
        print(f"  {name}: " + ", ".join(f"{s}={counts.get(s, 0)}" for s in ("train", "val", "test"))
              + f"; MOS {part['mos'].min():.3f}..{part['mos'].max():.3f} (lo={part['lo'].iloc[0]:.4g},"
              f" hi={part['hi'].iloc[0]:.4g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
