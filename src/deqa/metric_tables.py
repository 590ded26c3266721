"""The ``evaluate`` stage's tables, built from the pure metrics of :mod:`deqa.metrics`.

- :func:`evaluate_predictions`: the detail, every metric of every evaluated set
  (``{split: {dataset: {...}}}``, written to ``data/evaluate/metrics.json``): :func:`group_metrics`
  plus, for rows with provenance, :func:`provenance_breakdown` and the severity monotonicity;
- :func:`headline_rows`: one flat row per evaluated set (``<split>.<set>``) with the shared keys
  :data:`RESULT_KEYS`, each written by :func:`write_headline` as its own file of the DVC metrics
  folder ``metrics/evaluate/`` (so ``dvc metrics show`` prints one line per set and one column per
  key, whatever the pipeline; ``docs/metrics.md``), and :func:`headline_table` for the console;
- :func:`std_notes` / :func:`mark_std_notes`: where a std correlation is not a result (the model
  learnt no spread of opinions of the raters the set's std comes from), the detail says why and
  the headline row leaves ``std_srcc`` out;
- :func:`plot_tables` / :func:`write_plot_tables`: the data files of the DVC plots.

Everything here is a function of a predictions frame (:data:`deqa.schema.PREDICTION_COLUMNS`) or
of the detail it gives; nothing is kept between calls.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deqa import LEVELS
from deqa.metrics import (
    CROSS_SPLIT,
    OVERALL,
    as_number,
    bootstrap_ci,
    confusion_matrix,
    distribution_gap,
    fit_logistic,
    krcc,
    level_entropy,
    plcc,
    provenance_rows,
    rmse_fitted,
    score_to_level,
    severity_monotonicity,
    srcc,
    std_correlation,
)
from deqa.schema import PROB_COLUMNS, rater_kind

LEVEL_NAMES = tuple(f"{k} {name}" for k, name in enumerate(LEVELS, start=1))
"""Level labels used in plot tables: ``"1 bad"``..``"5 excellent"`` (sort in level order)."""

REQUIRED_COLUMNS = ("dataset", "split", "m", "s", "pred_mean", "pred_std", *PROB_COLUMNS)

RESULT_KEYS = ("n", "srcc", "plcc", "krcc", "rmse", "std_srcc", "kl", "js", "w2", "entropy", "monotonicity")
"""The keys of a result row in any pipeline's DVC metrics (``docs/metrics.md``): one name per
quantity, so that ``dvc metrics show`` at the repository root prints one column per key."""

HEADLINE_KEYS = ("n", "srcc", "plcc", "krcc", "rmse", "std_srcc", "kl", "monotonicity")
"""The keys of an evaluated set's headline row (``metrics/evaluate/<split>.<set>.json``)."""

HEADLINE_ROUND = 4
"""Decimals of the headline rows: enough for a 0.02 quality margin, short in ``dvc metrics show``."""


def _check_frame(df: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"predictions are missing column(s) {', '.join(missing)} (see deqa.schema.PREDICTION_COLUMNS)")
    if (df["dataset"].astype(str) == OVERALL).any():
        raise ValueError(f"a dataset may not be named {OVERALL!r}: it is the all-datasets key")


