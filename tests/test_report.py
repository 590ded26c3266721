"""The report: typed readers, what the page shows (and does not repeat), the summary, the
experiments table from dvc.api, and a render in headless Chromium when one is installed."""

from __future__ import annotations

import base64
import dataclasses
import html
import importlib.util
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from deqa import metric_tables, report
from deqa.config import Params, to_dict
from deqa.labels import make_labels, onehot_labels
from deqa.report import browser, context, experiments, inputs, provenance
from deqa.schema import PREDICTION_COLUMNS, PROB_COLUMNS

SECTION_IDS = [key for key, _ in report.SECTIONS]
B64_PNG = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
DISTORTIONS = ("blur", "noise", "jpeg", "contrast")


def _test_rows(rng: np.random.Generator, images: Path) -> list[dict]:
    """Synthetic-like test rows: 3 scenes × (pristine + 4 distortions × 2 severities); the
    prediction falls exactly with severity (a perfectly monotonic scorer)."""
    rows = []
    for c in range(3):
        for distortion, severity in [("pristine", 0)] + [(d, k) for d in DISTORTIONS for k in (1, 2)]:
            name = f"scene{c}_{distortion}_{severity}.png"
            m = 4.5 - 1.2 * severity + 0.2 * c + rng.normal(0, 0.1)
            Image.new("RGB", (24, 20), (40 * severity, 200 - 50 * c, 90)).save(images / name)
            rows.append(
                {
                    "image": name,
                    "root": "images",
                    "dataset": "synthetic",
                    "split": "test",
                    "m": m,
                    "s": 0.5 + 0.1 * c,
                    "pred_mean": 4.6 - severity - 0.1 * c,
                    "pred_std": 0.6,
                    "content": f"scene{c}",
                    "distortion": distortion,
                    "severity": severity,
                }
            )
    return rows


def _cross_rows(rng: np.random.Generator, images: Path) -> list[dict]:
    rows = []
    for i in range(12):
        name = f"wild_{i}.png"
        Image.new("RGB", (20, 24), (10 * i, 90, 200)).save(images / name)
        m = rng.uniform(1, 5)
        rows.append(
            {
                "image": name,
                "root": "images",
                "dataset": "livec",
                "split": "cross",
                "m": m,
                "s": rng.uniform(0.3, 0.9),
                "pred_mean": float(np.clip(m + rng.normal(0, 0.8), 1, 5)),
                "pred_std": 0.7,
            }
        )
    return rows


def _write_stage_metrics(root: Path) -> None:
    """The soft_labels and validate stages' JSON files: one failed expectation with its example."""
    (root / "metrics/discretisation.json").write_text(
        json.dumps(
            {
                "synthetic": {
                    "n": 100,
                    "mean_error": 0.0072,
                    "onehot_mean_error": 0.303,
                    "std_error": 0.05,
                    "onehot_std_error": 0.4,
                    "js": 0.001,
                    "fallbacks": 3,
                }
            }
        )
    )
    (root / "data/validate").mkdir(parents=True)
    expectations = [
        {
            "name": "mos_in_scale",
            "success": True,
            "level": "row",
            "description": "MOS within [lo, hi]",
            "unexpected_count": 0,
            "failing_rows": [],
        },
        {
            "name": "file_decodes",
            "success": False,
            "level": "row",
            "description": "the image decodes",
            "unexpected_count": 1,
            "failing_rows": [{"row": 3, "image": "broken.png", "reason": "truncated file"}],
        },
    ]
    (root / "data/validate/report.json").write_text(
        json.dumps(
            {
                "on_error": "quarantine",
                "success": True,
                "rows_in": 40,
                "kept": 39,
                "quarantined": 1,
                "rows_failing": 1,
                "missing_columns": [],
                "expectations": expectations,
                "kept_expectations": [],
            }
        )
    )
    (root / "metrics/validate.json").write_text(
        json.dumps(
            {
                "rows_in": 40,
                "kept": 39,
                "quarantined": 1,
                "success": True,
                "expectations_passed": 1,
                "expectations_total": 2,
                "failing_rows": {"mos_in_scale": 0, "file_decodes": 1},
            }
        )
    )


