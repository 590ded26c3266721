"""A study of label and loss variants on real opinion distributions (``studies/`` pipelines).

DeQA-Score's distinctive claim is about the *distribution*: soft labels keep the raters' spread,
so the model predicts the std of the opinions as well as their mean, where one-hot labels
(Q-Align) collapse. A study tests it on a dataset with real per-image MOS and std (LIVE-C: about
175 ratings per image) with the standard intra-dataset protocol:

- :func:`study_splits`: ``study.splits`` seeded splits; ``test_fraction`` of the images held out,
  ``val_fraction`` of the rest for validation (it picks the epoch, ``train.select: best``), the
  others trained on. Split ``k`` is drawn from ``(base.seed, k)`` only, and every variant sees the
  same splits, the same training params and the same seed per split: the comparison is paired.
- :func:`run_variant`: one variant (``study.variants.<name>``: its labels ``soft | onehot | binary``
  and its fidelity term) trained and scored on every split with the same code as the pipeline
  (:func:`deqa.training.train`, :class:`deqa.scoring.Scorer`, the frozen tower's outputs from the
  ``features`` stage), and measured on the held-out images with
  :func:`deqa.metric_tables.group_metrics` (SRCC, PLCC after the logistic fit, std SRCC: predicted std
  against the raters' std, the Gaussian KL/JS/W2 gap and the entropy of the predicted levels).
- :func:`summarise`: per variant the mean and sd over the splits of each metric; per pair of
  variants the paired per-split differences (mean, sd) and how many splits each wins.
  :func:`results_markdown` renders the tables.

A study is the only place where its dataset is trained on; the pipelines that use the same
dataset as a cross-dataset test never read a study's outputs.
"""

from __future__ import annotations

import copy
import itertools
import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from deqa.config import Params, StudyConfig, StudyVariant

log = logging.getLogger(__name__)

METRICS = ("srcc", "plcc", "std_srcc", "kl", "js", "w2", "entropy")
"""What a study reports per split and variant (keys of :func:`deqa.metric_tables.group_metrics`)."""
HIGHER_IS_BETTER = {"srcc": True, "plcc": True, "std_srcc": True, "kl": False, "js": False, "w2": False}
"""Direction of each metric for the win counts; ``entropy`` wins by closeness to the raters'
(the mean entropy of the soft labels of the held-out images, ``label_entropy``)."""


def study_splits(n: int, cfg: StudyConfig, seed: int) -> list[np.ndarray]:
    """``cfg.splits`` assignments of ``n`` images to ``train``/``val``/``test`` (one array each)."""
    n_test = round(cfg.test_fraction * n)
    n_val = round(cfg.val_fraction * (n - n_test))
    if n_test < 3 or n_val < 3 or n - n_test - n_val < 2:
        raise ValueError(f"{n} images are too few for test {cfg.test_fraction} and val {cfg.val_fraction} splits")
    out = []
    for k in range(cfg.splits):
        order = np.random.default_rng([seed, k]).permutation(n)
        split = np.full(n, "train", dtype=object)
        split[order[:n_test]] = "test"
        split[order[n_test : n_test + n_val]] = "val"
        out.append(split)
    return out


def variant_params(params: Params, variant: StudyVariant, split: int) -> Params:
    """The params one variant trains split ``split`` with: its labels and fidelity term, the
    split's seed (``base.seed + split``), everything else as in ``params``."""
    p = copy.deepcopy(params)
    p.soft_labels.kind = variant.labels
    p.loss.fidelity_weight = variant.fidelity_weight
    p.loss.fidelity_sigma = variant.fidelity_sigma
    p.base.seed = params.base.seed + split
    p.train.resume = "never"  # each split trains in a fresh temporary folder
    return p


