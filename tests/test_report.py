"""The report renders from a small fixture: sections, embedded images, no external resources."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from deqa import metrics, report
from deqa.config import Params, ReportConfig, to_dict
from deqa.schema import PREDICTION_COLUMNS, PROB_COLUMNS

SECTION_IDS = ["glance", "data", "discretisation", "training", "metrics", "scatter", "confusion",
               "calibration", "examples", "experiments", "params"]
B64_PNG = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _fake_experiments(evaluate: dict) -> list[dict]:
    """The shape of ``dvc exp show --json``: a workspace, a baseline commit, one experiment."""
    def state(rev, name, kind, srcc):
        ev = json.loads(json.dumps(evaluate))
        ev["test"]["overall"]["srcc"] = srcc
        return {"rev": rev, "name": name, "error": None, "experiments": None, "data": {
            "rev": rev, "timestamp": None, "meta": {}, "deps": {}, "outs": {},
            "params": {"params.yaml": {"data": {"soft_labels": {"kind": kind}, "train": {"lr": 0.001}}}},
            "metrics": {"metrics/evaluate.json": {"data": ev}},
        }}
    workspace = state("workspace", None, "soft", 0.777)
    baseline = state("abcdef1234567", "main", "soft", 0.777)
    baseline["experiments"] = [{"name": "onehot-run", "executor": None,
                                "revs": [state("1234567abcdef", "onehot-run", "onehot", 0.612)]}]
    return [workspace, baseline]


@pytest.fixture
def fixture_repo(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for split, n in (("val", 8), ("test", 14)):
        m = rng.uniform(1, 5, n)
        s = rng.uniform(0.3, 0.9, n)
        mu = np.clip(m + rng.normal(0, 0.4, n), 1, 5)
        probs = rng.dirichlet(np.ones(5) * 2, n)
        for i in range(n):
            name = f"{split}_{i}.png"
            level = int(40 + 40 * m[i])
            Image.new("RGB", (24, 20), (level, 255 - level, 90)).save(images / name)
            rows.append({"image": name, "root": "images", "dataset": "synthetic" if i % 3 else "other",
                         "split": split, "mos": m[i] * 20, "std": s[i] * 20, "m": m[i], "s": s[i],
                         "pred_mean": mu[i], "pred_std": s[i] * 0.8 + 0.1,
                         **dict(zip(PROB_COLUMNS, probs[i]))})
    df = pd.DataFrame(rows, columns=PREDICTION_COLUMNS)
    (tmp_path / "data/evaluate").mkdir(parents=True)
    df.to_csv(tmp_path / "data/evaluate/predictions.csv", index=False)
    (tmp_path / "metrics").mkdir()
    evaluate = metrics.evaluate_predictions(df, bootstrap=50)
    (tmp_path / "metrics/evaluate.json").write_text(json.dumps(evaluate))
    (tmp_path / "metrics/discretisation.json").write_text(json.dumps({"synthetic": {
        "n": 100, "mean_error": 0.0072, "onehot_mean_error": 0.303, "std_error": 0.05,
        "onehot_std_error": 0.4, "js": 0.001, "fallbacks": 3}}))
    (tmp_path / "metrics/validate.json").write_text(json.dumps(
        {"rows": 22, "quarantined": 1, "success": True,
         "failing_rows": {f"check_{i}": int(i == 3) * 2 for i in range(12)}}))
    (tmp_path / "data/validate").mkdir(parents=True)
    (tmp_path / "data/validate/report.json").write_text(json.dumps(
        {"success": True, "checks": [{"name": "mos_in_range", "ok": True}], "counts": {"train": 10}}))
    manifest = df[["image", "root", "dataset", "split", "mos", "std"]].copy()
    manifest = pd.concat([manifest, manifest.assign(split="train", image="t" + manifest["image"])])
    manifest.to_csv(tmp_path / "data/validate/manifest.csv", index=False)
    (tmp_path / "metrics/train.json").write_text(json.dumps({"steps": 20, "final_loss": 0.5}))
    curves = tmp_path / "dvclive/train/plots/metrics"
    (curves / "train").mkdir(parents=True)
    (curves / "val").mkdir(parents=True)
    pd.DataFrame({"step": range(20), "loss": np.linspace(2, 0.5, 20)}).to_csv(curves / "train/loss.tsv", sep="\t", index=False)
    pd.DataFrame({"step": [5, 10, 15], "srcc": [0.3, 0.5, 0.6]}).to_csv(curves / "val/srcc.tsv", sep="\t", index=False)
    params = to_dict(Params())
    params["report"]["experiments"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def _build(repo: Path, experiments=None, examples=2):
    sources = report.ReportSources(base_dir=repo)
    paths = report.build_report(repo / "reports", sources, ReportConfig(examples=examples), experiments=experiments)
    return paths["html"].read_text(encoding="utf-8"), paths["summary"].read_text(encoding="utf-8")


def test_report_has_sections_and_embedded_images(fixture_repo):
    evaluate = json.loads((fixture_repo / "metrics/evaluate.json").read_text())
    html_text, summary = _build(fixture_repo, experiments=_fake_experiments(evaluate), examples=2)
    for key in SECTION_IDS:
        assert f'<section id="{key}">' in html_text, key
    assert "Not available" not in html_text
    pngs = B64_PNG.findall(html_text)
    # glance scatter + curves + 2 scatter splits + confusion + calibration + 4 thumbs + 4 bars
    assert len(pngs) >= 14
    for b64 in pngs:
        with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
            assert im.format == "PNG" and im.size[0] > 0
    assert html_text.count('class="thumb"') == 4  # 2 best + 2 worst, all images found
    # self-contained: no external resources or scripts
    assert not re.search(r"https?://", html_text)
    assert "<script" not in html_text and "<link" not in html_text
    # the headline numbers of metrics/evaluate.json appear
    overall = evaluate["test"]["overall"]
    assert f"{overall['srcc']:.3f} [{overall['srcc_lo']:.3f}, {overall['srcc_hi']:.3f}]" in html_text
    assert f"{overall['plcc']:.3f}" in html_text
    # discretisation table, validation outcome, params, training curve names
    assert "0.3030" in html_text and "binary fallbacks" in html_text
    assert "mos_in_range" in html_text and "quarantined" in html_text
    assert "checks: 1 record(s), 1 passed, 0 failed" in html_text
    assert "1 of 12 non-zero: check_3=2" in html_text  # wide count dicts are summarised
    data_section = html_text[html_text.index('<section id="data">'):html_text.index('<section id="discretisation">')]
    assert "<td>train</td>" in data_section  # the validated manifest's training split is summarised
    assert "final_loss" in html_text
    assert "soft_labels.kind" in html_text
    # experiments table: the varying param and both runs' SRCC
    exp = html_text[html_text.index('<section id="experiments">'):]
    assert "onehot-run" in exp and "0.612" in exp and "0.777" in exp
    assert "<th>soft_labels.kind</th>" in exp and "<th>train.lr</th>" not in exp
    # the summary has the headline and the metrics table
    assert summary.startswith("# deqa report summary")
    assert f"| test | overall | {overall['n']} |" in summary
    assert "onehot-run" in summary


def test_report_with_no_inputs_says_not_available(tmp_path):
    html_text, summary = _build(tmp_path, experiments=None)
    for key in SECTION_IDS:
        assert f'<section id="{key}">' in html_text
    assert html_text.count("Not available") >= 10
    assert "data:image/png" not in html_text
    assert "Missing inputs" in summary


def test_report_with_missing_images_and_no_experiments(fixture_repo):
    for png in (fixture_repo / "images").glob("*.png"):
        png.unlink()
    html_text, _ = _build(fixture_repo, experiments=[{"rev": "workspace", "data": {}, "experiments": None}])
    assert "image not found" in html_text
    assert "No DVC experiments yet" in html_text


def test_experiment_rows_from_dvc_json(fixture_repo):
    evaluate = json.loads((fixture_repo / "metrics/evaluate.json").read_text())
    headers, rows = report.experiment_rows(_fake_experiments(evaluate))
    assert headers[:2] == ["experiment", "soft_labels.kind"]
    assert [r[0] for r in rows] == ["workspace", "main", "onehot-run"]
    assert rows[2][1] == "onehot" and rows[2][2] == "0.612"


def test_dvc_experiments_outside_a_repo_is_missing_not_an_error(tmp_path):
    loaded = report.dvc_experiments(tmp_path, timeout=60)
    assert not loaded.ok and loaded.missing


def test_stage_writes_reports(fixture_repo, monkeypatch):
    path = Path(__file__).resolve().parents[1] / "stages" / "report.py"
    spec = importlib.util.spec_from_file_location("stage_report", path)
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    monkeypatch.chdir(fixture_repo)
    assert stage.main([]) == 0
    html_text = (fixture_repo / "reports/report.html").read_text()
    assert "data:image/png;base64" in html_text
    assert "experiment comparison disabled" in html_text
    assert (fixture_repo / "reports/summary.md").exists()
