"""deqa gate: reproducibility and quality checks against committed metrics in a temporary repo."""

import json
import os
import subprocess

import pytest

from deqa.gate import differences, gate

ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
       "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}


def _metrics(srcc):
    return {"test": {"overall": {"srcc": srcc, "plcc": 0.8, "confusion": [[1, 0], [0, 1]]}}}


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "evaluate.json").write_text(json.dumps(_metrics(0.80)))
    subprocess.run(["git", "add", "-A"], check=True)
    subprocess.run(["git", "commit", "-qm", "baseline"], check=True, env=ENV)
    return tmp_path


def test_identical_metrics_pass(repo):
    ok, lines = gate()
    assert ok, lines


def test_changed_metric_fails_reproducibility_but_small_drop_passes_quality(repo):
    (repo / "metrics" / "evaluate.json").write_text(json.dumps(_metrics(0.79)))
    ok, lines = gate()
    assert not ok and any(l.startswith("FAIL reproducibility") and "test.overall.srcc" in l for l in lines)
    ok, lines = gate(repro=False)
    assert ok, lines


def test_regression_beyond_margin_fails_quality(repo):
    (repo / "metrics" / "evaluate.json").write_text(json.dumps(_metrics(0.70)))
    ok, lines = gate(repro=False, margin=0.02)
    assert not ok and any(l.startswith("FAIL quality") for l in lines)


def test_differences_reports_paths():
    assert differences({"a": {"b": 1.0}}, {"a": {"b": 1.0 + 1e-12}}, 1e-9) == []
    assert differences({"a": [1, 2]}, {"a": [1, 3]}, 1e-9) == ["a.1: 2 -> 3"]
    assert differences({"a": 1}, {}, 1e-9) == ["a (only in baseline)"]
