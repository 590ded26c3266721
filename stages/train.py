"""Stage train: DeQA-Score LoRA fine-tuning of the base model on the soft labels."""

from __future__ import annotations

import sys

from deqa.stage import parse_stage_args, set_threads, write_json

LABELS, BASE, OUT, CHECKPOINTS, LIVE = "data/soft_labels", "models/base", "models/deqa", "checkpoints", "dvclive/train"


def main(argv: list[str] | None = None) -> int:
    _, params = parse_stage_args(argv, __doc__)
    set_threads(params.train.threads)
    from deqa.training import train

    summary = train(params, LABELS, BASE, OUT, CHECKPOINTS, LIVE)
    from accelerate import PartialState

    if not PartialState().is_main_process:  # under `accelerate launch`: one writer
        return 0
    last = summary["history"][-1] if summary["history"] else {}
    write_json("metrics/train.json", {"steps": summary["steps"], "trainable_params": summary["trainable_params"],
                                      "val_srcc": last.get("val_srcc"), "val_plcc": last.get("val_plcc")})
    print(f"trained {summary['steps']} steps in {summary['seconds']:.0f} s -> {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
