"""Stage features: the frozen vision tower's output for every image, computed once.

Reads ``--manifest`` (the validated manifest: every split) and the ``evaluate.extra`` sets, and
the base model ``--base``; writes the store to ``--out`` (:mod:`deqa.features`), which ``train``
and ``evaluate`` read so that no later stage runs the tower or decodes an image again. The
``evaluate.extra`` label files and image folders, and the manifest's image folders, must be
declared deps of this stage in ``dvc.yaml``. ``--cache`` is a private cache of per-image entries
(git- and DVC-ignored, like train's checkpoints): a base model with the same tower and processor
reuses them instead of running the tower again.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's deqa

from deqa.stage import checkpoint_inputs, image_roots, parse_stage_args, require_deps, set_threads, source_inputs


def main(argv: list[str] | None = None) -> int:
    args, params = parse_stage_args(
        argv,
        __doc__,
        manifest="validated manifest CSV",
        base="base model folder (base_model's output)",
        out="output folder for the feature store",
        cache="entry cache folder of earlier runs (not a DVC output)",
    )
    set_threads(params.train.threads)
    require_deps(
        {
            **source_inputs(params.evaluate.extra, "evaluate.extra"),
            **checkpoint_inputs(args.base),
            **image_roots(args.manifest),
        }
    )
    from deqa.feature_stage import build_store, stage_images

    images = stage_images(args.manifest, params.evaluate.extra, params.base.seed)
    store = build_store(params, images, args.base, cache_dir=args.cache)
    shutil.rmtree(args.out, ignore_errors=True)
    store.save(args.out)
    what = f"{len(store)} images" if store.enabled else f"nothing ({store.reason})"
    print(f"vision features of {what} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
