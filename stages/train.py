"""Stage train: DeQA-Score LoRA fine-tuning of the base model on the soft labels.

The frozen tower's outputs come from ``--features`` (the features stage's store), so no image is
decoded and the tower never runs (a store that is off or does not match the model: it runs).

``--checkpoints`` is a private resume cache (git- and DVC-ignored, not a DVC output), so DVC's
run-cache stays on. The images the label files name and a local base checkpoint must be
declared deps of this stage in ``dvc.yaml``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's deqa

from deqa.stage import (
    checkpoint_inputs,
    image_roots,
    parse_stage_args,
    require_deps,
    set_threads,
    write_json,
)


def main(argv: list[str] | None = None) -> int:
    args, params = parse_stage_args(
        argv,
        __doc__,
        labels="folder of the label files",
        base="base model folder (base_model's output)",
        features="feature store folder (the features stage's output)",
        out="output folder for the trained model",
        checkpoints="resume cache folder (not a DVC output)",
        live="dvclive folder for the training curves",
        metrics="metrics JSON file",
    )
    set_threads(params.train.threads)
    require_deps(
        {**image_roots(Path(args.labels) / "train.csv", Path(args.labels) / "val.csv"), **checkpoint_inputs(args.base)}
    )
    from deqa.distributed import LaunchError
    from deqa.training import train

    try:
        summary = train(params, args.labels, args.base, args.out, args.checkpoints, args.live, features=args.features)
    except LaunchError as exc:  # several processes asked for, one started (docs/distributed.md)
        raise SystemExit(f"error: {exc}") from None
    from accelerate import PartialState

    if not PartialState().is_main_process:  # on N processes (deqa launch, torchrun): one writer
        return 0
    sel = summary["selected"]
    write_json(
        args.metrics,
        {
            "steps": summary["steps"],
            "trainable_params": summary["trainable_params"],
            "val_srcc": sel["val_srcc"],
            "val_plcc": sel["val_plcc"],
            "selected": {"select": sel["select"], "epoch": sel["epoch"], "step": sel["step"]},
        },
    )
    print(
        f"trained {summary['steps']} steps in {summary['seconds']:.0f} s -> {args.out} "
        f"({sel['select']}: epoch {sel['epoch']}, step {sel['step']}, val SRCC {sel['val_srcc']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
