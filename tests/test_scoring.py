"""Scoring: batch invariance, adapter vs merged export, inputs of every kind, the CLI's errors."""

import json

import numpy as np
import pytest
from model_fixtures import trained_model

from deqa.cli import main as cli
from deqa.scoring import Scorer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_model(tmp_path_factory.mktemp("scoring"))


@pytest.fixture(scope="module")
def scorer(trained):
    return Scorer.from_pretrained(trained["model"])


def _images(trained):
    return sorted(str(p) for p in trained["images"].glob("*.png"))


def test_scores_do_not_depend_on_batch_size(scorer, trained):
    paths = _images(trained)
    one = scorer.score(paths, batch_size=1)
    many = scorer.score(paths, batch_size=32)
    assert np.abs(one.mean - many.mean).max() <= 1e-4
    assert np.abs(one.probs - many.probs).max() <= 1e-4
    assert np.allclose(one.probs.sum(1), 1) and ((one.mean >= 1) & (one.mean <= 5)).all()
    assert one.mean.std() > 1e-3, "a trained model scores different images differently"


def test_paths_pil_and_numpy_agree(scorer, trained):
    from PIL import Image

    path = _images(trained)[0]
    pil = Image.open(path).convert("RGB")
    res = scorer.score([path, pil, np.asarray(pil), np.asarray(pil) / 255.0])
    assert np.ptp(res.mean) < 1e-4


def test_export_merged_matches_adapter(scorer, trained, tmp_path):
    out = tmp_path / "merged"
    assert cli(["export", "--model", str(trained["model"]), "--output", str(out)]) == 0
    assert (out / "config.json").exists() and (out / "README.md").exists()
    assert not (out / "adapter_config.json").exists()
    assert list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))
    merged = Scorer.from_pretrained(out)
    paths = _images(trained)
    assert np.abs(merged.score(paths).mean - scorer.score(paths).mean).max() <= 1e-4
    # an existing export is not overwritten silently
    assert cli(["export", "--model", str(trained["model"]), "--output", str(out)]) == 2


def test_cli_scores_a_folder_and_reports_broken_files(trained, tmp_path, capsys):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    good = _images(trained)[:3]
    for i, p in enumerate(good):
        (folder / ("sub" if i == 0 else ".") / f"ok{i}.png").write_bytes(open(p, "rb").read())
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.png").write_text("not an image")
    data = open(good[0], "rb").read()
    (folder / "cut.png").write_bytes(data[: len(data) // 3])
    code = cli(["score", str(folder), "--model", str(trained["model"]), "--format", "json", "--no-progress"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    scored = [r for r in out if "score" in r]
    failed = {r["path"].split("/")[-1]: r["error"] for r in out if "error" in r}
    assert len(scored) == 3 and set(failed) == {"empty.jpg", "text.png", "cut.png"}
    assert all(1 <= r["score"] <= 5 and r["std"] >= 0 for r in scored)
    assert "truncated" in failed["cut.png"].lower() or "broken" in failed["cut.png"].lower()


def test_cli_exit_codes(trained, tmp_path, capsys):
    good = _images(trained)[0]
    assert cli(["score", good, "--model", str(trained["model"]), "-o", str(tmp_path / "s.csv")]) == 0
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0].startswith("path,score,std,p_bad") and len(lines) == 2
    (tmp_path / "bad.jpg").write_text("x")
    assert cli(["score", str(tmp_path / "bad.jpg"), "--model", str(trained["model"])]) == 2
    assert cli(["score", good, "--model", str(tmp_path / "missing")]) == 2
    listing = tmp_path / "list.txt"
    listing.write_text(f"{good}\n{good}\n")
    capsys.readouterr()
    assert cli(["score", str(listing), "--model", str(trained["model"]), "--no-progress"]) == 0
    assert capsys.readouterr().out.count("\n") == 3
