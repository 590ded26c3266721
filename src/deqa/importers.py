"""Importers: turn a dataset's own label file into rows of the canonical manifest.

Every importer returns a :class:`pandas.DataFrame` with the columns of
:data:`deqa.schema.MANIFEST_COLUMNS` (plus ``c1``..``c5`` vote counts where the file has them):

* ``image`` -- the image path relative to ``root`` (POSIX separators);
* ``root`` -- the folder the image paths are relative to (default: the label file's folder);
* ``dataset`` -- the source's name; ``split`` -- ``train`` | ``val`` | ``test``;
* ``mos``, ``std`` (empty where unknown), ``n_votes`` (empty where unknown) on the dataset's own
  scale; ``lo``/``hi`` -- the normalisation bounds, by default the observed MOS min/max of the
  imported rows (DEQA-SCORE.md section 2).

Formats (:data:`deqa.schema.LABEL_FORMATS`):

==============  ================================================================================
``koniq``       KonIQ-10k, either layout: ``koniq10k_scores_and_distributions.csv`` (counts
                ``c1..c5``, ``c_total``, 1-5 ``MOS``, ``SD``, ``MOS_zscore``, ``set``) or
                ``koniq10k_distributions_sets.csv`` (fractions ``c1..c5``, ``c_total``, 0-100
                ``MOS`` = MOS_zscore, ``SD``, ``set``). Both give the 1-5 MOS (the distributions
                layout recomputes it from the vote fractions), counts and the file's own split.
``kadid``       KADID-10k ``dmos.csv``: ``dist_img, ref_img, dmos, var``; std = sqrt(var). The
                seeded split is grouped by ``ref_img`` (content-disjoint).
``spaq``        SPAQ: ``Image name`` (or ``image``) and ``MOS``; no std. ``.csv`` or ``.xlsx``.
``livec``       LIVE Challenge ``labels.csv`` (``file, mos, std, split``); ``practice`` rows are
                left out.
``qalign-json`` Q-Align's JSON lists: ``image`` or ``img_path``, score from ``gt_score`` or from
                the ``"name->score"`` id; no std.
``deqa-json``   the DeQA-Score authors' meta JSON: ``image``, ``gt_score``, ``std``.
``generic-csv`` any CSV with ``image, mos`` and optionally ``std``, ``n_votes``, ``split``.
==============  ================================================================================

CSV files are read with Python's ``csv`` module (UTF-8, or Latin-1 with a warning when the file
is not UTF-8). A row whose field count differs from the header's is never shifted into other
columns: with ``annotate=False`` (the default) it is a :class:`LabelImportError` naming the line;
with ``annotate=True`` (what ``deqa validate`` and the evaluation of extra sets use) the row is
kept with a reason for validation to quarantine, and the frame gains helper columns that
:mod:`deqa.validation` reads: ``_line`` (the row's line in the file, or item number in a JSON
list), ``_line_error`` (why the row is malformed) and ``_text_<column>`` (the original text of a
numeric value that is not a number, such as ``"4,5"``; the numeric column holds NaN).
The optional provenance columns (``content``, ``distortion``, ``severity``) pass through where
the file has them.

Splits: the file's own split where it has one (KonIQ ``set``: training/validation/test), else a
seeded split with ``val_fraction``/``test_fraction``; ``split=...`` forces one split for all rows.

:func:`load_label_file` reads a user's file of any of these layouts, or a manifest, with the format
detected from its columns where possible (``deqa labels FILE``). Combining several sources, and
the generated ones, is :mod:`deqa.sources`'.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from deqa.labels import read_manifest
from deqa.schema import LABEL_FORMATS, MANIFEST_COLUMNS, PROVENANCE_COLUMNS, SPLITS, VOTE_COLUMNS

log = logging.getLogger(__name__)

KONIQ_SET_NAMES = {"training": "train", "validation": "val", "test": "test"}


class LabelImportError(ValueError):
    """A label file that cannot be imported; the message says which file and what is expected."""


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
# the strings pandas.read_csv reads as missing by default
NA_STRINGS = {
    "",
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "<NA>",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "None",
    "n/a",
    "nan",
    "null",
}
HELPER_PREFIX = "_"


def read_text(path: Path) -> str:
    """A text file as UTF-8 (BOM allowed), else as Latin-1 with a logged warning."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        log.warning("%s is not UTF-8; read it as Latin-1", path)
        return data.decode("latin-1")