def _write_label_files(root: Path, predictions: pd.DataFrame, kind: str) -> None:
    """The soft_labels stage's files for the training datasets' rows (not the cross-dataset set)."""
    rows = predictions[predictions["split"] != "cross"]
    probs, _ = make_labels(rows["m"].to_numpy(float), rows["s"].to_numpy(float), kind=kind)
    table = rows[["image", "root", "dataset", "split", "mos", "std", "m", "s"]].copy()
    table[PROB_COLUMNS] = probs
    table["label_kind"], table["fallback"] = kind, False
    (root / "data/soft_labels").mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        table[table["split"] == split].to_csv(root / f"data/soft_labels/{split}.csv", index=False)


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    """A checkout's pipeline outputs, in the shapes the stages write them."""
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    df = pd.DataFrame(_test_rows(rng, tmp_path / "images") + _cross_rows(rng, tmp_path / "images"))
    df["mos"], df["std"] = df["m"], df["s"]
    df[PROB_COLUMNS] = rng.dirichlet(np.ones(5) * 2, len(df))
    df = df[[*PREDICTION_COLUMNS, "content", "distortion", "severity"]]
    (tmp_path / "data/evaluate").mkdir(parents=True)
    df.to_csv(tmp_path / "data/evaluate/predictions.csv", index=False)
    detail = metric_tables.evaluate_predictions(df, bootstrap=50)
    (tmp_path / "data/evaluate/metrics.json").write_text(json.dumps(detail))
    metric_tables.write_headline(metric_tables.headline_rows(detail), tmp_path / "metrics/evaluate")
    _write_stage_metrics(tmp_path)
    _write_label_files(tmp_path, df, "soft")
    manifest = df[["image", "root", "dataset", "split", "mos", "std"]]
    pd.concat([manifest, manifest.assign(split="train")]).to_csv(tmp_path / "data/validate/manifest.csv", index=False)
    (tmp_path / "metrics/train.json").write_text(json.dumps({"steps": 20, "val_srcc": 0.6, "best_epoch": 2}))
    curves = tmp_path / "dvclive/train/plots/metrics"
    for name, values in (("train/loss", np.linspace(2, 0.5, 20)), ("val/srcc", [0.3, 0.5, 0.6])):
        (curves / name).parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"timestamp": 0, "step": range(len(values)), name.split("/")[1]: values}).to_csv(
            curves / f"{name}.tsv", sep="\t", index=False
        )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(to_dict(Params())))
    return tmp_path


def _build(repo: Path, examples: int = 2) -> tuple[str, str]:
    paths = report.build_report(
        repo / "out", report.ReportSources(base_dir=repo), type("C", (), {"examples": examples})
    )
    return paths["html"].read_text(encoding="utf-8"), paths["summary"].read_text(encoding="utf-8")


def _section(page: str, key: str) -> str:
    start = page.index(f'<section id="{key}">')
    return page[start : page.index("</section>", start)]


def test_report_sections_images_and_self_contained(outputs):
    page, summary = _build(outputs)
    assert [m for m in re.findall(r'<section id="([^"]+)">', page)] == SECTION_IDS
    assert "Not available" not in page and "Inputs not available" not in page
    pngs = B64_PNG.findall(page)
    # scatter, breakdown response, confusion, calibration, curves + 2 best + 2 worst (thumb + bars)
    assert len(pngs) == 5 + 8
    for b64 in pngs:
        with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
            assert im.format == "PNG" and im.size[0] > 0
    assert not re.search(r"https?://", page)
    assert "<script" not in page and "<link" not in page
    assert summary.startswith("# deqa report summary")


def test_headline_cards_for_every_test_and_cross_set_and_no_repeats(outputs):
    page, summary = _build(outputs)
    glance = _section(page, "glance")
    assert "test/synthetic" in glance and "cross/livec" in glance  # the cross-dataset set has its card
    detail = json.loads((outputs / "data/evaluate/metrics.json").read_text())
    livec = detail["cross"]["livec"]
    assert f"{livec['srcc']:.3f}" in glance and f"{livec['srcc_lo']:.3f} – {livec['srcc_hi']:.3f}" in glance
    # a perfectly monotonic scorer: +1 overall and per distortion
    assert 'monotonicity in severity</div><div class="value">1.000' in glance
    assert "overall" not in page  # one dataset per split: no repeated 'overall' row
    assert page.count('alt="level confusion matrices"') == 1  # the confusion is shown once
    metrics_rows = re.findall(r'<tr><td class="l">([^<]+)</td>', _section(page, "metrics"))
    assert metrics_rows == ["test/synthetic", "cross/livec"]
    assert "| cross/livec | 12 |" in summary and "| test/synthetic | 27 |" in summary


