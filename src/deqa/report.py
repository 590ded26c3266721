"""The ``report`` stage: one self-contained HTML page and a short Markdown summary.

:func:`build_report` reads whatever the pipeline produced (every input is optional; a section whose
input is missing says "not available" and why) and writes

- ``report.html``: inline CSS, every plot and image thumbnail embedded as a base64 PNG, no script,
  no font, no CDN, no link to anything outside the file;
- ``summary.md``: the headline numbers and the metrics table, for a pull request or a terminal.

Inputs (paths relative to the repository root, see :class:`ReportSources`):

==============================  ==================================================================
``data/evaluate/predictions.csv``  per-image predictions (:data:`deqa.schema.PREDICTION_COLUMNS`):
                                the scatter, calibration and confusion plots, best/worst images
``metrics/evaluate.json``       :func:`deqa.metrics.evaluate_predictions` output: metrics table
``metrics/discretisation.json`` the ``soft_labels`` stage's soft vs one-hot table
``metrics/validate.json``,      the ``validate`` stage's outcome (read defensively: every scalar
``data/validate/report.json``   found is shown, lists of records as collapsible tables)
``data/validate/manifest.csv``  the data summary (images per split and dataset)
``dvclive/train/plots/metrics`` the training curves (every ``*.tsv`` there)
``metrics/train.json``          the train stage's summary, shown under the curves
``params.yaml``                 the params used
``dvc exp show --json``         when experiments exist, a comparison table across them
==============================  ==================================================================

The page opens with an "at a glance" block (headline SRCC/PLCC with their 95 % intervals, a plain
verdict and the main scatter plot), so that the model's quality is readable in a minute; details
follow. The headline split is ``test`` when present, else the first split evaluated.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from deqa import LEVELS
from deqa.config import ReportConfig, flat_keys
from deqa.schema import PROB_COLUMNS

# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
HEADLINE_METRICS = ("srcc", "plcc", "krcc", "rmse", "kl", "std_srcc", "entropy", "level_acc")
"""Per-experiment metrics compared in the experiments table (of the headline split, overall)."""


@dataclass
class ReportSources:
    """Where the report reads its inputs; relative paths are resolved against ``base_dir``.

    ``base_dir`` also resolves the relative image roots of the predictions file.
    """

    base_dir: Path = Path(".")
    predictions: str = "data/evaluate/predictions.csv"
    evaluate_metrics: str = "metrics/evaluate.json"
    discretisation: str = "metrics/discretisation.json"
    validate_metrics: str = "metrics/validate.json"
    validate_report: str = "data/validate/report.json"
    manifest: str = "data/validate/manifest.csv"
    train_metrics: str = "metrics/train.json"
    dvclive: str = "dvclive/train"
    params: str = "params.yaml"

    def path(self, name: str) -> Path:
        value = Path(getattr(self, name))
        return value if value.is_absolute() else Path(self.base_dir) / value


@dataclass
class Loaded:
    """One input: its value, or ``None`` and the reason it is missing."""

    value: Any = None
    missing: str = ""

    @property
    def ok(self) -> bool:
        return self.value is not None


@dataclass
class ReportData:
    """Everything the renderers need, loaded by :func:`collect`."""

    sources: ReportSources
    predictions: Loaded = field(default_factory=Loaded)
    evaluate: Loaded = field(default_factory=Loaded)
    discretisation: Loaded = field(default_factory=Loaded)
    validate_metrics: Loaded = field(default_factory=Loaded)
    validate_report: Loaded = field(default_factory=Loaded)
    manifest: Loaded = field(default_factory=Loaded)
    train_metrics: Loaded = field(default_factory=Loaded)
    curves: Loaded = field(default_factory=Loaded)
    params: Loaded = field(default_factory=Loaded)
    experiments: Loaded = field(default_factory=Loaded)

    @property
    def headline_split(self) -> str | None:
        """``test`` if evaluated, else the first split of the metrics (or predictions)."""
        splits: list[str] = []
        if self.evaluate.ok:
            splits = list(self.evaluate.value)
        elif self.predictions.ok:
            splits = sorted(self.predictions.value["split"].astype(str).unique())
        if "test" in splits:
            return "test"
        return splits[0] if splits else None


def _load_json(path: Path) -> Loaded:
    if not path.exists():
        return Loaded(None, f"{path} not found")
    try:
        return Loaded(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        return Loaded(None, f"{path} could not be read: {exc}")


def _load_predictions(path: Path) -> Loaded:
    if not path.exists():
        return Loaded(None, f"{path} not found")
    try:
        df = pd.read_csv(path, dtype={"image": str, "root": str, "dataset": str, "split": str})
    except (OSError, ValueError) as exc:
        return Loaded(None, f"{path} could not be read: {exc}")
    required = ["image", "dataset", "split", "m", "pred_mean"]
    missing = [c for c in required if c not in df.columns]
    if missing:
        return Loaded(None, f"{path} lacks column(s) {', '.join(missing)}")
    df["root"] = df["root"].fillna("") if "root" in df.columns else ""
    return Loaded(df)


def _load_manifest(path: Path) -> Loaded:
    if not path.exists():
        return Loaded(None, f"{path} not found")
    try:
        df = pd.read_csv(path, dtype={"image": str, "dataset": str, "split": str})
    except (OSError, ValueError) as exc:
        return Loaded(None, f"{path} could not be read: {exc}")
    missing = [c for c in ("dataset", "split", "mos") if c not in df.columns]
    if missing:
        return Loaded(None, f"{path} lacks column(s) {', '.join(missing)}")
    return Loaded(df)


def read_curves(dvclive_dir: Path) -> Loaded:
    """Every dvclive metric history under ``<dir>/plots/metrics``: ``{name: (steps, values)}``.

    ``name`` is the metric's path without ``.tsv`` (``train/loss``, ``val/srcc``); the x axis is
    the ``step`` column when present, else the row number.
    """
    root = dvclive_dir / "plots" / "metrics"
    if not root.is_dir():
        return Loaded(None, f"{root} not found (no dvclive training logs)")
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for tsv in sorted(root.rglob("*.tsv")):
        try:
            frame = pd.read_csv(tsv, sep="\t")
        except (OSError, ValueError):
            continue
        value_cols = [c for c in frame.columns if c not in ("step", "timestamp")]
        if frame.empty or not value_cols:
            continue
        values = pd.to_numeric(frame[value_cols[-1]], errors="coerce").to_numpy(float)
        steps = frame["step"].to_numpy(float) if "step" in frame.columns else np.arange(len(frame), dtype=float)
        curves[tsv.relative_to(root).with_suffix("").as_posix()] = (steps, values)
    if not curves:
        return Loaded(None, f"no readable .tsv files under {root}")
    return Loaded(curves)


def dvc_experiments(repo_dir: Path, timeout: float = 60.0) -> Loaded:
    """``dvc exp show --json`` in ``repo_dir``; missing (with the reason) when dvc or git fail."""
    beside = Path(sys.executable).parent / "dvc"  # the venv's dvc, even when not activated
    dvc = str(beside) if beside.exists() else "dvc"
    try:
        proc = subprocess.run(
            [dvc, "exp", "show", "--json"], cwd=repo_dir, capture_output=True, text=True,
            timeout=timeout, check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return Loaded(None, f"dvc exp show could not run: {exc}")
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return Loaded(None, f"dvc exp show failed: {tail[0]}")
    try:
        return Loaded(json.loads(proc.stdout or "[]"))
    except ValueError as exc:
        return Loaded(None, f"dvc exp show gave no JSON: {exc}")


def collect(
    sources: ReportSources | None = None,
    experiments: Any = "dvc",
    dvc_timeout: float = 60.0,
) -> ReportData:
    """Load every input that exists. ``experiments``: ``"dvc"`` runs ``dvc exp show --json`` in
    ``base_dir``; a list is taken as that command's parsed output; ``None`` skips the section."""
    sources = sources or ReportSources()
    data = ReportData(sources)
    data.predictions = _load_predictions(sources.path("predictions"))
    data.evaluate = _load_json(sources.path("evaluate_metrics"))
    data.discretisation = _load_json(sources.path("discretisation"))
    data.validate_metrics = _load_json(sources.path("validate_metrics"))
    data.validate_report = _load_json(sources.path("validate_report"))
    data.manifest = _load_manifest(sources.path("manifest"))
    data.train_metrics = _load_json(sources.path("train_metrics"))
    data.curves = read_curves(sources.path("dvclive"))
    params_path = sources.path("params")
    if params_path.exists():
        try:
            data.params = Loaded(yaml.safe_load(params_path.read_text()) or {})
        except (OSError, yaml.YAMLError) as exc:
            data.params = Loaded(None, f"{params_path} could not be read: {exc}")
    else:
        data.params = Loaded(None, f"{params_path} not found")
    if experiments == "dvc":
        data.experiments = dvc_experiments(Path(sources.base_dir), dvc_timeout)
    elif experiments is None:
        data.experiments = Loaded(None, "experiment comparison disabled (report.experiments: false)")
    else:
        data.experiments = Loaded(experiments)
    return data


