"""Evaluation metrics (DeQA-Score spec, section 7) as pure functions of arrays and frames.

Correlations (:func:`srcc`, :func:`krcc`, :func:`plcc`), the VQEG logistic mapping
(:func:`fit_logistic`, :func:`plcc_fitted`, :func:`rmse_fitted`), bootstrap intervals
(:func:`bootstrap_ci`), levels (:func:`score_to_level`, :func:`level_entropy`,
:func:`confusion_matrix`), the predicted-vs-ground-truth std (:func:`std_correlation`), the
Gaussian distribution gap (:func:`distribution_gap`: KL, JS, W2) and the sensitivity of a score to
a distortion's severity (:func:`severity_monotonicity`). No function keeps state or writes
files; the ``evaluate`` stage's tables built from them (the detail per evaluated set, the
headline rows, the plot tables) are :mod:`deqa.metric_tables`.

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
  :func:`severity_monotonicity` is signed so that +1 is a score that always falls as the
  distortion gets stronger.
- **Undefined values are** ``None`` (JSON ``null``), never NaN.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats

from deqa import LEVELS
from deqa.schema import PROVENANCE_COLUMNS

LEVEL_THRESHOLDS = (1.8, 2.6, 3.4, 4.2)
"""Upper edges of levels 1..4 on the 1..5 scale (bins closed on the right, spec section 3.5)."""

OVERALL = "overall"
"""Key of the all-datasets group of a split (:func:`deqa.metric_tables.evaluate_predictions`)."""
CROSS_SPLIT = "cross"
"""The split of the ``evaluate.extra`` sets (:mod:`deqa.evaluation`), never pooled into ``overall``."""

ROUND = 6
"""Decimals kept in the detail metrics JSON (stable across platforms)."""


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


def as_number(value: Any, ndigits: int | None = ROUND) -> float | None:
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
    return as_number(stats.spearmanr(x, y).statistic, None)


def krcc(pred: Any, target: Any) -> float | None:
    """Kendall rank correlation, tau-b (``scipy.stats.kendalltau``); ``None`` when undefined."""
    x, y = _pair(pred, target)
    if not _defined(x, y):
        return None
    return as_number(stats.kendalltau(x, y).statistic, None)


def plcc(pred: Any, target: Any) -> float | None:
    """Plain Pearson correlation (``scipy.stats.pearsonr``), no fit; ``None`` when undefined."""
    x, y = _pair(pred, target)
    if not _defined(x, y):
        return None
    return as_number(stats.pearsonr(x, y).statistic, None)


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
    return as_number(np.sqrt(np.mean((fit.predict(x) - y) ** 2)), None)


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
        out[name] = as_number(np.mean(values), None)
    return out


# ---- severity ------------------------------------------------------------------------------
def provenance_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows with a content, a distortion and a numeric severity (empty without the columns)."""
    if not all(c in df.columns for c in PROVENANCE_COLUMNS):
        return df.iloc[0:0]
    severity = pd.to_numeric(df["severity"], errors="coerce")
    keep = df["content"].notna() & df["distortion"].notna() & severity.notna()
    return df[keep].assign(severity=severity[keep].astype(int), distortion=df["distortion"][keep].astype(str))


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
    rows = provenance_rows(df)
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
        "mean": as_number(np.mean(every)) if every else None,
        "n_series": len(every),
        "n_undefined": undefined,
        "by_distortion": {k: {"mean": as_number(np.mean(v)), "n_series": len(v)} for k, v in values.items()},
    }
