"""Step 1 of validation: the per-row facts about each image file, and the frame GX asserts.

Computed in Python into helper columns (prefixed ``_``), because they need the file system and
Pillow: path containment (no absolute path, no ``..``, no symlink that leaves the data root),
existence, zero size, Pillow identify/verify/load (truncation), width/height and pixel count (a
decompression-bomb guard: Pillow's ``MAX_IMAGE_PIXELS`` is set to ``max_pixels`` and its bomb
error/warning is caught), a content hash for split leakage, and whether the image converts to
8-bit RGB faithfully (:func:`deqa.images.conversion_issues`). No row can abort the run: a NUL
byte, an over-long name, a symlink loop or any decoder error is that row's reason.
:func:`build_frame` adds them to the manifest with its values typed (a value that is not a
number stays text, for the type expectations) and the derived columns the suite asserts
(normalised MOS and std, vote-count gaps, image ids, the splits each image appears in).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import warnings
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from deqa.images import conversion_issues, display_path, error_reason
from deqa.schema import VOTE_COLUMNS

NUMERIC_COLUMNS = ["mos", "std", "n_votes", "lo", "hi"]
TEXT_COLUMNS = ["image", "root", "dataset", "split"]


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


def numeric(series: pd.Series) -> pd.Series:
    """The float values of a column built by :func:`build_frame` (text that is not a number: NaN)."""
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
        c: (numeric(frame[c]) if c in frame.columns else pd.Series(np.nan, index=frame.index))
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
