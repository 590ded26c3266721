"""Typed readers of the pipeline outputs the report shows, one per file and known schema.

Every reader returns a :class:`Loaded`: the parsed value, or ``None`` with the reason it is missing
(file absent). A file that exists but does not follow its schema raises :class:`ReportInputError`
naming the file, the key and what was wrong: the report must not silently show a wrong number.

==================================  ===============================================================
reader                              file (default path, see :class:`ReportSources`)
==================================  ===============================================================
:func:`read_evaluate`               ``data/evaluate/metrics.json``: :func:`deqa.metrics.evaluate_predictions`
:func:`read_predictions`            ``data/evaluate/predictions.csv`` (:data:`deqa.schema.PREDICTION_COLUMNS`)
:func:`read_discretisation`         ``metrics/discretisation.json`` (the ``soft_labels`` stage)
:func:`read_validate_report`        ``data/validate/report.json`` (:func:`deqa.validation.validate_manifest`)
:func:`read_validate_metrics`       ``metrics/validate.json`` (:func:`deqa.validation.metrics`)
:func:`read_manifest`               ``data/validate/manifest.csv``
:func:`read_soft_labels`            ``data/soft_labels/*.csv`` (the ``soft_labels`` stage's label files)
:func:`read_train_metrics`          ``metrics/train.json``
:func:`read_curves`                 ``dvclive/train/plots/metrics/**/*.tsv``
:func:`read_params`                 ``params.yaml``
==================================  ===============================================================
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import pandas as pd

from deqa.schema import PROB_COLUMNS, PROVENANCE_COLUMNS

T = TypeVar("T")


class ReportInputError(ValueError):
    """An input file exists but does not follow its schema (the message names file and key)."""


@dataclass
class Loaded(Generic[T]):
    """One input: its value, or ``None`` and the reason it is missing."""

    value: T | None = None
    missing: str = ""

    @property
    def ok(self) -> bool:
        return self.value is not None


@dataclass
class ReportSources:
    """Where the report reads each input. Relative paths resolve against ``base_dir``, which also
    resolves the relative image roots of the predictions (for the thumbnails) and is where
    ``git`` is asked for the revision."""

    base_dir: Path = Path(".")
    evaluate_detail: str = "data/evaluate/metrics.json"
    predictions: str = "data/evaluate/predictions.csv"
    discretisation: str = "metrics/discretisation.json"
    validate_metrics: str = "metrics/validate.json"
    validate_report: str = "data/validate/report.json"
    manifest: str = "data/validate/manifest.csv"
    soft_labels: str = "data/soft_labels"
    train_metrics: str = "metrics/train.json"
    dvclive: str = "dvclive/train"
    params: str = "params.yaml"

    def path(self, name: str) -> Path:
        value = Path(getattr(self, name))
        return value if value.is_absolute() else Path(self.base_dir) / value


# ---- schema checking -------------------------------------------------------------------------
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_CHECKS: dict[type, Any] = {
    float: _is_number,
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    bool: lambda v: isinstance(v, bool),
    str: lambda v: isinstance(v, str),
    list: lambda v: isinstance(v, list),
    dict: lambda v: isinstance(v, dict),
    object: lambda v: True,
}


def _base_type(hint: Any) -> tuple[type, bool]:
    """``(base type, optional)`` of a field hint such as ``float | None`` or ``list[int]``."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in args if a is not type(None))
    return typing.get_origin(hint) or hint, optional


