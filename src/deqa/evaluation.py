"""The ``evaluate`` stage's logic: score the held-out splits (and extra sets) and measure them.

:func:`evaluation_frames` gathers the rows to score: the ``evaluate.splits`` of
``data/soft_labels/`` and every ``evaluate.extra`` source. An extra set is imported with the same
importers as ``prepare`` and goes through the same validation suite as the training data
(:func:`deqa.validation.validate_manifest`, ``on_error: quarantine``): an absolute or ``..``
path, a missing, empty, truncated or unconvertible image, a bad MOS... is quarantined with its
reason instead of reaching the scorer. Its rows go to the split ``cross`` (cross-dataset,
zero-shot: it never takes part in training), so ``metrics/evaluate.json`` reports it apart from
``test``.

:func:`predict` scores the rows with the same :class:`~deqa.scoring.Scorer` streaming path as
``deqa score``; an image that cannot be read is quarantined with its reason, never a crash. The
predictions follow the contract of :mod:`deqa.schema` (plus the provenance columns ``content``,
``distortion``, ``severity`` where the rows have them). Quarantined rows travel with the frames
in ``frame.attrs["quarantined"]`` (a list of dicts: ``image``, ``root``, ``dataset``, ``split``,
``reasons``); :func:`quarantined` reads them, :func:`write_predictions` writes them to
``quarantine.csv`` and :func:`quarantine_counts` summarises them. The metrics themselves are
:func:`deqa.metrics.evaluate_predictions`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from deqa.config import EvaluateConfig, ValidateConfig
from deqa.labels import normalise
from deqa.metrics import CROSS_SPLIT
from deqa.schema import PREDICTION_COLUMNS, PROB_COLUMNS, PROVENANCE_COLUMNS

log = logging.getLogger(__name__)

QUARANTINE_COLUMNS = ["image", "root", "dataset", "split", "reasons"]


def trained_rater_std(model_dir: str | Path) -> dict | None:
    """The model card's ``training.rater_std`` (:func:`deqa.training.rater_std`): who rated the
    training data with a std; None where the card has no such record."""
    import json

    from deqa.modeling import MODEL_CARD

    card = Path(model_dir) / MODEL_CARD
    return json.loads(card.read_text()).get("training", {}).get("rater_std") if card.exists() else None


def quarantined(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows set aside on the way to ``frame`` (columns :data:`QUARANTINE_COLUMNS`)."""
    return pd.DataFrame(list(frame.attrs.get("quarantined", [])), columns=QUARANTINE_COLUMNS)


def quarantine_counts(frame: pd.DataFrame) -> dict:
    """``{"quarantined": n, "by_dataset": {name: n}}`` for a metrics file or a console line."""
    q = quarantined(frame)
    return {
        "quarantined": len(q),
        "by_dataset": {str(k): int(v) for k, v in q["dataset"].value_counts().sort_index().items()},
    }


def _quarantine_records(rows: pd.DataFrame, reasons: list[str]) -> list[dict]:
    out = []
    for (_, r), why in zip(rows.iterrows(), reasons, strict=False):
        out.append(
            {c: (None if pd.isna(r.get(c)) else str(r.get(c))) for c in QUARANTINE_COLUMNS[:-1]} | {"reasons": why}
        )
    return out


def extra_set(source, seed: int = 0, validate: ValidateConfig | None = None) -> tuple[pd.DataFrame, list[dict]]:
    """One ``evaluate.extra`` source, imported and validated: (kept rows in split ``cross``, quarantine).

    ``validate`` supplies ``min_side``, ``max_pixels`` and ``vote_tolerance`` (default: the
    defaults of ``ValidateConfig``); the rows are always quarantined, never failed, and no split
    or row count is required of an evaluation-only set.
    """
    from deqa.importers import import_source
    from deqa.validation import validate_manifest

    v = validate or ValidateConfig()
    cfg = ValidateConfig(
        on_error="quarantine",
        min_rows=1,
        min_side=v.min_side,
        max_pixels=v.max_pixels,
        vote_tolerance=v.vote_tolerance,
        required_splits=[],
    )
    df = import_source(source, split="test", seed=seed, annotate=True)
    result = validate_manifest(df, cfg, required_splits=[], progress=False)
    kept = result.kept.copy()
    kept["split"] = CROSS_SPLIT
    q = result.quarantined.assign(split=CROSS_SPLIT)
    records = _quarantine_records(q, list(q["reasons"]))
    if records:
        log.warning(
            "evaluate: extra set %s: %d of %d row(s) quarantined, e.g. %s: %s",
            source.name,
            len(records),
            len(df),
            records[0]["image"],
            records[0]["reasons"],
        )
    if len(kept):
        kept["m"], kept["s"] = normalise(kept["mos"], kept["std"], kept["lo"], kept["hi"])
    return kept, records


