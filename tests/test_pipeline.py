"""End to end: the real DVC pipeline at a tiny size in a temporary git repo, then an experiment."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def _env():
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "DVC_NO_ANALYTICS": "1",
           "GIT_AUTHOR_NAME": "deqa-test", "GIT_AUTHOR_EMAIL": "test@example.com",
           "GIT_COMMITTER_NAME": "deqa-test", "GIT_COMMITTER_EMAIL": "test@example.com"}
    env.pop("CI", None)
    return env


def _run(cmd, cwd, timeout=600):
    res = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("pipeline")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, repo / name)
    for folder in ("stages", "src"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["prepare"]["synthetic"].update(crops_per_photo=1, image_size=64)
    params["model"]["tiny"].update(image_size=64, hidden_size=32, intermediate_size=64, layers=1, heads=2)
    params["train"].update(epochs=1, batch_pairs=8, checkpoint_every=10)
    params["evaluate"].update(bootstrap=20)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], repo)
    _run([str(BIN / "dvc"), "init", "-q"], repo)
    _run([str(BIN / "dvc"), "config", "core.analytics", "false"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "tiny pipeline"], repo)
    _run([str(BIN / "dvc"), "repro"], repo)
    return repo


def test_repro_produces_every_output(repo):
    for path in ("data/validate/manifest.csv", "data/soft_labels/train.csv", "models/base/config.json",
                 "models/deqa/adapter_model.safetensors", "data/evaluate/predictions.csv",
                 "reports/report.html", "reports/summary.md", "dvc.lock"):
        assert (repo / path).exists(), path
    metrics = json.loads(_run([str(BIN / "dvc"), "metrics", "show", "--json"], repo))
    text = json.dumps(metrics)
    for key in ("srcc", "plcc", "mean_error", "fallbacks", "kept"):
        assert f'"{key}"' in text, key
    ev = json.loads((repo / "metrics/evaluate.json").read_text())
    assert ev["test"]["overall"]["n"] > 0 and -1 <= ev["test"]["overall"]["srcc"] <= 1
    plots = _run([str(BIN / "dvc"), "plots", "show", "--json"], repo)
    assert "confusion" in plots and "scatter" in plots
    html = (repo / "reports/report.html").read_text()
    assert "data:image/png;base64," in html


def test_repro_is_a_no_op_the_second_time(repo):
    out = _run([str(BIN / "dvc"), "status"], repo)
    assert "changed" not in out, out


def test_experiment_with_onehot_labels_changes_the_metrics(repo):
    before = json.loads((repo / "metrics/discretisation.json").read_text())
    _run([str(BIN / "dvc"), "exp", "run", "-S", "soft_labels.kind=onehot", "-S", "loss.fidelity_weight=0"], repo)
    after = json.loads((repo / "metrics/discretisation.json").read_text())
    b, a = before["synthetic"], after["synthetic"]
    assert a["mean_error"] == pytest.approx(b["onehot_mean_error"]) and a["mean_error"] > 5 * b["mean_error"]
    shown = _run([str(BIN / "dvc"), "exp", "show", "--md"], repo)
    assert "soft_labels.kind" in shown and "onehot" in shown