def read_csv_rows(path: Path, fmt: str = "csv") -> pd.DataFrame:
    """A CSV file as text columns plus ``_line`` (each row's first line) and ``_line_error``.

    Blank lines are skipped, pandas' default missing-value strings become NaN, repeated header
    names get ``.1``, ``.2`` suffixes. A row with more or fewer fields than the header keeps its
    fields in order (padded or cut) and gets a ``_line_error`` naming the line; no row ever
    shifts into the index. An empty file gives an empty frame.
    """
    try:
        text = read_text(path)
    except OSError as exc:
        raise LabelImportError(f"{path}: cannot read the file for format {fmt!r}: {exc.strerror or exc}") from None
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)
    header, rows, lines, errors, prev = None, [], [], [], 0
    try:
        for row in reader:
            start, prev = prev + 1, reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = _unique_names([c.strip() for c in row])
                continue
            error = ""
            if len(row) != len(header):
                error = f"line {start} has {len(row)} fields but the header has {len(header)}"
                row = (row + [""] * len(header))[: len(header)]
            rows.append([None if c.strip() in NA_STRINGS else c for c in row])
            lines.append(start)
            errors.append(error)
    except csv.Error as exc:
        raise LabelImportError(
            f"{path}: not a readable CSV file for format {fmt!r}: line {reader.line_num}: {exc}"
        ) from None
    if header is None:
        return pd.DataFrame()
    df = pd.DataFrame(rows, columns=header, dtype=object)
    df["_line"] = lines
    df["_line_error"] = errors
    return df


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        out.append(n if n not in seen else f"{n}.{seen[n]}")
        seen[n] = seen.get(n, 0) + 1
    return out


def _read_csv(path: Path, fmt: str) -> pd.DataFrame:
    return read_csv_rows(path, fmt)


def _require(df: pd.DataFrame, path: Path, fmt: str, expected: list[str | tuple[str, ...]]) -> dict:
    """Map each expected column (or tuple of accepted aliases) to the column present in ``df``."""
    cols = {c.strip(): c for c in df.columns if not str(c).startswith(HELPER_PREFIX)}
    found, missing = {}, []
    for want in expected:
        names = (want,) if isinstance(want, str) else want
        hit = next((cols[n] for n in names if n in cols), None)
        if hit is None:
            missing.append(" or ".join(names))
        else:
            found[names[0]] = hit
    if missing:
        exp = ", ".join(" or ".join((w,) if isinstance(w, str) else w) for w in expected)
        raise LabelImportError(
            f"{path}: format {fmt!r} expects columns [{exp}]; missing: {', '.join(missing)}; "
            f"found: {', '.join(c for c in map(str, df.columns) if not c.startswith(HELPER_PREFIX)) or '(none)'}"
        )
    return found


def _num(series: pd.Series) -> pd.Series:
    """Numbers as float64; text that is not a number becomes NaN (:func:`_texts` keeps it)."""
    return pd.to_numeric(pd.Series(series).reset_index(drop=True), errors="coerce").astype("float64")


def _texts(series) -> pd.Series:
    """The original text of each value that is present but not a number (else None)."""
    raw = pd.Series(series, dtype=object).reset_index(drop=True)
    bad = pd.to_numeric(raw, errors="coerce").isna() & raw.notna()
    return pd.Series(
        [str(v) if b and not isinstance(v, float) else None for v, b in zip(raw, bad, strict=False)], dtype=object
    )


def _posix(path: str) -> str:
    return str(PurePosixPath(str(path).replace("\\", "/")))


def _frame(images, mos, std=None, n_votes=None, split=None, votes=None, source=None) -> pd.DataFrame:
    """The common columns; ``mos``/``std``/``n_votes`` may be raw text (kept in ``_text_*``).

    ``source``: the file's own frame, whose helper columns (``_line``, ``_line_error``) and
    provenance columns are carried over row by row.
    """
    n = len(images)
    df = pd.DataFrame({"image": [_posix(p) for p in images]})
    for col, values in (("mos", mos), ("std", std), ("n_votes", n_votes)):
        if values is None:
            df[col] = np.full(n, np.nan)
            continue
        df[col] = _num(values).to_numpy() if n else np.array([], dtype="float64")
        texts = _texts(values) if n else pd.Series([], dtype=object)
        if texts.notna().any():
            df[f"_text_{col}"] = texts.to_numpy()
    df["split"] = list(split) if split is not None else [""] * n
    if votes is not None:
        for i, c in enumerate(VOTE_COLUMNS):
            df[c] = np.asarray(votes)[:, i].astype("float64") if n else np.array([], dtype="float64")
    if source is not None:
        src = source.reset_index(drop=True)
        for c in [*PROVENANCE_COLUMNS, "_line", "_line_error"]:
            if c in src.columns:
                df[c] = src[c].to_numpy()
    return df


