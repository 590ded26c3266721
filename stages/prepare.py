"""Stage ``prepare``: build the canonical manifest from the sources named in the params.

Writes ``<out>/manifest.csv`` (schema: :mod:`deqa.schema`) and, for the ``synthetic`` source, its
images and KonIQ-layout label file under ``<out>/`` (a ``distorted`` source: under ``<out>/<name>/``). Label files and image folders of the other
sources must be declared deps of this stage in ``dvc.yaml`` (checked before anything is read).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's deqa

from deqa.importers import LabelImportError
from deqa.sources import load_sources
from deqa.stage import parse_stage_args, require_deps, source_inputs
from deqa.synthetic import SyntheticError


def main(argv: list[str] | None = None) -> int:
    args, params = parse_stage_args(argv, __doc__, out="output folder: manifest.csv and generated images")
    cfg = params.prepare
    require_deps(source_inputs(cfg.sources, "prepare.sources"))
    start = time.perf_counter()
    try:
        manifest = load_sources(
            cfg.sources,
            seed=params.base.seed,
            val_fraction=cfg.val_fraction,
            test_fraction=cfg.test_fraction,
            synthetic=cfg.synthetic,
            distorted=cfg.distorted,
            out_dir=args.out,
        )
    except (LabelImportError, SyntheticError) as exc:
        raise SystemExit(f"prepare: error: {exc}") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest.to_csv(out / "manifest.csv", index=False)
    print(f"prepare: {len(manifest)} rows -> {out / 'manifest.csv'} ({time.perf_counter() - start:.1f} s)")
    for name, part in manifest.groupby("dataset", sort=False):
        counts = part["split"].value_counts().to_dict()
        print(
            f"  {name}: "
            + ", ".join(f"{s}={counts.get(s, 0)}" for s in ("train", "val", "test"))
            + f"; MOS {part['mos'].min():.3f}..{part['mos'].max():.3f} (lo={part['lo'].iloc[0]:.4g},"
            f" hi={part['hi'].iloc[0]:.4g})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