def group_metrics(df: pd.DataFrame, bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """All metrics of one group of predictions (one split, one dataset or all of them).

    Keys: ``n``, ``srcc`` (+ ``srcc_lo``/``srcc_hi``, the bootstrap 95 % interval), ``krcc``,
    ``plcc`` (after the logistic fit; + ``plcc_lo``/``plcc_hi``), ``plcc_plain``, ``rmse`` (after
    the fit), ``logistic_ok``, ``kl``/``js``/``w2`` (mean Gaussian gap) with ``n_gap`` images,
    ``std_srcc``/``std_plcc`` (predicted vs ground-truth std), ``entropy`` (mean entropy of the
    predicted levels, nats), ``level_acc`` (diagonal share of the confusion matrix) and
    ``confusion`` (5×5 list, rows ground truth, columns prediction, levels bad..excellent).
    Rows without ``m`` or ``pred_mean`` are dropped; ``bootstrap=0`` skips the intervals.
    """
    df = df[np.isfinite(df["m"].astype(float)) & np.isfinite(df["pred_mean"].astype(float))]
    x = df["pred_mean"].to_numpy(float)
    y = df["m"].to_numpy(float)
    fit = fit_logistic(x, y)
    out: dict[str, Any] = {"n": len(df)}
    out["srcc"] = as_number(srcc(x, y))
    out["krcc"] = as_number(krcc(x, y))
    out["plcc"] = as_number(plcc(fit.predict(x), y))
    out["plcc_plain"] = as_number(plcc(x, y))
    out["rmse"] = as_number(rmse_fitted(x, y, fit))
    out["logistic_ok"] = bool(fit.ok)
    for stat, values in (("srcc", x), ("plcc", fit.predict(x))):
        lo, hi = (None, None)
        if bootstrap > 0:
            lo, hi = bootstrap_ci(values, y, stat, n_resamples=bootstrap, seed=seed)
        out[f"{stat}_lo"], out[f"{stat}_hi"] = as_number(lo), as_number(hi)
    gap = distribution_gap(y, df["s"].to_numpy(float), x, df["pred_std"].to_numpy(float))
    out["n_gap"] = gap.pop("n")
    out.update({k: as_number(v) for k, v in gap.items()})
    out["std_srcc"] = as_number(std_correlation(df["s"], df["pred_std"], "srcc"))
    out["std_plcc"] = as_number(std_correlation(df["s"], df["pred_std"], "plcc"))
    probs = df[PROB_COLUMNS].to_numpy(float)
    out["entropy"] = as_number(level_entropy(probs).mean()) if len(df) else None
    cm = confusion_matrix(score_to_level(y), score_to_level(x))
    out["level_acc"] = as_number(np.trace(cm) / cm.sum()) if cm.sum() else None
    out["confusion"] = cm.tolist()
    return out


def _cell(part: pd.DataFrame) -> dict[str, Any]:
    """Small-group numbers of a breakdown: n, mean m, mean μ, bias, MAE, SRCC and plain PLCC."""
    m, mu = part["m"].to_numpy(float), part["pred_mean"].to_numpy(float)
    both = np.isfinite(m) & np.isfinite(mu)
    err = mu[both] - m[both]
    return {
        "n": len(part),
        "mean_m": as_number(np.mean(m[both])) if both.any() else None,
        "mean_pred": as_number(np.nanmean(mu)) if np.isfinite(mu).any() else None,
        "bias": as_number(err.mean()) if err.size else None,
        "mae": as_number(np.abs(err).mean()) if err.size else None,
        "srcc": as_number(srcc(mu, m)),
        "plcc": as_number(plcc(mu, m)),
    }


def provenance_breakdown(df: pd.DataFrame) -> dict[str, Any]:
    """Per-distortion, per-severity and per (distortion, severity) numbers of :func:`_cell`.

    ``by_distortion`` ({name: cell}, ``pristine`` included), ``by_severity`` ({"0": cell, "1":
    ...}) and ``by_distortion_severity`` ({name: {"1": cell, ...}}); empty dict when the rows
    carry no provenance (:data:`deqa.schema.PROVENANCE_COLUMNS`).
    """
    rows = provenance_rows(df)
    if rows.empty:
        return {}
    out: dict[str, Any] = {"by_distortion": {}, "by_severity": {}, "by_distortion_severity": {}}
    for name, part in rows.groupby("distortion", sort=True):
        out["by_distortion"][name] = _cell(part)
        out["by_distortion_severity"][name] = {str(s): _cell(p) for s, p in part.groupby("severity", sort=True)}
    for severity, part in rows.groupby("severity", sort=True):
        out["by_severity"][str(severity)] = _cell(part)
    return out


def set_metrics(df: pd.DataFrame, bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """:func:`group_metrics` plus, for rows with provenance, the breakdowns and ``monotonicity``."""
    out = group_metrics(df, bootstrap, seed)
    breakdown = provenance_breakdown(df)
    if breakdown:
        out.update(breakdown)
        out["monotonicity"] = severity_monotonicity(df)
    return out


def evaluate_predictions(df: pd.DataFrame, bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The detail metrics of every evaluated set: ``{split: {dataset: {...}}}``.

    ``df`` follows :data:`deqa.schema.PREDICTION_COLUMNS` (with optional provenance columns).
    Each set is :func:`set_metrics` with ``bootstrap`` resamples seeded by ``seed``; a split with
    two or more datasets also gets ``overall`` (all its rows; with one dataset it would repeat it),
    except the cross-dataset split ``cross``, whose sets are unrelated tests (LIVE-C next to a
    sensitivity set with nominal MOS) that pooled numbers would only blur.
    Splits and datasets in sorted order; JSON-ready (no NaN) for :func:`deqa.stage.write_json`.
    """
    _check_frame(df)
    out: dict[str, Any] = {}
    for split in sorted(df["split"].astype(str).unique()):
        part = df[df["split"].astype(str) == split]
        datasets = sorted(part["dataset"].astype(str).unique())
        pooled = len(datasets) > 1 and split != CROSS_SPLIT
        block = {OVERALL: set_metrics(part, bootstrap, seed)} if pooled else {}
        for dataset in datasets:
            block[dataset] = set_metrics(part[part["dataset"].astype(str) == dataset], bootstrap, seed)
        out[split] = block
    return out


def headline_rows(detail: dict[str, Any], leave_out: tuple[str, ...] = ("val",)) -> dict[str, dict[str, Any]]:
    """One flat row per evaluated set of :func:`evaluate_predictions`'s detail: ``{"<split>.<set>": {...}}``.

    A row holds :data:`HEADLINE_KEYS`: ``n`` images, SRCC, fitted PLCC, KRCC, fitted RMSE,
    predicted-vs-ground-truth std SRCC, Gaussian KL and, for sets with provenance,
    ``monotonicity`` (the mean of :func:`deqa.metrics.severity_monotonicity`), but no std SRCC
    where the detail carries a ``std_note`` (:func:`mark_std_notes`); floats rounded to
    :data:`HEADLINE_ROUND` decimals, undefined values left out. The ``leave_out`` splits are
    skipped unless nothing else was evaluated: ``val`` picks the checkpoint (its numbers are
    optimistic, and ``metrics/train.json`` already holds its SRCC/PLCC).
    """
    splits = [s for s in detail if s not in leave_out] or list(detail)
    rows: dict[str, dict[str, Any]] = {}
    for split in splits:
        for name, group in detail[split].items():
            values = {k: group.get(k) for k in HEADLINE_KEYS}
            if group.get("std_note"):  # not a result (std_notes): the row does not present it
                values["std_srcc"] = None
            values["monotonicity"] = (group.get("monotonicity") or {}).get("mean")
            rows[f"{split}.{name}"] = {
                k: (int(v) if k == "n" else round(float(v), HEADLINE_ROUND)) for k, v in values.items() if v is not None
            }
    return rows


def std_notes(
    predictions: pd.DataFrame, rater_std: dict[str, dict[str, Any]] | None, sources: Any = ()
) -> dict[tuple[str, str], str]:
    """Why an evaluated set's std SRCC is not a result: ``{(split, set): reason}``.

    ``rater_std`` is the model card's ``training.rater_std`` (:func:`deqa.training.rater_std`): per
    training dataset, how many rows carried a raters' std and who the raters were. A set's std
    correlation measures a learnt spread of opinions only if the model saw the std of the same
    kind of raters (:func:`deqa.schema.rater_kind`) as the set's: a model trained on MOS only
    (BIQ2021) learnt none, one trained on simulated panels learnt no spread of people's opinions.
    ``sources`` (prepare's and evaluate.extra's source configs) name the evaluated datasets' kinds
    (a dataset no source names counts as human-rated). Sets without any std get no note (their
    std SRCC is undefined anyway). ``rater_std`` None (a model card from before the record) gives
    no notes: nothing is known.
    """
    if rater_std is None:
        return {}
    kinds = {src.name: rater_kind(src.format) for src in sources}
    learnt = {str(r.get("raters") or kinds.get(n, "human")) for n, r in rater_std.items() if r.get("with_std")}
    taught = sorted(n for n, r in rater_std.items() if r.get("with_std"))
    notes: dict[tuple[str, str], str] = {}
    for split, part in predictions.groupby("split", sort=True):
        rated = part.loc[np.isfinite(part["s"].to_numpy(float)), "dataset"].astype(str).unique()
        seen = {name: {kinds.get(name, "human")} for name in rated}
        if part["dataset"].nunique() > 1 and split != CROSS_SPLIT:  # pooled, as evaluate_predictions
            seen[OVERALL] = set().union(*seen.values()) if seen else set()
        for name, kind in seen.items():
            missing = sorted(kind - learnt)
            if not missing:
                continue
            if not learnt:
                why = "its training data had no raters' std, so it learnt no spread of opinions"
            else:
                why = (
                    f"it learnt the raters' spread from {' and '.join(sorted(learnt))} raters only "
                    f"({', '.join(taught)}), and this set's std comes from {' and '.join(missing)} raters"
                )
            notes[(str(split), name)] = f"the predicted std is not a result here: {why}"
    return notes


def mark_std_notes(detail: dict[str, Any], notes: dict[tuple[str, str], str]) -> dict[str, Any]:
    """Put each of :func:`std_notes` into its set of ``detail`` as ``std_note`` (in place; returned)."""
    for (split, name), note in notes.items():
        if name in detail.get(split, {}):
            detail[split][name]["std_note"] = note
    return detail


def write_headline(rows: dict[str, dict[str, Any]], folder: str | Path) -> list[Path]:
    """Write each of :func:`headline_rows` as ``<folder>/<split>.<set>.json`` (the folder is
    emptied first, so a set no longer evaluated leaves no file behind)."""
    folder = Path(folder)
    for stale in folder.glob("*.json") if folder.is_dir() else []:
        stale.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, row in rows.items():
        if Path(name).name != name or name.startswith("."):
            raise ValueError(f"write_headline: {name!r} is not a file name")
        path = folder / f"{name}.json"
        path.write_text(json.dumps(row, indent=2, sort_keys=True, allow_nan=False) + "\n")
        paths.append(path)
    return paths


def headline_table(rows: dict[str, dict[str, Any]]) -> str:
    """The headline rows as a fixed-width text table (one line per set), for a console."""
    keys = [k for k in HEADLINE_KEYS if any(k in row for row in rows.values())]
    lines = ["set".ljust(28) + "".join(k.rjust(13) for k in keys)]
    for name, row in rows.items():
        cells = "".join(("-" if k not in row else str(row[k]) if k == "n" else f"{row[k]:.4f}").rjust(13) for k in keys)
        lines.append(name.ljust(28) + cells)
    return "\n".join(lines)


# ---- plot tables -----------------------------------------------------------------------------
def default_plot_split(df: pd.DataFrame) -> str | None:
    """The split the plot tables show: ``test`` if present, else ``val``, else all rows (None)."""
    present = set(df["split"].astype(str))
    for split in ("test", "val"):
        if split in present:
            return split
    return None


def _file_stem(name: str) -> str:
    """A dataset name as a safe file stem (letters, digits, ``_``, ``-``, ``.``)."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("._")
    return stem or "dataset"


def plot_tables(df: pd.DataFrame, split: str | None = "auto") -> dict[str, pd.DataFrame]:
    """Data files of the DVC plots, keyed by path under ``data/evaluate/plots`` without ``.csv``.

    - ``scatter/<dataset>``: one table per dataset (one DVC scatter plot each), one row per
      image, columns ``dataset``, ``split``, ``image``, ``mos``, ``m``, ``pred_mean``, ``s``,
      ``pred_std`` (plotted: x ``m``, y ``pred_mean``). Dataset names are made file-safe.
    - ``confusion``: one row per image of every dataset, columns ``dataset``, ``split``,
      ``actual``, ``predicted`` with level labels ``"1 bad"``..``"5 excellent"`` (DVC's
      ``confusion`` template counts them; levels as in :func:`score_to_level`).

    ``split="auto"`` keeps the rows of :func:`default_plot_split`; ``None`` keeps every row; any
    other value keeps that split (a split with no rows raises ``ValueError``).
    """
    columns = ["dataset", "split", "image", "mos", "m", "s", "pred_mean", "pred_std"]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"predictions are missing column(s) {', '.join(missing)}")
    if split == "auto":
        split = default_plot_split(df)
    if split is not None:
        df = df[df["split"].astype(str) == split]
        if df.empty:
            raise ValueError(f"plot_tables: no predictions for split {split!r}")
    df = df[np.isfinite(df["m"].astype(float)) & np.isfinite(df["pred_mean"].astype(float))]
    df = df.sort_values(["dataset", "image"], kind="stable")
    out: dict[str, pd.DataFrame] = {}
    scatter = df[["dataset", "split", "image", "mos", "m", "pred_mean", "s", "pred_std"]]
    for dataset, part in scatter.groupby(scatter["dataset"].astype(str), sort=True):
        key = f"scatter/{_file_stem(dataset)}"
        if key in out:
            raise ValueError(f"plot_tables: datasets {dataset!r} and another map to the same file {key}.csv")
        out[key] = part.reset_index(drop=True)
    names = np.asarray(LEVEL_NAMES)
    out["confusion"] = pd.DataFrame(
        {
            "dataset": df["dataset"].to_numpy(),
            "split": df["split"].to_numpy(),
            "actual": names[score_to_level(df["m"].to_numpy(float)) - 1],
            "predicted": names[score_to_level(df["pred_mean"].to_numpy(float)) - 1],
        }
    )
    return out


def write_plot_tables(
    df: pd.DataFrame, out_dir: str | Path = "data/evaluate/plots", split: str | None = "auto"
) -> list[Path]:
    """Write :func:`plot_tables` as ``<out_dir>/<key>.csv`` (the files ``dvc.yaml`` plots)."""
    paths = []
    for key, table in plot_tables(df, split).items():
        path = Path(out_dir) / f"{key}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(path, index=False)
        paths.append(path)
    return paths
