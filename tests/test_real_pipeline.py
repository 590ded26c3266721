"""End to end: the real-data pipeline (``real/dvc.yaml``) at a tiny size, on a user's own photos.

The same path a user takes with their own rated folder: photos with a MOS on [0, 1] and no std
(BIQ2021's layout: ``image, mos``) as a ``generic-csv`` source, distorted versions of its best
photos as a ``distorted`` source, and evaluation on the held-out split, a cross-dataset set and
the sensitivity set. Stand-in photos (crops of scikit-image photos, blurred by a known amount and
rated by it) replace ``../shared``, so this runs anywhere; the params are ``real/params.yaml``
with only sizes shrunk. A broken photo and a MOS outside [lo, hi] are quarantined, not lost.
"""

import json
import shutil

import pandas as pd
import pytest
import yaml

import tiny_repo
from tiny_repo import DVC, ROOT, run

pytestmark = pytest.mark.slow


def _rated_folder(folder, n, seed, columns=("image", "mos")):
    """``n`` 96-px photos, each a crop blurred by a random radius; MOS = 1 - radius/3 on [0, 1]."""
    rows = [{"image": f, "mos": round(1 - r / 3, 4)} for f, r in tiny_repo.blurred_photos(folder, n, seed, 96, "p")]
    return pd.DataFrame(rows)[list(columns)]


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    repo = tmp_path_factory.mktemp("real") / "repo"
    repo.mkdir()
    for name in tiny_repo.COPIED:
        shutil.copy(ROOT / name, repo / name)
    for folder in ("stages", "src"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (repo / "real").mkdir()
    for name in ("dvc.yaml", "params.yaml", "gate.yaml"):
        shutil.copy(ROOT / "real" / name, repo / "real" / name)
    data = repo / "real" / "data"
    labels = _rated_folder(data / "biq2021", 48, seed=0)
    labels.loc[len(labels)] = {"image": "images/broken.png", "mos": 0.5}  # a truncated file
    (data / "biq2021" / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    shutil.copy(data / "biq2021" / "images" / "p000.png", data / "biq2021" / "images" / "over.png")
    labels.loc[len(labels)] = {"image": "images/over.png", "mos": 1.7}  # outside [lo, hi] = [0, 1]
    labels.to_csv(data / "biq2021" / "labels.csv", index=False)
    other = _rated_folder(data / "livec", 16, seed=1)
    other["mos"] *= 100
    other.to_csv(data / "livec" / "labels.csv", index=False)

    params = yaml.safe_load((repo / "real" / "params.yaml").read_text())
    params["prepare"]["distorted"].update(image_size=64, max_photos=8, min_quality=3.0)
    params["prepare"]["val_fraction"], params["prepare"]["test_fraction"] = 0.2, 0.3
    params["model"]["tiny"].update(image_size=64, hidden_size=32, intermediate_size=64, layers=1, heads=2)
    params["train"].update(epochs=1, batch_pairs=8, checkpoint_every=10)
    params["sensitivity"].update(image_size=64, scenes_per_kind=1, severities=3)
    params["evaluate"]["bootstrap"] = 20
    livec = next(s for s in params["evaluate"]["extra"] if s["name"] == "livec")
    livec["format"] = "generic-csv"  # the stand-in cross-dataset set: image,mos on 0..100
    (repo / "real" / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], repo)
    run([DVC, "init", "-q"], repo)
    run([DVC, "config", "core.analytics", "false"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "real pipeline, tiny"], repo)
    run([DVC, "repro", "real/dvc.yaml"], repo, timeout=1200)
    return repo / "real"


def test_real_pipeline_trains_on_rated_photos_and_reports_every_test_set(real):
    ev = {p.stem: json.loads(p.read_text()) for p in (real / "metrics/evaluate").glob("*.json")}
    # two datasets share m's scale (pooled into overall); the unrelated cross sets are never pooled
    assert set(ev) == {"test.biq2021", "test.biq2021_distorted", "test.overall", "cross.livec", "cross.sensitivity"}
    assert -1 <= ev["cross.livec"]["srcc"] <= 1 and ev["test.biq2021"]["srcc"] > -1
    assert -1 <= ev["cross.sensitivity"]["monotonicity"] <= 1
    detail = json.loads((real / "data/evaluate/metrics.json").read_text())
    by = detail["cross"]["sensitivity"]["by_distortion_severity"]
    assert set(by.pop("pristine")) == {"0"}
    assert set(by) == {"gaussian_blur", "gaussian_noise", "jpeg", "contrast", "pixelation", "motion_blur"}
    assert all(set(v) == {"1", "2", "3"} for v in by.values())
    # binary labels for a source without std; soft ones for the distorted photos (simulated panel)
    train = pd.read_csv(real / "data/soft_labels/train.csv")
    real_rows, derived = train[train["dataset"] == "biq2021"], train[train["dataset"] == "biq2021_distorted"]
    assert real_rows["fallback"].all() and not derived["fallback"].all()
    probs = real_rows[[c for c in train.columns if c.startswith("p_")]].to_numpy()
    assert ((probs > 0).sum(axis=1) <= 2).all()
    # derived images keep their photo's split: no content crosses splits
    manifest = pd.read_csv(real / "data/validate/manifest.csv")
    d = manifest[manifest["dataset"] == "biq2021_distorted"]
    photo_split = dict(
        zip("images/" + manifest["image"].str.extract(r"(p\d+)")[0] + ".png", manifest["split"], strict=False)
    )
    assert (d["content"].map(lambda c: photo_split[f"images/{c}.png"]) == d["split"]).all()


def test_bad_rows_are_quarantined_with_a_reason_and_none_lost(real):
    report = json.loads((real / "metrics/validate.json").read_text())
    assert report["rows_in"] == report["kept"] + report["quarantined"]
    q = pd.read_csv(real / "data/validate/quarantine.csv").set_index("image")
    assert set(q.index) == {"images/broken.png", "images/over.png"}
    assert report["quarantined"] == 2
    assert "mos" in q.loc["images/over.png", "reasons"]
    assert q.loc["images/broken.png", "reasons"]


def test_the_trained_model_scores_from_the_command_line(real, tmp_path):
    out = tmp_path / "scores.csv"
    res = run(
        [
            str(tiny_repo.BIN / "deqa"),
            "score",
            str(real / "data/biq2021/images/p001.png"),
            "--model",
            str(real / "models/deqa"),
            "-o",
            str(out),
        ],
        real.parent,
    )
    assert res.returncode == 0
    row = pd.read_csv(out).iloc[0]
    assert 1 <= row["score"] <= 5


def test_an_experiment_retrains_from_the_stored_features_where_only_this_pipeline_ran(real):
    """``dvc exp run real/dvc.yaml -S real/params.yaml:loss.kl_weight=0.5`` in a clone where the
    default pipeline never ran (its dvc.lock committed, its outputs in no cache): the experiment
    succeeds, and only the stages that read the loss run again (the tower's features are reused).
    Last in this module: the experiment leaves its results in the workspace."""
    repo = real.parent
    shutil.copy(ROOT / "dvc.lock", repo / "dvc.lock")  # the default pipeline: recorded, never run here
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline"], repo)
    out = run([DVC, "exp", "run", "real/dvc.yaml", "-S", "real/params.yaml:loss.kl_weight=0.5"], repo, timeout=900)
    ran = {line.split("'")[1].split(":")[-1] for line in out.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {"train", "evaluate", "report"}, out.stdout[-2000:]
    shown = run([DVC, "exp", "show", "--md", "--no-pager"], repo).stdout
    assert "loss.kl_weight" in shown and "0.5" in shown