def from_mapping(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass ``cls`` from a JSON object, checking each known key's type.

    Keys the dataclass lacks are ignored (a newer file may carry more); a key without a default
    must be present. Raises :class:`ReportInputError` with ``where`` (file and key path).
    """
    if not isinstance(data, dict):
        raise ReportInputError(f"{where}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in data:
            if f.default is MISSING and f.default_factory is MISSING and f.init:
                raise ReportInputError(f"{where}: missing key {f.name!r}")
            continue
        value = data[f.name]
        base, optional = _base_type(hints[f.name])
        if value is None and optional:
            kwargs[f.name] = None
        elif base in _CHECKS and _CHECKS[base](value):
            kwargs[f.name] = float(value) if base is float else value
        else:
            raise ReportInputError(f"{where}.{f.name}: expected {base.__name__}, got {value!r:.60}")
    return cls(**kwargs)


def _read_json(path: Path) -> Loaded[Any]:
    if not path.exists():
        return Loaded(None, f"{path} not found")
    try:
        return Loaded(json.loads(path.read_text(encoding="utf-8")))
    except ValueError as exc:
        raise ReportInputError(f"{path}: not valid JSON ({exc})") from None


# ---- evaluate: data/evaluate/metrics.json ------------------------------------------------------
@dataclass
class Cell:
    """One row of a provenance breakdown (:func:`deqa.metrics.provenance_breakdown`)."""

    n: int
    mean_m: float | None = None
    mean_pred: float | None = None
    bias: float | None = None
    mae: float | None = None
    srcc: float | None = None
    plcc: float | None = None


@dataclass
class Monotonicity:
    """:func:`deqa.metrics.severity_monotonicity`: mean SRCC(severity, −score) over series."""

    mean: float | None
    n_series: int
    n_undefined: int = 0
    by_distortion: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class EvalSet:
    """The detail metrics of one evaluated set (a split's dataset, or its ``overall``)."""

    n: int
    split: str = ""
    name: str = ""
    srcc: float | None = None
    srcc_lo: float | None = None
    srcc_hi: float | None = None
    krcc: float | None = None
    plcc: float | None = None
    plcc_lo: float | None = None
    plcc_hi: float | None = None
    plcc_plain: float | None = None
    rmse: float | None = None
    logistic_ok: bool | None = None
    kl: float | None = None
    js: float | None = None
    w2: float | None = None
    n_gap: int | None = None
    std_srcc: float | None = None
    std_plcc: float | None = None
    std_note: str | None = None  # why std_srcc is not a result (deqa.metric_tables.std_notes)
    entropy: float | None = None
    level_acc: float | None = None
    confusion: list | None = None
    by_distortion: dict[str, Cell] = field(default_factory=dict)
    by_severity: dict[int, Cell] = field(default_factory=dict)
    by_distortion_severity: dict[str, dict[int, Cell]] = field(default_factory=dict)
    monotonicity: Monotonicity | None = None

    @property
    def key(self) -> str:
        return f"{self.split}/{self.name}"

    @property
    def has_breakdown(self) -> bool:
        return bool(self.by_distortion or self.monotonicity)


SPLIT_ORDER = {"test": 0, "cross": 1, "val": 8, "train": 9}
"""Order of the evaluated splits in the report: test, cross-dataset, any other (e.g. a
sensitivity set), validation."""

BREAKDOWN_KEYS = ("by_distortion", "by_severity", "by_distortion_severity", "monotonicity")


def _eval_set(split: str, name: str, data: Any, where: str) -> EvalSet:
    scalars = {k: v for k, v in data.items() if k not in BREAKDOWN_KEYS} if isinstance(data, dict) else data
    out = from_mapping(EvalSet, scalars, where)
    out.split, out.name = split, name
    if "by_distortion" in data:
        out.by_distortion = {
            k: from_mapping(Cell, v, f"{where}.by_distortion.{k}") for k, v in data["by_distortion"].items()
        }
    if "by_severity" in data:
        out.by_severity = {
            int(k): from_mapping(Cell, v, f"{where}.by_severity.{k}")
            for k, v in sorted(data["by_severity"].items(), key=lambda kv: int(kv[0]))
        }
    for dist, cells in (data.get("by_distortion_severity") or {}).items():
        out.by_distortion_severity[dist] = {
            int(k): from_mapping(Cell, v, f"{where}.by_distortion_severity.{dist}.{k}")
            for k, v in sorted(cells.items(), key=lambda kv: int(kv[0]))
        }
    if data.get("monotonicity") is not None:
        out.monotonicity = from_mapping(Monotonicity, data["monotonicity"], f"{where}.monotonicity")
    return out


def read_evaluate(path: Path) -> Loaded[list[EvalSet]]:
    """The evaluated sets, ordered test, cross, others, val (datasets sorted, ``overall`` first).

    An ``overall`` group of a split with a single dataset (older files) is dropped: it repeats
    the dataset's numbers.
    """
    loaded = _read_json(path)
    if not loaded.ok:
        return loaded
    if not isinstance(loaded.value, dict) or not loaded.value:
        raise ReportInputError(f"{path}: expected {{split: {{set: metrics}}}}, got {str(loaded.value)[:60]}")
    sets = []
    for split, block in loaded.value.items():
        if not isinstance(block, dict):
            raise ReportInputError(f"{path}: {split}: expected an object of sets")
        names = [k for k in block if k != "overall"]
        for name, data in block.items():
            if name == "overall" and len(names) == 1:
                continue
            if not isinstance(data, dict):
                raise ReportInputError(f"{path}: {split}.{name}: expected an object")
            sets.append(_eval_set(split, name, data, f"{path}: {split}.{name}"))
    sets.sort(key=lambda s: (SPLIT_ORDER.get(s.split, 5), s.split, s.name != "overall", s.name))
    return Loaded(sets)


# ---- predictions and manifest --------------------------------------------------------------------
@dataclass
class Predictions:
    """The per-image predictions, with what optional columns they carry."""

    frame: pd.DataFrame
    has_std: bool
    has_probs: bool
    has_provenance: bool

    def rows(self, split: str, name: str | None = None) -> pd.DataFrame:
        """Rows of one set with a finite m and μ (``name`` ``None`` or ``overall``: all datasets)."""
        df = self.frame[self.frame["split"] == split]
        if name not in (None, "overall"):
            df = df[df["dataset"] == name]
        return df[np.isfinite(df["m"].astype(float)) & np.isfinite(df["pred_mean"].astype(float))]


def _read_csv(path: Path, required: list[str]) -> Loaded[pd.DataFrame]:
    if not path.exists():
        return Loaded(None, f"{path} not found")
    try:
        df = pd.read_csv(path, dtype={"image": str, "root": str, "dataset": str, "split": str, "content": str})
    except (OSError, ValueError) as exc:
        raise ReportInputError(f"{path}: cannot be read as CSV ({exc})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ReportInputError(f"{path}: missing column(s) {', '.join(missing)}")
    return Loaded(df)


def read_predictions(path: Path) -> Loaded[Predictions]:
    """``predictions.csv``: needs ``image``, ``dataset``, ``split``, ``m``, ``pred_mean``."""
    loaded = _read_csv(path, ["image", "dataset", "split", "m", "pred_mean"])
    if not loaded.ok:
        return loaded
    df = loaded.value
    df["root"] = df["root"].fillna("") if "root" in df.columns else ""
    for column in ("m", "pred_mean", "s", "pred_std", *PROB_COLUMNS):
        if column in df.columns and not pd.api.types.is_numeric_dtype(df[column]):
            raise ReportInputError(f"{path}: column {column!r} is not numeric")
    has_std = "s" in df.columns and "pred_std" in df.columns
    has_probs = all(c in df.columns for c in PROB_COLUMNS)
    has_prov = all(c in df.columns for c in PROVENANCE_COLUMNS) and df["severity"].notna().any()
    return Loaded(Predictions(df, has_std, has_probs, bool(has_prov)))


def read_manifest(path: Path) -> Loaded[pd.DataFrame]:
    """The validated manifest: needs ``dataset``, ``split`` and ``mos``."""
    return _read_csv(path, ["dataset", "split", "mos"])


LABEL_KEY = ["split", "dataset", "root", "image"]
"""The columns that identify an image in the label files and the predictions."""


def read_soft_labels(folder: Path) -> Loaded[pd.DataFrame]:
    """The training labels the model was given (every ``*.csv`` of the ``soft_labels`` stage's
    folder): :data:`LABEL_KEY`, ``p_bad``..``p_excellent`` and ``label_kind``, one row per image."""
    files = sorted(folder.glob("*.csv")) if folder.is_dir() else []
    if not files:
        return Loaded(None, f"{folder} not found (no label files)")
    columns = [*LABEL_KEY, *PROB_COLUMNS, "label_kind"]
    parts = []
    for file in files:
        part = _read_csv(file, columns).value[columns]
        bad = [c for c in PROB_COLUMNS if len(part) and not pd.api.types.is_numeric_dtype(part[c])]
        if bad:
            raise ReportInputError(f"{file}: column {bad[0]!r} is not numeric")
        if len(part):  # a split without rows is a header-only file
            parts.append(part)
    if not parts:
        return Loaded(None, f"{folder}: the label files have no rows")
    frame = pd.concat(parts, ignore_index=True)
    frame["root"] = frame["root"].fillna("")
    return Loaded(frame.drop_duplicates(LABEL_KEY, keep="first"))


# ---- the other stages' JSON files ---------------------------------------------------------------
@dataclass
class Discretisation:
    """One dataset of ``metrics/discretisation.json``."""

    dataset: str = ""
    n: int = 0
    mean_error: float | None = None
    onehot_mean_error: float | None = None
    std_error: float | None = None
    onehot_std_error: float | None = None
    js: float | None = None
    fallbacks: int | None = None


def read_discretisation(path: Path) -> Loaded[list[Discretisation]]:
    loaded = _read_json(path)
    if not loaded.ok:
        return loaded
    if not isinstance(loaded.value, dict):
        raise ReportInputError(f"{path}: expected {{dataset: numbers}}")
    rows = []
    for name, data in sorted(loaded.value.items()):
        row = from_mapping(Discretisation, data, f"{path}: {name}")
        row.dataset = name
        rows.append(row)
    return Loaded(rows)


@dataclass
class Expectation:
    """One expectation of the validation report."""

    name: str
    success: bool
    description: str = ""
    level: str = ""
    expectation: str = ""
    unexpected_count: int | None = None
    observed: object | None = None
    skipped: str | None = None
    error: str | None = None
    failing_rows: list = field(default_factory=list)


@dataclass
class ValidateReport:
    """``data/validate/report.json``."""

    success: bool
    rows_in: int
    kept: int
    quarantined: int
    on_error: str = ""
    rows_failing: int | None = None
    missing_columns: list = field(default_factory=list)
    expectations: list = field(default_factory=list)
    kept_expectations: list = field(default_factory=list)

    @property
    def failed(self) -> list[Expectation]:
        return [e for e in self.expectations + self.kept_expectations if not e.success]


def read_validate_report(path: Path) -> Loaded[ValidateReport]:
    loaded = _read_json(path)
    if not loaded.ok:
        return loaded
    report = from_mapping(ValidateReport, loaded.value, str(path))
    for key in ("expectations", "kept_expectations"):
        items = getattr(report, key)
        setattr(report, key, [from_mapping(Expectation, e, f"{path}: {key}[{i}]") for i, e in enumerate(items)])
    return Loaded(report)


@dataclass
class ValidateMetrics:
    """``metrics/validate.json``."""

    rows_in: int
    kept: int
    quarantined: int
    success: bool
    expectations_passed: int | None = None
    expectations_total: int | None = None
    failing_rows: dict = field(default_factory=dict)


def read_validate_metrics(path: Path) -> Loaded[ValidateMetrics]:
    loaded = _read_json(path)
    return Loaded(from_mapping(ValidateMetrics, loaded.value, str(path))) if loaded.ok else loaded


@dataclass
class TrainMetrics:
    """``metrics/train.json``: the known keys, plus any other scalar in ``extra``."""

    steps: int | None = None
    trainable_params: int | None = None
    val_srcc: float | None = None
    val_plcc: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def read_train_metrics(path: Path) -> Loaded[TrainMetrics]:
    loaded = _read_json(path)
    if not loaded.ok:
        return loaded
    out = from_mapping(TrainMetrics, {k: v for k, v in loaded.value.items() if k != "extra"}, str(path))
    known = {f.name for f in fields(TrainMetrics)}
    out.extra = {k: v for k, v in loaded.value.items() if k not in known and not isinstance(v, (dict, list))}
    return Loaded(out)


def read_curves(dvclive_dir: Path) -> Loaded[dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Every dvclive metric history under ``<dir>/plots/metrics``: ``{name: (steps, values)}``.

    ``name`` is the metric's path without ``.tsv`` (``train/loss``, ``val/srcc``); dvclive writes
    ``timestamp``, ``step`` and the value column.
    """
    root = dvclive_dir / "plots" / "metrics"
    if not root.is_dir():
        return Loaded(None, f"{root} not found (no dvclive training logs)")
    curves = {}
    for tsv in sorted(root.rglob("*.tsv")):
        frame = pd.read_csv(tsv, sep="\t")
        values = [c for c in frame.columns if c not in ("step", "timestamp")]
        if len(values) != 1 or "step" not in frame.columns:
            raise ReportInputError(f"{tsv}: expected columns timestamp, step and one value, got {list(frame.columns)}")
        if len(frame):
            curves[tsv.relative_to(root).with_suffix("").as_posix()] = (
                frame["step"].to_numpy(float),
                pd.to_numeric(frame[values[0]], errors="coerce").to_numpy(float),
            )
    return Loaded(curves) if curves else Loaded(None, f"no dvclive metric history under {root}")


def read_params(path: Path) -> Loaded[dict[str, Any]]:
    """The params file as a mapping (YAML)."""
    import yaml

    if not path.exists():
        return Loaded(None, f"{path} not found")
    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ReportInputError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(value, dict):
        raise ReportInputError(f"{path}: expected a mapping of sections")
    return Loaded(value)