def seeded_split(keys: pd.Series, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.1) -> pd.Series:
    """Assign train/val/test per distinct key (an image, or a reference image for grouped data).

    Keys are sorted before the seeded permutation, so the result does not depend on row order.
    """
    if not (val_fraction >= 0 and test_fraction >= 0 and val_fraction + test_fraction <= 1):
        raise LabelImportError(f"val_fraction + test_fraction must lie in [0, 1], got {val_fraction} + {test_fraction}")
    uniq = np.array(sorted(pd.unique(keys.astype(str))), dtype=object)
    order = np.random.default_rng(seed).permutation(len(uniq))
    n_test = round(test_fraction * len(uniq))
    n_val = round(val_fraction * len(uniq))
    assign = np.full(len(uniq), "train", dtype=object)
    assign[order[:n_test]] = "test"
    assign[order[n_test : n_test + n_val]] = "val"
    return keys.astype(str).map(dict(zip(uniq, assign, strict=False))).astype(object)


# --------------------------------------------------------------------------------------------
# one reader per format: path -> (frame with image, mos, std, n_votes, split[, c1..c5], group keys)
# --------------------------------------------------------------------------------------------
def _read_koniq(path: Path):
    df = _read_csv(path, "koniq")
    cols = _require(df, path, "koniq", [("image_name", "image"), *VOTE_COLUMNS, "MOS", "SD"])
    fr = np.stack([_num(df[cols[c]]).to_numpy() for c in VOTE_COLUMNS], axis=1)
    total = _num(df["c_total"]).to_numpy() if "c_total" in df.columns else None
    levels = np.arange(1, 6)
    if "MOS_zscore" in df.columns:  # scores_and_distributions layout: counts, MOS on 1-5
        mos = df[cols["MOS"]]
        counts = fr
        if total is None:
            total = counts.sum(axis=1)
    else:  # distributions_sets layout: vote fractions, MOS column = MOS_zscore (0-100)
        if total is None:
            raise LabelImportError(f"{path}: KonIQ distributions layout (fractions c1..c5) needs the c_total column")
        with np.errstate(invalid="ignore"):
            frac_sum = fr.sum(axis=1)
        if len(df) and np.nanmax(np.abs(frac_sum - 1)) > 1e-3:
            raise LabelImportError(
                f"{path}: c1..c5 are neither vote fractions (rows sum to 1) nor a "
                "scores_and_distributions layout (no MOS_zscore column)"
            )
        counts = np.rint(fr * total[:, None])
        mos = (fr * levels).sum(axis=1) / frac_sum  # the 1-5 ACR mean, not MOS_zscore
    split = df["set"].astype(str).str.strip().map(KONIQ_SET_NAMES) if "set" in df.columns else None
    if split is not None and split.isna().any():
        bad = sorted(set(df["set"][split.isna()].astype(str)))[:5]
        raise LabelImportError(f"{path}: unknown KonIQ set name(s) {bad}; expected {list(KONIQ_SET_NAMES)}")
    out = _frame(df[cols["image_name"]], mos, df[cols["SD"]], total, split, counts, source=df)
    return out, None


def _read_kadid(path: Path):
    df = _read_csv(path, "kadid")
    cols = _require(df, path, "kadid", ["dist_img", "ref_img", "dmos", "var"])
    var = _num(df[cols["var"]]).to_numpy()
    std = np.sign(var) * np.sqrt(np.abs(var))  # a negative variance stays visibly bad (std < 0)
    out = _frame(df[cols["dist_img"]], df[cols["dmos"]], std, source=df)
    texts = _texts(df[cols["var"]])
    if texts.notna().any():
        out["_text_std"] = texts.to_numpy()
    return out, df[cols["ref_img"]].astype(str).reset_index(drop=True)


def _read_spaq(path: Path):
    if path.suffix.lower() in (".xlsx", ".xls"):
        try:
            df = pd.read_excel(path, dtype=str)
        except ImportError as exc:
            raise LabelImportError(f"{path}: reading Excel needs openpyxl ({exc}); or save the sheet as CSV") from None
    else:
        df = _read_csv(path, "spaq")
    cols = _require(df, path, "spaq", [("Image name", "image_name", "image"), ("MOS", "mos")])
    return _frame(df[cols["Image name"]], df[cols["MOS"]], source=df), None


