"""What ``deqa score`` reads and writes: image paths in, result rows out.

:func:`expand_inputs` turns files, folders (walked recursively without following symlink loops),
globs and path lists (CSV or text, UTF-8 or Latin-1) into a list of path strings, opening no
image, plus the inputs it could not use and why. :class:`ResultWriter` appends each scored batch's
rows to a CSV, JSON or JSON Lines file as they come (:data:`FIELDS`: ``path, score, std,
p_bad..p_excellent, error``), so an interrupted run keeps what it scored, and ``--resume``
(:func:`read_results`) scores only the rest. The exit codes of ``deqa score`` are
:data:`EXIT_OK`, :data:`EXIT_PARTIAL` and :data:`EXIT_FAILED`.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import math
import os
import stat
import sys
from pathlib import Path

from deqa import LEVELS
from deqa.images import display_path, error_reason

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
EXIT_OK, EXIT_PARTIAL, EXIT_FAILED = 0, 1, 2
FIELDS = ["path", "score", "std", *[f"p_{lv}" for lv in LEVELS], "error"]


# ---------------------------------------------------------------------------------------------
# inputs: files, folders, globs and path lists -> path strings (nothing is decoded here)
# ---------------------------------------------------------------------------------------------
def expand_inputs(inputs: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Files, folders (recursively, image extensions), globs and CSV/text lists -> paths, errors.

    Every entry of a folder with an image extension is listed, symlink loops and dangling links
    included, so that scoring reports them instead of dropping them; symlinked folders are
    followed once (a folder loop is not walked twice). ``errors`` are ``(input, reason)``.
    """
    paths: list[str] = []
    errors: list[tuple[str, str]] = []
    for item in inputs:
        item = os.fspath(item)
        try:
            st = os.stat(item)
        except (OSError, ValueError) as exc:
            if isinstance(exc, FileNotFoundError) and any(ch in item for ch in "*?["):
                found = sorted(f for f in glob.glob(item, recursive=True) if os.path.isfile(f))
                paths += found
                if not found:
                    errors.append((item, "pattern matched no files"))
            elif isinstance(exc, FileNotFoundError) and os.path.islink(item):
                errors.append((item, "broken symlink (its target does not exist)"))
            else:
                errors.append((item, error_reason(exc, item)))
            continue
        if stat.S_ISDIR(st.st_mode):
            found, errs = _walk_images(item)
            paths += found
            errors += errs
            if not found and not errs:
                errors.append((item, "folder holds no image files"))
        elif Path(item).suffix.lower() in (".csv", ".txt"):
            try:
                paths += read_path_list(item)
            except (OSError, ValueError) as exc:
                errors.append((item, f"cannot read the list: {error_reason(exc, item)}"))
        else:
            paths.append(item)
    return paths, errors


