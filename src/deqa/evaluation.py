"""The ``evaluate`` stage's logic: score the held-out splits (and extra sets) and measure them.

:func:`predict` scores a manifest-like frame (``image``, ``root``, ``dataset``, ``split``,
``mos``, ``std``, ``lo``, ``hi``) with a :class:`~deqa.scoring.Scorer` and returns the
predictions contract of :mod:`deqa.schema`. :func:`evaluation_frames` gathers the frames: the
``evaluate.splits`` of ``data/soft_labels/`` and every ``evaluate.extra`` source, imported with
the same importers as ``prepare``; all its rows go to the split ``cross`` (cross-dataset, zero-shot:
it never takes part in training), so ``metrics/evaluate.json`` reports it apart from ``test``.
The metrics themselves are :func:`deqa.metrics.evaluate_predictions`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from deqa.config import EvaluateConfig
from deqa.labels import normalise
from deqa.schema import PREDICTION_COLUMNS, PROB_COLUMNS

CROSS_SPLIT = "cross"


def evaluation_frames(cfg: EvaluateConfig, labels_dir: str | Path, seed: int = 0) -> pd.DataFrame:
    """The rows to score: the configured splits of the label files plus the extra sources."""
    frames = []
    for split in cfg.splits:
        path = Path(labels_dir) / f"{split}.csv"
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist; evaluate.splits names a split the labels lack")
        df = pd.read_csv(path)
        if len(df):
            frames.append(df)
    for source in cfg.extra:
        from deqa.importers import import_labels

        if not source.required and not Path(source.labels).is_file():
            print(f"evaluate: extra set {source.name}: {source.labels} not found; skipped (required: false)")
            continue
        df = import_labels(source.labels, source.format, root=source.root, name=source.name, lo=source.lo,
                           hi=source.hi, split="test", seed=seed)
        df["split"] = CROSS_SPLIT
        df["m"], df["s"] = normalise(df["mos"], df["std"], df["lo"], df["hi"])
        frames.append(df)
    if not frames:
        raise ValueError("nothing to evaluate: the configured splits are empty and no extra sets are given")
    return pd.concat(frames, ignore_index=True)


def predict(scorer, frame: pd.DataFrame, batch_size: int = 32, progress: bool = True) -> pd.DataFrame:
    """Score every row of ``frame`` (images at ``root/image``); returns the predictions frame."""
    paths = [str(Path(r) / i) for r, i in zip(frame["root"].astype(str), frame["image"].astype(str))]
    result = scorer.score(paths, batch_size=batch_size, progress=progress)
    out = frame.copy()
    if "m" not in out or "s" not in out:
        out["m"], out["s"] = normalise(out["mos"], out["std"], out["lo"], out["hi"])
    out["pred_mean"], out["pred_std"] = result.mean, result.std
    out[PROB_COLUMNS] = result.probs
    return out[PREDICTION_COLUMNS].reset_index(drop=True)


def write_predictions(predictions: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """``predictions.csv`` (all rows) plus one ``predictions/<dataset>.csv`` per dataset."""
    out_dir = Path(out_dir)
    (out_dir / "predictions").mkdir(parents=True, exist_ok=True)
    written = [out_dir / "predictions.csv"]
    predictions.to_csv(written[0], index=False, float_format="%.6g")
    for name, part in predictions.groupby("dataset", sort=True):
        path = out_dir / "predictions" / f"{name}.csv"
        part.to_csv(path, index=False, float_format="%.6g")
        written.append(path)
    return written


def headline(metrics: dict) -> dict[str, float | None]:
    """The few numbers a console summary shows: test (else val) overall SRCC/PLCC."""
    split = "test" if "test" in metrics else next(iter(metrics), None)
    block = metrics.get(split, {}).get("overall", {}) if split else {}
    return {"split": split, **{k: block.get(k) for k in ("n", "srcc", "plcc", "std_srcc", "entropy")}}

