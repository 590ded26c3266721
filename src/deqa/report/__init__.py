"""The ``report`` stage: one self-contained HTML page and a Markdown summary, from templates.

:func:`build_report` reads the pipeline's outputs with the typed readers of
:mod:`deqa.report.inputs` (a missing file becomes a "not available" note in its section; a file
that breaks its schema stops the stage with a message naming file and key), builds the view with
:mod:`deqa.report.context` and renders the jinja2 templates in ``templates/`` (HTML autoescaped):

- ``report.html``: inline CSS, every plot and thumbnail embedded as a PNG data URI, no script, no
  font, no link outside the file;
- ``summary.md``: the headline table per evaluated set, key params and provenance.

The page opens with a card per evaluated set (test, cross-dataset, any other set such as a
sensitivity set; validation only in the tables), plain sentences and the scatter plots, then the
per-distortion / per-severity breakdown, confusion, uncertainty, examples, the full metrics table,
data and validation, discretisation, training, params and provenance.

DVC experiments are not read here: the stage runs inside ``dvc repro``, which holds the repository
lock, and experiments are git refs no stage can declare as a dependency. The experiments page is a
separate command over ``dvc.api.exp_show`` (:mod:`deqa.report.experiments`, ``deqa report
--experiments``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from deqa.report import context, inputs
from deqa.report.context import ReportData
from deqa.report.inputs import Loaded, ReportInputError, ReportSources
from deqa.report.provenance import collect_provenance

__all__ = ["SECTIONS", "Loaded", "ReportData", "ReportInputError", "ReportSources", "build_report", "collect", "render"]

TEMPLATES = Path(__file__).parent / "templates"

SECTIONS = (
    ("glance", "At a glance"),
    ("scatter", "Scatter"),
    ("breakdown", "Distortions"),
    ("confusion", "Confusion"),
    ("calibration", "Uncertainty"),
    ("examples", "Examples"),
    ("metrics", "Metrics"),
    ("data", "Data"),
    ("discretisation", "Discretisation"),
    ("training", "Training"),
    ("params", "Params"),
    ("provenance", "Provenance"),
)
"""The page's sections in order: ``(id, navigation title)``."""


def collect(sources: ReportSources | None = None) -> ReportData:
    """Load every input that exists (see :class:`ReportSources` for the paths)."""
    sources = sources or ReportSources()
    path = sources.path
    data = ReportData(sources)
    data.evaluate = inputs.read_evaluate(path("evaluate_detail"))
    data.predictions = inputs.read_predictions(path("predictions"))
    data.discretisation = inputs.read_discretisation(path("discretisation"))
    data.validate_report = inputs.read_validate_report(path("validate_report"))
    data.validate_metrics = inputs.read_validate_metrics(path("validate_metrics"))
    data.manifest = inputs.read_manifest(path("manifest"))
    data.soft_labels = inputs.read_soft_labels(path("soft_labels"))
    data.train = inputs.read_train_metrics(path("train_metrics"))
    data.curves = inputs.read_curves(path("dvclive"))
    data.params = inputs.read_params(path("params"))
    data.provenance = collect_provenance(Path(sources.base_dir), data.params.value)
    return data


# ---- jinja2 ---------------------------------------------------------------------------------------
def num(value: Any, digits: int = 3) -> str:
    """A number for a cell: ``-`` when missing or not finite; ints without decimals."""
    if value is None or isinstance(value, bool):
        return "-" if value is None else ("yes" if value else "no")
    if isinstance(value, int):
        return f"{value:,}"
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{value:.{digits}f}" if math.isfinite(value) else "-"


def signed(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{float(value):+.{digits}f}"


def interval(s: Any, key: str) -> str:
    """``0.804 [0.786, 0.820]`` from a set's value and its ``_lo``/``_hi`` bootstrap bounds."""
    lo, hi = getattr(s, f"{key}_lo", None), getattr(s, f"{key}_hi", None)
    return num(getattr(s, key)) if lo is None or hi is None else f"{num(getattr(s, key))} [{num(lo)}, {num(hi)}]"


def std_cell(s: Any) -> str:
    """A set's std SRCC, or "not a result" where its detail carries a ``std_note``."""
    return "not a result" if getattr(s, "std_note", None) else num(s.std_srcc)


def md_cell(value: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def environment() -> Any:
    """The jinja2 environment: autoescape for ``*.html`` templates, strict undefined names."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(num=num, signed=signed, md=md_cell)
    env.globals.update(interval=interval, std_cell=std_cell)
    return env


def view(data: ReportData, examples: int = 4) -> dict[str, Any]:
    """The template context of ``report.html`` and ``summary.md``."""
    sets = data.evaluate.value or []
    cards = context.card_sets(sets)
    head = cards[0] if cards else None
    return {
        "data": data,
        "sets": sets,
        "cards": cards,
        "head": head,
        "breakdown_sets": context.breakdown_sets(sets),
        "sentences": context.glance_sentences(data),
        "key_params": context.key_params(data.params.value),
        "params_rows": context.params_rows(data.params.value) if data.params.ok else [],
        "manifest_rows": context.manifest_rows(data.manifest.value) if data.manifest.ok else [],
        "examples": context.examples(data, head, examples),
        "figures": context.build_figures(data, head),
        "distortion_rows": context.distortion_rows,
        "split_note": context.split_note,
        "prov": data.provenance,
        "missing": data.missing(),
        "sections": SECTIONS,
        "css": (TEMPLATES / "report.css").read_text(encoding="utf-8"),
    }


def render(data: ReportData, examples: int = 4) -> dict[str, str]:
    """``{"html": page, "summary": markdown}`` for the loaded inputs."""
    env = environment()
    ctx = view(data, examples)
    return {
        "html": env.get_template("report.html").render(ctx),
        "summary": env.get_template("summary.md").render({k: v for k, v in ctx.items() if k != "figures"}),
    }


def build_report(
    out_dir: str | Path = "reports", sources: ReportSources | None = None, config: Any = None
) -> dict[str, Path]:
    """Collect the inputs and write ``report.html`` and ``summary.md`` into ``out_dir``.

    ``config`` is a :class:`deqa.config.ReportConfig` (``examples``: best and worst images shown;
    default 4). Returns ``{"html": path, "summary": path}``.
    """
    examples = int(getattr(config, "examples", 4)) if config is not None else 4
    pages = render(collect(sources), examples)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"html": out / "report.html", "summary": out / "summary.md"}
    paths["html"].write_text(pages["html"], encoding="utf-8")
    paths["summary"].write_text(pages["summary"], encoding="utf-8")
    return paths