def _walk_images(folder: str) -> tuple[list[str], list[tuple[str, str]]]:
    found, errors, seen = [], [], set()

    def onerror(exc: OSError) -> None:
        errors.append((exc.filename or folder, f"folder not readable: {error_reason(exc, exc.filename)}"))

    for top, dirs, files in os.walk(folder, onerror=onerror, followlinks=True):
        try:
            st = os.stat(top)
            key = (st.st_dev, st.st_ino)
        except OSError:
            key = None
        if key in seen:
            dirs[:] = []
            continue
        seen.add(key)
        found += [os.path.join(top, f) for f in files if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    return sorted(found), errors


def _decode_text(path: str) -> tuple[str, bool]:
    """The file's text: UTF-8 (BOM allowed), else Latin-1 with a warning; (text, was_latin1)."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig"), False
    except UnicodeDecodeError:
        log.warning("%s is not UTF-8; read it as Latin-1", display_path(path))
        return data.decode("latin-1"), True


def read_path_list(path: str) -> list[str]:
    """Image paths from a ``.txt`` list (one per line, ``#`` comments) or a ``.csv`` list.

    A CSV's path column is ``path``, ``image``, ``file`` or ``filename`` (else the first column,
    and then the first row is data). Relative paths are taken from the current folder when they
    exist there, else from the list's folder. A list that is not UTF-8 is read as Latin-1; each
    entry then also matches a file whose on-disk name has the same bytes.
    """
    text, latin1 = _decode_text(path)
    if Path(path).suffix.lower() == ".txt":
        entries = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    else:
        rows = list(csv.reader(io.StringIO(text)))
        if not rows:
            return []
        header = [h.strip().lower() for h in rows[0]]
        col = next((header.index(c) for c in ("path", "image", "file", "filename") if c in header), None)
        body = rows[1:] if col is not None else rows
        col = col or 0
        entries = [r[col].strip() for r in body if len(r) > col and r[col].strip()]
    base = os.path.dirname(path)
    out = []
    for entry in entries:
        variants = [entry]
        if latin1 and os.fsdecode(entry.encode("latin-1")) != entry:
            variants.append(os.fsdecode(entry.encode("latin-1")))  # the same bytes as an on-disk name
        candidates = [c for v in variants for c in ((v,) if os.path.isabs(v) else (v, os.path.join(base, v)))]
        fallback = entry if os.path.isabs(entry) else os.path.join(base, entry)
        out.append(next((c for c in candidates if os.path.lexists(c)), fallback))
    return out


# ---------------------------------------------------------------------------------------------
# outputs: rows appended batch by batch, resumable
# ---------------------------------------------------------------------------------------------
def output_format(path: str | None, fmt: str | None) -> str:
    """``csv``, ``json`` or ``jsonl``: ``fmt`` if given, else from the file's extension, else csv."""
    if fmt:
        return fmt
    suffix = Path(path).suffix.lower() if path else ""
    return {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(suffix, "csv")


def read_results(path: str | Path, fmt: str) -> list[dict]:
    """The rows of an existing (possibly interrupted) output file; unparseable tails are dropped."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    if fmt == "csv":
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]  # a row cut off mid-write
        rows = list(csv.DictReader(io.StringIO(text)))
        return [{k: v for k, v in r.items() if k in FIELDS and v not in (None, "")} for r in rows]
    rows = []
    for line in text.splitlines():
        line = line.strip().lstrip("[").rstrip("]").rstrip(",").strip()
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _is_scored(row: dict) -> bool:
    try:
        return not row.get("error") and math.isfinite(float(row.get("score", "nan")))
    except (TypeError, ValueError):
        return False


class ResultWriter:
    """Write score rows to a file (or a stream) as they come: CSV, a JSON array, or JSON Lines.

    Each :meth:`write` appends its rows and flushes, so an interrupted run keeps every finished
    batch. The JSON array is written one object per line between ``[`` and ``]``; :meth:`close`
    writes the ``]`` (also on Ctrl-C), and :func:`read_results` reads an unterminated one.
    ``resume=True`` keeps the scored rows of an existing file (``done`` holds their paths) and
    drops its error rows, which are tried again.
    """

    def __init__(self, target: str | Path | None, fmt: str = "csv", resume: bool = False):
        if fmt not in ("csv", "json", "jsonl"):
            raise ValueError(f"unknown output format {fmt!r}; use csv, json or jsonl")
        self.fmt, self.count, self.done = fmt, 0, set()
        self.path = Path(target) if target is not None else None
        kept = []
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if resume and self.path.is_file():
                kept = [r for r in read_results(self.path, fmt) if _is_scored(r)]
                self.done = {r["path"] for r in kept}
            # the kept rows go to a new file that replaces the old one only once it is complete
            partial = self.path.with_name(self.path.name + ".partial")
            self.stream = open(partial, "w", encoding="utf-8", newline="")  # noqa: SIM115 (closed by close())
        else:
            self.stream = sys.stdout
        self._start()
        self.write(kept)
        self.resumed = len(kept)
        if self.path is not None:
            self.stream.close()
            os.replace(partial, self.path)
            self.stream = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115 (closed by close())
            if fmt == "csv":
                self.csv = csv.DictWriter(self.stream, fieldnames=FIELDS, lineterminator="\n")

    def _start(self) -> None:
        if self.fmt == "csv":
            self.csv = csv.DictWriter(self.stream, fieldnames=FIELDS, lineterminator="\n")
            self.csv.writeheader()
        elif self.fmt == "json":
            self.stream.write("[")

    def write(self, records: list[dict]) -> None:
        for r in records:
            if self.fmt == "csv":
                self.csv.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
            else:
                line = json.dumps({k: (float(v) if k in FIELDS[1:-1] else v) for k, v in r.items()})
                sep = ("\n" if self.count == 0 else ",\n") if self.fmt == "json" else ""
                self.stream.write(sep + line + ("\n" if self.fmt == "jsonl" else ""))
            self.count += 1
        self.stream.flush()

    def close(self) -> None:
        if self.stream is None:
            return
        if self.fmt == "json":
            self.stream.write("\n]\n" if self.count else "]\n")
        self.stream.flush()
        if self.stream is not sys.stdout:
            self.stream.close()
        self.stream = None

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