def evaluation_frames(
    cfg: EvaluateConfig, labels_dir: str | Path, seed: int = 0, validate: ValidateConfig | None = None
) -> pd.DataFrame:
    """The rows to score: the configured splits of the label files plus the validated extra sets.

    Quarantined extra rows are in ``attrs["quarantined"]`` (see :func:`quarantined`).
    ``validate``: the image checks' limits (pass ``params.validate``; default: its defaults).
    """
    frames, dropped = [], []
    for split in cfg.splits:
        path = Path(labels_dir) / f"{split}.csv"
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist; evaluate.splits names a split the labels lack")
        df = pd.read_csv(path)
        if len(df):
            frames.append(df)
    for source in cfg.extra:
        if not source.required and not Path(source.labels).is_file():
            log.warning("evaluate: extra set %s: %s not found; skipped (required: false)", source.name, source.labels)
            continue
        kept, records = extra_set(source, seed, validate)
        dropped += records
        if len(kept):
            frames.append(kept)
    if not frames:
        raise ValueError("nothing to evaluate: the configured splits are empty and no extra set has a usable row")
    frame = pd.concat(frames, ignore_index=True)
    frame.attrs["quarantined"] = dropped
    return frame


def predict(scorer, frame: pd.DataFrame, batch_size: int = 32, progress: bool = True) -> pd.DataFrame:
    """Score every row of ``frame`` (images at ``root/image``); returns the predictions frame.

    Rows whose image cannot be read are left out and added to ``attrs["quarantined"]`` with the
    reason (logged as a warning); the scored rows keep their order.
    """
    from tqdm.auto import tqdm

    from deqa.scoring import ScoreResult

    paths = [str(Path(r) / i) for r, i in zip(frame["root"].astype(str), frame["image"].astype(str), strict=False)]
    scored, results, failed = [], [], {}
    with tqdm(total=len(paths), desc="evaluate", unit="img", disable=not progress) as bar:
        for batch in scorer.iter_score(paths, batch_size=batch_size):
            scored += [batch.start + j for j in batch.ok]
            results.append(batch.result)
            failed.update({batch.start + j: why for j, why in batch.errors.items()})
            bar.update(len(batch.names))
    result = ScoreResult.concat(results)
    out = frame.iloc[scored].copy()
    if "m" not in out or "s" not in out:
        out["m"], out["s"] = normalise(out["mos"], out["std"], out["lo"], out["hi"])
    out["pred_mean"], out["pred_std"] = result.mean, result.std
    for k, col in enumerate(PROB_COLUMNS):
        out[col] = result.probs[:, k]
    bad = sorted(failed)
    records = _quarantine_records(frame.iloc[bad], [f"unreadable image: {failed[i]}" for i in bad])
    for r in records[:20]:
        log.warning("evaluate: %s/%s quarantined: %s", r["root"], r["image"], r["reasons"])
    if len(records) > 20:
        log.warning("evaluate: ... and %d more unreadable image(s) (all in quarantine.csv)", len(records) - 20)
    columns = PREDICTION_COLUMNS + [c for c in PROVENANCE_COLUMNS if c in out.columns]
    predictions = out[columns].reset_index(drop=True)
    predictions.attrs["quarantined"] = list(frame.attrs.get("quarantined", [])) + records
    return predictions


def write_predictions(predictions: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """``predictions.csv`` (all rows), one ``predictions/<dataset>.csv`` per dataset, ``quarantine.csv``."""
    out_dir = Path(out_dir)
    (out_dir / "predictions").mkdir(parents=True, exist_ok=True)
    written = [out_dir / "predictions.csv"]
    predictions.to_csv(written[0], index=False, float_format="%.6g")
    for name, part in predictions.groupby("dataset", sort=True):
        path = out_dir / "predictions" / f"{name}.csv"
        part.to_csv(path, index=False, float_format="%.6g")
        written.append(path)
    quarantined(predictions).to_csv(out_dir / "quarantine.csv", index=False)
    written.append(out_dir / "quarantine.csv")
    return written
