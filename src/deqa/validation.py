"""The ``validate`` stage and ``deqa validate``: a great-expectations 1.x suite of IQA invariants.

The manifest (see :mod:`deqa.schema`) is checked in two steps:

1. **Per-row file facts** are computed in Python into helper columns (prefixed ``_``), because they
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
2. **The suite** (:func:`build_suite`) asserts every invariant with GX expectations on that frame:
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

import hashlib
import io
import logging
import os
import re
import stat
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from deqa.images import conversion_issues, display_path, error_reason
from deqa.schema import MANIFEST_COLUMNS, SPLITS, VOTE_COLUMNS

NUMERIC_COLUMNS = ["mos", "std", "n_votes", "lo", "hi"]
TEXT_COLUMNS = ["image", "root", "dataset", "split"]
NUMBER_TYPES = ["int", "float", "int64", "float64"]


# --------------------------------------------------------------------------------------------
# step 1: per-row file facts
# --------------------------------------------------------------------------------------------
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


def check_path(image: Any, root: Any, _cache: dict | None = None) -> tuple[str, Path | None]:
    """``("ok", resolved path)`` or ``(reason, None)`` for the containment of ``root/image``.

    Never raises: a NUL byte, an over-long name or a symlink loop is a reason, not an exception.
    """
    if not isinstance(image, str) or not image.strip():
        return "empty image path", None
    if not isinstance(root, str):
        return "empty data root", None
    for what, text in (("image path", image), ("data root", root)):
        if "\0" in text:
            return f"the {what} '{display_path(text)}' contains a NUL byte", None
    if image.startswith(("/", "\\")) or os.path.isabs(image) or re.match(r"^[A-Za-z]:[\\/]", image):
        return f"absolute path {image!r} (must be relative to the data root)", None
    if ".." in PurePosixPath(image.replace("\\", "/")).parts:
        return f"path traversal: {image!r} contains '..'", None
    cache = _cache if _cache is not None else {}
    try:
        if root not in cache:
            cache[root] = Path(os.path.realpath(root or "."))
        root_res = cache[root]
        full = Path(os.path.realpath(root_res / image))  # never raises on loops or long names
    except (OSError, ValueError) as exc:
        return f"cannot resolve the path: {error_reason(exc, image)}", None
    if not full.is_relative_to(root_res):
        return f"symlink escapes the data root: {image!r} resolves to {full}", None
    return "ok", full


def check_image(path: Path, min_side: int, max_pixels: int) -> dict:
    """Open, verify and fully decode one image file; returns the facts the suite asserts.

    Never raises. ``_convert_check`` is ``"ok"`` or why the image cannot be converted to 8-bit
    RGB faithfully (:func:`deqa.images.conversion_issues`); None when it did not decode.
    """
    facts = {
        "_file_check": "ok",
        "_width": np.nan,
        "_height": np.nan,
        "_pixels": np.nan,
        "_sha1": None,
        "_convert_check": None,
    }
    try:
        st = os.stat(path)
    except (OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError):
            facts["_file_check"] = "file missing" + (" (broken symlink)" if os.path.islink(path) else "")
        else:
            facts["_file_check"] = f"unreadable: {error_reason(exc, path)}"
        return facts
    if not stat.S_ISREG(st.st_mode):
        facts["_file_check"] = "not a regular file"
        return facts
    try:
        data = path.read_bytes()
    except OSError as exc:
        facts["_file_check"] = f"unreadable: {error_reason(exc, path)}"
        return facts
    if not data:
        facts["_file_check"] = "zero-byte file"
        return facts
    facts["_sha1"] = hashlib.sha1(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                facts["_width"], facts["_height"] = im.size
                facts["_pixels"] = im.size[0] * im.size[1]
                im.verify()
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                facts["_convert_check"] = "; ".join(conversion_issues(im)) or "ok"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        m = _BOMB_PIXELS.search(str(exc))
        if m:
            facts["_pixels"] = int(m.group(1))
        facts["_file_check"] = f"not decoded (decompression-bomb guard): {exc}"
    except Image.UnidentifiedImageError:
        facts["_file_check"] = "not an image: Pillow cannot identify the file format"
    except MemoryError:
        raise
    except Exception as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        kind = "truncated image" if "truncated" in text.lower() else "decode error"
        facts["_file_check"] = f"{kind}: {text}"
    return facts


def file_facts(df: pd.DataFrame, min_side: int, max_pixels: int, progress: bool = False) -> pd.DataFrame:
    """The per-row helper columns of step 1 (``_path_check``, ``_file_check``, sizes, hash)."""
    from tqdm import tqdm

    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    cache: dict = {}
    rows = []
    try:
        images = df["image"] if "image" in df.columns else pd.Series([None] * len(df))
        roots = df["root"] if "root" in df.columns else pd.Series([""] * len(df))
        for image, root in tqdm(
            zip(images, roots, strict=False),
            total=len(df),
            desc="checking images",
            unit="img",
            disable=not progress,
            mininterval=1.0,
        ):
            try:
                status, path = check_path(image, root, cache)
                facts = check_image(path, min_side, max_pixels) if path is not None else None
            except Exception as exc:
                status, path, facts = f"cannot check the path: {type(exc).__name__}: {exc}", None, None
            if facts is None:
                facts = {
                    "_file_check": "not checked (unsafe path)",
                    "_width": np.nan,
                    "_height": np.nan,
                    "_pixels": np.nan,
                    "_sha1": None,
                    "_convert_check": None,
                }
            facts["_path_check"] = status
            rows.append(facts)
    finally:
        Image.MAX_IMAGE_PIXELS = old
    out = pd.DataFrame(
        rows,
        index=df.index,
        columns=["_path_check", "_file_check", "_width", "_height", "_pixels", "_sha1", "_convert_check"],
    )
    out["_min_side"] = np.fmin(out["_width"].astype(float), out["_height"].astype(float))
    return out


# --------------------------------------------------------------------------------------------
# the frame GX sees
# --------------------------------------------------------------------------------------------
def _number_or_text(value: Any) -> Any:
    """Numbers become float (NaN when empty); text that is not a number stays text (a type error)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return np.nan
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    if text == "" or text.lower() in ("nan", "na", "null", "none"):
        return np.nan
    try:
        return float(text)
    except ValueError:
        return text