# --------------------------------------------------------------------------------------------
# formatting helpers
# --------------------------------------------------------------------------------------------
def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table cell: ``-`` when missing or not finite."""
    if value is None or isinstance(value, (list, dict)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}" if math.isfinite(value) else "-"
    return str(value)


def _interval(group: dict[str, Any], key: str) -> str:
    lo, hi = group.get(f"{key}_lo"), group.get(f"{key}_hi")
    if lo is None or hi is None:
        return fmt(group.get(key))
    return f"{fmt(group.get(key))} [{fmt(lo)}, {fmt(hi)}]"


def verdict(value: float | None) -> str:
    """A rough word for a correlation: excellent ≥ 0.9, good ≥ 0.8, moderate ≥ 0.6, else weak."""
    if value is None:
        return "undefined"
    for bound, word in ((0.9, "excellent"), (0.8, "good"), (0.6, "moderate")):
        if value >= bound:
            return word
    return "weak"


def _png(fig: Any) -> str:
    """A matplotlib figure as an ``<img>`` tag with an embedded base64 PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return _img_tag(buf.getvalue(), "plot")


def _img_tag(png: bytes, alt: str, cls: str = "plot") -> str:
    b64 = base64.b64encode(png).decode("ascii")
    return f'<img class="{cls}" alt="{_esc(alt)}" src="data:image/png;base64,{b64}">'


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _table(headers: list[str], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _na(reason: str) -> str:
    return f'<p class="na">Not available: {_esc(reason)}</p>'


def _scalar_rows(obj: Any, prefix: str = "", limit: int = 60) -> list[list[str]]:
    """``[key, value]`` rows of the scalar leaves of a nested JSON object (lists summarised)."""
    rows: list[list[str]] = []

    def walk(value: Any, key: str) -> None:
        if len(rows) >= limit:
            return
        numeric = isinstance(value, dict) and len(value) > 8 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values())
        if numeric:  # e.g. failing rows per check: show only the non-zero entries
            nonzero = [f"{k}={fmt(v, 4)}" for k, v in value.items() if v]
            rows.append([key, f"{len(nonzero)} of {len(value)} non-zero" + (": " + ", ".join(nonzero) if nonzero else "")])
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, list):
            if all(not isinstance(v, (dict, list)) for v in value) and len(value) <= 8:
                rows.append([key, ", ".join(fmt(v, 4) for v in value) or "(empty)"])
            elif not all(isinstance(v, dict) for v in value):
                rows.append([key, f"{len(value)} item(s)"])
            # lists of records are shown as their own tables by _record_tables
        else:
            rows.append([key, fmt(value, 4)])

    walk(obj, prefix)
    return rows