def test_breakdown_table_per_distortion_and_severity(outputs):
    page, _ = _build(outputs)
    section = _section(page, "breakdown")
    rows = re.findall(r'<tr[^>]*><td class="l">([^<]+)</td><td>(\d+)</td>', section)
    # 3 scenes: 6 images per distortion, 3 pristine; severities 0 (3), 1 and 2 (12 each)
    assert rows[:5] == [("blur", "6"), ("contrast", "6"), ("jpeg", "6"), ("noise", "6"), ("pristine", "3")]
    assert rows[5:] == [("0 (pristine)", "3"), ("1", "12"), ("2", "12")]
    assert "over 12 series" in section  # 3 scenes × 4 distortions


def test_discretisation_soft_and_onehot_side_by_side_and_validation_table(outputs):
    page, _ = _build(outputs)
    disc = _section(page, "discretisation")
    assert "<th>soft</th><th>one-hot</th><th>soft</th><th>one-hot</th>" in disc
    assert "<td>0.0072</td><td>0.3030</td><td>0.0500</td><td>0.4000</td>" in disc
    data = _section(page, "data")
    assert "40 rows in, 39 kept, 1 quarantined" in data
    assert "broken.png: truncated file" in data  # the failed expectation with its example row
    assert '<td class="l">train</td>' in data  # the manifest's training split is summarised
    training = _section(page, "training")
    assert "best_epoch" in training and "20" in training


def test_examples_show_the_training_labels_of_the_soft_labels_stage_whatever_their_kind(outputs):
    """Under ``soft_labels.kind: onehot`` the example bars are the one-hot labels the model was
    trained on (read from data/soft_labels, not recomputed as Gaussians from the params)."""
    params = to_dict(Params())
    params["soft_labels"]["kind"] = "onehot"
    (outputs / "params.yaml").write_text(yaml.safe_dump(params))
    predictions = pd.read_csv(outputs / "data/evaluate/predictions.csv")
    _write_label_files(outputs, predictions, "onehot")
    data = report.collect(report.ReportSources(base_dir=outputs))
    test_set = next(s for s in data.evaluate.value if s.key == "test/synthetic")
    shown = context.examples(data, test_set, 3)
    for e in shown["best"] + shown["worst"]:
        assert e["label_kind"] == "onehot" and e["bars"] is not None
        np.testing.assert_array_equal(e["label"], onehot_labels(e["m"]))
    cross = next(s for s in data.evaluate.value if s.split == "cross")  # never trained on: no label
    assert all(e["label"] is None and e["label_kind"] is None for e in context.examples(data, cross, 2)["best"])
    page, _ = _build(outputs)
    assert "training label: onehot" in _section(page, "examples") and "training label: soft" not in page


def test_worst_examples_spread_over_distortions():
    # the four largest errors are all blur; one per distortion comes first, then the next errors
    rows = pd.DataFrame(
        {
            "image": [f"i{k}" for k in range(7)],
            "dataset": "d",
            "distortion": ["blur", "blur", "blur", "blur", "noise", "jpeg", "jpeg"],
            "m": [3.0] * 7,
            "pred_mean": [0.0, 0.1, 0.2, 0.3, 2.0, 2.5, 2.9],
        }
    )
    worst = context.pick_examples(rows, 3, worst=True)
    assert list(worst["image"]) == ["i0", "i4", "i5"]
    best = context.pick_examples(rows, 2, worst=False)
    assert list(best["image"]) == ["i6", "i4"]
    assert list(context.pick_examples(rows.drop(columns="distortion"), 2, worst=True)["image"]) == ["i0", "i1"]


def test_missing_inputs_say_not_available(tmp_path):
    page, summary = _build(tmp_path)
    assert re.findall(r'<section id="([^"]+)">', page) == SECTION_IDS
    assert page.count("Not available") >= 9
    assert "data:image/png" not in page
    assert "Missing inputs" in summary and "metrics.json not found" in summary


def test_malformed_inputs_fail_naming_file_and_key(outputs):
    path = outputs / "data/evaluate/metrics.json"
    detail = json.loads(path.read_text())
    detail["test"]["synthetic"]["srcc"] = "high"
    path.write_text(json.dumps(detail))
    with pytest.raises(inputs.ReportInputError, match=r"metrics\.json: test\.synthetic\.srcc: expected float"):
        report.collect(report.ReportSources(base_dir=outputs))
    (outputs / "metrics/validate.json").write_text(json.dumps({"rows_in": 3}))
    with pytest.raises(inputs.ReportInputError, match=r"validate\.json: missing key 'kept'"):
        inputs.read_validate_metrics(outputs / "metrics/validate.json")


