"""The LIVE-C study (``studies/livec``, :mod:`deqa.study`): paired seeded splits, variants that
differ only where they say, honest summaries, and a dataset that never leaks into the pipelines
that test on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from deqa.config import StudyConfig, load_params
from deqa.study import headline, results_html, results_markdown, run_variant, study_splits, summarise, variant_params
from model_fixtures import build_base, build_labels, small_params

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "realdata"


def test_splits_are_seeded_paired_and_disjoint():
    cfg = StudyConfig(splits=10, test_fraction=0.2, val_fraction=0.1)
    splits = study_splits(898, cfg, seed=0)
    assert len(splits) == 10 and all(len(s) == 898 for s in splits)
    for s in splits:
        assert (s == "test").sum() == 180 and (s == "val").sum() == 72 and (s == "train").sum() == 646
    again = study_splits(898, cfg, seed=0)
    assert all((a == b).all() for a, b in zip(splits, again, strict=True))
    tests = [set(np.flatnonzero(s == "test")) for s in splits]
    assert len({frozenset(t) for t in tests}) == 10  # ten different held-out sets
    # over ten random 20% splits nearly every image is held out at least once (0.8^10 = 11% are not)
    assert 0.8 < len(set().union(*tests)) / 898 < 0.95
    with pytest.raises(ValueError, match="too few"):
        study_splits(10, cfg, seed=0)


def test_a_variant_changes_only_its_labels_fidelity_and_the_split_seed():
    params = load_params(ROOT / "studies" / "livec" / "params.yaml")
    qalign = variant_params(params, params.study.variants["qalign"], 3)
    assert (qalign.soft_labels.kind, qalign.loss.fidelity_weight) == ("onehot", 0.0)
    assert qalign.base.seed == params.base.seed + 3
    for section in ("train", "lora", "model", "evaluate"):
        a, b = getattr(qalign, section), getattr(params, section)
        assert a == b or (section == "train" and a.resume == "never")
    assert params.soft_labels.kind == "soft" and params.loss.fidelity_weight == 1.0  # not modified


def _records(values: dict[str, list[float]]) -> list[dict]:
    n = len(next(iter(values.values())))
    return [
        {"split": k, **{m: v[k] for m, v in values.items()}, "label_entropy": 1.0, "epoch": 0, "val_srcc": 0.5}
        for k in range(n)
    ]


def test_summary_means_sds_paired_differences_and_wins():
    base = {"plcc": [0.7] * 3, "std_srcc": [0.1] * 3, "kl": [0.5] * 3, "js": [0.1] * 3, "w2": [0.4] * 3}
    runs = {
        "a": _records({"srcc": [0.8, 0.7, 0.9], "entropy": [1.1, 1.1, 1.1], **base}),
        "b": _records({"srcc": [0.7, 0.75, 0.8], "entropy": [0.5, 0.5, 1.2], **{**base, "kl": [0.6, 0.4, 0.7]}}),
    }
    s = summarise(runs)
    assert s["variants"]["a"]["srcc"] == {"mean": 0.8, "sd": 0.1}
    pair = s["pairs"]["a-b"]
    assert pair["srcc"]["diff_mean"] == pytest.approx(0.05) and pair["srcc"]["diff_sd"] == pytest.approx(
        np.std([0.1, -0.05, 0.1], ddof=1), abs=1e-4
    )
    assert (pair["srcc"]["wins_a"], pair["srcc"]["wins_b"]) == (2, 1)
    assert (pair["kl"]["wins_a"], pair["kl"]["wins_b"]) == (2, 1)  # lower KL wins
    assert (pair["plcc"]["wins_a"], pair["plcc"]["wins_b"]) == (0, 0)  # ties win nothing
    # entropy: closer to the raters' (1.0) wins: 1.1 beats 0.5 twice, 1.2 loses to 1.1 once
    assert (pair["entropy"]["wins_a"], pair["entropy"]["wins_b"]) == (3, 0)
    rows = headline(s, reference="a")
    assert set(rows) == {"a.mean", "a.sd", "b.mean", "b.sd", "b-a.diff"}
    assert rows["a.mean"]["srcc"] == 0.8 and rows["a.sd"]["srcc"] == 0.1 and rows["a.mean"]["n"] == 3
    assert rows["b-a.diff"]["srcc"] == pytest.approx(-0.05)  # b - a: the sign of the reference's difference flips
    text = results_markdown(s)
    assert "| a | 0.8000 ± 0.1000 |" in text and "| a − b | +0.0500 ±" in text
    assert "<table>" in results_html(s) and "<script" not in results_html(s)
    with pytest.raises(ValueError, match="same splits"):
        summarise({"a": runs["a"], "b": runs["b"][:2]})


def test_a_variant_trains_and_scores_every_split(tmp_path):
    from deqa.labels import read_manifest

    base = build_base(tmp_path / "base")
    labels = build_labels(tmp_path, n_train=24, n_val=6)
    manifest = read_manifest(labels / "train.csv")
    params = small_params(max_steps=2, epochs=1)
    params.study.splits, params.study.test_fraction, params.study.val_fraction = 2, 0.25, 0.2
    records, predictions = run_variant(params, "qalign", manifest, base, progress=False)
    assert [r["split"] for r in records] == [0, 1] and all(r["n_test"] == 6 for r in records)
    assert all(-1 <= r["srcc"] <= 1 and r["kl"] > 0 for r in records)
    assert sorted(predictions["study_split"].unique()) == [0, 1] and len(predictions) == 12
    held = study_splits(len(manifest), params.study, params.base.seed)
    for k in (0, 1):
        want = set(manifest["image"][held[k] == "test"])
        assert set(predictions[predictions["study_split"] == k]["image"]) == want


def test_the_study_dataset_never_feeds_the_other_pipelines():
    """LIVE-C is trained on only inside studies/: the real pipeline keeps it as a cross-dataset
    test (evaluation only), and no stage outside studies/ reads a study's folder."""
    real = load_params(ROOT / "real" / "params.yaml")
    assert all(s.format != "livec" and "livec" not in s.labels for s in real.prepare.sources)
    assert any(s.format == "livec" for s in real.evaluate.extra)
    for dvcfile, training in [
        (ROOT / "dvc.yaml", ("prepare", "validate", "soft_labels", "train")),
        (ROOT / "real" / "dvc.yaml", ("prepare", "validate", "soft_labels", "train")),
    ]:
        stages = yaml.safe_load(dvcfile.read_text())["stages"]
        for name, body in stages.items():
            deps = [str(d) for d in body.get("deps", [])]
            assert not any("studies" in d for d in deps), (dvcfile, name)
            if name in training:
                assert not any("livec" in d for d in deps), (dvcfile, name, "a training stage reads LIVE-C")
    study = load_params(ROOT / "studies" / "livec" / "params.yaml")
    assert [s.format for s in study.prepare.sources] == ["livec"] and not study.evaluate.extra


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/realdata is not beside this checkout")
def test_no_livec_photo_is_among_the_real_training_photos():
    import hashlib

    def digests(folder: Path) -> set[str]:
        return {
            hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest()
            for p in folder.rglob("*")
            if p.is_file() and p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
        }

    livec, biq = digests(SHARED / "livec" / "images"), digests(SHARED / "biq2021" / "images")
    assert len(livec) > 800 and len(biq) > 2000 and not livec & biq


def test_the_committed_study_metrics_hold_every_variant():
    folder = ROOT / "studies" / "livec" / "metrics" / "summary"
    if not folder.is_dir():
        pytest.skip("the study has not been run and committed yet")
    from deqa.metric_tables import RESULT_KEYS

    rows = {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}
    variants = list(load_params(ROOT / "studies" / "livec" / "params.yaml").study.variants)
    want = {f"{v}.{stat}" for v in variants for stat in ("mean", "sd")} | {
        f"{v}-deqa.diff" for v in variants if v != "deqa"
    }
    assert set(rows) == want
    for row in rows.values():
        assert {"n", "srcc", "plcc", "std_srcc", "kl", "js", "w2", "entropy"} <= set(row) <= set(RESULT_KEYS)
