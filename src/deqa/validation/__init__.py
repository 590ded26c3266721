"""The ``validate`` stage and ``deqa validate``: a great-expectations 1.x suite of IQA invariants.

The manifest (see :mod:`deqa.schema`) is checked in two steps:

1. **Per-row file facts** (:mod:`deqa.validation.facts`) are computed in Python into helper
   columns (prefixed ``_``), because they
   need the file system and Pillow: path containment (no absolute path, no ``..``, no symlink
   that leaves the data root), existence, zero size, Pillow identify/verify/load (truncation),
   width/height and pixel count (a decompression-bomb guard: Pillow's ``MAX_IMAGE_PIXELS`` is set
   to ``max_pixels`` and its bomb error/warning is caught), a content hash for split leakage, and
   whether the image converts to 8-bit RGB faithfully (:func:`deqa.images.conversion_issues`).
   No row can abort the run: a NUL byte, an over-long name, a symlink loop or any decoder error
   is that row's reason. Rows imported with ``annotate=True`` (:mod:`deqa.importers`) also carry
   ``_line`` (the quarantine file and messages name it), ``_line_error`` (a CSV row with the
   wrong number of fields: expectation ``row_parses``) and ``_text_<col>`` (the text of a value
   that is not a number: reported as ``mos '4,5' is not a number`` and kept in the quarantine file).
2. **The suite** (:mod:`deqa.validation.suite`, a table of checks) asserts every invariant with GX expectations on that frame:
   required columns, row count, non-empty splits (table level); types, non-null values, MOS finite
   and within ``[lo, hi]``, ``lo < hi``, std >= 0 and within the scale, vote counts consistent with
   MOS/std/n_votes, unique ids, no image (by path or by content) in two splits, and the file
   checks (row level). GX returns the failing row indices; each becomes a row-level reason.

``on_error``: ``fail`` -- any failed expectation fails the run; ``quarantine`` -- rows with a
row-level failure go to the quarantine file with their reasons, the rest is kept, and the run
fails only if the *kept* rows still break a table-level expectation (too few rows, an empty split)
or required columns are missing. ``rows_in == kept + quarantined`` always holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from deqa.schema import MANIFEST_COLUMNS, VOTE_COLUMNS
from deqa.validation.facts import NUMERIC_COLUMNS, build_frame, numeric
from deqa.validation.suite import build_suite, report_entries


@dataclass
class ValidationResult:
    """What :func:`validate_manifest` found: the JSON report, the kept and quarantined rows."""

    report: dict
    kept: pd.DataFrame
    quarantined: pd.DataFrame
    success: bool
    message: str
    failed: list = field(default_factory=list)  # the report entries of the failed expectations

    def failure_text(self, full_list: str | None = None) -> str:
        """:attr:`message` with ``full_list`` (where every failing row is listed) in its hints."""
        return failure_message(self.report, self.failed, full_list=full_list) if not self.success else ""


def validate_manifest(
    df: pd.DataFrame, cfg, on_error: str | None = None, required_splits: list[str] | None = None, progress: bool = False
) -> ValidationResult:
    """Validate a manifest frame; ``cfg`` is a ``ValidateConfig``. Never raises on bad data.

    ``required_splits``: splits that must have rows (default: ``cfg.required_splits``; pass
    ``[]`` to require none). ``on_error`` overrides ``cfg.on_error``.
    """
    on_error = on_error or cfg.on_error
    if on_error not in ("fail", "quarantine"):
        raise ValueError(f"on_error must be 'fail' or 'quarantine', got {on_error!r}")
    required_splits = list(cfg.required_splits if required_splits is None else required_splits)
    source = df.reset_index(drop=True)
    columns = list(source.columns)
    frame = build_frame(source, cfg.min_side, cfg.max_pixels, progress)
    checks = build_suite(cfg, columns, required_splits)
    entries, reasons = report_entries(frame, checks, columns)
    bad_rows = sorted(reasons)
    missing_cols = [c for c in MANIFEST_COLUMNS if c not in columns]
    clean, kept, quarantined = _split_rows(source, frame, reasons)

    kept_entries = []
    if on_error == "quarantine" and not missing_cols:  # the table-level checks again, on the kept rows
        table_checks = [c for c in checks if c.level == "table" and c.name != "columns"]
        kept_frame = frame.drop(index=bad_rows).reset_index(drop=True)
        kept_entries, _ = report_entries(kept_frame, table_checks, columns)

    if on_error == "fail":
        failed = [e for e in entries if not e["success"]]
        if failed:
            kept, quarantined = clean.iloc[0:0].copy(), quarantined.iloc[0:0].copy()
    else:
        failed = [e for e in entries if e["name"] == "columns" and not e["success"]]
        failed += [e for e in kept_entries if not e["success"]]
    success = not failed
    report = {
        "on_error": on_error,
        "success": success,
        "rows_in": len(source),
        "kept": len(kept),
        "quarantined": len(quarantined),
        "rows_failing": len(bad_rows),
        "missing_columns": missing_cols,
        "expectations": entries,
        "kept_expectations": kept_entries,
    }
    message = "" if success else failure_message(report, failed)
    return ValidationResult(report, kept, quarantined, success, message, failed)


def _split_rows(
    source: pd.DataFrame, frame: pd.DataFrame, reasons: dict[int, list[str]]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(every row typed, the kept rows, the quarantined rows as read with their reasons)``."""
    bad_rows = sorted(reasons)
    out_cols = [c for c in source.columns if not c.startswith("_")]
    clean = source[out_cols].copy()
    for col in NUMERIC_COLUMNS + VOTE_COLUMNS:
        if col in clean.columns:
            clean[col] = numeric(frame[col]).to_numpy()
    kept = clean.drop(index=bad_rows).reset_index(drop=True)
    quarantined = _original_values(source, out_cols).loc[bad_rows].copy()
    quarantined["reasons"] = ["; ".join(reasons[i]) for i in bad_rows]
    if "_line" in source.columns:
        quarantined.insert(0, "line", source.loc[bad_rows, "_line"].to_numpy())
    quarantined.insert(0, "row", bad_rows)
    return clean, kept, quarantined.reset_index(drop=True)


