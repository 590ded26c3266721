"""Importers: every format, on the real label files in ``../shared`` where they exist."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deqa.commands import validate as validate_command
from deqa.config import SOURCE_FORMATS, SourceConfig
from deqa.importers import LabelImportError, import_labels, seeded_split
from deqa.schema import LABEL_FORMATS, MANIFEST_COLUMNS, VOTE_COLUMNS
from deqa.sources import load_sources

SHARED = Path(__file__).resolve().parents[2] / "shared"
KONIQ = SHARED / "data" / "koniq"
QALIGN = SHARED / "data" / "q-align"
LIVEC = SHARED / "realdata" / "livec" / "labels.csv"

KONIQ_LO, KONIQ_HI = 1.0961538462, 4.31


# one small file per label-file format: (file name, contents, expected [(image, mos, std)])
EXAMPLES = {
    "generic-csv": ("l.csv", "image,mos,std\na.png,3.5,0.4\nb.png,2,\n", [("a.png", 3.5, 0.4), ("b.png", 2.0, None)]),
    "koniq": (
        "k.csv",
        "image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,MOS_zscore,set\na.jpg,0,0,2,2,1,5,3.8,0.8366600265,60,training\n",
        [("a.jpg", 3.8, 0.8366600265)],
    ),
    "kadid": ("dmos.csv", "dist_img,ref_img,dmos,var\nI01_01_01.png,I01.png,4.5,0.25\n", [("I01_01_01.png", 4.5, 0.5)]),
    "spaq": ("s.csv", "Image name,MOS,Brightness\n00001.jpg,42.5,50\n", [("00001.jpg", 42.5, None)]),
    "livec": (
        "labels.csv",
        "file,mos,std,split\nimages/1.bmp,60.5,12.0,test\ntrainingImages/t.bmp,50,10,practice\n",
        [("images/1.bmp", 60.5, 12.0)],
    ),
    "qalign-json": (
        "q.json",
        json.dumps([{"image": "a.jpg", "gt_score": 3.5}, {"img_path": "b.jpg", "id": "b->2.0"}]),
        [("a.jpg", 3.5, None), ("b.jpg", 2.0, None)],
    ),
    "deqa-json": ("d.json", json.dumps([{"image": "a.jpg", "gt_score": 3.5, "std": 0.4}]), [("a.jpg", 3.5, 0.4)]),
}


@pytest.mark.parametrize("fmt", LABEL_FORMATS)
def test_every_label_format_imports_its_own_layout(fmt, tmp_path):
    """Each format of deqa.schema.LABEL_FORMATS reads a file of its layout (a new format without an
    example here fails), and is accepted as a source format and by ``deqa validate --format``."""
    name, text, expected = EXAMPLES[fmt]
    (tmp_path / name).write_text(text)
    df = import_labels(tmp_path / name, fmt, split="test")
    got = [(i, m, None if math.isnan(s) else s) for i, m, s in zip(df["image"], df["mos"], df["std"], strict=True)]
    assert [(i, pytest.approx(m), s if s is None else pytest.approx(s)) for i, m, s in expected] == got
    assert list(df.columns[: len(MANIFEST_COLUMNS)]) == MANIFEST_COLUMNS and (df["dataset"] == fmt).all()
    assert fmt in SOURCE_FORMATS
    parser = argparse.ArgumentParser()
    validate_command.add_arguments(parser)
    assert parser.parse_args([str(tmp_path / name), "--format", fmt]).format == fmt


@pytest.mark.parametrize("name", ["koniq10k_scores_and_distributions_DERIVED.csv", "koniq10k_distributions_sets.csv"])
def test_koniq_both_layouts(name):
    df = import_labels(KONIQ / name, "koniq")
    assert list(df.columns) == MANIFEST_COLUMNS + VOTE_COLUMNS
    assert len(df) == 10073
    # 1-5 ACR mean, not MOS_zscore, for both layouts (spec section 2)
    assert df["lo"].iloc[0] == pytest.approx(KONIQ_LO, abs=1e-8)
    assert df["hi"].iloc[0] == pytest.approx(KONIQ_HI, abs=1e-8)
    row = df.set_index("image").loc["10004473376.jpg"]
    assert row["mos"] == pytest.approx(3.828571, abs=1e-6)
    assert row["std"] == pytest.approx(0.527278, abs=1e-6)
    assert row["n_votes"] == 105
    assert [row[c] for c in VOTE_COLUMNS] == [0, 0, 25, 73, 7]
    assert row["split"] == "train"
    assert df["split"].value_counts().to_dict() == {"train": 7058, "test": 2015, "val": 1000}
    assert (df["root"] == str(KONIQ)).all() and (df["dataset"] == "koniq").all()


def test_koniq_layouts_agree():
    a = import_labels(KONIQ / "koniq10k_scores_and_distributions_DERIVED.csv", "koniq")
    b = import_labels(KONIQ / "koniq10k_distributions_sets.csv", "koniq")
    np.testing.assert_allclose(a["mos"], b["mos"], atol=1e-8)
    np.testing.assert_array_equal(a[VOTE_COLUMNS].to_numpy(), b[VOTE_COLUMNS].to_numpy())
    assert (a["split"] == b["split"]).all()


def test_wrong_columns_name_the_expected_ones(tmp_path):
    bad = tmp_path / "labels.csv"
    bad.write_text("picture,score\na.png,3.0\n")
    with pytest.raises(LabelImportError, match=r"expects columns \[image, mos\]; missing: image, mos"):
        import_labels(bad, "generic-csv")
    with pytest.raises(LabelImportError, match=r"c_total|expects columns"):
        import_labels(bad, "koniq")
    with pytest.raises(LabelImportError, match="dist_img, ref_img, dmos, var"):
        import_labels(bad, "kadid")


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(LabelImportError, match="label file not found"):
        import_labels(tmp_path / "nope.csv", "generic-csv")
    with pytest.raises(LabelImportError, match="unknown format 'csv'"):
        import_labels(LIVEC, "csv")


def _kadid(tmp_path) -> Path:
    rows = ["dist_img,ref_img,dmos,var"]
    for ref in range(1, 21):
        for d, (dmos, var) in enumerate([(4.57, 0.496), (4.33, 0.869), (2.67, 0.789), (1.0, 0.0)], start=1):
            rows.append(f"I{ref:02d}_01_{d:02d}.png,I{ref:02d}.png,{dmos},{var}")
    path = tmp_path / "dmos.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_kadid_std_is_sqrt_var_and_split_is_grouped_by_reference(tmp_path):
    df = import_labels(_kadid(tmp_path), "kadid", root="imgs", seed=3, val_fraction=0.2, test_fraction=0.2)
    row = df.set_index("image").loc["I01_01_01.png"]
    assert row["std"] == pytest.approx(math.sqrt(0.496))
    assert df["lo"].iloc[0] == 1.0 and df["hi"].iloc[0] == 4.57
    assert (df["root"] == "imgs").all()
    ref = df["image"].str[:3]
    assert (df.groupby(ref)["split"].nunique() == 1).all()  # content-disjoint
    assert (df["split"].value_counts() == pd.Series({"train": 48, "val": 16, "test": 16})).all()


def test_spaq_mos_only(tmp_path):
    path = tmp_path / "spaq.csv"
    path.write_text("Image name,MOS,Brightness\n00001.jpg,42.5,50\n00002.jpg,80,40\n00003.jpg,10,1\n")
    df = import_labels(path, "spaq", split="test")
    assert df["std"].isna().all() and df["n_votes"].isna().all()
    assert (df["lo"] == 10).all() and (df["hi"] == 80).all() and (df["split"] == "test").all()


def test_livec_real_labels_leave_out_practice():
    df = import_labels(LIVEC, "livec")
    assert len(df) == 898
    assert not df["image"].str.contains("trainingImages").any()
    assert (df["split"] == "test").all()
    assert df["lo"].iloc[0] == pytest.approx(3.42, abs=0.01) and df["hi"].iloc[0] == pytest.approx(92.43, abs=0.01)
    assert df["std"].between(6.5, 29.0).all() and df["std"].notna().all()
    assert (df["root"] == str(LIVEC.parent)).all()
    assert (LIVEC.parent / df["image"].iloc[0]).is_file()


def test_qalign_json_scores_from_id_and_gt_score():
    train = import_labels(QALIGN / "train_koniq.json", "qalign-json", split="train")
    assert len(train) == 7046
    first = train.iloc[0]
    assert first["image"] == "koniq/10004473376.jpg" and first["mos"] == pytest.approx(77.3836206897)
    assert 0 <= train["lo"].iloc[0] < 10 and 80 < train["hi"].iloc[0] <= 100  # 0-100 scale
    spaq = import_labels(QALIGN / "test_spaq.json", "qalign-json")
    assert spaq["mos"].notna().all() and spaq["std"].isna().all()
    livec = import_labels(QALIGN / "livec.json", "qalign-json", split="test")  # img_path + gt_score
    assert len(livec) == 1169 and livec["image"].iloc[-1] == "livec/1164.bmp"
    agi = import_labels(QALIGN / "agi.json", "qalign-json", split="test")  # gt_score as text
    assert agi["mos"].notna().all()


def test_deqa_json(tmp_path):
    items = [{"id": f"{i}", "image": f"koniq/{i}.jpg", "gt_score": 1 + i / 2, "std": 0.5} for i in range(9)]
    path = tmp_path / "meta.json"
    path.write_text(json.dumps(items))
    df = import_labels(path, "deqa-json", lo=1.0, hi=5.0)
    assert (df["std"] == 0.5).all() and df["mos"].tolist() == [1 + i / 2 for i in range(9)]
    assert (df["lo"] == 1.0).all() and (df["hi"] == 5.0).all()
    path.write_text(json.dumps([{"img": "a.jpg", "score": 3}]))
    with pytest.raises(LabelImportError, match=r"expects fields \[image, gt_score, std\]"):
        import_labels(path, "deqa-json")


def test_generic_csv_seeded_split_is_deterministic_and_order_free(tmp_path):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"image": [f"img{i}.png" for i in range(200)], "mos": rng.uniform(1, 5, 200)})
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    df.to_csv(a, index=False)
    df.iloc[::-1].to_csv(b, index=False)
    x = import_labels(a, "generic-csv", seed=1).set_index("image")["split"]
    y = import_labels(b, "generic-csv", seed=1).set_index("image")["split"]
    assert (x == y.loc[x.index]).all()
    assert x.value_counts().to_dict() == {"train": 160, "val": 20, "test": 20}
    z = import_labels(a, "generic-csv", seed=2).set_index("image")["split"]
    assert (x != z).any()
    assert seeded_split(pd.Series(["a", "b", "a"]), 0, 0.0, 0.0).tolist() == ["train"] * 3


def test_generic_csv_keeps_own_split_std_and_non_numbers_become_nan(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("image,mos,std,split\na.png,3,0.5,val\nb.png,abc,0.4,test\nc.png,4,,train\n")
    df = import_labels(path, "generic-csv").set_index("image")
    assert df.loc["a.png", "split"] == "val" and df.loc["c.png", "split"] == "train"
    assert math.isnan(df.loc["b.png", "mos"]) and math.isnan(df.loc["c.png", "std"])
    assert df["lo"].iloc[0] == 3 and df["hi"].iloc[0] == 4


def test_load_sources_combines_and_each_keeps_its_bounds(tmp_path):
    sources = [
        SourceConfig(name="koniq", format="koniq", labels=str(KONIQ / "koniq10k_distributions_sets.csv")),
        SourceConfig(name="kadid", format="kadid", labels=str(_kadid(tmp_path))),
        SourceConfig(name="spaq", format="qalign-json", labels=str(QALIGN / "test_spaq.json"), split="test"),
    ]
    df = load_sources(sources, seed=0)
    assert list(df.columns) == MANIFEST_COLUMNS + VOTE_COLUMNS
    bounds = df.groupby("dataset")[["lo", "hi"]].agg(["min", "max"])
    assert bounds.loc["koniq", ("lo", "min")] == pytest.approx(KONIQ_LO)
    assert bounds.loc["kadid", ("hi", "max")] == 4.57
    assert (bounds[("lo", "min")] == bounds[("lo", "max")]).all()
    assert df.loc[df["dataset"] == "kadid", VOTE_COLUMNS].isna().all().all()
    with pytest.raises(LabelImportError, match="unique"):
        load_sources([sources[0], sources[0]])


# ---------------------------------------------------------------------------------------------
# malformed rows, encodings, original texts and provenance
# ---------------------------------------------------------------------------------------------
def test_extra_field_on_the_first_data_row_never_shifts_the_rows(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("image,mos,std\na.png,3,0.5,surplus\nb.png,4,0.4\nc.png,2,0.3\n")
    with pytest.raises(LabelImportError, match=r"line 2 has 4 fields but the header has 3"):
        import_labels(path, "generic-csv")
    df = import_labels(path, "generic-csv", annotate=True)
    assert df["image"].tolist() == ["a.png", "b.png", "c.png"]
    assert df["mos"].tolist() == [3.0, 4.0, 2.0]
    assert df["_line"].tolist() == [2, 3, 4]
    assert df["_line_error"].tolist() == ["line 2 has 4 fields but the header has 3", "", ""]
    # what pandas makes of the same file: the first column becomes the index, every row shifts
    shifted = pd.read_csv(path, dtype=str)
    assert shifted["image"].tolist() != ["a.png", "b.png", "c.png"]


def test_numbers_that_are_not_numbers_keep_their_text_when_annotating(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text('image,mos,std\na.png,"4,5",0.5\nb.png,3,n/a\nc.png,2,abc\n')
    plain = import_labels(path, "generic-csv")
    assert list(plain.columns) == MANIFEST_COLUMNS and plain["mos"].isna().tolist() == [True, False, False]
    df = import_labels(path, "generic-csv", annotate=True)
    texts = {c: [v if isinstance(v, str) else None for v in df[f"_text_{c}"]] for c in ("mos", "std")}
    assert texts["mos"] == ["4,5", None, None]
    assert texts["std"] == [None, None, "abc"]  # "n/a" is a missing value, not text
    assert math.isnan(df["mos"][0]) and df["mos"][1] == 3.0


def test_latin1_label_file_is_read(tmp_path):
    path = tmp_path / "l.csv"
    path.write_bytes("image,mos\ncafé.png,3\nthé.png,4\n".encode("latin-1"))
    assert import_labels(path, "generic-csv")["image"].tolist() == ["café.png", "thé.png"]


def test_empty_and_header_only_files(tmp_path):
    empty = tmp_path / "e.csv"
    empty.write_text("")
    with pytest.raises(LabelImportError, match="missing: image, mos; found: \\(none\\)"):
        import_labels(empty, "generic-csv")
    header = tmp_path / "h.csv"
    header.write_text("image,mos\n")
    assert len(import_labels(header, "generic-csv")) == 0


def test_generic_csv_and_json_pass_provenance_through(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("image,mos,content,distortion,severity\na.png,3,rocket,blur,2\nb.png,4,rocket,pristine,0\n")
    df = import_labels(path, "generic-csv")
    assert list(df.columns) == MANIFEST_COLUMNS + ["content", "distortion", "severity"]
    assert df["distortion"].tolist() == ["blur", "pristine"] and df["severity"].tolist() == ["2", "0"]
    sources = [SourceConfig(name="g", format="generic-csv", labels=str(path))]
    assert "distortion" in load_sources(sources).columns
    meta = tmp_path / "m.json"
    meta.write_text(json.dumps([{"image": "a.png", "gt_score": 3.1, "std": 0.2, "content": "x"}]))
    assert import_labels(meta, "deqa-json")["content"].tolist() == ["x"]
