"""Scoring in shards: ``deqa score --shard I/N``, ``deqa score`` on N processes, and the merge.

**A shard** is a deterministic part of the inputs: the image paths that ``deqa score`` would score
(:func:`deqa.score_files.expand_inputs`), each once, **sorted**, then the ``I``-th of ``N``
contiguous blocks (:func:`deqa.distributed.block`). Shard ``I`` writes its own output (resumable
with ``--resume``, like any ``deqa score`` output) and, once it has scored its whole block, a record
beside it, ``<output>.shard.json`` (:func:`write_record`): the shard, the digest of the whole sorted
input list, and its counts. Only shard 0 reports the inputs that could not be expanded (a missing
file, a pattern that matched nothing), so they appear once.

**The merge** (``deqa score --merge OUT_0 ... OUT_N-1 -o scores.csv``, :func:`check_shards` then
:func:`merge_results`) checks that the records name shards ``0..N-1`` of one input list, each
complete, and writes one output of every row, **sorted by path** (a path scored in several files
keeps its first scored row; an error row only where no file scored it). Formats may differ between
the parts and the merged file (CSV, JSON, JSON Lines by extension).

**On N processes** (``deqa launch -n N score ...``, torchrun, ``accelerate launch --multi_gpu``)
rank ``r`` scores shard ``r/N`` into ``<output>.parts/part-RRRRR-of-NNNNN.<ext>``; rank 0, once
every rank's record is there (:func:`wait_for_parts`, no collective: nothing times out while a
slow rank finishes), merges them into ``--output`` and removes the ``.parts`` folder. With
``--resume`` the scored rows of ``--output`` and of parts left by an interrupted run with another
number of processes count as done, and go into the merge.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

from deqa.distributed import block
from deqa.images import display_path
from deqa.score_files import ResultWriter, _is_scored, output_format, read_results

log = logging.getLogger("deqa.score")

RECORD_SUFFIX = ".shard.json"
PARTS_SUFFIX = ".parts"


class ShardError(ValueError):
    """Shard outputs that cannot be merged (missing, incomplete, of other inputs)."""


# ---------------------------------------------------------------------------------------------
# which paths a shard scores
# ---------------------------------------------------------------------------------------------
def inputs_digest(paths: list[str]) -> str:
    """SHA-256 of the sorted, de-duplicated input list (what every shard of one job shares)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(os.fsencode(p) + b"\n")
    return h.hexdigest()


def select(paths: list[str], index: int, count: int) -> tuple[list[str], str]:
    """Shard ``index`` of ``count`` of ``paths`` (sorted, each once) and the digest of the whole list."""
    ordered = sorted(set(paths))
    return [ordered[i] for i in block(len(ordered), index, count)], inputs_digest(ordered)


# ---------------------------------------------------------------------------------------------
# records beside finished shard outputs
# ---------------------------------------------------------------------------------------------
def record_path(output: str | Path) -> Path:
    return Path(str(output) + RECORD_SUFFIX)


def write_record(output: str | Path, index: int, count: int, digest: str, paths: int, rows: list[dict]) -> None:
    """Mark shard ``index/count`` of ``output`` complete (written last, atomically)."""
    scored = sum(1 for r in rows if _is_scored(r))
    record = {
        "shard": index,
        "of": count,
        "inputs": digest,
        "paths": paths,
        "rows": len(rows),
        "scored": scored,
        "errors": len(rows) - scored,
    }
    target = record_path(output)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, target)


def clear_record(output: str | Path) -> None:
    """Remove a finished-shard record before its shard is scored again."""
    record_path(output).unlink(missing_ok=True)