def _numeric(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series.map(lambda v: v if isinstance(v, float) else np.nan), errors="coerce")


def build_frame(df: pd.DataFrame, min_side: int, max_pixels: int, progress: bool = False) -> pd.DataFrame:
    """The manifest with normalised types plus the helper columns the expectations assert."""
    frame = df.reset_index(drop=True).copy()
    for col in TEXT_COLUMNS:
        if col in frame.columns:
            frame[col] = frame[col].astype(object).where(frame[col].notna(), None)
    for col in NUMERIC_COLUMNS + VOTE_COLUMNS:
        if col in frame.columns:
            values = frame[col].astype(object)
            text = f"_text_{col}"
            if text in frame.columns:  # the importer's record of a value that is not a number
                values = frame[text].astype(object).where(frame[text].notna() & (frame[text] != ""), values)
            frame[col] = values.map(_number_or_text).astype(object)
    num = {
        c: (_numeric(frame[c]) if c in frame.columns else pd.Series(np.nan, index=frame.index))
        for c in NUMERIC_COLUMNS + VOTE_COLUMNS
    }
    for c in NUMERIC_COLUMNS:
        frame[f"_{c}"] = num[c]
    span = num["hi"] - num["lo"]
    frame["_span"] = span
    ok_span = span.where(np.isfinite(span) & (span > 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        frame["_mos_norm"] = 4 * (num["mos"] - num["lo"]) / ok_span + 1
        frame["_std_norm"] = 4 * num["std"] / ok_span
    if all(c in frame.columns for c in VOTE_COLUMNS):
        counts = np.stack([num[c].to_numpy(float) for c in VOTE_COLUMNS], axis=1)
        k = np.arange(1, 6)
        with np.errstate(invalid="ignore", divide="ignore"):
            n = counts.sum(axis=1)
            mean = (counts * k).sum(axis=1) / n
            var = (counts * (k - mean[:, None]) ** 2).sum(axis=1) / np.where(n > 1, n - 1, np.nan)
        frame["_votes_mos_gap"] = np.abs(num["mos"].to_numpy() - mean)
        frame["_votes_std_gap"] = np.abs(num["std"].to_numpy() - np.sqrt(var))
        frame["_votes_n_gap"] = np.abs(num["n_votes"].to_numpy() - n)
    frame = pd.concat([frame, file_facts(frame, min_side, max_pixels, progress)], axis=1)
    key = [
        os.path.normpath(os.path.join(str(r), str(i)))
        for r, i in zip(frame.get("root", [""] * len(frame)), frame.get("image", [""] * len(frame)), strict=False)
    ]
    frame["_id"] = key
    if "split" in frame.columns:
        split = frame["split"].astype(object)
        by_id = split.groupby(frame["_id"]).transform("nunique")
        sha = frame["_sha1"].fillna(pd.Series([f"nofile:{i}" for i in range(len(frame))]))
        by_sha = split.groupby(sha).transform("nunique")
        frame["_n_splits"] = np.maximum(by_id.fillna(0), by_sha.fillna(0)).astype(float)
        others = {}
        for grouping in (frame["_id"], sha):
            for _, idx in split.groupby(grouping).groups.items():
                if len(idx) > 1:
                    names = sorted(set(split[idx].dropna().astype(str)))
                    for i in idx:
                        others.setdefault(i, set()).update(names)
        frame["_splits_of_image"] = [",".join(sorted(others.get(i, set()))) for i in range(len(frame))]
    return frame


# --------------------------------------------------------------------------------------------
# step 2: the suite
# --------------------------------------------------------------------------------------------
@dataclass
class Check:
    """One expectation of the suite, with what a failing row means in words."""

    name: str
    expectation: Any
    level: str  # "row" or "table"
    description: str
    column: str | None = None  # the column whose value explains a failing row
    reason: Callable[[Any, pd.Series], str] | None = None
    needs: list[str] = field(default_factory=list)  # required manifest columns


def build_suite(cfg, columns: list[str], required_splits: list[str]) -> list[Check]:
    """The IQA invariants as GX 1.x expectations (``cfg``: a :class:`deqa.config.ValidateConfig`)."""
    import great_expectations as gx

    E = gx.expectations
    tol = cfg.vote_tolerance
    checks = [
        Check(
            "columns",
            E.ExpectTableColumnsToMatchSet(column_set=MANIFEST_COLUMNS, exact_match=False),
            "table",
            f"required columns present: {', '.join(MANIFEST_COLUMNS)}",
        ),
        Check(
            "row_count",
            E.ExpectTableRowCountToBeBetween(min_value=cfg.min_rows),
            "table",
            f"at least {cfg.min_rows} rows",
        ),
    ]
    if required_splits:
        checks.append(
            Check(
                "splits_not_empty",
                E.ExpectColumnDistinctValuesToContainSet(column="split", value_set=list(required_splits)),
                "table",
                f"no empty split: {', '.join(required_splits)} each have rows",
                needs=["split"],
            )
        )
    if "_line_error" in columns:  # rows of a CSV read by deqa.importers with annotate=True
        checks.append(
            Check(
                "row_parses",
                E.ExpectColumnValuesToBeInSet(column="_line_error", value_set=[""]),
                "row",
                "the row has as many fields as the header",
                "_line_error",
                lambda v, r: str(v),
                needs=["_line_error"],
            )
        )
    for col in TEXT_COLUMNS:
        checks.append(
            Check(
                f"type_{col}",
                E.ExpectColumnValuesToBeInTypeList(column=col, type_list=["str"]),
                "row",
                f"{col} is text",
                col,
                lambda v, r, c=col: f"{c} {v!r} is not text",
                needs=[col],
            )
        )
    for col in NUMERIC_COLUMNS:
        checks.append(
            Check(
                f"type_{col}",
                E.ExpectColumnValuesToBeInTypeList(column=col, type_list=NUMBER_TYPES),
                "row",
                f"{col} is a number",
                col,
                lambda v, r, c=col: f"{c} {v!r} is not a number",
                needs=[col],
            )
        )
    for col in ["image", "root", "dataset", "split", "mos", "lo", "hi"]:
        checks.append(
            Check(
                f"not_null_{col}",
                E.ExpectColumnValuesToNotBeNull(column=col),
                "row",
                f"{col} present",
                col,
                lambda v, r, c=col: f"{c} is missing (empty or NaN)",
                needs=[col],
            )
        )
    checks += [
        Check(
            "split_values",
            E.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
            "row",
            f"split is one of {', '.join(SPLITS)}",
            "split",
            lambda v, r: f"split={v!r} is not one of {', '.join(SPLITS)}",
            needs=["split"],
        ),
        Check(
            "bounds",
            E.ExpectColumnValuesToBeBetween(column="_span", min_value=0, strict_min=True, max_value=1e12),
            "row",
            "normalisation bounds finite with lo < hi",
            "_span",
            lambda v, r: f"bounds lo={r['_lo']}, hi={r['_hi']} are not finite with lo < hi",
            needs=["lo", "hi"],
        ),
        Check(
            "mos_in_scale",
            E.ExpectColumnValuesToBeBetween(column="_mos_norm", min_value=1 - 1e-9, max_value=5 + 1e-9),
            "row",
            "MOS finite and within the dataset's scale [lo, hi]",
            "_mos",
            lambda v, r: (
                f"mos={v} is not finite"
                if not np.isfinite(v)
                else f"mos={v} is outside the dataset's scale [{r['_lo']}, {r['_hi']}]"
            ),
            needs=["mos", "lo", "hi"],
        ),
        Check(
            "std_non_negative",
            E.ExpectColumnValuesToBeBetween(column="_std", min_value=0),
            "row",
            "std >= 0 where present",
            "_std",
            lambda v, r: f"std={v} is negative",
            needs=["std"],
        ),
        Check(
            "std_in_scale",
            E.ExpectColumnValuesToBeBetween(column="_std_norm", max_value=4),
            "row",
            "std finite and at most the scale's span hi - lo",
            "_std",
            lambda v, r: (
                f"std={v} is not finite"
                if not np.isfinite(v)
                else f"std={v} exceeds the scale's span hi - lo = {r['_span']}"
            ),
            needs=["std", "lo", "hi"],
        ),
        Check(
            "n_votes_positive",
            E.ExpectColumnValuesToBeBetween(column="_n_votes", min_value=1),
            "row",
            "n_votes >= 1 where present",
            "_n_votes",
            lambda v, r: f"n_votes={v} is below 1",
            needs=["n_votes"],
        ),
    ]
    if all(c in columns for c in VOTE_COLUMNS):
        for what, col in (("mos", "_votes_mos_gap"), ("std", "_votes_std_gap"), ("n_votes", "_votes_n_gap")):
            limit = 0.5 if what == "n_votes" else tol
            checks.append(
                Check(
                    f"{what}_matches_votes",
                    E.ExpectColumnValuesToBeBetween(column=col, max_value=limit),
                    "row",
                    f"{what} consistent with the vote counts c1..c5 (|gap| <= {limit})",
                    col,
                    lambda v, r, w=what, lim=limit: (
                        f"{w}={r['_' + w]} does not match the vote counts c1..c5 (gap {v:.4g} > {lim})"
                        if np.isfinite(v)
                        else f"vote counts c1..c5 unusable for checking {w}"
                    ),
                    needs=[what, *VOTE_COLUMNS],
                )
            )
    checks += [
        Check(
            "unique_ids",
            E.ExpectColumnValuesToBeUnique(column="_id"),
            "row",
            "unique image ids (root/image)",
            "image",
            lambda v, r: f"duplicate image id {r['_id']}",
            needs=["image", "root"],
        ),
        Check(
            "no_split_leak",
            E.ExpectColumnValuesToBeBetween(column="_n_splits", max_value=1),
            "row",
            "no image (by path or by content) in two splits",
            "_splits_of_image",
            lambda v, r: f"split leakage: the same image is in splits {v}",
            needs=["image", "root", "split"],
        ),
        Check(
            "path_inside_root",
            E.ExpectColumnValuesToBeInSet(column="_path_check", value_set=["ok"]),
            "row",
            "relative path that resolves inside the data root",
            "_path_check",
            lambda v, r: str(v),
            needs=["image", "root"],
        ),
        Check(
            "file_decodes",
            E.ExpectColumnValuesToBeInSet(column="_file_check", value_set=["ok"]),
            "row",
            "file exists, is not empty, and decodes completely with Pillow",
            "_file_check",
            lambda v, r: str(v),
            needs=["image", "root"],
        ),
        Check(
            "file_converts",
            E.ExpectColumnValuesToBeInSet(column="_convert_check", value_set=["ok"]),
            "row",
            "image converts to 8-bit RGB faithfully (float within [0, 1], one frame, known mode)",
            "_convert_check",
            lambda v, r: str(v),
            needs=["image", "root"],
        ),
        Check(
            "min_side",
            E.ExpectColumnValuesToBeBetween(column="_min_side", min_value=cfg.min_side),
            "row",
            f"image at least {cfg.min_side} px on its short side",
            "_min_side",
            lambda v, r: f"image too small: {int(r['_width'])}x{int(r['_height'])} px (min side {cfg.min_side})",
            needs=["image", "root"],
        ),
        Check(
            "max_pixels",
            E.ExpectColumnValuesToBeBetween(column="_pixels", max_value=cfg.max_pixels),
            "row",
            f"at most {cfg.max_pixels} pixels (decompression-bomb guard)",
            "_pixels",
            lambda v, r: f"decompression bomb: {int(v)} pixels > max_pixels {cfg.max_pixels}",
            needs=["image", "root"],
        ),
    ]
    for c in checks:
        c.expectation.description = c.description
    return checks


def run_gx(frame: pd.DataFrame, checks: list[Check]) -> list:
    """Validate ``frame`` against ``checks`` in an ephemeral GX context; one result per check."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    asset = ctx.data_sources.add_pandas("manifest").add_dataframe_asset("manifest")
    batch_def = asset.add_batch_definition_whole_dataframe("whole")
    # expectations go in at construction: adding them one by one to a stored suite re-serialises it
    suite = ctx.suites.add(gx.ExpectationSuite(name="iqa_manifest", expectations=[c.expectation for c in checks]))
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name="iqa", data=batch_def, suite=suite))
    result = vd.run(batch_parameters={"dataframe": frame}, result_format={"result_format": "COMPLETE"})
    by_id = {r.expectation_config.id: r for r in result.results}
    return [by_id[c.expectation.id] for c in checks]


# --------------------------------------------------------------------------------------------
# orchestration
# --------------------------------------------------------------------------------------------
@dataclass
class ValidationResult:
    report: dict
    kept: pd.DataFrame
    quarantined: pd.DataFrame
    success: bool
    message: str
    failed: list = field(default_factory=list)  # the report entries of the failed expectations

    def failure_text(self, full_list: str | None = None) -> str:
        """:attr:`message` with ``full_list`` (where every failing row is listed) in its hints."""
        return failure_message(self.report, self.failed, full_list=full_list) if not self.success else ""


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if np.isfinite(v) else str(v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if v is None or isinstance(v, (str, bool, int)):
        return v
    return str(v)


def _evaluate(frame: pd.DataFrame, checks: list[Check], columns: list[str]) -> tuple[list[dict], dict[int, list[str]]]:
    """Run the runnable checks; return report entries and row -> reasons."""
    runnable = [c for c in checks if all(n in columns for n in c.needs)]
    results = dict(zip([c.name for c in runnable], run_gx(frame, runnable), strict=False)) if runnable else {}
    entries, reasons = [], {}
    for c in checks:
        entry = {
            "name": c.name,
            "expectation": type(c.expectation).__name__,
            "level": c.level,
            "description": c.description,
        }
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
            entry["observed"] = _jsonable(res.result.get("observed_value"))
            if c.name == "columns":  # the manifest's own columns, not the helper ones
                entry["observed"] = [x for x in entry["observed"] or [] if not str(x).startswith("_")]
            if c.name == "splits_not_empty":
                counts = frame["split"].astype(str).value_counts()
                wanted = res.expectation_config.kwargs["value_set"]
                entry["observed"] = {s: int(counts.get(s, 0)) for s in wanted}
                if not res.success:
                    entry["observed"] = "empty split(s): " + ", ".join(s for s in wanted if s not in counts)
            entry["failing_rows"] = []
        else:
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
                    "image": display_path(image) if isinstance(image, str) else _jsonable(image),
                    "reason": why,
                }
                if "_line" in frame.columns and pd.notna(row.get("_line")):
                    entry_row["line"] = int(row["_line"])
                failing.append(entry_row)
                reasons.setdefault(int(i), []).append(f"{c.name}: {why}")
            entry["unexpected_count"] = len(idx)
            entry["failing_rows"] = failing
        entries.append(entry)
    return entries, reasons


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
    entries, reasons = _evaluate(frame, checks, columns)
    bad_rows = sorted(reasons)
    missing_cols = [c for c in MANIFEST_COLUMNS if c not in columns]

    out_cols = [c for c in columns if not c.startswith("_")]
    clean = source[out_cols].copy()
    for col in NUMERIC_COLUMNS + VOTE_COLUMNS:
        if col in clean.columns:
            clean[col] = _numeric(frame[col]).to_numpy()
    kept = clean.drop(index=bad_rows).reset_index(drop=True)
    quarantined = _original_values(source, out_cols).loc[bad_rows].copy()
    quarantined["reasons"] = ["; ".join(reasons[i]) for i in bad_rows]
    if "_line" in source.columns:
        quarantined.insert(0, "line", source.loc[bad_rows, "_line"].to_numpy())
    quarantined.insert(0, "row", bad_rows)
    quarantined = quarantined.reset_index(drop=True)

    kept_entries = []
    if on_error == "quarantine" and not missing_cols:
        table_checks = [
            c for c in build_suite(cfg, columns, required_splits) if c.level == "table" and c.name != "columns"
        ]
        kept_frame = frame.drop(index=bad_rows).reset_index(drop=True)
        kept_entries, _ = _evaluate(kept_frame, table_checks, columns)

    if on_error == "fail":
        failed = [e for e in entries if not e["success"]]
        success = not failed
        if not success:
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