def test_old_overall_of_a_single_dataset_is_dropped(tmp_path):
    group = {"n": 5, "srcc": 0.5}
    (tmp_path / "m.json").write_text(
        json.dumps({"test": {"overall": group, "synthetic": group}, "val": {"overall": group, "a": group, "b": group}})
    )
    sets = inputs.read_evaluate(tmp_path / "m.json").value
    assert [s.key for s in sets] == ["test/synthetic", "val/overall", "val/a", "val/b"]


def test_html_is_escaped(outputs):
    df = pd.read_csv(outputs / "data/evaluate/predictions.csv")
    df.loc[df["dataset"] == "livec", "dataset"] = "<b>evil</b>"
    df.to_csv(outputs / "data/evaluate/predictions.csv", index=False)
    detail = metric_tables.evaluate_predictions(df, bootstrap=0)
    (outputs / "data/evaluate/metrics.json").write_text(json.dumps(detail))
    page, _ = _build(outputs)
    assert "<b>evil</b>" not in page and "cross/&lt;b&gt;evil&lt;/b&gt;" in page


def test_provenance_digest_and_git(tmp_path):
    a = provenance.params_digest({"train": {"lr": 0.001, "epochs": 3}, "base": {"seed": 0}})
    assert a == provenance.params_digest({"base": {"seed": 0}, "train": {"epochs": 3, "lr": 0.001}})
    assert a != provenance.params_digest({"base": {"seed": 1}, "train": {"epochs": 3, "lr": 0.001}})
    revision, dirty, note = provenance.git_state(tmp_path)
    assert revision is None and dirty is None and "not a git checkout" in note


def test_experiment_table_from_exp_show_records():
    def record(name, rev, kind, lr, srcc, rmse):
        return {
            "Experiment": name,
            "rev": rev,
            "typ": kind,
            "train.lr": lr,
            "base.seed": 0,
            "metrics/evaluate/test.synthetic.json:srcc": srcc,
            "metrics/evaluate/test.synthetic.json:rmse": rmse,
            "metrics/evaluate/cross.livec.json:srcc": 0.3,
            "metrics/evaluate/cross.livec.json:n": 40,  # a count, not a compared metric
            "real/metrics/evaluate/test.biq2021.json:srcc": 0.7,  # another pipeline's row
            "steps": 10,
            "src/deqa/metrics.py": "abc123",
        }

    records = [
        record(None, "workspace", "baseline", 0.001, 0.80, 0.5),
        record(None, "abcdef0123456789", "baseline", 0.001, 0.80, 0.5),
        record("hot-lr", "1234567890abcdef", "branch_commit", 0.01, 0.70, 0.4),
    ]
    for rec in records:  # exp_show spells a value a run lacks as the string "None"
        rec["metrics/evaluate/test.overall.json:srcc"] = "None"
    records[2]["metrics/evaluate/cross.livec.json:srcc"] = "None"
    table = experiments.experiment_table(records, sections=("base", "train"))
    assert table.names == ["workspace", "abcdef0123456789", "hot-lr"]
    assert table.revs == ["workspace", "abcdef0", "1234567"]
    assert table.params == ["train.lr"]  # base.seed does not vary; deps and other metrics are not params
    assert table.metrics == [("test", "synthetic", "srcc"), ("test", "synthetic", "rmse"), ("cross", "livec", "srcc")]
    # best per column: ties all marked, a column where every run agrees is not marked
    assert table.best == {("test", "synthetic", "srcc"): [0, 1], ("test", "synthetic", "rmse"): [2]}
    assert table.metric_groups() == [("test/synthetic", 2), ("cross/livec", 1)]
    md = experiments.markdown(table).splitlines()
    assert md[0] == "| experiment | rev | train.lr | test/synthetic srcc | test/synthetic rmse | cross/livec srcc |"
    assert md[4] == "| hot-lr | 1234567 | 0.01 | 0.7000 | **0.4000** | - |"


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_experiments_page_from_a_real_dvc_repo(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "metrics").mkdir(parents=True)
    (repo / "params.yaml").write_text("train:\n  lr: 0.001\nbase:\n  seed: 0\n")
    (repo / "metrics/evaluate").mkdir()
    (repo / "metrics/evaluate/test.synthetic.json").write_text(json.dumps({"srcc": 0.8, "rmse": 0.5}))
    (repo / "metrics/evaluate/cross.livec.json").write_text(json.dumps({"srcc": 0.3}))
    (repo / "dvc.yaml").write_text(
        "stages:\n  evaluate:\n    cmd: 'true'\n    params: [train.lr]\n"
        "    metrics:\n      - metrics/evaluate:\n          cache: false\n"
    )
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "base"]):
        exe = str(Path(sys.executable).parent / "dvc") if cmd[0] == "dvc" else cmd[0]  # the venv's dvc
        subprocess.run([exe, *cmd[1:]], cwd=repo, check=True, capture_output=True)
    path, table = experiments.write_experiments_page(tmp_path / "experiments.html", repo)
    assert table.names[0] == "workspace" and ("test", "synthetic", "srcc") in table.metrics
    page = path.read_text()
    assert "0.8000" in page and "<script" not in page


