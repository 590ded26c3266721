"""Stage base_model: build the embedded default model, or check and record a local checkpoint.

A local checkpoint (``model.base: /path``) must be a declared dep of this stage in ``dvc.yaml``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's deqa

from deqa.basemodel import prepare_base
from deqa.stage import parse_stage_args, require_deps, set_threads


def main(argv: list[str] | None = None) -> int:
    args, params = parse_stage_args(argv, __doc__, out="output folder for the base model")
    set_threads(params.train.threads)
    if params.model.base != "tiny":
        require_deps({"model.base": params.model.base})
    try:
        info = prepare_base(params.model, params.base.seed, args.out)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"base model: {info['kind']} -> {args.out} ({info['parameters']:,} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