def _read_livec(path: Path):
    df = _read_csv(path, "livec")
    cols = _require(df, path, "livec", ["file", "mos", "std", "split"])
    df = df[df[cols["split"]].str.strip() != "practice"].reset_index(drop=True)
    split = df[cols["split"]].str.strip()
    if not split.isin(SPLITS).all():
        bad = sorted(set(split[~split.isin(SPLITS)]))[:5]
        raise LabelImportError(f"{path}: unknown split value(s) {bad}; expected {list(SPLITS)} or practice")
    return _frame(df[cols["file"]], df[cols["mos"]], df[cols["std"]], split=split, source=df), None


def _read_json_list(path: Path, fmt: str) -> list:
    try:
        data = json.loads(read_text(path))
    except OSError as exc:
        raise LabelImportError(f"{path}: cannot read the file for format {fmt!r}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise LabelImportError(f"{path}: not valid JSON for format {fmt!r}: {exc}") from None
    if isinstance(data, dict):  # tolerate {"annotations": [...]}-style wrappers with one list
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise LabelImportError(f"{path}: format {fmt!r} expects a JSON list of items")
        data = lists[0]
    if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
        raise LabelImportError(f"{path}: format {fmt!r} expects a JSON list of objects")
    return data


_ID_SCORE = re.compile(r"->\s*([-+0-9.eE]+)\s*$")


def _items_source(items: list[dict]) -> pd.DataFrame:
    """``_line`` (the item's number, from 1) and the provenance fields of a JSON list's items."""
    src = pd.DataFrame({"_line": np.arange(1, len(items) + 1)})
    for c in PROVENANCE_COLUMNS:
        if any(c in it for it in items):
            src[c] = [it.get(c) for it in items]
    return src


def _read_qalign(path: Path):
    items = _read_json_list(path, "qalign-json")
    images, mos = [], []
    for i, it in enumerate(items):
        img = it.get("image", it.get("img_path"))
        score = it.get("gt_score")
        if score is None and isinstance(it.get("id"), str):
            m = _ID_SCORE.search(it["id"])
            score = m.group(1) if m else None
        if img is None or score is None:
            raise LabelImportError(
                f"{path}: item {i}: format 'qalign-json' expects fields [image or img_path] and "
                f"[gt_score or an id 'name->score']; found: {', '.join(it) or '(none)'}"
            )
        images.append(img)
        mos.append(score)
    return _frame(images, mos, source=_items_source(items)), None


def _read_deqa(path: Path):
    items = _read_json_list(path, "deqa-json")
    images, mos, std = [], [], []
    for i, it in enumerate(items):
        if "image" not in it or "gt_score" not in it:
            raise LabelImportError(
                f"{path}: item {i}: format 'deqa-json' expects fields [image, gt_score, std]; "
                f"found: {', '.join(it) or '(none)'}"
            )
        images.append(it["image"])
        mos.append(it["gt_score"])
        std.append(it.get("std"))
    return _frame(images, mos, std, source=_items_source(items)), None


def _read_generic(path: Path):
    df = _read_csv(path, "generic-csv")
    cols = _require(df, path, "generic-csv", ["image", "mos"])
    std = df["std"] if "std" in df.columns else None
    n_votes = df["n_votes"] if "n_votes" in df.columns else None
    split = df["split"].fillna("").str.strip() if "split" in df.columns else None
    return _frame(df[cols["image"]], df[cols["mos"]], std, n_votes, split, source=df), None


READERS: dict[str, Callable] = {
    "generic-csv": _read_generic,
    "koniq": _read_koniq,
    "kadid": _read_kadid,
    "spaq": _read_spaq,
    "livec": _read_livec,
    "qalign-json": _read_qalign,
    "deqa-json": _read_deqa,
}


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def import_labels(
    labels: str | Path,
    format: str,
    root: str | Path = "",
    name: str | None = None,
    lo: float | None = None,
    hi: float | None = None,
    split: str = "",
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    annotate: bool = False,
) -> pd.DataFrame:
    """Read one label file in ``format`` and return its manifest rows.

    ``root`` defaults to the label file's folder. ``lo``/``hi`` default to the observed MOS
    min/max. ``split`` forces one split for every row; otherwise the file's own split is used, or
    a seeded split (``seed``, ``val_fraction``, ``test_fraction``) where the file has none.
    Raises :class:`LabelImportError` with a message naming the file and the expected columns.
    ``annotate``: keep malformed rows and unparseable numbers for validation, in the helper
    columns ``_line``, ``_line_error``, ``_text_*`` (module docstring); otherwise a malformed
    row is an error naming its line and the helper columns are left out.
    """
    if format not in READERS:
        raise LabelImportError(f"unknown format {format!r}; known formats: {', '.join(LABEL_FORMATS)}")
    if split and split not in SPLITS:
        raise LabelImportError(f"split must be one of {list(SPLITS)} or empty, got {split!r}")
    path = Path(labels)
    if not str(labels) or not path.is_file():
        raise LabelImportError(f"label file not found: {str(labels) or '(empty path)'} (format {format!r})")
    df, groups = READERS[format](path)
    df = df.reset_index(drop=True)
    if "_line_error" in df.columns:
        bad = df["_line_error"].fillna("").astype(str)
        if not annotate and (bad != "").any():
            listed = "; ".join(bad[bad != ""].head(5))
            more = f" (and {int((bad != '').sum()) - 5} more)" if (bad != "").sum() > 5 else ""
            raise LabelImportError(f"{path}: malformed CSV row(s): {listed}{more}")
        df["_line_error"] = bad
    if split:
        df["split"] = split
    else:
        missing = df["split"].isna() | (df["split"].astype(str) == "")
        if missing.any():
            keys = (groups if groups is not None else df["image"]).reset_index(drop=True)
            df.loc[missing, "split"] = seeded_split(keys, seed, val_fraction, test_fraction)[missing]
    df["root"] = str(root) if str(root) else str(path.parent)
    df["dataset"] = name or format
    finite = df["mos"][np.isfinite(df["mos"])]
    df["lo"] = float(lo) if lo is not None else (float(finite.min()) if len(finite) else np.nan)
    df["hi"] = float(hi) if hi is not None else (float(finite.max()) if len(finite) else np.nan)
    return df[manifest_columns(df, annotate)].astype({"split": object})


def import_source(source, split: str = "", seed: int = 0, annotate: bool = False) -> pd.DataFrame:
    """:func:`import_labels` of one label-file source (a :class:`deqa.config.SourceConfig`: its
    ``labels``, ``format``, ``root``, ``name``, ``lo``, ``hi``), with ``split`` forced."""
    return import_labels(
        source.labels,
        source.format,
        root=source.root,
        name=source.name,
        lo=source.lo,
        hi=source.hi,
        split=split,
        seed=seed,
        annotate=annotate,
    )


def manifest_columns(df: pd.DataFrame, annotate: bool = False) -> list[str]:
    """Manifest columns, vote counts and provenance where present (+ helper columns if annotating)."""
    extra = [c for c in VOTE_COLUMNS + PROVENANCE_COLUMNS if c in df.columns]
    helpers = [c for c in df.columns if str(c).startswith(HELPER_PREFIX)] if annotate else []
    return MANIFEST_COLUMNS + extra + helpers


# --------------------------------------------------------------------------------------------
# a user's label file of any layout (``deqa labels FILE``, :mod:`deqa.commands.labels`)
# --------------------------------------------------------------------------------------------
def detect_format(path: str | Path) -> str | None:
    """A guess of a label file's format from its columns: ``manifest``, ``koniq``, ``kadid``,
    ``generic-csv`` (``image``, ``mos``).

    Returns None when the layout is not recognised (the user must pass ``--format``).
    """
    path = Path(path)
    if path.suffix.lower() != ".csv":
        return None
    columns = set(pd.read_csv(path, nrows=0).columns)
    if set(MANIFEST_COLUMNS) <= columns:
        return "manifest"
    if {"image_name", "c1", "c2", "c3", "c4", "c5", "MOS", "SD"} <= columns:
        return "koniq"
    if {"dist_img", "dmos", "var"} <= columns:
        return "kadid"
    if {"image", "mos"} <= columns:
        return "generic-csv"
    return None


def load_label_file(path: str | Path, format: str | None = None, **importer_options) -> pd.DataFrame:
    """A user's label file as a manifest: read directly if it is one
    (:func:`deqa.labels.read_manifest`), else through :func:`import_labels` (``format``
    auto-detected when possible)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such label file")
    fmt = format or detect_format(path)
    if fmt == "manifest":
        return read_manifest(path)
    if fmt is None:
        raise ValueError(
            f"{path}: cannot tell the format from its name and columns; pass --format "
            f"(one of: manifest, {', '.join(LABEL_FORMATS)})"
        )
    return import_labels(str(path), fmt, **importer_options)