def _cell(value: Any, width: int = 90) -> str:
    """A compact table cell for any JSON value (long lists and strings shortened)."""
    if isinstance(value, list):
        return f"{len(value)} item(s)" if len(value) > 3 else _short(json.dumps(value, default=str), width)
    if isinstance(value, dict):
        return _short(json.dumps(value, default=str), width)
    return _short(fmt(value, 4), width)


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


FIRST_COLUMNS = ("name", "description", "success", "passed", "ok")


def _record_tables(obj: Any, prefix: str = "", limit: int = 60) -> list[tuple[str, list[str], list[list[str]]]]:
    """Every list of records (dicts) in a nested JSON object as ``(key, headers, rows)``.

    Columns are the records' fields (``name``/``description``/``success`` first; lists and long
    text shortened); at most ``limit`` rows.
    """
    found: list[tuple[str, list[str], list[list[str]]]] = []

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            headers: list[str] = []
            for record in value:
                headers += [k for k in record if k not in headers]
            headers = [h for h in FIRST_COLUMNS if h in headers] + [h for h in headers if h not in FIRST_COLUMNS]
            rows = [[_cell(record.get(h)) for h in headers] for record in value[:limit]]
            if len(value) > limit:
                rows.append([f"... {len(value) - limit} more"] + [""] * (len(headers) - 1))
            found.append((key, headers, rows))

    walk(obj, prefix)
    return found


def _passed_count(records: list[list[str]], headers: list[str]) -> str:
    for flag in ("success", "passed", "ok"):
        if flag in headers:
            i = headers.index(flag)
            good = sum(r[i] == "yes" for r in records)
            return f", {good} passed, {sum(r[i] == 'no' for r in records)} failed"
    return ""


def _outcome(obj: Any) -> str:
    """A pass/fail badge from a top-level ``success``/``passed``/``ok``/``valid`` flag, if any."""
    if not isinstance(obj, dict):
        return ""
    for key in ("success", "passed", "ok", "valid"):
        if isinstance(obj.get(key), bool):
            good = obj[key]
            return (f'<span class="badge {"pass" if good else "fail"}">'
                    f'{"passed" if good else "failed"} ({_esc(key)})</span>')
    return ""


def _group_table(obj: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """A dict of dicts of scalars (e.g. per-dataset metrics) as one table; ``None`` otherwise."""
    if not isinstance(obj, dict) or not obj:
        return None
    groups: dict[str, dict[str, Any]] = {}

    def walk(value: Any, key: str) -> bool:
        if not isinstance(value, dict):
            return False
        scalars = {k: v for k, v in value.items() if not isinstance(v, (dict, list))}
        if scalars:
            groups[key or "(all)"] = scalars
        for k, v in value.items():
            if isinstance(v, dict):
                walk(v, f"{key} / {k}" if key else str(k))
        return True

    walk(obj, "")
    if not groups:
        return None
    columns: list[str] = []
    for scalars in groups.values():
        columns += [k for k in scalars if k not in columns]
    rows = [[name] + [fmt(g.get(c), 4) for c in columns] for name, g in groups.items()]
    return columns, rows


# --------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------
def _split_rows(data: ReportData, split: str | None) -> pd.DataFrame | None:
    if not data.predictions.ok:
        return None
    df = data.predictions.value
    if split is not None:
        df = df[df["split"].astype(str) == split]
    df = df[np.isfinite(df["m"].astype(float)) & np.isfinite(df["pred_mean"].astype(float))]
    return df if len(df) else None


PALETTE = ("#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b7791f", "#c53030", "#2c7a7b", "#718096")


def _draw_scatter(ax: Any, part: pd.DataFrame, title: str, by_dataset: bool = False) -> None:
    """Predicted μ against m on ``ax``, with y = x and the logistic fit of all of ``part``."""
    from deqa.metrics import fit_logistic, plcc, srcc

    x, y = part["pred_mean"].to_numpy(float), part["m"].to_numpy(float)
    ax.plot([1, 5], [1, 5], color="#bbb", lw=1, ls="--", label="y = x")
    if by_dataset:
        for i, (name, sub) in enumerate(part.groupby(part["dataset"].astype(str), sort=True)):
            ax.scatter(sub["m"], sub["pred_mean"], s=10, alpha=0.6, edgecolors="none",
                       color=PALETTE[i % len(PALETTE)], label=name)
    else:
        ax.scatter(y, x, s=10, alpha=0.55, color=PALETTE[0], edgecolors="none")
    fit = fit_logistic(x, y)
    if fit.ok:
        grid = np.linspace(x.min(), x.max(), 100)
        ax.plot(fit.predict(grid), grid, color="#1a202c" if by_dataset else PALETTE[1], lw=1.5,
                label="logistic fit")
    ax.set_title(f"{title} (n={len(part)})\nSRCC {fmt(srcc(x, y))}  PLCC {fmt(plcc(fit.predict(x), y))}",
                 fontsize=9)
    ax.set_xlabel("ground truth m (normalised MOS)", fontsize=8)
    ax.set_ylabel("predicted score μ", fontsize=8)
    ax.set_xlim(0.8, 5.2)
    ax.set_ylim(0.8, 5.2)
    ax.set_aspect("equal")
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="upper left")


def _draw_confusion(ax: Any, cm: np.ndarray, title: str) -> Any:
    """A 5×5 confusion heatmap on ``ax``, coloured by row share, annotated with counts."""
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(LEVELS)), LEVELS, fontsize=7, rotation=30)
    ax.set_yticks(range(len(LEVELS)), LEVELS, fontsize=7)
    ax.set_xlabel("predicted level (bin of μ)", fontsize=8)
    ax.set_ylabel("ground-truth level (bin of m)", fontsize=8)
    ax.set_title(title, fontsize=9)
    return im