def run_variant(
    params: Params,
    name: str,
    manifest: pd.DataFrame,
    base_dir: str | Path,
    features=None,
    progress: bool = True,
) -> tuple[list[dict], pd.DataFrame]:
    """Train and score variant ``name`` of ``study.variants`` on every split; (one metrics record
    per split, predictions).

    ``features``: the ``features`` stage's store (folder or :class:`~deqa.features.FeatureStore`).
    The predictions are the held-out rows of every split (column ``study_split``).
    """
    from tqdm.auto import tqdm

    from deqa.features import FeatureStore
    from deqa.labels import label_table

    if isinstance(features, (str, Path)):
        features = FeatureStore.load(features)
    variant = params.study.variants[name]
    splits = study_splits(len(manifest), params.study, params.base.seed)
    reference = label_table(manifest, params.soft_labels)  # the raters' own (soft) labels: entropy reference
    records, predictions = [], []
    for k, assignment in enumerate(tqdm(splits, desc=f"study {name}", unit="split", disable=not progress)):
        p = variant_params(params, variant, k)
        table = label_table(manifest, p.soft_labels).assign(split=assignment)
        scored, summary = _train_and_score(p, table, base_dir, features)
        record = _split_record(k, scored, summary, reference[assignment == "test"])
        records.append(record)
        predictions.append(scored.assign(study_split=k))
        log.info("study %s split %d: %s", name, k, " ".join(f"{m} {_num(record[m])}" for m in METRICS[:3]))
    return records, pd.concat(predictions, ignore_index=True)


def _train_and_score(p: Params, table: pd.DataFrame, base_dir, features) -> tuple[pd.DataFrame, dict]:
    """Train on the table's train/val rows in a temporary folder; the test rows scored, and the summary."""
    from deqa.evaluation import predict
    from deqa.scoring import Scorer
    from deqa.training import train

    with tempfile.TemporaryDirectory(prefix="deqa-study-") as tmp:
        labels = Path(tmp) / "labels"
        labels.mkdir()
        for split in ("train", "val"):
            table[table["split"] == split].to_csv(labels / f"{split}.csv", index=False)
        summary = train(
            p, labels, base_dir, Path(tmp) / "model", Path(tmp) / "ckpt", None, progress=False, features=features
        )
        scorer = Scorer.from_pretrained(
            Path(tmp) / "model", base=base_dir, batch_size=p.evaluate.batch_size, features=features
        )
        scored = predict(scorer, table[table["split"] == "test"].reset_index(drop=True), p.evaluate.batch_size, False)
    if len(scored) != int((table["split"] == "test").sum()):
        raise ValueError("the study's held-out images could not all be scored")
    return scored, summary


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _split_record(k: int, scored: pd.DataFrame, summary: dict, reference: pd.DataFrame) -> dict:
    from deqa.metric_tables import group_metrics
    from deqa.metrics import level_entropy
    from deqa.schema import PROB_COLUMNS

    metrics = group_metrics(scored, bootstrap=0)
    sel = summary["selected"]
    return {
        "split": k,
        "n_test": metrics["n"],
        **{m: metrics[m] for m in METRICS},
        "label_entropy": float(level_entropy(reference[PROB_COLUMNS].to_numpy(float)).mean()),
        "epoch": sel["epoch"],
        "val_srcc": sel["val_srcc"],
    }


# ---------------------------------------------------------------------------------------------
# the results
# ---------------------------------------------------------------------------------------------
def _values(records: list[dict], metric: str) -> np.ndarray:
    return np.array([np.nan if r[metric] is None else r[metric] for r in sorted(records, key=lambda r: r["split"])])


