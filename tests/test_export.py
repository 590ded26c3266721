"""deqa export never destroys data; its model card carries Hub metadata; it merges in the stored dtype."""

import argparse
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from deqa.commands import export as command
from deqa.export import export, export_dtype
from deqa.scoring import Scorer
from model_fixtures import trained_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_model(tmp_path_factory.mktemp("export"))


def _cli(*argv):
    p = argparse.ArgumentParser()
    command.add_arguments(p)
    return command.run(p.parse_args(list(argv)))


def _previous_export(folder):
    folder.mkdir(parents=True)
    (folder / "keep.txt").write_text("an earlier export")
    return folder


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_a_failed_overwrite_leaves_the_old_export_and_no_temporary_folder(trained, tmp_path, monkeypatch):
    out = _previous_export(tmp_path / "exported")
    # a real failure: the base checkpoint does not exist
    assert (
        _cli(
            "--model",
            str(trained["model"]),
            "--output",
            str(out),
            "--overwrite",
            "--base",
            str(tmp_path / "no-such-base"),
        )
        == 2
    )
    assert (out / "keep.txt").read_text() == "an earlier export"
    # a failure half-way through writing the new export
    import transformers

    def broken_save(self, path, **kw):
        (path / "model.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", broken_save)
    assert _cli("--model", str(trained["model"]), "--output", str(out), "--overwrite") == 2
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] and _leftovers(tmp_path) == []


def test_overwrite_replaces_only_after_success(trained, tmp_path):
    out = _previous_export(tmp_path / "exported")
    assert _cli("--model", str(trained["model"]), "--output", str(out)) == 2  # not empty, no --overwrite
    assert (out / "keep.txt").exists()
    assert _cli("--model", str(trained["model"]), "--output", str(out), "--overwrite") == 0
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()
    assert _leftovers(tmp_path) == []


def test_targets_that_contain_the_model_or_its_base_are_refused(trained, tmp_path):
    model, base = trained["model"], trained["base"]
    before = sorted(p.name for p in model.iterdir())
    for target in (model, model.parent, base, base.parent, tmp_path.anchor):
        with pytest.raises(ValueError, match="refusing to export into"):
            export(model, target, overwrite=True)
    assert sorted(p.name for p in model.iterdir()) == before and (base / "config.json").exists()


def test_target_containing_the_repository_is_refused(trained, tmp_path, monkeypatch):
    import subprocess

    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    monkeypatch.chdir(repo)
    with pytest.raises(ValueError, match="repository"):
        export(trained["model"], tmp_path, overwrite=True)


def test_model_card_has_hub_metadata_and_complete_metrics(trained, tmp_path):
    from huggingface_hub import ModelCard

    metrics = {
        split: {
            "overall": {"n": 30, "srcc": 0.8, "plcc": 0.79, "krcc": 0.6, "rmse": 0.3},
            "fixture": {
                "n": 30,
                "srcc": 0.8,
                "plcc": 0.79,
                "krcc": 0.6,
                "rmse": 0.3,
                "confusion": [[1] * 5] * 5,
                "by_distortion": {f"d{i}": {"srcc": i / 100} for i in range(400)},
            },
        }
        for split in ("val", "test")
    }
    metrics_file = tmp_path / "evaluate.json"
    metrics_file.write_text(json.dumps(metrics))
    out = export(trained["model"], tmp_path / "exported", metrics_file=metrics_file)
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0" and "image-quality-assessment" in data["tags"]
    assert data["base_model"] and data["metrics"] == ["spearmanr", "pearsonr"]
    index = data["model-index"][0]["results"]
    values = {(r["dataset"]["name"], r["dataset"]["split"], m["type"]): m["value"] for r in index for m in r["metrics"]}
    assert values[("fixture", "test", "srcc")] == 0.8 and values[("fixture", "val", "plcc")] == 0.79
    assert "| test | fixture | 30 | 0.8 | 0.79 | 0.6 | 0.3 |" in card.text
    # every metric, however long, is kept in full in the machine-readable record
    record = json.loads((out / "deqa_model.json").read_text())
    assert record["metrics"]["evaluate"] == metrics and record["adapter"] is False


def test_dtype_auto_follows_the_stored_weights_and_an_explicit_dtype_is_used(trained, tmp_path):
    config = json.loads((trained["base"] / "config.json").read_text())
    stored = config.get("dtype") or config.get("torch_dtype") or "float32"
    assert export_dtype("auto", trained["base"]) == getattr(torch, stored)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps({"dtype": "bfloat16"}))
    assert export_dtype("auto", tmp_path / "cfg") == torch.bfloat16
    out = export(trained["model"], tmp_path / "bf16", dtype="bfloat16", device="cpu")
    with safe_open(next(out.glob("*.safetensors")), "pt") as st:
        dtypes = {st.get_slice(k).get_dtype() for k in st.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    assert {d for d in dtypes if d.startswith(("F", "BF"))} == {"BF16"}
    merged = Scorer.from_pretrained(out, dtype="float32")
    adapter = Scorer.from_pretrained(trained["model"])
    paths = sorted(str(p) for p in trained["images"].glob("*.png"))[:8]
    assert np.abs(merged.score(paths).mean - adapter.score(paths).mean).max() < 0.05  # bf16 rounding only


def test_cli_help_lists_dtype_and_device(capsys):
    with pytest.raises(SystemExit):
        _cli("--help")
    text = capsys.readouterr().out
    assert "--dtype" in text and "--device" in text and "--overwrite" in text