def scatter_figure(df: pd.DataFrame, max_panels: int = 6) -> str:
    """Predicted score vs ground truth, one panel per dataset (at most ``max_panels``)."""
    datasets = sorted(df["dataset"].astype(str).unique())[:max_panels]
    n = len(datasets)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = _figure(3.6 * cols, 3.4 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, dataset in zip(axes, datasets):
        _draw_scatter(ax, df[df["dataset"].astype(str) == dataset], dataset)
    for ax in axes[n:]:
        ax.set_visible(False)
    return _png(fig)


def overview_figure(df: pd.DataFrame, split: str) -> str:
    """The at-a-glance figure: all datasets in one scatter, and the level confusion."""
    from deqa.metrics import confusion_matrix, score_to_level

    fig = _figure(8.4, 3.8)
    ax1, ax2 = fig.subplots(1, 2)
    _draw_scatter(ax1, df, f"{split}, all datasets", by_dataset=True)
    cm = confusion_matrix(score_to_level(df["m"].to_numpy(float)), score_to_level(df["pred_mean"].to_numpy(float)))
    _draw_confusion(ax2, cm, "levels: raters (rows) vs model")
    return _png(fig)


def confusion_figure(cm: np.ndarray, title: str) -> str:
    """A 5×5 confusion heatmap, coloured by row share, annotated with counts."""
    fig = _figure(4.2, 3.6)
    ax = fig.subplots()
    im = _draw_confusion(ax, cm, title)
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of the row")
    return _png(fig)


def calibration_figure(df: pd.DataFrame, bins: int = 8) -> str:
    """Predicted std σ vs ground-truth std s, with binned means and y = x."""
    s, sigma = df["s"].to_numpy(float), df["pred_std"].to_numpy(float)
    fig = _figure(4.4, 3.8)
    ax = fig.subplots()
    hi = float(max(np.nanmax(s), np.nanmax(sigma), 0.1)) * 1.05
    ax.plot([0, hi], [0, hi], color="#bbb", lw=1, ls="--", label="y = x (calibrated)")
    ax.scatter(s, sigma, s=9, alpha=0.45, color="#2b6cb0", edgecolors="none", label="images")
    edges = np.unique(np.quantile(s, np.linspace(0, 1, bins + 1)))
    if edges.size >= 2:
        which = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, edges.size - 2)
        centres = [s[which == b].mean() for b in range(edges.size - 1) if np.any(which == b)]
        means = [sigma[which == b].mean() for b in range(edges.size - 1) if np.any(which == b)]
        ax.plot(centres, means, "o-", color="#c05621", lw=1.5, ms=4, label="binned mean σ")
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_xlabel("ground-truth std s (raters' disagreement)", fontsize=8)
    ax.set_ylabel("predicted std σ", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="upper left")
    return _png(fig)


def curves_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """One small panel per dvclive metric, in name order."""
    names = sorted(curves)
    cols = min(len(names), 3)
    rows = math.ceil(len(names) / cols)
    fig = _figure(3.6 * cols, 2.5 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, name in zip(axes, names):
        steps, values = curves[name]
        style = "o-" if len(values) <= 30 else "-"
        ax.plot(steps, values, style, ms=3, lw=1.2, color="#c05621" if name.startswith("val") else "#2b6cb0")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    return _png(fig)


def distribution_bars(pred: np.ndarray, truth: np.ndarray) -> str:
    """Predicted vs ground-truth level probabilities of one image as side-by-side bars."""
    fig = _figure(2.6, 1.6)
    ax = fig.subplots()
    k = np.arange(len(LEVELS))
    ax.bar(k - 0.2, truth, 0.4, color="#a0aec0", label="truth")
    ax.bar(k + 0.2, pred, 0.4, color="#2b6cb0", label="predicted")
    ax.set_xticks(k, [name[:4] for name in LEVELS], fontsize=6)
    ax.set_ylim(0, 1)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=5, loc="upper left", frameon=False)
    return _png(fig)


