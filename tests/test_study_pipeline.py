"""End to end: the LIVE-C study pipeline (``studies/livec/dvc.yaml``) at a tiny size.

Stand-in rated photos with a MOS and a raters' std (LIVE-C's ``labels.csv`` layout) replace
``../shared``; the params are ``studies/livec/params.yaml`` with only sizes shrunk (2 splits, 2
variants). The pipeline runs, writes one results table, and an experiment on one variant's
params, in a clone where the other pipelines never ran, re-runs that variant and the table only.
"""

import json
import shutil

import pandas as pd
import pytest
import yaml

import tiny_repo
from tiny_repo import DVC, ROOT, run

pytestmark = pytest.mark.slow


def _livec_like(folder, n=40, seed=0):
    """LIVE-C's label layout: a MOS on 0..100 and a raters' std that grows with the blur."""
    rows = [
        {"file": f, "mos": round(100 * (1 - r / 3), 3), "std": round(8 + 6 * r, 3), "split": "test"}
        for f, r in tiny_repo.blurred_photos(folder, n, seed, 64, "i", photos=3)
    ]
    pd.DataFrame(rows).to_csv(folder / "labels.csv", index=False)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    repo = tmp_path_factory.mktemp("study") / "repo"
    repo.mkdir()
    for name in tiny_repo.COPIED:
        shutil.copy(ROOT / name, repo / name)
    shutil.copy(ROOT / "dvc.lock", repo / "dvc.lock")  # the default pipeline: recorded, never run here
    for folder in ("stages", "src"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    study = repo / "studies" / "livec"
    study.mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(ROOT / "studies" / "livec" / name, study / name)
    _livec_like(study / "data" / "livec")
    params = yaml.safe_load((study / "params.yaml").read_text())
    params["model"]["tiny"].update(image_size=64, hidden_size=32, intermediate_size=64, layers=1, heads=2)
    params["train"].update(epochs=1, batch_pairs=4, checkpoint_every=10)
    params["study"].update(splits=2, test_fraction=0.25, val_fraction=0.2)
    params["study"]["variants"] = {k: params["study"]["variants"][k] for k in ("deqa", "qalign")}
    (study / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], repo)
    run([DVC, "init", "-q"], repo)
    run([DVC, "config", "core.analytics", "false"], repo)
    run([DVC, "repro", "studies/livec/dvc.yaml"], repo, timeout=1200)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "the study, tiny"], repo)
    return study


def test_the_study_writes_one_table_of_every_variant(study):
    rows = {p.stem: json.loads(p.read_text()) for p in (study / "metrics/summary").glob("*.json")}
    assert set(rows) == {"deqa.mean", "deqa.sd", "qalign.mean", "qalign.sd", "qalign-deqa.diff"}
    for row in rows.values():
        assert {"n", "srcc", "plcc", "std_srcc", "kl", "js", "w2", "entropy"} <= set(row) and row["n"] == 2
    detail = json.loads((study / "data/study_report/study.json").read_text())
    assert detail["splits"] == 2 and set(detail["pairs"]) == {"deqa-qalign"}
    runs = {v: json.loads((study / f"data/study/{v}/splits.json").read_text()) for v in ("deqa", "qalign")}
    assert [r["split"] for r in runs["deqa"]] == [0, 1] == [r["split"] for r in runs["qalign"]]
    assert [r["n_test"] for r in runs["deqa"]] == [10, 10]
    assert runs["deqa"][0]["srcc"] != runs["qalign"][0]["srcc"]  # different labels train different models
    text = (study / "reports/study.md").read_text()
    assert "| deqa |" in text and "| qalign |" in text and "deqa − qalign" in text


def test_an_experiment_on_one_variant_reruns_that_variant_and_the_table(study):
    repo = study.parent.parent
    out = run(
        [
            DVC,
            "exp",
            "run",
            "studies/livec/dvc.yaml",
            "-S",
            "studies/livec/params.yaml:study.variants.deqa.fidelity_weight=0.5",
        ],
        repo,
        timeout=900,
    )
    ran = {line.split("'")[1].split(":")[-1] for line in out.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {"study@deqa", "study_report"}, out.stdout[-2000:]
