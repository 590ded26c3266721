"""Evaluation metrics of the ``evaluate`` stage (DeQA-Score spec, section 7) and its plot tables.

Everything here is a pure function of arrays or of a predictions frame
(:data:`deqa.schema.PREDICTION_COLUMNS`). The stage calls :func:`evaluate_predictions` (the
detail, written to ``data/evaluate/metrics.json``), :func:`headline_metrics` (the few numbers per
evaluated set that ``dvc metrics show`` prints, ``metrics/evaluate.json``) and :func:`plot_tables`.

Conventions
-----------
- **Ground truth is the normalised MOS** ``m`` (1..5), an increasing affine map of the raw MOS
  within a dataset, so SRCC/KRCC/PLCC equal those against the raw MOS; across datasets (the
  ``overall`` group) only ``m`` is on a common scale. RMSE is on the 1..5 scale.
- **PLCC** (``plcc``) is computed after the VQEG 4-parameter logistic fit of the predictions onto
  ``m``, initialised at ``[max y, min y, mean x, std x / 4]``; ``plcc_plain`` without the fit.
  When the fit fails the mapping falls back to a straight line (``logistic_ok: false``).
- **Bootstrap intervals** are percentile intervals over resampled images (seeded); the PLCC
  interval keeps the logistic mapping fitted once on all images.
- **Levels**: an image's level is the one-hot bin of ``m`` (thresholds 1.8, 2.6, 3.4, 4.2, closed
  on the right, spec section 3.5); the predicted level is the same bin of ``pred_mean`` (binning
  the score compares like with like, and does not force a spread prediction onto its mode).
- **Distribution gap**: KL(N(m, s) ‖ N(μ, σ)), JS and W2 per image (from :mod:`deqa.labels`),
  averaged over the images with ``s > 0`` and ``σ > 0``.
- **Provenance** (``content``, ``distortion``, ``severity``, :data:`deqa.schema.PROVENANCE_COLUMNS`):
  where rows carry it, a set also gets per-distortion/per-severity breakdowns
  (:func:`provenance_breakdown`) and :func:`severity_monotonicity`, signed so that +1 is a score
  that always falls as the distortion gets stronger.
- **Undefined values are** ``None`` (JSON ``null``), never NaN.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats

from deqa import LEVELS
from deqa.schema import PROB_COLUMNS, PROVENANCE_COLUMNS

LEVEL_THRESHOLDS = (1.8, 2.6, 3.4, 4.2)
"""Upper edges of levels 1..4 on the 1..5 scale (bins closed on the right, spec section 3.5)."""

LEVEL_NAMES = tuple(f"{k} {name}" for k, name in enumerate(LEVELS, start=1))
"""Level labels used in plot tables: ``"1 bad"``..``"5 excellent"`` (sort in level order)."""

OVERALL = "overall"
CROSS_SPLIT = "cross"  # the split of the evaluate.extra sets (deqa.evaluation)
"""Key of the all-datasets group in :func:`evaluate_predictions`."""

ROUND = 6
"""Decimals kept in the metrics JSON (stable across platforms, readable in ``dvc metrics show``)."""


# ---- helpers ---------------------------------------------------------------------------------
def _pair(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """Two equal-length 1-D float arrays with the pairs holding a non-finite value removed."""
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def _defined(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether a correlation of x and y is defined (two points, neither side constant)."""
    return x.size >= 2 and np.ptp(x) > 0 and np.ptp(y) > 0


def _finite(value: Any, ndigits: int | None = ROUND) -> float | None:
    """``value`` as a rounded float, or ``None`` when it is missing, NaN or infinite."""
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        return None
    return round(value, ndigits) if ndigits is not None else value


# ---- correlations ----------------------------------------------------------------------------
def srcc(pred: Any, target: Any) -> float | None:
    """Spearman rank correlation (``scipy.stats.spearmanr``); ``None`` when undefined."""
    x, y = _pair(pred, target)
    if not _defined(x, y):
        return None
    return _finite(stats.spearmanr(x, y).statistic, None)


def krcc(pred: Any, target: Any) -> float | None:
    """Kendall rank correlation, tau-b (``scipy.stats.kendalltau``); ``None`` when undefined."""
    x, y = _pair(pred, target)
    if not _defined(x, y):
        return None
    return _finite(stats.kendalltau(x, y).statistic, None)


def plcc(pred: Any, target: Any) -> float | None:
    """Plain Pearson correlation (``scipy.stats.pearsonr``), no fit; ``None`` when undefined."""
    x, y = _pair(pred, target)
    if not _defined(x, y):
        return None
    return _finite(stats.pearsonr(x, y).statistic, None)