def _better(metric: str, a: np.ndarray, b: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per split: whether ``a`` beats ``b`` and ``b`` beats ``a`` on ``metric``."""
    if metric == "entropy":
        a, b = -np.abs(a - target), -np.abs(b - target)
    elif not HIGHER_IS_BETTER[metric]:
        a, b = -a, -b
    return a > b, b > a


def summarise(runs: dict[str, list[dict]]) -> dict:
    """The results of a study: ``variants`` (per variant, per metric: mean and sd over the splits,
    ``n`` splits) and ``pairs`` (per ordered pair ``a-b``, per metric: mean and sd of the per-split
    difference a - b, and the splits each wins), plus ``label_entropy`` (the raters' mean)."""
    splits = {name: sorted(r["split"] for r in records) for name, records in runs.items()}
    if len({tuple(s) for s in splits.values()}) != 1:
        raise ValueError(f"the variants were not run on the same splits: {splits}")
    target = _values(next(iter(runs.values())), "label_entropy")
    out = {"splits": len(next(iter(splits.values()))), "label_entropy": _rounded(np.mean(target)), "variants": {}}
    for name, records in runs.items():
        out["variants"][name] = {
            m: {"mean": _rounded(np.nanmean(v)), "sd": _rounded(np.nanstd(v, ddof=1) if len(v) > 1 else 0.0)}
            for m in METRICS
            for v in [_values(records, m)]
        }
    out["pairs"] = {}
    for a, b in itertools.combinations(runs, 2):
        pair = {}
        for m in METRICS:
            x, y = _values(runs[a], m), _values(runs[b], m)
            d = x - y
            wins_a, wins_b = _better(m, x, y, target)
            pair[m] = {
                "diff_mean": _rounded(np.nanmean(d)),
                "diff_sd": _rounded(np.nanstd(d, ddof=1) if len(d) > 1 else 0.0),
                f"wins_{a}": int(wins_a.sum()),
                f"wins_{b}": int(wins_b.sum()),
            }
        out["pairs"][f"{a}-{b}"] = pair
    return out


def _rounded(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 4)


REFERENCE = "deqa"
"""The variant the DVC metrics' paired differences are taken against (all pairs are in the detail)."""


def headline(summary: dict, reference: str = REFERENCE) -> dict[str, dict]:
    """The study's DVC metrics as result rows (``docs/metrics.md``): per variant ``<name>.mean``
    and ``<name>.sd`` (the metrics' mean and sd over the splits, ``n`` the number of splits), and
    ``<name>-<reference>.diff`` (the mean paired difference) for every other variant."""
    n = summary["splits"]
    rows = {}
    for name, table in summary["variants"].items():
        rows[f"{name}.mean"] = {"n": n, **{m: table[m]["mean"] for m in METRICS}}
        rows[f"{name}.sd"] = {"n": n, **{m: table[m]["sd"] for m in METRICS}}
    for pair, table in summary["pairs"].items():
        a, b = pair.split("-", 1)
        if reference in (a, b) and a != b:
            other, sign = (b, -1) if a == reference else (a, 1)
            rows[f"{other}-{reference}.diff"] = {
                "n": n,
                **{m: None if c["diff_mean"] is None else round(sign * c["diff_mean"], 4) for m, c in table.items()},
            }
    return rows


def results_markdown(summary: dict, title: str = "Study results") -> str:
    """The variants table (mean ± sd over the splits) and the paired differences, as Markdown."""

    def cell(c: dict) -> str:
        return "–" if c["mean"] is None else f"{c['mean']:.4f} ± {c['sd']:.4f}"

    lines = [
        f"## {title}",
        "",
        f"{summary['splits']} seeded splits; mean ± sd over the splits of the held-out images' metrics. "
        f"Entropy: of the predicted levels (the raters' soft labels: {summary['label_entropy']:.4f}).",
        "",
        "| variant | " + " | ".join(METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
    ]
    for name, table in summary["variants"].items():
        lines.append(f"| {name} | " + " | ".join(cell(table[m]) for m in METRICS) + " |")
    lines += ["", "Paired per-split differences (a − b: mean ± sd; splits won by a / by b):", ""]
    lines += ["| a − b | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for pair, table in summary["pairs"].items():
        a, b = pair.split("-", 1)
        cells = [
            f"{c['diff_mean']:+.4f} ± {c['diff_sd']:.4f} ({c[f'wins_{a}']}/{c[f'wins_{b}']})"
            if c["diff_mean"] is not None
            else "–"
            for c in (table[m] for m in METRICS)
        ]
        lines.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def results_html(summary: dict, title: str = "Study results") -> str:
    """The tables of :func:`results_markdown` as one self-contained HTML page (no scripts)."""
    from html import escape

    def row(cells: list[str], tag: str = "td") -> str:
        return "<tr>" + "".join(f"<{tag}>{escape(c)}</{tag}>" for c in cells) + "</tr>"

    def table(block: list[str]) -> str:
        rows = [[c.strip() for c in line.strip("|").split("|")] for line in block if not line.startswith("|---")]
        return "<table>" + row(rows[0], "th") + "".join(row(r) for r in rows[1:]) + "</table>"

    parts, block = [], []
    for line in results_markdown(summary, title).splitlines():
        if line.startswith("|"):
            block.append(line)
            continue
        if block:
            parts.append(table(block))
            block = []
        if line.startswith("## "):
            parts.append(f"<h1>{escape(line[3:])}</h1>")
        elif line:
            parts.append(f"<p>{escape(line)}</p>")
    if block:
        parts.append(table(block))
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}td:first-child,th:first-child{text-align:left}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n"
    )