def _original_values(source: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The rows as read, for the quarantine file: a value that is not a number keeps its text."""
    out = source[columns].copy()
    for col in NUMERIC_COLUMNS + VOTE_COLUMNS:
        text = f"_text_{col}"
        if col in out.columns and text in source.columns:
            keep = source[text].notna() & (source[text].astype(str) != "")
            out[col] = out[col].astype(object).where(~keep, source[text])
    return out


FULL_LIST_HINT = "the JSON report lists them all (deqa validate --report FILE; the stage: data/validate/report.json)"


def failure_message(report: dict, failed: list[dict], examples: int = 3, full_list: str | None = None) -> str:
    """A clear, traceback-free failure text: each failing expectation with example rows.

    When an expectation has more failing rows than ``examples``, the text says how many more and
    where all of them are (``full_list``, else :data:`FULL_LIST_HINT`).
    """
    lines = [
        f"validation failed (on_error={report['on_error']}): {len(failed)} expectation(s) failed "
        f"on {report['rows_in']} rows"
    ]
    if report["missing_columns"]:
        lines.append(
            f"  missing required column(s): {', '.join(report['missing_columns'])} "
            f"(expected columns: {', '.join(MANIFEST_COLUMNS)})"
        )
    for e in failed:
        if e.get("skipped"):
            continue
        if e["level"] == "table":
            lines.append(f"  - {e['name']}: {e['description']} (observed: {e.get('observed')})")
            continue
        lines.append(f"  - {e['name']}: {e['description']} -- {e.get('unexpected_count', 0)} row(s)")
        for r in e["failing_rows"][:examples]:
            where = f" (line {r['line']})" if "line" in r else ""
            lines.append(f"      row {r['row']}{where} {r['image']}: {r['reason']}")
        if len(e["failing_rows"]) > examples:
            lines.append(f"      ... and {len(e['failing_rows']) - examples} more: {full_list or FULL_LIST_HINT}")
    return "\n".join(lines)


def summary(result: ValidationResult, full_list: str | None = None) -> str:
    """A short console summary: counts, one line per failed expectation, where the full list is."""
    r = result.report
    head = (
        f"validate: {r['rows_in']} rows in, {r['kept']} kept, {r['quarantined']} quarantined "
        f"(on_error={r['on_error']}) -> {'OK' if result.success else 'FAILED'}"
    )
    entries = r["expectations"]
    lines = [head, f"  {sum(e['success'] for e in entries)}/{len(entries)} expectations passed on the input"]
    for e in entries:
        if not e["success"]:
            what = e.get("skipped") or (
                f"{e.get('unexpected_count', 0)} row(s)" if e["level"] == "row" else f"observed {e.get('observed')}"
            )
            example = (
                f"; e.g. {e['failing_rows'][0]['image']}: {e['failing_rows'][0]['reason']}" if e["failing_rows"] else ""
            )
            lines.append(f"  FAIL {e['name']}: {what}{example}")
    for e in r["kept_expectations"]:
        if not e["success"]:
            lines.append(f"  FAIL (kept rows) {e['name']}: observed {e.get('observed')}")
    if any(len(e["failing_rows"]) > 1 for e in entries):
        lines.append(f"  every failing row with its reasons: {full_list or FULL_LIST_HINT}")
    return "\n".join(lines)


def metrics(result: ValidationResult) -> dict:
    """The DVC metrics: row counts, the rows-in identity, and per-expectation failing-row counts."""
    r = result.report
    return {
        "rows_in": r["rows_in"],
        "kept": r["kept"],
        "quarantined": r["quarantined"],
        "rows_in_equals_kept_plus_quarantined": r["rows_in"] == r["kept"] + r["quarantined"],
        "success": r["success"],
        "expectations_passed": sum(e["success"] for e in r["expectations"]),
        "expectations_total": len(r["expectations"]),
        "failing_rows": {e["name"]: e.get("unexpected_count", 0) for e in r["expectations"] if e["level"] == "row"},
    }


def write_outputs(
    result: ValidationResult,
    out_dir: str | Path | None = None,
    report_path: str | Path | None = None,
    metrics_path: str | Path | None = None,
) -> None:
    """Write ``manifest.csv``/``quarantine.csv`` (under ``out_dir``), the JSON report and metrics."""
    from deqa.stage import write_json

    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        result.kept.to_csv(out / "manifest.csv", index=False)
        result.quarantined.to_csv(out / "quarantine.csv", index=False)
    if report_path is not None:
        write_json(report_path, result.report)
    if metrics_path is not None:
        write_json(metrics_path, metrics(result))
