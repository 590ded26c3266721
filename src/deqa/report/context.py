"""From the loaded inputs to what the templates show: sets, cards, tables, examples, figures.

The templates only lay out and format; every choice of *what* to show is made here, in plain
Python that the tests call directly.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deqa.config import flat_keys
from deqa.metrics import OVERALL
from deqa.report import figures
from deqa.report.inputs import LABEL_KEY, EvalSet, Loaded, Predictions, ReportSources
from deqa.report.provenance import Provenance
from deqa.schema import PROB_COLUMNS

SPLIT_NOTES = {
    "test": "held out: content never seen in training",
    "cross": "cross-dataset, zero-shot: a data set never used in training",
    "val": "validation: used to pick the checkpoint, so optimistic",
}

KEY_PARAMS = (
    "model.base",
    "soft_labels.kind",
    "soft_labels.density",
    "train.epochs",
    "train.lr",
    "loss.kl_weight",
    "loss.fidelity_weight",
    "base.seed",
)


@dataclass
class ReportData:
    """Every input, loaded by :func:`deqa.report.collect`."""

    sources: ReportSources
    evaluate: Loaded[list[EvalSet]] = field(default_factory=Loaded)
    predictions: Loaded[Predictions] = field(default_factory=Loaded)
    discretisation: Loaded = field(default_factory=Loaded)
    validate_report: Loaded = field(default_factory=Loaded)
    validate_metrics: Loaded = field(default_factory=Loaded)
    manifest: Loaded = field(default_factory=Loaded)
    soft_labels: Loaded = field(default_factory=Loaded)
    train: Loaded = field(default_factory=Loaded)
    curves: Loaded = field(default_factory=Loaded)
    params: Loaded = field(default_factory=Loaded)
    provenance: Provenance | None = None

    def missing(self) -> list[str]:
        """The reasons of every input that is not available."""
        names = ("evaluate", "predictions", "discretisation", "validate_report", "validate_metrics", "manifest")
        names += ("soft_labels", "train", "curves", "params")
        return [getattr(self, n).missing for n in names if not getattr(self, n).ok]


# ---- sets -----------------------------------------------------------------------------------------
def card_sets(sets: list[EvalSet]) -> list[EvalSet]:
    """The sets that get headline cards: every evaluated set except validation and training
    (all sets when only those exist)."""
    chosen = [s for s in sets if s.split not in ("val", "train")]
    return chosen or list(sets)


def breakdown_sets(sets: list[EvalSet]) -> list[EvalSet]:
    """The sets that get a per-distortion / per-severity breakdown: every set with provenance,
    except an ``overall`` whose provenance rows all come from one dataset of its split (its
    breakdown would repeat that dataset's, row for row)."""
    with_rows = [s for s in sets if s.has_breakdown]
    out = []
    for s in with_rows:
        others = [o for o in with_rows if o.split == s.split and o.name != OVERALL]
        if s.name == OVERALL and len(others) == 1:
            continue
        out.append(s)
    return out


def split_note(split: str) -> str:
    return SPLIT_NOTES.get(split, "evaluation set")


def verdict(value: float | None) -> str:
    """A rough word for a correlation: excellent ≥ 0.9, good ≥ 0.8, moderate ≥ 0.6, else weak."""
    if value is None:
        return "undefined"
    for bound, word in ((0.9, "excellent"), (0.8, "good"), (0.6, "moderate")):
        if value >= bound:
            return word
    return "weak"


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _interval(s: EvalSet, key: str) -> str:
    lo, hi = getattr(s, f"{key}_lo"), getattr(s, f"{key}_hi")
    point = _num(getattr(s, key))
    return point if lo is None or hi is None else f"{point} [{_num(lo)}, {_num(hi)}]"


def set_sentence(s: EvalSet) -> str:
    """One plain sentence about one set (the glance list and the summary)."""
    if s.srcc is None and s.monotonicity is not None:
        return f"{s.key} ({s.n:,} images): score falls with severity, monotonicity {_num(s.monotonicity.mean)}."
    text = (
        f"{s.key} ({s.n:,} images, {split_note(s.split)}): SRCC {_interval(s, 'srcc')}, "
        f"{verdict(s.srcc)} agreement with the raters; PLCC {_interval(s, 'plcc')}, RMSE {_num(s.rmse)}"
    )
    if s.std_note:
        text += f"; {s.std_note}"
    elif s.std_srcc is not None:
        text += f"; predicted std vs raters' std SRCC {_num(s.std_srcc)}"
    if s.monotonicity is not None and s.monotonicity.mean is not None:
        text += f"; monotonicity in severity {_num(s.monotonicity.mean)}"
    worst = weakest_distortion(s)
    if worst is not None:
        text += f"; weakest distortion {worst[0]} (SRCC {_num(worst[1])})"
    return text + "."


def weakest_distortion(s: EvalSet) -> tuple[str, float] | None:
    """The distortion (not pristine) with the lowest within-distortion SRCC, if any."""
    scored = [(k, c.srcc) for k, c in s.by_distortion.items() if k != "pristine" and c.srcc is not None]
    return min(scored, key=lambda kv: kv[1]) if scored else None


def glance_sentences(data: ReportData) -> list[str]:
    if not data.evaluate.ok:
        return [f"No evaluation metrics: {data.evaluate.missing}."]
    return [set_sentence(s) for s in card_sets(data.evaluate.value)]


def key_params(params: dict[str, Any] | None) -> list[tuple[str, Any]]:
    flat = flat_keys(params or {})
    return [(k, flat[k]) for k in KEY_PARAMS if k in flat]


def params_rows(params: dict[str, Any]) -> list[tuple[str, str]]:
    """Every params key with its value (lists as JSON), in file order."""
    return [(k, v if isinstance(v, str) else json.dumps(v, default=str)) for k, v in flat_keys(params).items()]


# ---- tables ---------------------------------------------------------------------------------------
def manifest_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Per split and dataset of the validated manifest: images, MOS range, rows with a std, bounds."""
    order = {"train": 0, "val": 1, "test": 2}
    rows = []
    groups = df.groupby([df["split"].astype(str), df["dataset"].astype(str)], sort=True)
    for (split, dataset), part in sorted(groups, key=lambda g: (order.get(g[0][0], 9), g[0])):
        mos = pd.to_numeric(part["mos"], errors="coerce")
        std = pd.to_numeric(part["std"], errors="coerce") if "std" in part else pd.Series(dtype=float)
        bounds = "-"
        if "lo" in part and "hi" in part:
            bounds = f"{_num(pd.to_numeric(part['lo']).min())} – {_num(pd.to_numeric(part['hi']).max())}"
        rows.append(
            {
                "split": split,
                "dataset": dataset,
                "images": len(part),
                "mos": f"{_num(mos.min(), 2)} – {_num(mos.max(), 2)}",
                "with_std": int(std.notna().sum()),
                "bounds": bounds,
            }
        )
    return rows


def distortion_rows(s: EvalSet) -> list[dict[str, Any]]:
    """The per-distortion table of a set: its cell and its monotonicity, pristine last."""
    by_mono = (s.monotonicity.by_distortion if s.monotonicity else {}) or {}
    names = sorted(s.by_distortion, key=lambda k: (k == "pristine", k))
    return [{"name": k, "cell": s.by_distortion[k], "mono": (by_mono.get(k) or {}).get("mean")} for k in names]


# ---- examples -------------------------------------------------------------------------------------
def diversity_column(rows: pd.DataFrame) -> str | None:
    """The column whose values the examples should spread over: distortion, else content, else
    dataset (when there are several), else none."""
    for column in ("distortion", "content"):
        if column in rows.columns and rows[column].notna().any():
            return column
    return "dataset" if rows["dataset"].nunique() > 1 else None


def pick_examples(rows: pd.DataFrame, count: int, worst: bool) -> pd.DataFrame:
    """The ``count`` best (or worst) predicted rows by |μ − m|, at most one per value of the
    :func:`diversity_column` first (so the worst are not one failure mode shown four times), then
    the next ones in error order."""
    order = rows.assign(_err=(rows["pred_mean"] - rows["m"]).abs())
    order = order.sort_values(["_err", "image"], ascending=[not worst, True], kind="stable")
    column = diversity_column(rows)
    if column is None:
        return order.head(count)
    first = order.drop_duplicates(column).head(count)
    rest = order.drop(index=first.index).head(count - len(first))
    return pd.concat([first, rest]).sort_values(["_err", "image"], ascending=[not worst, True], kind="stable")


def training_labels(rows: pd.DataFrame, labels: pd.DataFrame | None) -> tuple[np.ndarray, list[str | None]]:
    """Each row's label from the ``soft_labels`` stage's files, whatever its ``kind``: an (N, 5)
    array (NaN where the image has no label, e.g. a cross-dataset set) and the label kinds."""
    if labels is None or rows.empty:
        return np.full((len(rows), len(PROB_COLUMNS)), np.nan), [None] * len(rows)
    keys = rows[LABEL_KEY].astype(object).assign(root=rows["root"].fillna("").astype(str))
    found = keys.merge(labels, on=LABEL_KEY, how="left")
    kinds = [k if isinstance(k, str) else None for k in found["label_kind"]]
    return found[PROB_COLUMNS].to_numpy(float), kinds


def example_view(
    row: pd.Series, label: np.ndarray | None, kind: str | None, base_dir: Path, has_probs: bool
) -> dict[str, Any]:
    """One example's caption values and figures; ``label`` is its training label (or None)."""
    root = str(row.get("root") or "")
    path = Path(root) / str(row["image"]) if root else Path(str(row["image"]))
    path = path if path.is_absolute() else base_dir / path
    error = float(row["pred_mean"] - row["m"])
    where = ""
    if "distortion" in row and pd.notna(row.get("distortion")):
        where = f"{row['distortion']}" + (f" {int(row['severity'])}" if pd.notna(row.get("severity")) else "")
    return {
        "image": str(row["image"]),
        "dataset": str(row["dataset"]),
        "where": where,
        "thumb": figures.thumbnail(path),
        "bars": figures.distribution_bars(row[PROB_COLUMNS].to_numpy(float), label) if has_probs else None,
        "label": label,
        "label_kind": kind,
        "m": row["m"],
        "s": row.get("s"),
        "pred_mean": row["pred_mean"],
        "pred_std": row.get("pred_std"),
        "error": error,
        "direction": "" if abs(error) < 0.25 else ("over-rated" if error > 0 else "under-rated"),
    }


def examples(data: ReportData, s: EvalSet | None, count: int) -> dict[str, list[dict[str, Any]]] | None:
    """``{"best": [...], "worst": [...]}`` example views of set ``s``; ``None`` without rows."""
    if s is None or not data.predictions.ok or count <= 0:
        return None
    rows = data.predictions.value.rows(s.split, s.name)
    if rows.empty:
        return None
    out = {}
    for title, worst in (("best", False), ("worst", True)):
        chosen = pick_examples(rows, count, worst)
        labels, kinds = training_labels(chosen, data.soft_labels.value)
        out[title] = [
            example_view(
                row,
                labels[i] if np.isfinite(labels[i]).all() else None,
                kinds[i],
                Path(data.sources.base_dir),
                data.predictions.value.has_probs,
            )
            for i, (_, row) in enumerate(chosen.iterrows())
        ]
    return out


# ---- figures --------------------------------------------------------------------------------------
def set_rows(data: ReportData, sets: list[EvalSet]) -> list[tuple[EvalSet, pd.DataFrame]]:
    """Each set with its prediction rows (sets without rows left out)."""
    if not data.predictions.ok:
        return []
    pairs = [(s, data.predictions.value.rows(s.split, s.name)) for s in sets]
    return [(s, rows) for s, rows in pairs if len(rows)]


def build_figures(data: ReportData, head: EvalSet | None) -> dict[str, Any]:
    """Every figure of the page, as data URIs (``None`` where its input is missing)."""
    sets = data.evaluate.value or []
    out: dict[str, Any] = {"scatter": None, "confusion": None, "calibration": None, "curves": None, "severity": {}}
    panels = [(s.key, rows) for s, rows in set_rows(data, sets)]
    if panels:
        out["scatter"] = figures.scatter_figure(panels)
    matrices = [(s.key, np.asarray(s.confusion)) for s in card_sets(sets) if s.confusion is not None and s.n]
    if matrices:
        out["confusion"] = figures.confusion_figure(matrices)
    if head is not None and data.predictions.ok and data.predictions.value.has_std:
        rows = data.predictions.value.rows(head.split, head.name)
        rows = rows[np.isfinite(rows["s"].astype(float)) & np.isfinite(rows["pred_std"].astype(float))]
        if len(rows):
            out["calibration"] = figures.calibration_figure(rows["s"].to_numpy(float), rows["pred_std"].to_numpy(float))
    if data.curves.ok:
        out["curves"] = figures.curves_figure(data.curves.value)
    for s in breakdown_sets(sets):
        if s.by_distortion_severity:
            out["severity"][s.key] = figures.severity_figure(s.by_distortion_severity, s.by_severity.get(0))
    return out
