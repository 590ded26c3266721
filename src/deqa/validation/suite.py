"""Step 2 of validation: the IQA invariants as a table of great-expectations 1.x expectations.

Each :class:`Check` is data: the GX expectation class and its arguments, its level (``table`` or
``row``), a description, and for a row-level check the column and the text that explain a failing
row. :func:`build_suite` picks the checks that apply (some depend on the params or on the columns
present) in a fixed order; :func:`run_checks` builds fresh GX expectations from them for one run
in an ephemeral context, so the same suite validates the input and then the kept rows.
:func:`report_entries` turns the results into the report's entries and each failing row's reasons.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from deqa.images import display_path
from deqa.schema import MANIFEST_COLUMNS, SPLITS, VOTE_COLUMNS
from deqa.validation.facts import NUMERIC_COLUMNS, TEXT_COLUMNS

NUMBER_TYPES = ["int", "float", "int64", "float64"]
FILE = ("image", "root")  # the columns the file checks need


@dataclass(frozen=True)
class Check:
    """One expectation of the suite, with what a failing row means in words."""

    name: str
    expectation: str  # a class of great_expectations.expectations
    kwargs: dict[str, Any]
    level: str  # "row" or "table"
    description: str
    column: str | None = None  # the column whose value explains a failing row
    reason: Callable[[Any, pd.Series], str] | None = None
    needs: tuple[str, ...] = ()  # required manifest columns

    def build(self) -> Any:
        """A new GX expectation (one belongs to one suite)."""
        import great_expectations as gx

        expectation = getattr(gx.expectations, self.expectation)(**self.kwargs)
        expectation.description = self.description
        return expectation


def _row(name, expectation, column, description, explain, reason, needs, **kwargs) -> Check:
    return Check(name, expectation, {"column": column, **kwargs}, "row", description, explain, reason, tuple(needs))


def _same(v: Any, r: pd.Series) -> str:
    return str(v)


# ---- the table: row-level checks that depend on nothing but the data -----------------------
TYPE_CHECKS = [
    _row(f"type_{c}", "ExpectColumnValuesToBeInTypeList", c, f"{c} is text", c,
         lambda v, r, c=c: f"{c} {v!r} is not text", [c], type_list=["str"])
    for c in TEXT_COLUMNS
] + [
    _row(f"type_{c}", "ExpectColumnValuesToBeInTypeList", c, f"{c} is a number", c,
         lambda v, r, c=c: f"{c} {v!r} is not a number", [c], type_list=NUMBER_TYPES)
    for c in NUMERIC_COLUMNS
]  # fmt: skip

NOT_NULL_CHECKS = [
    _row(f"not_null_{c}", "ExpectColumnValuesToNotBeNull", c, f"{c} present", c,
         lambda v, r, c=c: f"{c} is missing (empty or NaN)", [c])
    for c in ["image", "root", "dataset", "split", "mos", "lo", "hi"]
]  # fmt: skip

VALUE_CHECKS = [
    _row("split_values", "ExpectColumnValuesToBeInSet", "split", f"split is one of {', '.join(SPLITS)}", "split",
         lambda v, r: f"split={v!r} is not one of {', '.join(SPLITS)}", ["split"], value_set=list(SPLITS)),
    _row("bounds", "ExpectColumnValuesToBeBetween", "_span", "normalisation bounds finite with lo < hi", "_span",
         lambda v, r: f"bounds lo={r['_lo']}, hi={r['_hi']} are not finite with lo < hi", ["lo", "hi"],
         min_value=0, strict_min=True, max_value=1e12),
    _row("mos_in_scale", "ExpectColumnValuesToBeBetween", "_mos_norm",
         "MOS finite and within the dataset's scale [lo, hi]", "_mos",
         lambda v, r: (f"mos={v} is not finite" if not np.isfinite(v)
                       else f"mos={v} is outside the dataset's scale [{r['_lo']}, {r['_hi']}]"),
         ["mos", "lo", "hi"], min_value=1 - 1e-9, max_value=5 + 1e-9),
    _row("std_non_negative", "ExpectColumnValuesToBeBetween", "_std", "std >= 0 where present", "_std",
         lambda v, r: f"std={v} is negative", ["std"], min_value=0),
    _row("std_in_scale", "ExpectColumnValuesToBeBetween", "_std_norm",
         "std finite and at most the scale's span hi - lo", "_std",
         lambda v, r: (f"std={v} is not finite" if not np.isfinite(v)
                       else f"std={v} exceeds the scale's span hi - lo = {r['_span']}"),
         ["std", "lo", "hi"], max_value=4),
    _row("n_votes_positive", "ExpectColumnValuesToBeBetween", "_n_votes", "n_votes >= 1 where present", "_n_votes",
         lambda v, r: f"n_votes={v} is below 1", ["n_votes"], min_value=1),
]  # fmt: skip

FILE_CHECKS = [
    _row("unique_ids", "ExpectColumnValuesToBeUnique", "_id", "unique image ids (root/image)", "image",
         lambda v, r: f"duplicate image id {r['_id']}", FILE),
    _row("no_split_leak", "ExpectColumnValuesToBeBetween", "_n_splits",
         "no image (by path or by content) in two splits", "_splits_of_image",
         lambda v, r: f"split leakage: the same image is in splits {v}", [*FILE, "split"], max_value=1),
    _row("path_inside_root", "ExpectColumnValuesToBeInSet", "_path_check",
         "relative path that resolves inside the data root", "_path_check", _same, FILE, value_set=["ok"]),
    _row("file_decodes", "ExpectColumnValuesToBeInSet", "_file_check",
         "file exists, is not empty, and decodes completely with Pillow", "_file_check", _same, FILE,
         value_set=["ok"]),
    _row("file_converts", "ExpectColumnValuesToBeInSet", "_convert_check",
         "image converts to 8-bit RGB faithfully (float within [0, 1], one frame, known mode)", "_convert_check",
         _same, FILE, value_set=["ok"]),
]  # fmt: skip

ROW_PARSES = _row(
    "row_parses", "ExpectColumnValuesToBeInSet", "_line_error", "the row has as many fields as the header",
    "_line_error", _same, ["_line_error"], value_set=[""],
)  # fmt: skip


# ---- checks that depend on the params ------------------------------------------------------
def _table_checks(cfg, required_splits: list[str]) -> list[Check]:
    checks = [
        Check("columns", "ExpectTableColumnsToMatchSet", {"column_set": MANIFEST_COLUMNS, "exact_match": False},
              "table", f"required columns present: {', '.join(MANIFEST_COLUMNS)}"),
        Check("row_count", "ExpectTableRowCountToBeBetween", {"min_value": cfg.min_rows}, "table",
              f"at least {cfg.min_rows} rows"),
    ]  # fmt: skip
    if required_splits:
        kwargs = {"column": "split", "value_set": list(required_splits)}
        description = f"no empty split: {', '.join(required_splits)} each have rows"
        checks.append(Check("splits_not_empty", "ExpectColumnDistinctValuesToContainSet", kwargs, "table",
                            description, needs=("split",)))  # fmt: skip
    return checks


def _vote_checks(tolerance: float) -> list[Check]:
    checks = []
    for what, col in (("mos", "_votes_mos_gap"), ("std", "_votes_std_gap"), ("n_votes", "_votes_n_gap")):
        limit = 0.5 if what == "n_votes" else tolerance
        checks.append(
            _row(f"{what}_matches_votes", "ExpectColumnValuesToBeBetween", col,
                 f"{what} consistent with the vote counts c1..c5 (|gap| <= {limit})", col,
                 lambda v, r, w=what, lim=limit: (
                     f"{w}={r['_' + w]} does not match the vote counts c1..c5 (gap {v:.4g} > {lim})"
                     if np.isfinite(v) else f"vote counts c1..c5 unusable for checking {w}"),
                 [what, *VOTE_COLUMNS], max_value=limit)
        )  # fmt: skip
    return checks


def _size_checks(cfg) -> list[Check]:
    return [
        _row("min_side", "ExpectColumnValuesToBeBetween", "_min_side",
             f"image at least {cfg.min_side} px on its short side", "_min_side",
             lambda v, r: f"image too small: {int(r['_width'])}x{int(r['_height'])} px (min side {cfg.min_side})",
             FILE, min_value=cfg.min_side),
        _row("max_pixels", "ExpectColumnValuesToBeBetween", "_pixels",
             f"at most {cfg.max_pixels} pixels (decompression-bomb guard)", "_pixels",
             lambda v, r: f"decompression bomb: {int(v)} pixels > max_pixels {cfg.max_pixels}",
             FILE, max_value=cfg.max_pixels),
    ]  # fmt: skip


def build_suite(cfg, columns: list[str], required_splits: list[str]) -> list[Check]:
    """The checks that apply, in report order (``cfg``: a :class:`deqa.config.ValidateConfig`)."""
    checks = _table_checks(cfg, required_splits)
    if "_line_error" in columns:  # rows of a CSV read by deqa.importers with annotate=True
        checks.append(ROW_PARSES)
    checks += TYPE_CHECKS + NOT_NULL_CHECKS + VALUE_CHECKS
    if all(c in columns for c in VOTE_COLUMNS):
        checks += _vote_checks(cfg.vote_tolerance)
    return checks + FILE_CHECKS + _size_checks(cfg)


# ---- running and reading the results --------------------------------------------------------
def run_checks(frame: pd.DataFrame, checks: list[Check]) -> list:
    """Validate ``frame`` against ``checks`` in an ephemeral GX context; one result per check."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    asset = ctx.data_sources.add_pandas("manifest").add_dataframe_asset("manifest")
    batch_def = asset.add_batch_definition_whole_dataframe("whole")
    # expectations go in at construction: adding them one by one to a stored suite re-serialises it
    built = [c.build() for c in checks]
    suite = ctx.suites.add(gx.ExpectationSuite(name="iqa_manifest", expectations=built))
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name="iqa", data=batch_def, suite=suite))
    result = vd.run(batch_parameters={"dataframe": frame}, result_format={"result_format": "COMPLETE"})
    by_id = {r.expectation_config.id: r for r in result.results}
    return [by_id[e.id] for e in built]


