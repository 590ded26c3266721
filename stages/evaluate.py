"""Stage evaluate: score the held-out splits and extra sets, write predictions, metrics and plots.

Writes ``--out`` (predictions), ``--plots`` (the plot tables of ``dvc plots``), ``--detail`` (every
metric; inside ``--out``) and ``--metrics`` (the headline numbers: a DVC metrics folder, one
``<split>.<set>.json`` per set). ``evaluate.extra`` label files and image
folders, the images the label files name and a local base checkpoint must be declared deps of
this stage in ``dvc.yaml``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's deqa

from deqa.stage import (
    checkpoint_inputs,
    image_roots,
    parse_stage_args,
    require_deps,
    set_threads,
    source_inputs,
    write_json,
)


def main(argv: list[str] | None = None) -> int:
    args, params = parse_stage_args(
        argv,
        __doc__,
        labels="folder of the label files",
        model="trained model folder",
        base="base model folder (base_model's output)",
        features="feature store folder (the features stage's output)",
        out="output folder for predictions",
        plots="output folder for the plot tables (dvc plots)",
        detail="JSON file for every metric",
        metrics="metrics folder for the headline numbers (one JSON file per evaluated set)",
    )
    set_threads(params.train.threads)
    cfg = params.evaluate
    require_deps(
        {
            **source_inputs(cfg.extra, "evaluate.extra"),
            **checkpoint_inputs(args.base),
            **image_roots(*(Path(args.labels) / f"{split}.csv" for split in cfg.splits)),
        }
    )
    from deqa.evaluation import evaluation_frames, predict, quarantine_counts, trained_rater_std, write_predictions
    from deqa.metric_tables import (
        evaluate_predictions,
        headline_rows,
        headline_table,
        mark_std_notes,
        std_notes,
        write_headline,
        write_plot_tables,
    )
    from deqa.scoring import Scorer

    frame = evaluation_frames(cfg, args.labels, params.base.seed, validate=params.validate)
    scorer = Scorer.from_pretrained(
        args.model,
        base=args.base,
        batch_size=cfg.batch_size,
        trust_remote_code=params.model.trust_remote_code,
        features=args.features,
    )
    predictions = predict(scorer, frame, cfg.batch_size)
    shutil.rmtree(args.out, ignore_errors=True)
    write_predictions(predictions, args.out)
    shutil.rmtree(args.plots, ignore_errors=True)
    write_plot_tables(predictions, args.plots)
    detail = evaluate_predictions(predictions, bootstrap=cfg.bootstrap, seed=params.base.seed)
    notes = std_notes(predictions, trained_rater_std(args.model), [*params.prepare.sources, *cfg.extra])
    mark_std_notes(detail, notes)
    write_json(args.detail, detail)
    headline = headline_rows(detail)
    write_headline(headline, args.metrics)
    print(headline_table(headline))
    for (split, name), note in notes.items():
        print(f"evaluate: {split}.{name}: {note}")
    q = quarantine_counts(predictions)
    if q["quarantined"]:
        counts = ", ".join(f"{name}: {n}" for name, n in q["by_dataset"].items())
        print(
            f"evaluate: {q['quarantined']} row(s) quarantined ({counts}), reasons in {Path(args.out) / 'quarantine.csv'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
