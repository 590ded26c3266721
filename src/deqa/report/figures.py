"""The report's figures, drawn with matplotlib (no pyplot state) and returned as PNG data URIs.

Every function returns a ``data:image/png;base64,...`` string that the templates put in an
``<img src>``: the page stays one self-contained file. PNGs are written without a software or
date stamp, so the same data gives the same bytes.
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deqa import LEVELS

PALETTE = ("#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b7791f", "#c53030", "#2c7a7b", "#718096")


def png_uri(data: bytes) -> str:
    """PNG bytes as a ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _uri(fig: Any, dpi: int = 100) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return png_uri(buf.getvalue())


def _grid(n: int, cols: int, width: float, height: float) -> tuple[Any, np.ndarray]:
    cols = max(1, min(n, cols))
    rows = max(1, math.ceil(n / cols))
    fig = _figure(width * cols, height * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def _scatter(ax: Any, part: pd.DataFrame, title: str) -> None:
    """Predicted μ against m, coloured by dataset, with y = x and the logistic fit."""
    from deqa.metrics import fit_logistic, plcc, srcc

    x, y = part["pred_mean"].to_numpy(float), part["m"].to_numpy(float)
    ax.plot([1, 5], [1, 5], color="#bbb", lw=1, ls="--", label="y = x")
    groups = list(part.groupby(part["dataset"].astype(str), sort=True))
    for i, (name, sub) in enumerate(groups):
        label = name if len(groups) > 1 else None
        ax.scatter(sub["m"], sub["pred_mean"], s=8, alpha=0.5, edgecolors="none", color=PALETTE[i % 8], label=label)
    fit = fit_logistic(x, y)
    if fit.ok:
        grid = np.linspace(x.min(), x.max(), 100)
        ax.plot(fit.predict(grid), grid, color="#1a202c", lw=1.4, label="logistic fit")
    r_s, r_p = srcc(x, y), plcc(fit.predict(x), y)
    stats = f"SRCC {r_s:.3f}  PLCC {r_p:.3f}" if r_s is not None and r_p is not None else "correlation undefined"
    ax.set_title(f"{title} (n={len(part)})\n{stats}", fontsize=9)
    ax.set_xlabel("ground truth m (normalised MOS)", fontsize=8)
    ax.set_ylabel("predicted score μ", fontsize=8)
    ax.set(xlim=(0.8, 5.2), ylim=(0.8, 5.2), aspect="equal")
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="upper left")


def scatter_figure(panels: list[tuple[str, pd.DataFrame]]) -> str:
    """One predicted-vs-truth panel per ``(title, rows)``, three per row."""
    fig, axes = _grid(len(panels), 3, 3.5, 3.4)
    for ax, (title, rows) in zip(axes, panels, strict=False):
        _scatter(ax, rows, title)
    return _uri(fig)


def confusion_figure(panels: list[tuple[str, np.ndarray]]) -> str:
    """5×5 level confusion heatmaps (rows raters, columns model), coloured by row share."""
    fig, axes = _grid(len(panels), 3, 3.3, 3.1)
    for ax, (title, cm) in zip(axes, panels, strict=False):
        cm = np.asarray(cm, dtype=int)
        share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i, j in np.ndindex(cm.shape):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if share[i, j] > 0.6 else "black",
            )
        ax.set_xticks(range(len(LEVELS)), LEVELS, fontsize=6, rotation=30)
        ax.set_yticks(range(len(LEVELS)), LEVELS, fontsize=6)
        ax.set_xlabel("model's level (bin of μ)", fontsize=7)
        ax.set_ylabel("raters' level (bin of m)", fontsize=7)
        ax.set_title(f"{title} (n={int(cm.sum())})", fontsize=9)
    return _uri(fig)


def calibration_figure(s: np.ndarray, sigma: np.ndarray, bins: int = 8) -> str:
    """Predicted std σ against the raters' std s, with binned means and y = x."""
    fig = _figure(4.4, 3.8)
    ax = fig.subplots()
    hi = float(max(np.nanmax(s), np.nanmax(sigma), 0.1)) * 1.05
    ax.plot([0, hi], [0, hi], color="#bbb", lw=1, ls="--", label="y = x (calibrated)")
    ax.scatter(s, sigma, s=8, alpha=0.45, color=PALETTE[0], edgecolors="none", label="images")
    edges = np.unique(np.quantile(s, np.linspace(0, 1, bins + 1)))
    if edges.size >= 2:
        which = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, edges.size - 2)
        used = [b for b in range(edges.size - 1) if np.any(which == b)]
        centres = [s[which == b].mean() for b in used]
        ax.plot(centres, [sigma[which == b].mean() for b in used], "o-", color=PALETTE[1], ms=4, label="binned mean σ")
    ax.set(xlim=(0, hi), ylim=(0, hi))
    ax.set_xlabel("raters' std s (disagreement)", fontsize=8)
    ax.set_ylabel("predicted std σ", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="upper left")
    return _uri(fig)


def curves_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """One small panel per dvclive metric, in name order; validation curves in orange."""
    names = sorted(curves)
    fig, axes = _grid(len(names), 3, 3.5, 2.4)
    for ax, name in zip(axes, names, strict=False):
        steps, values = curves[name]
        ax.plot(
            steps,
            values,
            "o-" if len(values) <= 30 else "-",
            ms=3,
            lw=1.2,
            color=PALETTE[1 if name.startswith("val") else 0],
        )
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    return _uri(fig)


def severity_figure(cells: dict[str, dict[int, Any]], pristine: Any | None = None) -> str:
    """Per distortion, mean ground truth m and mean predicted μ against severity.

    ``cells`` is ``{distortion: {severity: Cell}}`` (:class:`deqa.report.inputs.Cell`);
    ``pristine`` (the severity-0 cell) is drawn at 0 in every panel.
    """
    names = [n for n in sorted(cells) if n != "pristine"]
    fig, axes = _grid(len(names), 4, 2.7, 2.3)
    for ax, name in zip(axes, names, strict=False):
        points = dict(cells[name])
        if pristine is not None:
            points.setdefault(0, pristine)
        sev = sorted(points)
        truth = [points[k].mean_m for k in sev]
        if any(v is not None for v in truth):
            ax.plot(sev, [np.nan if v is None else v for v in truth], "o--", ms=3, color="#718096", label="raters m")
        ax.plot(
            sev,
            [np.nan if points[k].mean_pred is None else points[k].mean_pred for k in sev],
            "o-",
            ms=3,
            color=PALETTE[0],
            label="model μ",
        )
        ax.set_title(name, fontsize=9)
        ax.set_xticks(sev)
        ax.set_ylim(1, 5)
        ax.set_xlabel("severity (0 = pristine)", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower left")
    return _uri(fig)


def distribution_bars(pred: np.ndarray, label: np.ndarray | None) -> str:
    """Predicted level probabilities of one image, beside its training label where it has one."""
    fig = _figure(2.5, 1.5)
    ax = fig.subplots()
    k = np.arange(len(LEVELS))
    if label is not None:
        ax.bar(k - 0.2, label, 0.4, color="#a0aec0", label="label")
    ax.bar(k + (0.2 if label is not None else 0), pred, 0.4, color=PALETTE[0], label="model")
    ax.set_xticks(k, [name[:4] for name in LEVELS], fontsize=6)
    ax.set_ylim(0, 1)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=5, loc="upper left", frameon=False)
    return _uri(fig)


def thumbnail(path: Path, size: int = 140) -> str | None:
    """A PNG thumbnail of an image file as a data URI; ``None`` when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
    except (OSError, ValueError):
        return None
    return png_uri(buf.getvalue())
