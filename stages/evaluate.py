"""Stage evaluate: score the held-out splits and extra sets, write predictions, metrics and plots."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from deqa.stage import parse_stage_args, set_threads, write_json

LABELS, MODEL, OUT, METRICS = "data/soft_labels", "models/deqa", "data/evaluate", "metrics/evaluate.json"


def main(argv: list[str] | None = None) -> int:
    _, params = parse_stage_args(argv, __doc__)
    set_threads(params.train.threads)
    from deqa.evaluation import evaluation_frames, headline, predict, write_predictions
    from deqa.metrics import evaluate_predictions, write_plot_tables
    from deqa.scoring import Scorer

    cfg = params.evaluate
    frame = evaluation_frames(cfg, LABELS, params.base.seed)
    scorer = Scorer.from_pretrained(MODEL, batch_size=cfg.batch_size,
                                    trust_remote_code=params.model.trust_remote_code)
    predictions = predict(scorer, frame, cfg.batch_size)
    shutil.rmtree(OUT, ignore_errors=True)
    write_predictions(predictions, OUT)
    write_plot_tables(predictions, Path(OUT) / "plots")
    metrics = evaluate_predictions(predictions, bootstrap=cfg.bootstrap, seed=params.base.seed)
    write_json(METRICS, metrics)
    h = headline(metrics)
    print(f"evaluate: {h['split']} n={h['n']} SRCC={h['srcc']} PLCC={h['plcc']} "
          f"std SRCC={h['std_srcc']} entropy={h['entropy']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