def read_record(output: str | Path) -> dict | None:
    path = record_path(output)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def check_shards(outputs: list[str | Path]) -> list[dict]:
    """The records of ``outputs``; :class:`ShardError` unless they are shards ``0..N-1`` of one
    input list, each complete."""
    records = []
    for out in outputs:
        if not Path(out).is_file():
            raise ShardError(f"{display_path(out)} does not exist")
        rec = read_record(out)
        if rec is None:
            raise ShardError(
                f"{display_path(out)} has no {RECORD_SUFFIX} record: its shard did not finish "
                "(run the same command again with --resume)"
            )
        records.append(rec)
    counts, digests = {r["of"] for r in records}, {r["inputs"] for r in records}
    if len(counts) > 1 or len(digests) > 1:
        raise ShardError("the outputs are shards of different runs (other shard counts or input lists)")
    count = counts.pop()
    seen = sorted(r["shard"] for r in records)
    missing = sorted(set(range(count)) - set(seen))
    if missing:
        raise ShardError(f"shard(s) {', '.join(f'{i}/{count}' for i in missing)} missing")
    if len(seen) != len(set(seen)):
        raise ShardError("a shard is given twice")
    return records


# ---------------------------------------------------------------------------------------------
# merging
# ---------------------------------------------------------------------------------------------
def merged_rows(inputs: list[str | Path]) -> list[dict]:
    """Every path's row from ``inputs`` (first scored row wins over later ones and over error rows), sorted."""
    rows: dict[str, dict] = {}
    for path in inputs:
        for row in read_results(path, output_format(str(path), None)):
            key = row.get("path")
            if key is None:
                continue
            if key not in rows or (_is_scored(row) and not _is_scored(rows[key])):
                rows[key] = row
    return [rows[k] for k in sorted(rows)]


def merge_results(inputs: list[str | Path], output: str | Path, fmt: str) -> tuple[int, int]:
    """Write the merged rows of ``inputs`` to ``output`` (atomically); (scored, errors)."""
    rows = merged_rows(inputs)
    output = Path(output)
    tmp = output.with_name(output.name + ".merging")
    with ResultWriter(tmp, fmt) as writer:
        writer.write(rows)
    os.replace(tmp, output)
    scored = sum(1 for r in rows if _is_scored(r))
    return scored, len(rows) - scored


# ---------------------------------------------------------------------------------------------
# N processes: one part per rank, merged by rank 0
# ---------------------------------------------------------------------------------------------
def parts_dir(output: str | Path) -> Path:
    return Path(str(output) + PARTS_SUFFIX)


def part_path(output: str | Path, rank: int, world: int, fmt: str) -> Path:
    ext = {"csv": ".csv", "json": ".json", "jsonl": ".jsonl"}[fmt]
    return parts_dir(output) / f"part-{rank:05d}-of-{world:05d}{ext}"


def other_parts(output: str | Path, world: int) -> list[Path]:
    """Part files of runs with another number of processes (left by an interrupted run)."""
    folder = parts_dir(output)
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.glob("part-*-of-*")
        if not p.name.endswith((RECORD_SUFFIX, ".partial", ".tmp")) and f"-of-{world:05d}." not in p.name
    )


def wait_for_parts(output: str | Path, world: int, fmt: str, poll: float = 0.5) -> list[Path]:
    """Wait until every rank's part of ``output`` has its record; the part files in rank order."""
    parts = [part_path(output, r, world, fmt) for r in range(world)]
    last = time.monotonic()
    while True:
        waiting = [r for r, p in enumerate(parts) if read_record(p) is None]
        if not waiting:
            return parts
        if time.monotonic() - last > 30:
            log.info("rank 0 waits for rank(s) %s to finish their parts", ", ".join(map(str, waiting)))
            last = time.monotonic()
        time.sleep(poll)


def done_paths(files: list[str | Path]) -> set[str]:
    """The paths scored in ``files`` (existing ones)."""
    done = set()
    for f in files:
        if Path(f).is_file():
            done |= {r["path"] for r in read_results(f, output_format(str(f), None)) if _is_scored(r)}
    return done


def remove_parts(output: str | Path) -> None:
    shutil.rmtree(parts_dir(output), ignore_errors=True)
