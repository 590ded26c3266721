"""Stage study: train and score one variant of a study on every seeded split.

Reads ``--manifest`` (the validated manifest of the study's dataset), ``--base`` and
``--features`` (the frozen tower's outputs); writes ``--out``: ``splits.json`` (the held-out
metrics of every split) and ``predictions.csv`` (the held-out rows of every split). The variant
is ``--variant``, one name of ``study.variants``. Params: ``study`` and what training reads.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's deqa

from deqa.stage import checkpoint_inputs, image_roots, parse_stage_args, require_deps, set_threads


def main(argv: list[str] | None = None) -> int:
    args, params = parse_stage_args(
        argv,
        __doc__,
        variant="the study.variants name to run",
        manifest="validated manifest CSV",
        base="base model folder (base_model's output)",
        features="feature store folder (the features stage's output)",
        out="output folder of this variant",
    )
    set_threads(params.train.threads)
    variants = params.study.variants
    if args.variant not in variants:
        raise SystemExit(f"error: --variant {args.variant!r} is not in study.variants ({', '.join(variants)})")
    require_deps({**checkpoint_inputs(args.base), **image_roots(args.manifest)})
    from deqa.labels import read_manifest
    from deqa.study import run_variant

    records, predictions = run_variant(params, args.variant, read_manifest(args.manifest), args.base, args.features)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "splits.json").write_text(json.dumps(records, indent=1) + "\n")
    predictions.to_csv(out / "predictions.csv", index=False, float_format="%.6g")
    print(f"study {args.variant}: {len(records)} splits -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