def test_stage_script_writes_the_report(outputs, monkeypatch):
    """The stage takes every input path as an option named after its ReportSources field."""
    path = Path(__file__).resolve().parents[1] / "stages" / "report.py"
    spec = importlib.util.spec_from_file_location("stage_report", path)
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    monkeypatch.chdir(outputs)
    sources = report.ReportSources()
    argv = ["--out", "reports"]
    for f in dataclasses.fields(sources):
        if f.name not in ("base_dir", "params"):
            argv += [f"--{f.name.replace('_', '-')}", getattr(sources, f.name)]
    assert stage.main(argv) == 0
    assert "data:image/png;base64" in (outputs / "reports/report.html").read_text()
    assert (outputs / "reports/summary.md").read_text().startswith("# deqa report summary")


@pytest.mark.skipif(browser.find_chromium() is None, reason="no Chromium (apt-get install chromium)")
def test_report_renders_in_headless_chromium(outputs, tmp_path):
    paths = report.build_report(outputs / "out", report.ReportSources(base_dir=outputs))
    check = browser.render_check(paths["html"], tmp_path / "report.png", tuple(SECTION_IDS), width=1100)
    assert check.ok, check.problems
    # 5 figures, 4 best and 4 worst images with their level bars: every one decoded by the browser
    assert len(check.images) == 5 + 16 == paths["html"].read_text().count("<img ")
    assert not check.broken_images
    assert check.sections == SECTION_IDS
    assert check.height > 2000 and check.ink_share > 0.03
    with Image.open(check.screenshot) as im:
        assert im.size[0] == 1100


def test_an_overall_breakdown_is_not_a_copy_of_its_one_dataset_with_provenance():
    from deqa.report.context import breakdown_sets
    from deqa.report.inputs import EvalSet, Monotonicity

    mono = Monotonicity(mean=0.9, n_series=3, n_undefined=0, by_distortion={})

    def s(split, name, rows):
        return EvalSet(n=10, split=split, name=name, monotonicity=mono if rows else None)

    one = [s("test", "overall", True), s("test", "photos", False), s("test", "distorted", True)]
    assert [x.key for x in breakdown_sets(one)] == ["test/distorted"]
    two = [s("test", "overall", True), s("test", "a", True), s("test", "b", True), s("cross", "sens", True)]
    assert [x.key for x in breakdown_sets(two)] == ["test/overall", "test/a", "test/b", "cross/sens"]


def test_a_std_correlation_that_is_not_a_result_is_said_so(outputs):
    """A model that learnt no spread of people's opinions: the report shows the reason, not the number."""
    path = outputs / "data/evaluate/metrics.json"
    detail = json.loads(path.read_text())
    note = "the predicted std is not a result here: its training data had no raters' std"
    detail["cross"]["livec"].update(std_note=note, std_srcc=0.0912)
    detail["test"]["synthetic"]["std_srcc"] = 0.4321
    path.write_text(json.dumps(detail))
    page, summary = _build(outputs)
    row = next(r for r in _section(page, "metrics").split("<tr>") if r.startswith('<td class="l">cross/livec'))
    assert "not a result" in row and "0.091" not in page and "0.091" not in summary
    assert note in html.unescape(page) and note in summary
    assert (
        "| cross/livec | 12 |" in summary and "not a result" in summary.split("| cross/livec | 12 |")[1].splitlines()[0]
    )
    # the other set keeps its number
    assert "0.432" in summary.split("| test/synthetic | 27 |")[1].splitlines()[0]
