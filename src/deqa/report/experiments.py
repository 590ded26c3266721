"""DVC experiments side by side: the params that differ and the headline metrics of each run.

This runs **outside** the pipeline, after ``dvc exp run``: ``deqa report --experiments``
(:mod:`deqa.commands.report`) or :func:`write_experiments_page`. Inside a stage it cannot work well: ``dvc repro`` holds the
repository lock while the stage runs, and experiments are git refs, which no stage can declare as a
dependency, so a report that read them would be stale or non-reproducible.

The data come from :func:`dvc.api.exp_show`: one flat record per baseline commit and experiment,
with params and metrics keys flattened (``train.lr``; prefixed with ``file:`` only where two files
share a key, which the headline rows always do: ``metrics/evaluate/test.synthetic.json:srcc``). A
key is a param when its first part is a section of :class:`deqa.config.Params`; a metric column
when it is a key of :data:`deqa.metric_tables.HEADLINE_KEYS` in a row file
``<folder>/<split>.<set>.json`` of the pipeline's headline folder (default ``metrics/evaluate``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from itertools import groupby
from pathlib import Path
from typing import Any

from deqa.metric_tables import HEADLINE_KEYS

METRIC_KEYS = tuple(k for k in HEADLINE_KEYS if k != "n")
LOWER_IS_BETTER = {"rmse", "kl"}
HEADLINE_FOLDER = "metrics/evaluate"
"""The default pipeline's headline folder (the ``evaluate`` stage's ``--metrics``)."""


def _metric_pattern(folder: str) -> re.Pattern:
    """``<folder>/<split>.<set>.json:<key>`` -> (split, set, key)."""
    keys = "|".join(METRIC_KEYS)
    return re.compile(rf"^{re.escape(folder.rstrip('/'))}/([^/.:]+)\.([^/:]+)\.json:({keys})$")


_SPLIT_ORDER = {"test": 0, "cross": 1, "val": 8}
MISSING_VALUES = ("None", "", "-")
"""How :func:`dvc.api.exp_show` spells a value a run does not have (it gives the string ``"None"``)."""


def param_sections() -> tuple[str, ...]:
    from deqa.config import Params

    return tuple(f.name for f in fields(Params))


@dataclass
class ExperimentTable:
    """Rows of runs; ``params``: the param keys that differ between them; ``metrics``:
    ``(split, set, key)`` columns; ``best``: per metric column whose runs differ, the rows holding
    the best value."""

    names: list[str] = field(default_factory=list)
    revs: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    params: list[str] = field(default_factory=list)
    metrics: list[tuple[str, str, str]] = field(default_factory=list)
    values: list[dict[str, Any]] = field(default_factory=list)
    best: dict[tuple[str, str, str], list[int]] = field(default_factory=dict)

    def metric_groups(self) -> list[tuple[str, int]]:
        """``(split/set, number of columns)`` in column order, for a grouped table header."""
        return [(f"{s}/{n}", len(list(cols))) for (s, n), cols in groupby(self.metrics, key=lambda c: c[:2])]


def _param_key(key: str, sections: tuple[str, ...]) -> str | None:
    bare = key.split(":", 1)[1] if key.startswith("params.yaml:") else key
    return bare if bare.split(".", 1)[0] in sections and ":" not in bare else None


def _best(values: list[Any], lower: bool) -> list[int]:
    """Indices of the best value (all of them when tied); none when every run has the same value."""
    numbers = {i: v for i, v in enumerate(values) if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if len(set(numbers.values())) < 2:
        return []
    best = min(numbers.values()) if lower else max(numbers.values())
    return [i for i, v in numbers.items() if v == best]


def experiment_table(
    records: list[dict[str, Any]], sections: tuple[str, ...] | None = None, folder: str = HEADLINE_FOLDER
) -> ExperimentTable:
    """Build the comparison from :func:`dvc.api.exp_show` records (one per run); the metrics are
    the headline rows in ``folder`` (another pipeline's: ``real/metrics/evaluate``)."""
    sections = sections or param_sections()
    pattern = _metric_pattern(folder)
    table = ExperimentTable()
    params: dict[str, list[Any]] = {}
    metrics: dict[tuple[str, str, str], list[Any]] = {}
    for i, rec in enumerate(records):
        table.names.append(str(rec.get("Experiment") or rec.get("rev") or "?"))
        rev = str(rec.get("rev") or "")
        table.revs.append(rev[:7] if re.fullmatch(r"[0-9a-f]{8,40}", rev) else rev)
        table.kinds.append(str(rec.get("typ") or ""))
        row: dict[str, Any] = {}
        for key, value in rec.items():
            value = None if value in MISSING_VALUES else value
            if (name := _param_key(key, sections)) is not None:
                params.setdefault(name, [None] * len(records))[i] = value
                row[name] = value
            elif match := pattern.match(key):
                metrics.setdefault(match.groups(), [None] * len(records))[i] = value
                row[match.groups()] = value
        table.values.append(row)
    canon = {k: {json.dumps(v, sort_keys=True, default=str) for v in vs} for k, vs in params.items()}
    table.params = [k for k in params if len(canon[k]) > 1]
    table.metrics = sorted(
        (c for c, vs in metrics.items() if any(v is not None for v in vs)),
        key=lambda c: (_SPLIT_ORDER.get(c[0], 5), c[0], c[1] != "overall", c[1], METRIC_KEYS.index(c[2])),
    )
    for column in table.metrics:
        if winners := _best(metrics[column], column[2] in LOWER_IS_BETTER):
            table.best[column] = winners
    return table


def load_experiments(repo: str | Path = ".", revs: str | list[str] | None = None, num: int = 1) -> list[dict[str, Any]]:
    """:func:`dvc.api.exp_show` records of the baseline commit(s) and their experiments."""
    import dvc.api

    return dvc.api.exp_show(repo=str(repo), revs=revs, num=num)


def cell(value: Any, digits: int | None = 4) -> str:
    """A table cell: ``-`` when missing, floats to ``digits`` decimals (``None``: as written)."""
    if value is None:
        return "-"
    if isinstance(value, float) and digits is not None:
        return f"{value:.{digits}f}"
    return value if isinstance(value, str) else json.dumps(value, default=str)


def markdown(table: ExperimentTable) -> str:
    """The comparison as a Markdown table (best metric values in bold)."""
    heads = ["experiment", "rev", *table.params, *(f"{s}/{n} {k}" for s, n, k in table.metrics)]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for i, name in enumerate(table.names):
        row = table.values[i]
        cells = [name, table.revs[i], *(cell(row.get(p), None) for p in table.params)]
        for column in table.metrics:
            text = cell(row.get(column))
            cells.append(f"**{text}**" if i in table.best.get(column, []) else text)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def write_experiments_page(
    out: str | Path = "experiments.html", repo: str | Path = ".", revs: Any = None, num: int = 1
) -> tuple[Path, ExperimentTable]:
    """Render ``experiments.html`` (self-contained) from the repository's DVC experiments."""
    from deqa.report import TEMPLATES, environment
    from deqa.report.provenance import report_date

    table = experiment_table(load_experiments(repo, revs, num))
    html = (
        environment()
        .get_template("experiments.html")
        .render(table=table, cell=cell, date=report_date(), css=(TEMPLATES / "report.css").read_text(encoding="utf-8"))
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    return out, table
