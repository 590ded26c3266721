"""Stage base_model: build the embedded default model, or check and record a local checkpoint."""

from __future__ import annotations

import sys

from deqa.basemodel import prepare_base
from deqa.stage import parse_stage_args, set_threads

OUT = "models/base"


def main(argv: list[str] | None = None) -> int:
    _, params = parse_stage_args(argv, __doc__)
    set_threads(params.train.threads)
    try:
        info = prepare_base(params.model, params.base.seed, OUT)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"base model: {info['kind']} -> {OUT} ({info['parameters']:,} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