def jsonable(v: Any) -> Any:
    """A value for the JSON report (numpy scalars as Python numbers, non-finite floats as text)."""
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if np.isfinite(v) else str(v)
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if v is None or isinstance(v, (str, bool, int)):
        return v
    return str(v)


def report_entries(
    frame: pd.DataFrame, checks: list[Check], columns: list[str]
) -> tuple[list[dict], dict[int, list[str]]]:
    """Run the checks whose columns exist; return the report entries and row -> reasons."""
    runnable = [c for c in checks if all(n in columns for n in c.needs)]
    results = dict(zip([c.name for c in runnable], run_checks(frame, runnable), strict=False)) if runnable else {}
    entries, reasons = [], {}
    for c in checks:
        entry = {"name": c.name, "expectation": c.expectation, "level": c.level, "description": c.description}
        if c.name not in results:
            missing = [n for n in c.needs if n not in columns]
            entry.update(success=False, skipped=f"required column(s) missing: {', '.join(missing)}", failing_rows=[])
            entries.append(entry)
            continue
        res = results[c.name]
        entry["success"] = bool(res.success)
        if res.exception_info and res.exception_info.get("raised_exception"):
            entry["error"] = str(res.exception_info.get("exception_message"))
        if c.level == "table":
            entry.update(_table_entry(frame, c, res))
        else:
            entry.update(_row_entry(frame, c, res, reasons))
        entries.append(entry)
    return entries, reasons