def thumbnail(path: Path, size: int = 140) -> str | None:
    """An ``<img>`` tag with a PNG thumbnail of ``path``; ``None`` if it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
    except (OSError, ValueError):
        return None
    return _img_tag(buf.getvalue(), path.name, "thumb")


# --------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------
METRIC_COLUMNS = [
    ("n", "images"), ("srcc", "SRCC [95% CI]"), ("plcc", "PLCC [95% CI]"), ("krcc", "KRCC"),
    ("plcc_plain", "PLCC (no fit)"), ("rmse", "RMSE"), ("kl", "KL"), ("js", "JS"), ("w2", "W2"),
    ("std_srcc", "σ vs s SRCC"), ("entropy", "entropy"), ("level_acc", "level acc."),
]


def metrics_rows(evaluate: dict[str, Any]) -> list[list[str]]:
    """Rows ``split, group, ...`` of the metrics table (the ``METRIC_COLUMNS`` order)."""
    rows = []
    for split, block in evaluate.items():
        if not isinstance(block, dict):
            continue
        for group, values in block.items():
            if not isinstance(values, dict):
                continue
            row = [split, group]
            for key, _ in METRIC_COLUMNS:
                row.append(_interval(values, key) if key in ("srcc", "plcc") else fmt(values.get(key)))
            if values.get("logistic_ok") is False:
                row[2 + [k for k, _ in METRIC_COLUMNS].index("plcc")] += " (no fit)"
            rows.append(row)
    return rows


def _headline(data: ReportData) -> dict[str, Any] | None:
    split = data.headline_split
    if not data.evaluate.ok or split is None:
        return None
    group = (data.evaluate.value.get(split) or {}).get("overall")
    return group if isinstance(group, dict) else None


def _within_one(cm: Any) -> float | None:
    cm = np.asarray(cm, dtype=float)
    if cm.shape != (5, 5) or cm.sum() == 0:
        return None
    i, j = np.indices(cm.shape)
    return float(cm[np.abs(i - j) <= 1].sum() / cm.sum())


def glance_sentences(data: ReportData) -> list[str]:
    """The headline in plain words (also the top of ``summary.md``)."""
    split = data.headline_split
    group = _headline(data)
    if group is None:
        return ["No evaluation metrics are available (metrics/evaluate.json)."]
    datasets = [k for k in (data.evaluate.value.get(split) or {}) if k != "overall"]
    out = [
        f"On {group.get('n', '?')} {split} images ({', '.join(datasets) or 'no dataset'}), the model "
        f"ranks quality with SRCC {_interval(group, 'srcc')}: {verdict(group.get('srcc'))} agreement "
        f"with the raters; PLCC after the logistic fit {_interval(group, 'plcc')}, "
        f"RMSE {fmt(group.get('rmse'))} on the 1-5 scale."
    ]
    acc, near = group.get("level_acc"), _within_one(group.get("confusion"))
    if acc is not None:
        out.append(f"The predicted level is the raters' level for {acc:.0%} of the images"
                   + (f" and within one level for {near:.0%}." if near is not None else "."))
    if group.get("std_srcc") is not None:
        out.append(f"Predicted std tracks the raters' disagreement with SRCC {fmt(group['std_srcc'])} "
                   f"({verdict(group['std_srcc'])}); mean predicted-level entropy "
                   f"{fmt(group.get('entropy'))} nats (uniform: {math.log(5):.3f}).")
    return out


def _key_params(params: dict[str, Any] | None) -> list[tuple[str, Any]]:
    if not params:
        return []
    flat = flat_keys(params)
    keys = ["model.base", "soft_labels.kind", "soft_labels.density", "train.epochs", "train.lr",
            "loss.kl_weight", "loss.fidelity_weight", "base.seed"]
    return [(k, flat[k]) for k in keys if k in flat]


def section_glance(data: ReportData) -> str:
    items = "".join(f"<li>{_esc(s)}</li>" for s in glance_sentences(data))
    group = _headline(data)
    cards = ""
    if group is not None:
        card_specs = [("SRCC", "srcc"), ("PLCC", "plcc"), ("KRCC", "krcc"), ("RMSE", "rmse"),
                      ("KL gap", "kl"), ("σ vs s SRCC", "std_srcc")]
        for label, key in card_specs:
            ci = ""
            if group.get(f"{key}_lo") is not None:
                ci = f'<div class="ci">95% CI {fmt(group[f"{key}_lo"])} – {fmt(group[f"{key}_hi"])}</div>'
            cards += f'<div class="card"><div class="label">{_esc(label)}</div><div class="value">{fmt(group.get(key))}</div>{ci}</div>'
        cards = f'<div class="cards">{cards}</div>'
    params = "".join(f"<span class=\"chip\">{_esc(k)} = {_esc(v)}</span>" for k, v in _key_params(data.params.value))
    df = _split_rows(data, data.headline_split)
    plot = overview_figure(df, data.headline_split or "all") if df is not None else ""
    return (f'<section id="glance"><h2>At a glance</h2>{cards}<ul class="glance">{items}</ul>'
            f'<div class="chips">{params}</div>{plot}</section>')


def section_data(data: ReportData) -> str:
    parts = ['<section id="data"><h2>Data and validation</h2>']
    parts.append("<h3>Validated data set</h3>")
    if data.manifest.ok:
        parts.append(_table(["split", "dataset", "images", "MOS range", "with std", "normalisation lo – hi"],
                            manifest_rows(data.manifest.value)))
    else:
        parts.append(_na(data.manifest.missing))
    parts.append("<h3>Evaluated images</h3>")
    if data.predictions.ok:
        df = data.predictions.value
        rows = []
        for (split, dataset), part in df.groupby(["split", "dataset"], sort=True):
            s = part["s"].astype(float) if "s" in part.columns else pd.Series(dtype=float)
            rows.append([split, dataset, len(part), fmt(part["m"].min(), 2) + " – " + fmt(part["m"].max(), 2),
                         fmt(part["m"].mean(), 2), fmt(s.mean(), 2) if s.notna().any() else "-",
                         f"{int(s.notna().sum())}"])
        parts.append(_table(["split", "dataset", "images", "m range", "mean m", "mean s", "with std"], rows))
    else:
        parts.append(_na(data.predictions.missing))
    parts.append("<h3>Validation outcome</h3>")
    shown = False
    for loaded, title in ((data.validate_metrics, "metrics/validate.json"),
                          (data.validate_report, "data/validate/report.json")):
        if loaded.ok:
            rows = _scalar_rows(loaded.value)
            parts.append(f"<h4>{_esc(title)} {_outcome(loaded.value)}</h4>")
            parts.append(_table(["key", "value"], rows, "kv") if rows else "")
            for key, headers, records in _record_tables(loaded.value):
                summary = f"{key}: {len(records)} record(s){_passed_count(records, headers)}"
                parts.append(f"<details><summary>{_esc(summary)}</summary>{_table(headers, records, 'kv')}</details>")
            shown = True
    if not shown:
        parts.append(_na(f"{data.validate_metrics.missing}; {data.validate_report.missing}"))
    parts.append("</section>")
    return "".join(parts)


def manifest_rows(df: pd.DataFrame) -> list[list[str]]:
    """Per split and dataset: image count, MOS range, rows with a std, normalisation bounds."""
    rows = []
    order = {"train": 0, "val": 1, "test": 2}
    groups = df.groupby([df["split"].astype(str), df["dataset"].astype(str)], sort=True)
    for (split, dataset), part in sorted(groups, key=lambda g: (order.get(g[0][0], 9), g[0])):
        mos = pd.to_numeric(part.get("mos"), errors="coerce")
        std = pd.to_numeric(part.get("std"), errors="coerce") if "std" in part else pd.Series(dtype=float)
        lo = pd.to_numeric(part.get("lo"), errors="coerce") if "lo" in part else pd.Series(dtype=float)
        hi = pd.to_numeric(part.get("hi"), errors="coerce") if "hi" in part else pd.Series(dtype=float)
        rows.append([split, dataset, str(len(part)), f"{fmt(mos.min(), 2)} – {fmt(mos.max(), 2)}",
                     str(int(std.notna().sum())), f"{fmt(lo.min(), 3)} – {fmt(hi.max(), 3)}"])
    return rows


DISCRETISATION_LABELS = {
    "n": "images", "mean_error": "mean |Σkq−m| (labels)", "onehot_mean_error": "mean |Σkq−m| (one-hot)",
    "std_error": "std error (labels)", "onehot_std_error": "std error (one-hot)",
    "js": "JS to N(m,s) (labels)", "fallbacks": "binary fallbacks",
}


def section_discretisation(data: ReportData) -> str:
    head = ('<section id="discretisation"><h2>Discretisation: soft vs one-hot labels</h2>'
            "<p>How much of each image's score distribution N(m, s) the training labels keep "
            "(lower error is better; one-hot labels are Q-Align's).</p>")
    if not data.discretisation.ok:
        return head + _na(data.discretisation.missing) + "</section>"
    table = _group_table(data.discretisation.value)
    if table is None:
        return head + _table(["key", "value"], _scalar_rows(data.discretisation.value), "kv") + "</section>"
    columns, rows = table
    headers = ["group"] + [DISCRETISATION_LABELS.get(c, c) for c in columns]
    return head + _table(headers, rows) + "</section>"


def section_training(data: ReportData) -> str:
    head = '<section id="training"><h2>Training</h2>'
    summary = ""
    if data.train_metrics.ok:
        rows = _scalar_rows(data.train_metrics.value)
        summary = "<h4>metrics/train.json</h4>" + (_table(["key", "value"], rows, "kv") if rows else "")
    if not data.curves.ok:
        return head + _na(data.curves.missing) + summary + "</section>"
    return head + curves_figure(data.curves.value) + summary + "</section>"


def section_metrics(data: ReportData) -> str:
    head = ('<section id="metrics"><h2>Metrics</h2><p>Ground truth is the normalised MOS m; PLCC and '
            "RMSE after the VQEG 4-parameter logistic fit; 95% bootstrap intervals; KL/JS/W2 between "
            "N(m, s) and the predicted N(μ, σ); entropy of the predicted levels in nats.</p>")
    if not data.evaluate.ok:
        return head + _na(data.evaluate.missing) + "</section>"
    rows = metrics_rows(data.evaluate.value)
    headers = ["split", "group"] + [label for _, label in METRIC_COLUMNS]
    return head + _table(headers, rows, "metrics") + "</section>"


def section_scatter(data: ReportData) -> str:
    head = '<section id="scatter"><h2>Predicted vs ground truth</h2>'
    if not data.predictions.ok:
        return head + _na(data.predictions.missing) + "</section>"
    parts = [head]
    for split in sorted(data.predictions.value["split"].astype(str).unique()):
        df = _split_rows(data, split)
        if df is not None:
            parts.append(f"<h3>{_esc(split)}</h3>" + scatter_figure(df))
    return "".join(parts) + "</section>"


def section_confusion(data: ReportData) -> str:
    from deqa.metrics import confusion_matrix, score_to_level

    head = '<section id="confusion"><h2>Level confusion</h2>'
    split = data.headline_split
    df = _split_rows(data, split)
    if df is not None:
        cm = confusion_matrix(score_to_level(df["m"].to_numpy(float)), score_to_level(df["pred_mean"].to_numpy(float)))
    elif _headline(data) is not None and _headline(data).get("confusion") is not None:
        cm = np.asarray(_headline(data)["confusion"], dtype=int)
    else:
        return head + _na(data.predictions.missing or "no predictions for the headline split") + "</section>"
    note = ("<p>Levels are the one-hot bins of the score (thresholds 1.8 / 2.6 / 3.4 / 4.2): rows "
            "the raters' level, columns the model's.</p>")
    return head + note + confusion_figure(cm, f"{split}, all datasets (n={int(cm.sum())})") + "</section>"


def section_calibration(data: ReportData) -> str:
    from deqa.metrics import level_entropy, std_correlation

    head = ('<section id="calibration"><h2>Uncertainty: predicted vs ground-truth std</h2>'
            "<p>Does the model know when raters disagree? Points on the diagonal are calibrated.</p>")
    df = _split_rows(data, data.headline_split)
    if df is None or "s" not in df.columns or "pred_std" not in df.columns:
        return head + _na(data.predictions.missing or "no predictions with std") + "</section>"
    df = df[np.isfinite(df["s"].astype(float)) & np.isfinite(df["pred_std"].astype(float))]
    if df.empty:
        return head + _na("no image of the headline split has a ground-truth std") + "</section>"
    notes = [f"SRCC(σ, s) = {fmt(std_correlation(df['s'], df['pred_std']))}",
             f"mean σ = {fmt(df['pred_std'].mean())}, mean s = {fmt(df['s'].mean())}"]
    if all(c in df.columns for c in PROB_COLUMNS):
        notes.append(f"mean entropy of predicted levels = {fmt(level_entropy(df[PROB_COLUMNS].to_numpy(float)).mean())} nats")
        truth = _truth_distributions(df, data.params.value)
        if truth is not None:
            notes.append(f"of the ground-truth soft labels = {fmt(level_entropy(truth).mean())} nats")
    return head + f"<p>{_esc('; '.join(notes))}.</p>" + calibration_figure(df) + "</section>"


def _truth_distributions(df: pd.DataFrame, params: dict[str, Any] | None) -> np.ndarray | None:
    """The DeQA soft label of each row's (m, s) with the params' soft-label options, bad..excellent.

    Shown as the raters' distribution whatever label kind the model was trained on (rows without
    a std get the binary label, as in training)."""
    from deqa.labels import gaussian_soft_labels

    options = (params or {}).get("soft_labels") or {}
    kwargs = {k: options[k] for k in ("density", "std_min", "max_mean_error", "renormalise") if k in options}
    s = df["s"].to_numpy(float) if "s" in df.columns else np.full(len(df), np.nan)
    try:
        probs, _ = gaussian_soft_labels(df["m"].to_numpy(float), s, **kwargs)
    except (ValueError, TypeError):
        return None
    return np.asarray(probs, dtype=float)


def section_examples(data: ReportData, examples: int) -> str:
    head = ('<section id="examples"><h2>Best and worst predicted images</h2>'
            "<p>By |μ − m| on the headline split. Bars: the ground-truth distribution (the DeQA soft "
            "label of N(m, s)) and the predicted level probabilities.</p>")
    df = _split_rows(data, data.headline_split)
    if df is None:
        return head + _na(data.predictions.missing or "no predictions") + "</section>"
    if examples <= 0:
        return head + _na("report.examples is 0") + "</section>"
    df = df.assign(_err=(df["pred_mean"].astype(float) - df["m"].astype(float)).abs())
    df = df.sort_values(["_err", "image"], kind="stable")
    truth = _truth_distributions(df, data.params.value)
    has_probs = all(c in df.columns for c in PROB_COLUMNS)
    position = {idx: i for i, idx in enumerate(df.index)}
    parts = [head]
    for title, rows in (("Best", df.head(examples)), ("Worst", df.tail(examples).iloc[::-1])):
        cells = []
        for idx, row in rows.iterrows():
            root = str(row.get("root") or "")
            path = Path(root) / str(row["image"]) if root else Path(str(row["image"]))
            if not path.is_absolute():
                path = Path(data.sources.base_dir) / path
            thumb = thumbnail(path) or f'<div class="missing">image not found:<br>{_esc(row["image"])}</div>'
            bars = ""
            if has_probs and truth is not None:
                bars = distribution_bars(row[PROB_COLUMNS].to_numpy(float), truth[position[idx]])
            sigma = f", σ {fmt(row['pred_std'], 2)}" if "pred_std" in row else ""
            s = f", s {fmt(row['s'], 2)}" if "s" in row and pd.notna(row["s"]) else ""
            cells.append(
                f'<figure class="example">{thumb}{bars}<figcaption><b>{_esc(row["dataset"])}</b> '
                f'{_esc(row["image"])}<br>truth m {fmt(row["m"], 2)}{s} · predicted μ '
                f'{fmt(row["pred_mean"], 2)}{sigma} · error {fmt(row["_err"], 2)}</figcaption></figure>'
            )
        parts.append(f"<h3>{title} {len(cells)}</h3><div class=\"examples\">{''.join(cells)}</div>")
    return "".join(parts) + "</section>"


def experiment_rows(states: list[dict[str, Any]], split: str = "test") -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the experiments table from ``dvc exp show --json`` output.

    One row per baseline (workspace, commits) and per experiment (its latest revision); params
    columns are the params that differ between rows; metrics are ``HEADLINE_METRICS`` of
    ``metrics/evaluate.json`` for ``split``/``overall``.
    """
    entries: list[tuple[str, dict[str, Any], dict[str, Any]]] = []

    def add(state: dict[str, Any], name: str | None) -> None:
        payload = state.get("data") or {}
        params: dict[str, Any] = {}
        for file, result in (payload.get("params") or {}).items():
            flat = flat_keys((result or {}).get("data") or {})
            prefix = "" if file == "params.yaml" else f"{file}:"
            params.update({prefix + k: v for k, v in flat.items()})
        evaluate = {}
        for file, result in (payload.get("metrics") or {}).items():
            if Path(file).name == "evaluate.json":
                evaluate = (((result or {}).get("data") or {}).get(split) or {}).get("overall") or {}
        label = name or state.get("name") or str(state.get("rev", "?"))[:7]
        entries.append((label, params, evaluate))

    for state in states or []:
        if not isinstance(state, dict):
            continue
        add(state, "workspace" if state.get("rev") == "workspace" else None)
        for exp_range in state.get("experiments") or []:
            revs = (exp_range or {}).get("revs") or []
            if revs:
                add(revs[0], (exp_range or {}).get("name") or revs[0].get("name"))
    keys = sorted({k for _, p, _ in entries for k in p})
    varying = [k for k in keys if len({json.dumps(p.get(k), sort_keys=True, default=str) for _, p, _ in entries}) > 1]
    headers = ["experiment"] + varying + [f"{split} {m}" for m in HEADLINE_METRICS]
    rows = [[label] + [fmt(p.get(k)) for k in varying] + [fmt(e.get(m)) for m in HEADLINE_METRICS]
            for label, p, e in entries]
    return headers, rows


