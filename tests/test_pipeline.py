"""End to end: the real DVC pipeline at a tiny size in a temporary git repo (see tiny_repo.py).

Beyond "it runs": a code edit makes exactly the stages that import the module stale; going back
to params already run restores from DVC's run-cache instead of retraining, and the training curves
of two experiments can be compared; a temporary experiment never silently drops an evaluation set
outside the repository.
"""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from scipy.stats import kendalltau, spearmanr

import tiny_repo
from deqa.metric_tables import RESULT_KEYS
from tiny_repo import DVC, clone, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return tiny_repo.tiny_pipeline(tmp_path_factory.getbasetemp())


@pytest.fixture
def work(repo, tmp_path):
    """A clone of the reproduced tiny pipeline (sharing its DVC cache) that a test may change."""
    return clone(repo, tmp_path / "work")


def _changed_stages(repo: Path) -> set[str]:
    return set(json.loads(run([DVC, "status", "--json"], repo).stdout or "{}"))


def test_repro_produces_every_output(repo):
    for path in (
        "data/validate/manifest.csv",
        "data/soft_labels/train.csv",
        "models/base/config.json",
        "models/deqa/adapter_model.safetensors",
        "data/evaluate/predictions.csv",
        "reports/report.html",
        "reports/summary.md",
        "dvc.lock",
        "dvclive/train/metrics.json",
    ):
        assert (repo / path).exists(), path
    # DVC's metrics are the result rows, one file per evaluated set with the shared keys
    # (docs/metrics.md); the stage summaries are committed files a target shows
    shown = json.loads(run([DVC, "metrics", "show", "--json"], repo).stdout)
    files = {Path(k).as_posix(): v["data"] for k, v in next(iter(shown.values()))["data"].items()}
    assert set(files) == {"metrics/evaluate/test.synthetic.json", "metrics/evaluate/cross.sensitivity.json"}, files
    assert set().union(*files.values()) <= set(RESULT_KEYS) and "srcc" in files["metrics/evaluate/test.synthetic.json"]
    summaries = run([DVC, "metrics", "show", "--json", "metrics/discretisation.json", "metrics/validate.json"], repo)
    for key in ("mean_error", "fallbacks", "kept"):
        assert f'"{key}"' in summaries.stdout, key
    # the headline numbers are those of the predictions written, on every test image
    ev = json.loads((repo / "metrics/evaluate/test.synthetic.json").read_text())
    pred = pd.read_csv(repo / "data/evaluate/predictions.csv")
    test = pred[(pred["split"] == "test") & (pred["dataset"] == "synthetic")]
    assert len(test) == len(pd.read_csv(repo / "data/soft_labels/test.csv")) > 0
    assert test["pred_mean"].between(1, 5).all() and test["pred_mean"].nunique() > 1
    # (the CSV keeps 6 significant digits, which ties a few near-equal predictions of the tiny model)
    assert ev["srcc"] == pytest.approx(spearmanr(test["pred_mean"], test["m"]).statistic, abs=0.01)
    assert ev["krcc"] == pytest.approx(kendalltau(test["pred_mean"], test["m"]).statistic, abs=0.01)
    assert ev["srcc"] > 0.2  # even the tiny model, one epoch on one crop per photo, ranks far above chance
    plots = run([DVC, "plots", "show", "--json"], repo).stdout
    assert "confusion" in plots and "scatter" in plots and "dvclive/train/plots/metrics" in plots
    assert "data:image/png;base64," in (repo / "reports/report.html").read_text()
    assert not (repo / "checkpoints").exists() or run(["git", "check-ignore", "checkpoints"], repo).stdout.strip()


def test_repro_is_a_no_op_the_second_time(repo):
    assert _changed_stages(repo) == set()


def test_a_code_edit_makes_exactly_its_importers_stale(work):
    tiny = work / "src" / "deqa" / "tiny.py"
    tiny.write_text(tiny.read_text() + "\n# an edit\n")
    assert _changed_stages(work) == {"base_model", "features", "train", "evaluate"}  # the tower runs in features
    run(["git", "checkout", "--", "src/deqa/tiny.py"], work)
    losses = work / "src" / "deqa" / "losses.py"
    losses.write_text(losses.read_text() + "\n# an edit\n")
    assert _changed_stages(work) == {"train", "evaluate"}
    run(["git", "checkout", "--", "src/deqa/losses.py"], work)
    # the data generators: no import circle drags the label, evaluation or report stages along
    synthetic = work / "src" / "deqa" / "synthetic.py"
    synthetic.write_text(synthetic.read_text() + "\n# an edit\n")
    assert _changed_stages(work) == {"prepare"}
    distortions = work / "src" / "deqa" / "distortions.py"
    distortions.write_text(distortions.read_text() + "\n# an edit\n")
    assert _changed_stages(work) == {"prepare", "sensitivity"}


def _add_unrun_pipeline(work: Path) -> None:
    """real/ as a clone without ../shared holds it: dvc.yaml, params, dvc.lock and the import files
    committed, its outputs never produced here and not in the cache."""
    src, dst = tiny_repo.ROOT / "real", work / "real"
    (dst / "data").mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml", "gate.yaml", "dvc.lock"):
        shutil.copy(src / name, dst / name)
    for f in [*(src / "data").glob("*.dvc"), src / "data" / ".gitignore"]:
        shutil.copy(f, dst / "data" / f.name)
    run(["git", "add", "-A"], work)
    run(["git", "commit", "-qm", "a second pipeline, never run on this machine"], work)


