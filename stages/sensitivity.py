"""Stage sensitivity: the distortion-sensitivity set, clean unseen content at rising severities.

Writes ``<out>/images/*.png`` and ``<out>/labels.csv`` (``generic-csv`` layout with the provenance
columns ``content``, ``distortion``, ``severity``; see :mod:`deqa.sensitivity`). Name the label file
in ``evaluate.extra`` to report per-distortion, per-severity monotonicity. Params: ``sensitivity``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's deqa

from deqa.distortions import SyntheticError
from deqa.stage import parse_stage_args


def main(argv: list[str] | None = None) -> int:
    args, params = parse_stage_args(argv, __doc__, out="output folder: labels.csv and images/")
    from deqa.sensitivity import generate_sensitivity_set

    cfg = params.sensitivity
    start = time.perf_counter()
    try:
        labels = generate_sensitivity_set(
            args.out,
            image_size=cfg.image_size,
            scenes_per_kind=cfg.scenes_per_kind,
            severities=cfg.severities,
            distortions=cfg.distortions,
            seed=params.base.seed,
        )
    except SyntheticError as exc:
        raise SystemExit(f"sensitivity: error: {exc}") from None
    n = len(labels.read_text(encoding="utf-8").splitlines()) - 1
    print(f"sensitivity: {n} images -> {labels} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