# ---- the VQEG 4-parameter logistic -----------------------------------------------------------
def logistic4(x: Any, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """VQEG 4-parameter logistic ``(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2``."""
    x = np.asarray(x, dtype=float)
    z = -(x - b3) / max(abs(b4), 1e-12)
    with np.errstate(over="ignore"):
        return (b1 - b2) / (1.0 + np.exp(np.clip(z, -700.0, 700.0))) + b2


@dataclass
class LogisticFit:
    """Result of :func:`fit_logistic`.

    ``ok`` is false when ``curve_fit`` failed or gave a degenerate (constant or non-finite) curve;
    :meth:`predict` then applies the least-squares straight line ``slope * x + intercept`` (the
    plain-PLCC fallback), and ``message`` says why.
    """

    ok: bool
    params: tuple[float, float, float, float] | None = None
    linear: tuple[float, float] = (1.0, 0.0)
    message: str = ""
    init: tuple[float, float, float, float] | None = field(default=None, repr=False)

    def predict(self, x: Any) -> np.ndarray:
        """Map predictions ``x`` onto the target scale with the fitted curve (or the fallback)."""
        x = np.asarray(x, dtype=float)
        if self.ok and self.params is not None:
            return logistic4(x, *self.params)
        slope, intercept = self.linear
        return slope * x + intercept


def _linear_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    if x.size >= 2 and np.ptp(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
        return float(slope), float(intercept)
    return 0.0, float(np.mean(y)) if y.size else 0.0


def fit_logistic(pred: Any, target: Any, maxfev: int = 10_000) -> LogisticFit:
    """Fit :func:`logistic4` from predictions to targets with ``scipy.optimize.curve_fit``.

    Initialised at ``[max y, min y, mean x, std x / 4]`` (spec section 7). Never raises on a bad
    fit: returns ``ok=False`` with the straight-line fallback and the reason in ``message``.
    """
    x, y = _pair(pred, target)
    linear = _linear_fit(x, y)
    if x.size < 5:
        return LogisticFit(False, None, linear, f"too few points for a 4-parameter fit ({x.size})")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return LogisticFit(False, None, linear, "constant predictions or targets")
    init = (float(np.max(y)), float(np.min(y)), float(np.mean(x)), float(np.std(x) / 4))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            params, _ = optimize.curve_fit(logistic4, x, y, p0=init, maxfev=maxfev)
    except (RuntimeError, ValueError, optimize.OptimizeWarning) as exc:
        return LogisticFit(False, None, linear, f"curve_fit failed: {exc}", init)
    params = tuple(float(p) for p in params)
    fitted = logistic4(x, *params)
    if not np.all(np.isfinite(fitted)) or np.ptp(fitted) <= 1e-12:
        return LogisticFit(False, None, linear, "degenerate logistic fit (constant curve)", init)
    return LogisticFit(True, params, linear, "ok", init)


def plcc_fitted(pred: Any, target: Any, fit: LogisticFit | None = None) -> float | None:
    """PLCC between the logistic-mapped predictions and the targets (plain PLCC if the fit failed)."""
    x, y = _pair(pred, target)
    fit = fit or fit_logistic(x, y)
    return plcc(fit.predict(x), y)


def rmse_fitted(pred: Any, target: Any, fit: LogisticFit | None = None) -> float | None:
    """RMSE between the logistic-mapped predictions and the targets (straight line if it failed)."""
    x, y = _pair(pred, target)
    if x.size == 0:
        return None
    fit = fit or fit_logistic(x, y)
    return _finite(np.sqrt(np.mean((fit.predict(x) - y) ** 2)), None)


# ---- bootstrap -------------------------------------------------------------------------------
def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (NaN where constant)."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    num = np.einsum("ij,ij->i", a, b)
    den = np.sqrt(np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", b, b))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = num / den
    # rows with a (numerically) constant side are undefined
    r[~(den > 1e-12 * np.maximum(1.0, np.abs(num)))] = np.nan
    return np.clip(r, -1.0, 1.0)


_VECTORISED = {
    "plcc": lambda x, y: _rowwise_pearson(x, y),
    "srcc": lambda x, y: _rowwise_pearson(
        stats.rankdata(x, axis=1, method="average"), stats.rankdata(y, axis=1, method="average")
    ),
}


def bootstrap_indices(n: int, n_resamples: int, seed: int = 0) -> np.ndarray:
    """The ``(n_resamples, n)`` resampling index matrix used by :func:`bootstrap_ci`."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_resamples, n))


def bootstrap_ci(
    pred: Any,
    target: Any,
    statistic: str | Callable[[np.ndarray, np.ndarray], float | None] = "srcc",
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    chunk_elements: int = 2_000_000,
) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of a paired statistic over resampled images.

    ``statistic`` is ``"srcc"`` or ``"plcc"`` (vectorised: ranks and row-wise Pearson over chunks
    of the index matrix) or any callable ``f(pred, target) -> float | None`` (called per resample,
    same indices). Resamples where the statistic is undefined are dropped. Returns
    ``(None, None)`` with fewer than 3 images or no defined resample.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    x, y = _pair(pred, target)
    n = x.size
    if n < 3:
        return None, None
    idx = bootstrap_indices(n, n_resamples, seed)
    if isinstance(statistic, str):
        if statistic not in _VECTORISED:
            raise ValueError(f"unknown statistic {statistic!r}; use one of {sorted(_VECTORISED)}")
        func = _VECTORISED[statistic]
        step = max(1, chunk_elements // n)
        values = np.concatenate([func(x[idx[i : i + step]], y[idx[i : i + step]]) for i in range(0, n_resamples, step)])
    else:
        values = np.array([np.nan if (v := statistic(x[i], y[i])) is None else v for i in idx], dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None, None
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


# ---- levels ----------------------------------------------------------------------------------
def score_to_level(score: Any) -> np.ndarray:
    """One-hot level (1..5) of scores on the 1..5 scale: thresholds 1.8/2.6/3.4/4.2, closed right.

    Scores outside [1, 5] go to the end levels; NaN raises.
    """
    score = np.asarray(score, dtype=float)
    if np.any(np.isnan(score)):
        raise ValueError("score_to_level: NaN score")
    return np.searchsorted(np.asarray(LEVEL_THRESHOLDS), score, side="left") + 1


def level_entropy(probs: Any) -> np.ndarray:
    """Entropy (nats) of each row of level probabilities (rows renormalised; 0·log 0 = 0).

    ``probs`` has shape ``(n, 5)`` (or ``(5,)``), ordered bad..excellent. The maximum is
    ``ln 5 ≈ 1.609`` (uniform); a one-hot row gives 0.
    """
    p = np.asarray(probs, dtype=float)
    squeeze = p.ndim == 1
    p = np.atleast_2d(p)
    if p.shape[-1] != len(LEVELS):
        raise ValueError(f"level_entropy: expected {len(LEVELS)} columns, got shape {p.shape}")
    if np.any(p < 0) or np.any(~np.isfinite(p)):
        raise ValueError("level_entropy: probabilities must be finite and non-negative")
    total = p.sum(axis=1, keepdims=True)
    if np.any(total <= 0):
        raise ValueError("level_entropy: a row of probabilities sums to 0")
    p = p / total
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    h = terms.sum(axis=1)
    return h[0] if squeeze else h


def confusion_matrix(true_levels: Any, pred_levels: Any) -> np.ndarray:
    """5×5 count matrix: row = ground-truth level, column = predicted level (levels 1..5)."""
    t = np.asarray(true_levels).ravel()
    p = np.asarray(pred_levels).ravel()
    if t.shape != p.shape:
        raise ValueError(f"true and predicted levels differ in length: {t.size} vs {p.size}")
    k = len(LEVELS)
    for name, arr in (("true", t), ("predicted", p)):
        if arr.size and (not np.all(np.isin(arr, np.arange(1, k + 1)))):
            raise ValueError(f"{name} levels must be integers in 1..{k}, got {np.unique(arr)}")
    out = np.zeros((k, k), dtype=int)
    np.add.at(out, (t.astype(int) - 1, p.astype(int) - 1), 1)
    return out


def std_correlation(true_std: Any, pred_std: Any, method: str = "srcc") -> float | None:
    """Correlation (``"srcc"`` or ``"plcc"``) of the predicted std with the ground-truth std.

    Images without a ground-truth std (NaN) are dropped; ``None`` when undefined.
    """
    if method == "srcc":
        return srcc(pred_std, true_std)
    if method == "plcc":
        return plcc(pred_std, true_std)
    raise ValueError(f"std_correlation: method must be 'srcc' or 'plcc', got {method!r}")


def distribution_gap(m: Any, s: Any, mu: Any, sigma: Any) -> dict[str, float | None]:
    """Mean KL, JS and W2 between ground truth N(m, s) and prediction N(μ, σ) over images.

    Uses :func:`deqa.labels.gaussian_kl`, ``gaussian_js`` and ``gaussian_w2`` (spec section 7),
    KL in the direction KL(truth ‖ prediction). Only images with ``s > 0`` and ``σ > 0`` count
    (a zero or missing std makes KL undefined); ``n`` is how many did.
    """
    from deqa.labels import gaussian_js, gaussian_kl, gaussian_w2

    m, s, mu, sigma = (np.asarray(a, dtype=float).ravel() for a in (m, s, mu, sigma))
    keep = np.isfinite(m) & np.isfinite(s) & np.isfinite(mu) & np.isfinite(sigma) & (s > 0) & (sigma > 0)
    out: dict[str, float | None] = {"n": int(keep.sum())}
    for name, func in (("kl", gaussian_kl), ("js", gaussian_js), ("w2", gaussian_w2)):
        if not keep.any():
            out[name] = None
            continue
        values = np.asarray(func(m[keep], s[keep], mu[keep], sigma[keep]), dtype=float)
        out[name] = _finite(np.mean(values), None)
    return out


# ---- the evaluate stage's entry points -------------------------------------------------------
REQUIRED_COLUMNS = ("dataset", "split", "m", "s", "pred_mean", "pred_std", *PROB_COLUMNS)

HEADLINE_KEYS = ("srcc", "plcc", "krcc", "rmse", "std_srcc", "kl")
"""Per evaluated set, the numbers of the headline metrics file (``metrics/evaluate.json``)."""

HEADLINE_ROUND = 4
"""Decimals of the headline file: enough for a 0.02 quality margin, short in ``dvc exp show``."""


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
    out["srcc"] = _finite(srcc(x, y))
    out["krcc"] = _finite(krcc(x, y))
    out["plcc"] = _finite(plcc(fit.predict(x), y))
    out["plcc_plain"] = _finite(plcc(x, y))
    out["rmse"] = _finite(rmse_fitted(x, y, fit))
    out["logistic_ok"] = bool(fit.ok)
    for stat, values in (("srcc", x), ("plcc", fit.predict(x))):
        lo, hi = (None, None)
        if bootstrap > 0:
            lo, hi = bootstrap_ci(values, y, stat, n_resamples=bootstrap, seed=seed)
        out[f"{stat}_lo"], out[f"{stat}_hi"] = _finite(lo), _finite(hi)
    gap = distribution_gap(y, df["s"].to_numpy(float), x, df["pred_std"].to_numpy(float))
    out["n_gap"] = gap.pop("n")
    out.update({k: _finite(v) for k, v in gap.items()})
    out["std_srcc"] = _finite(std_correlation(df["s"], df["pred_std"], "srcc"))
    out["std_plcc"] = _finite(std_correlation(df["s"], df["pred_std"], "plcc"))
    probs = df[PROB_COLUMNS].to_numpy(float)
    out["entropy"] = _finite(level_entropy(probs).mean()) if len(df) else None
    cm = confusion_matrix(score_to_level(y), score_to_level(x))
    out["level_acc"] = _finite(np.trace(cm) / cm.sum()) if cm.sum() else None
    out["confusion"] = cm.tolist()
    return out


def _provenance_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows with a content, a distortion and a numeric severity (empty without the columns)."""
    if not all(c in df.columns for c in PROVENANCE_COLUMNS):
        return df.iloc[0:0]
    severity = pd.to_numeric(df["severity"], errors="coerce")
    keep = df["content"].notna() & df["distortion"].notna() & severity.notna()
    return df[keep].assign(severity=severity[keep].astype(int), distortion=df["distortion"][keep].astype(str))


def _cell(part: pd.DataFrame) -> dict[str, Any]:
    """Small-group numbers of a breakdown: n, mean m, mean μ, bias, MAE, SRCC and plain PLCC."""
    m, mu = part["m"].to_numpy(float), part["pred_mean"].to_numpy(float)
    both = np.isfinite(m) & np.isfinite(mu)
    err = mu[both] - m[both]
    return {
        "n": len(part),
        "mean_m": _finite(np.mean(m[both])) if both.any() else None,
        "mean_pred": _finite(np.nanmean(mu)) if np.isfinite(mu).any() else None,
        "bias": _finite(err.mean()) if err.size else None,
        "mae": _finite(np.abs(err).mean()) if err.size else None,
        "srcc": _finite(srcc(mu, m)),
        "plcc": _finite(plcc(mu, m)),
    }


def provenance_breakdown(df: pd.DataFrame) -> dict[str, Any]:
    """Per-distortion, per-severity and per (distortion, severity) numbers of :func:`_cell`.

    ``by_distortion`` ({name: cell}, ``pristine`` included), ``by_severity`` ({"0": cell, "1":
    ...}) and ``by_distortion_severity`` ({name: {"1": cell, ...}}); empty dict when the rows
    carry no provenance (:data:`deqa.schema.PROVENANCE_COLUMNS`).
    """
    rows = _provenance_rows(df)
    if rows.empty:
        return {}
    out: dict[str, Any] = {"by_distortion": {}, "by_severity": {}, "by_distortion_severity": {}}
    for name, part in rows.groupby("distortion", sort=True):
        out["by_distortion"][name] = _cell(part)
        out["by_distortion_severity"][name] = {str(s): _cell(p) for s, p in part.groupby("severity", sort=True)}
    for severity, part in rows.groupby("severity", sort=True):
        out["by_severity"][str(severity)] = _cell(part)
    return out


def severity_monotonicity(df: pd.DataFrame, score: str = "pred_mean") -> dict[str, Any]:
    """Does the predicted score fall as a distortion gets stronger, scene by scene?

    For every (content, distortion) with severities 1..N, the series is that content's pristine
    rows (severity 0, whatever their distortion name) plus its rows of that distortion; its value
    is the Spearman correlation **SRCC(severity, −score)**, so a scorer whose score strictly falls
    with severity gets +1.0, one that ignores the distortion ~0, one that rises −1.0. A series
    with fewer than two severities or a constant score is undefined and only counted.

    Returns ``mean`` (over all defined series, i.e. over scenes and distortions), ``n_series``,
    ``n_undefined`` and ``by_distortion`` ({name: {"mean", "n_series"}}); ``mean`` is ``None``
    when no series is defined (e.g. no provenance columns).
    """
    rows = _provenance_rows(df)
    values: dict[str, list[float]] = {}
    undefined = 0
    if rows.empty:
        return {"mean": None, "n_series": 0, "n_undefined": 0, "by_distortion": {}}
    rows = rows[np.isfinite(rows[score].astype(float))]
    pristine = rows[rows["severity"] == 0]
    for (content, name), part in rows[rows["severity"] > 0].groupby(["content", "distortion"], sort=True):
        series = pd.concat([pristine[pristine["content"] == content], part])
        rho = srcc(series["severity"].to_numpy(float), -series[score].to_numpy(float))
        if rho is None:
            undefined += 1
        else:
            values.setdefault(name, []).append(rho)
    every = [v for vs in values.values() for v in vs]
    return {
        "mean": _finite(np.mean(every)) if every else None,
        "n_series": len(every),
        "n_undefined": undefined,
        "by_distortion": {k: {"mean": _finite(np.mean(v)), "n_series": len(v)} for k, v in values.items()},
    }


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


def headline_metrics(detail: dict[str, Any], leave_out: tuple[str, ...] = ("val",)) -> dict[str, Any]:
    """The headline file from :func:`evaluate_predictions`'s detail: ``{split: {set: {...}}}``.

    Per set only :data:`HEADLINE_KEYS` (SRCC, fitted PLCC, KRCC, fitted RMSE, predicted-vs-
    ground-truth std SRCC, Gaussian KL) and, for sets with provenance, ``monotonicity`` (the mean
    of :func:`severity_monotonicity`), rounded to :data:`HEADLINE_ROUND` decimals; undefined
    values are left out, so ``dvc metrics show`` prints a short row. The ``leave_out`` splits are
    skipped unless nothing else was evaluated: ``val`` picks the checkpoint (its numbers are
    optimistic, and ``metrics/train.json`` already holds its SRCC/PLCC).
    """
    splits = [s for s in detail if s not in leave_out] or list(detail)
    out: dict[str, Any] = {}
    for split in splits:
        for name, group in detail[split].items():
            values = {k: group.get(k) for k in HEADLINE_KEYS}
            values["monotonicity"] = (group.get("monotonicity") or {}).get("mean")
            values = {k: round(float(v), HEADLINE_ROUND) for k, v in values.items() if v is not None}
            out.setdefault(split, {})[name] = values
    return out


def headline_table(headline: dict[str, Any]) -> str:
    """The headline metrics as a fixed-width text table (one line per set), for a console."""
    keys = [*HEADLINE_KEYS, "monotonicity"]
    keys = [k for k in keys if any(k in g for b in headline.values() for g in b.values())]
    lines = ["set".ljust(24) + "".join(k.rjust(13) for k in keys)]
    for split, block in headline.items():
        for name, group in block.items():
            cells = "".join((f"{group[k]:.4f}" if k in group else "-").rjust(13) for k in keys)
            lines.append(f"{split}/{name}".ljust(24) + cells)
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