def test_experiments_use_the_run_cache_and_compare_training_curves(work):
    # a second pipeline whose outputs this machine never made must not break the default's
    # experiments (DVC resolves every dvc.yaml's plot definitions on each `dvc exp run`)
    _add_unrun_pipeline(work)
    before = json.loads((work / "metrics/discretisation.json").read_text())
    committed = (work / "metrics/evaluate/test.synthetic.json").read_text()
    run([DVC, "exp", "run", "--name", "qalign", "-S", "soft_labels.kind=onehot", "-S", "loss.fidelity_weight=0"], work)
    after = json.loads((work / "metrics/discretisation.json").read_text())
    b, a = before["synthetic"], after["synthetic"]
    assert a["mean_error"] == pytest.approx(b["onehot_mean_error"]) and a["mean_error"] > 5 * b["mean_error"]
    shown = run([DVC, "exp", "show", "--md"], work).stdout
    assert "soft_labels.kind" in shown and "onehot" in shown
    # the training curves of the baseline and the experiment, side by side
    plots = json.loads(run([DVC, "plots", "diff", "HEAD", "qalign", "--json"], work).stdout)["data"]
    curves = {k: v[0] for k, v in plots.items() if k.startswith("dvclive/train/plots/metrics/")}
    assert "dvclive/train/plots/metrics/train/loss.tsv" in curves, list(plots)
    for name, plot in curves.items():
        rows = plot["content"]["data"]["values"]
        assert plot["revisions"] == ["HEAD", "qalign"] and {r["rev"] for r in rows} == {"HEAD", "qalign"}, name
    # back to the committed params: every stage comes from the run-cache, nothing retrains
    out = run([DVC, "exp", "run", "-S", "soft_labels.kind=soft", "-S", "loss.fidelity_weight=1.0"], work).stdout
    for stage in ("soft_labels", "train", "evaluate"):
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in out, out
    assert (work / "metrics/evaluate/test.synthetic.json").read_text() == committed


def _external_set(folder: Path, repo: Path) -> Path:
    """An evaluation-only set outside the repository: a dozen of the test images, generic CSV."""
    folder.mkdir(parents=True)
    manifest = [line.split(",") for line in (repo / "data/soft_labels/test.csv").read_text().splitlines()]
    header, rows = manifest[0], manifest[1:13]
    image, root, mos = header.index("image"), header.index("root"), header.index("mos")
    lines = ["image,mos"]
    for r in rows:
        shutil.copy(repo / r[root] / r[image], folder / r[image])
        lines.append(f"{r[image]},{r[mos]}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder


def _use_external_set(work: Path, labels: str, root: str, declare: str | None, required: bool = True) -> None:
    """Point evaluate.extra at the set, declare ``declare`` as a dep where it is read, and commit."""
    for name in ("params.yaml", "dvc.yaml"):  # start from the committed pipeline each time
        (work / name).write_text(run(["git", "show", f"origin/HEAD:{name}"], work).stdout)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["evaluate"]["extra"] = [
        {
            "name": "ext",
            "format": "generic-csv",
            "labels": labels,
            "root": root,
            "lo": None,
            "hi": None,
            "split": "",
            "required": required,
        }
    ]
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc = yaml.safe_load((work / "dvc.yaml").read_text())
    if declare:  # wherever the set is read: its tower outputs, scored by evaluate, thumbnails in the report
        for stage in ("features", "evaluate", "report"):
            dvc["stages"][stage]["deps"].append(declare)
    (work / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    run(["git", "commit", "-qam", "an external evaluation set"], work)


def test_an_undeclared_external_set_is_refused_with_the_dep_to_add(work, tmp_path):
    _external_set(tmp_path / "ext", work)
    _use_external_set(work, "../ext/labels.csv", "../ext", declare=None)
    res = run([DVC, "repro", "evaluate"], work, check=False)
    assert res.returncode != 0
    assert (
        "error: evaluate.extra[0].labels: ../ext/labels.csv is read by stage 'features' but is not among its "
        "deps in dvc.yaml; add `- ../ext/labels.csv` to its deps"
    ) in res.stdout + res.stderr


def test_temporary_experiments_keep_or_refuse_an_external_set_never_drop_it(work, tmp_path):
    ext = _external_set(tmp_path / "ext", work)
    # an absolute path reaches the set from the temporary copy: the experiment scores it
    _use_external_set(work, str(ext / "labels.csv"), str(ext), declare=str(ext))
    run([DVC, "exp", "run", "--temp", "--name", "absolute"], work)
    shown = json.loads(run([DVC, "exp", "show", "--json"], work).stdout)
    assert '"metrics/evaluate/cross.ext.json"' in json.dumps(shown)  # the extra set's headline row
    # a relative path outside the repository does not reach it: DVC fails on the missing dep
    _use_external_set(work, "../ext/labels.csv", "../ext", declare="../ext")
    res = run([DVC, "exp", "run", "--temp"], work, check=False)
    assert res.returncode != 0 and "ext" in res.stdout + res.stderr
    # undeclared and optional: skipped in the workspace where absent, but refused in a temporary copy
    _use_external_set(work, "../ext/labels.csv", "../ext", declare=None, required=False)
    res = run([DVC, "exp", "run", "--temp"], work, check=False)
    assert res.returncode != 0 and "is not reachable from this temporary experiment copy" in res.stdout + res.stderr