def _count_experiments(states: list[dict[str, Any]]) -> int:
    return sum(len(s.get("experiments") or []) for s in states or [] if isinstance(s, dict))


def section_experiments(data: ReportData) -> str:
    head = '<section id="experiments"><h2>Experiments</h2>'
    if not data.experiments.ok:
        return head + _na(data.experiments.missing) + "</section>"
    states = data.experiments.value
    if _count_experiments(states) == 0:
        return head + ("<p>No DVC experiments yet. Compare soft and one-hot labels with "
                       "<code>dvc exp run -S soft_labels.kind=onehot</code>.</p></section>")
    headers, rows = experiment_rows(states, data.headline_split or "test")
    return head + "<p>Params that differ between runs, and the headline metrics of each.</p>" + _table(headers, rows) + "</section>"


def section_params(data: ReportData) -> str:
    head = '<section id="params"><h2>Params used</h2>'
    if not data.params.ok:
        return head + _na(data.params.missing) + "</section>"
    flat = flat_keys(data.params.value)
    rows = [[k, v if isinstance(v, str) else json.dumps(v, default=str)] for k, v in flat.items()]
    half = max(1, math.ceil(len(rows) / 2))
    return (head + f"<details open><summary>params.yaml ({len(rows)} keys)</summary>"
            + '<div class="params">' + "".join(_table(["key", "value"], rows[i:i + half], "kv")
                                              for i in range(0, len(rows), half))
            + "</div></details></section>")