def _table_entry(frame: pd.DataFrame, c: Check, res) -> dict:
    observed = jsonable(res.result.get("observed_value"))
    if c.name == "columns":  # the manifest's own columns, not the helper ones
        observed = [x for x in observed or [] if not str(x).startswith("_")]
    if c.name == "splits_not_empty":
        counts = frame["split"].astype(str).value_counts()
        wanted = c.kwargs["value_set"]
        observed = {s: int(counts.get(s, 0)) for s in wanted}
        if not res.success:
            observed = "empty split(s): " + ", ".join(s for s in wanted if s not in counts)
    return {"observed": observed, "failing_rows": []}


def _row_entry(frame: pd.DataFrame, c: Check, res, reasons: dict[int, list[str]]) -> dict:
    idx = res.result.get("unexpected_index_list") or []
    failing = []
    for i in idx:
        row = frame.loc[i]
        value = row[c.column] if c.column in frame.columns else None
        try:
            why = c.reason(value, row)
        except Exception:  # a reason text must never break the report
            why = f"{c.description}: failed ({c.column}={value!r})"
        image = row.get("image")
        entry_row = {
            "row": int(i),
            "image": display_path(image) if isinstance(image, str) else jsonable(image),
            "reason": why,
        }
        if "_line" in frame.columns and pd.notna(row.get("_line")):
            entry_row["line"] = int(row["_line"])
        failing.append(entry_row)
        reasons.setdefault(int(i), []).append(f"{c.name}: {why}")
    return {"unexpected_count": len(idx), "failing_rows": failing}