# --------------------------------------------------------------------------------------------
# documents
# --------------------------------------------------------------------------------------------
CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;color:#1a202c;background:#f7fafc}
main{max-width:1140px;margin:0 auto;padding:16px 24px 48px}
h1{margin:8px 0 4px;font-size:26px}h2{border-bottom:2px solid #e2e8f0;padding-bottom:4px;margin-top:28px}
h3{margin:14px 0 6px;font-size:16px}h4{margin:10px 0 4px;font-size:13px;color:#4a5568}
nav{font-size:13px;margin:4px 0 8px}nav a{margin-right:12px;color:#2b6cb0;text-decoration:none}
section{background:#fff;border:1px solid #e2e8f0;border-radius:6px;padding:4px 18px 14px;margin:14px 0}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}
.card{background:#ebf4ff;border-radius:6px;padding:8px 14px;min-width:120px}
.card .label{font-size:12px;color:#4a5568}.card .value{font-size:26px;font-weight:600}
.card .ci{font-size:11px;color:#4a5568}
ul.glance li{margin:3px 0;font-size:15px}
.chips{margin:6px 0}.chip{display:inline-block;background:#edf2f7;border-radius:10px;padding:2px 9px;margin:2px;font-size:12px}
table{border-collapse:collapse;font-size:12px;margin:6px 0}th,td{border:1px solid #e2e8f0;padding:3px 7px;text-align:right}
th{background:#edf2f7}td:first-child,th:first-child{text-align:left}table.kv td{text-align:left}
table.metrics td:nth-child(2){text-align:left}
img.plot{max-width:100%;display:block;margin:6px 0}
.examples{display:flex;flex-wrap:wrap;gap:12px}
figure.example{margin:0;width:250px;border:1px solid #e2e8f0;border-radius:4px;padding:6px;background:#fafafa}
figure.example img.thumb{display:block;margin:0 auto;max-width:140px;max-height:140px}
figure.example img.plot{margin:4px auto 0;max-width:240px}
figcaption{font-size:11px;color:#2d3748;overflow-wrap:anywhere}
.params{display:flex;gap:16px;align-items:flex-start}.params table{flex:1}
.missing{width:140px;height:100px;margin:0 auto;background:#edf2f7;font-size:10px;display:flex;align-items:center;justify-content:center;text-align:center}
.na{color:#9b2c2c;font-style:italic}
.badge{font-size:11px;padding:1px 7px;border-radius:8px;color:#fff;margin-left:6px}.badge.pass{background:#2f855a}.badge.fail{background:#c53030}
code{background:#edf2f7;padding:1px 4px;border-radius:3px}
footer{font-size:11px;color:#718096;margin-top:20px}
"""

SECTIONS = [
    ("glance", "At a glance"), ("data", "Data"), ("discretisation", "Discretisation"),
    ("training", "Training"), ("metrics", "Metrics"), ("scatter", "Scatter"),
    ("confusion", "Confusion"), ("calibration", "Uncertainty"), ("examples", "Examples"),
    ("experiments", "Experiments"), ("params", "Params"),
]


def render_html(data: ReportData, examples: int = 4) -> str:
    """The whole report as one self-contained HTML document."""
    nav = "".join(f'<a href="#{key}">{_esc(title)}</a>' for key, title in SECTIONS)
    body = "".join([
        section_glance(data), section_data(data), section_discretisation(data),
        section_training(data), section_metrics(data), section_scatter(data),
        section_confusion(data), section_calibration(data), section_examples(data, examples),
        section_experiments(data), section_params(data),
    ])
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>deqa report</title><style>{CSS}</style></head><body><main>"
        "<h1>deqa: image-quality model report</h1>"
        f"<nav>{nav}</nav>{body}"
        "<footer>Generated by the deqa <code>report</code> stage (DeQA-Score). Self-contained: "
        "every image is embedded.</footer></main></body></html>\n"
    )


def render_summary(data: ReportData) -> str:
    """The short Markdown summary: headline, metrics table, key params, missing inputs."""
    lines = ["# deqa report summary", ""]
    lines += [f"- {s}" for s in glance_sentences(data)]
    params = _key_params(data.params.value)
    if params:
        lines += ["", "Params: " + ", ".join(f"`{k}={v}`" for k, v in params)]
    lines += ["", "## Metrics", ""]
    if data.evaluate.ok:
        headers = ["split", "group"] + [label for _, label in METRIC_COLUMNS]
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("|" + "---|" * len(headers))
        lines += ["| " + " | ".join(row) + " |" for row in metrics_rows(data.evaluate.value)]
    else:
        lines.append(f"Not available: {data.evaluate.missing}")
    if data.experiments.ok and _count_experiments(data.experiments.value):
        headers, rows = experiment_rows(data.experiments.value, data.headline_split or "test")
        lines += ["", "## Experiments", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    missing = [name for name in ("predictions", "evaluate", "discretisation", "validate_metrics",
                                 "validate_report", "manifest", "curves", "train_metrics", "params")
               if not getattr(data, name).ok]
    if missing:
        lines += ["", "Missing inputs: " + "; ".join(getattr(data, n).missing for n in missing)]
    lines += ["", "Full report: `reports/report.html`.", ""]
    return "\n".join(lines)


def build_report(
    out_dir: str | Path = "reports",
    sources: ReportSources | None = None,
    config: ReportConfig | None = None,
    experiments: Any = "dvc",
) -> dict[str, Path]:
    """Collect the inputs and write ``report.html`` and ``summary.md`` into ``out_dir``.

    ``experiments`` as in :func:`collect` (``"dvc"``: run ``dvc exp show --json``); it is skipped
    when ``config.experiments`` is false. Returns ``{"html": path, "summary": path}``.
    """
    config = config or ReportConfig()
    if not getattr(config, "experiments", True):
        experiments = None
    data = collect(sources, experiments=experiments)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"html": out / "report.html", "summary": out / "summary.md"}
    paths["html"].write_text(render_html(data, config.examples), encoding="utf-8")
    paths["summary"].write_text(render_summary(data), encoding="utf-8")
    return paths
