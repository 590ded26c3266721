"""Scoring: batch invariance, adapter vs merged export, inputs of every kind, the CLI's errors."""

import json
from pathlib import Path

import numpy as np
import pytest

from deqa.cli import main as cli
from deqa.scoring import Scorer
from model_fixtures import trained_model


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
        (folder / ("sub" if i == 0 else ".") / f"ok{i}.png").write_bytes(Path(p).read_bytes())
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.png").write_text("not an image")
    data = Path(good[0]).read_bytes()
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


# ---------------------------------------------------------------------------------------------
# hostile inputs (issue #12): every one gives a row or a one-line error, never a traceback
# ---------------------------------------------------------------------------------------------
def _score_cli(trained, *args):
    return cli(["score", "--model", str(trained["model"]), "--no-progress", *map(str, args)])


def _rows(text):
    import csv
    import io

    return list(csv.DictReader(io.StringIO(text)))


def test_16bit_png_and_tiff_score_like_their_8bit_version(scorer, trained, tmp_path):
    tifffile = pytest.importorskip("tifffile")
    from PIL import Image

    from test_images import write_png16

    grey = np.asarray(Image.open(_images(trained)[0]).convert("L"))
    rgb = np.asarray(Image.open(_images(trained)[1]).convert("RGB"))
    Image.fromarray(grey).save(tmp_path / "g8.png")
    write_png16(tmp_path / "g16.png", grey.astype(np.uint16) * 257)
    tifffile.imwrite(tmp_path / "g16.tif", grey.astype(np.uint16) * 257)
    Image.fromarray(rgb).save(tmp_path / "c8.png")
    write_png16(tmp_path / "c16.png", rgb.astype(np.uint16) * 257)
    tifffile.imwrite(tmp_path / "c16.tif", rgb.astype(np.uint16) * 257)
    res = scorer.score([tmp_path / n for n in ("g8.png", "g16.png", "g16.tif", "c8.png", "c16.png", "c16.tif")])
    assert np.abs(res.mean[:3] - res.mean[0]).max() < 1e-4
    assert np.abs(res.mean[3:] - res.mean[3]).max() < 1e-4
    # what the old conversion fed the model: the 16-bit grey photo clipped to near-white
    with Image.open(tmp_path / "g16.png") as im:
        clipped = scorer.score([im.convert("RGB")]).mean[0]
    assert abs(clipped - res.mean[0]) > 10 * abs(res.mean[1] - res.mean[0])


def test_exif_rotated_image_scores_like_the_upright_one(scorer, trained, tmp_path):
    from PIL import Image

    upright = Image.open(_images(trained)[2]).convert("RGB").crop((0, 0, 64, 40))
    upright.save(tmp_path / "up.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # the viewer rotates it 90 degrees clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "rot.png", exif=exif.tobytes())
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "sideways.png")
    res = scorer.score([tmp_path / "up.png", tmp_path / "rot.png", tmp_path / "sideways.png"])
    assert abs(res.mean[0] - res.mean[1]) < 1e-5
    assert abs(res.mean[0] - res.mean[2]) > abs(res.mean[0] - res.mean[1])


def test_symlink_loops_in_a_folder_are_rows_and_as_a_file_one_error(trained, tmp_path, capsys):
    import os

    folder = tmp_path / "f"
    folder.mkdir()
    for i, p in enumerate(_images(trained)[:4]):
        (folder / f"ok{i}.png").write_bytes(Path(p).read_bytes())
    for i in range(3):
        os.symlink(folder / f"loop{i}b.png", folder / f"loop{i}a.png")
        os.symlink(folder / f"loop{i}a.png", folder / f"loop{i}b.png")
    assert _score_cli(trained, folder) == 1
    captured = capsys.readouterr()
    rows = _rows(captured.out)
    assert len(rows) == 10  # 4 images + 6 loop entries, none dropped
    assert sum(bool(r["error"]) for r in rows) == 6
    assert all("symlink loop" in r["error"] for r in rows if r["error"])
    assert "Traceback" not in captured.err and captured.err.count("symlink loop") == 6
    assert _score_cli(trained, folder / "loop0a.png") == 2
    err = capsys.readouterr().err
    assert "loop0a.png: symlink loop" in err and "no such file" not in err and "Traceback" not in err


def test_nul_byte_long_name_and_latin1_list(trained, tmp_path, capsys):
    good = _images(trained)[:2]
    (tmp_path / "café.png").write_bytes(Path(good[0]).read_bytes())
    (tmp_path / "list.csv").write_bytes("path\ncafé.png\n".encode("latin-1") + f"{good[1]}\n".encode())
    assert _score_cli(trained, tmp_path / "list.csv") == 0
    rows = _rows(capsys.readouterr().out)
    assert [r["path"].endswith(("café.png", good[1][-12:])) for r in rows] == [True, True]
    assert all(float(r["score"]) >= 1 for r in rows)
    long_name = tmp_path / ("x" * 300 + ".png")
    (tmp_path / "hostile.txt").write_text(f"{good[0]}\n{tmp_path}/a\0b.png\n{long_name}\n")
    assert _score_cli(trained, tmp_path / "hostile.txt") == 1
    captured = capsys.readouterr()
    errors = [r["error"] for r in _rows(captured.out) if r["error"]]
    assert errors == [
        "the file name contains a NUL byte",
        "file name too long (309 bytes)".replace("309", str(len(str(long_name).encode()))),
    ]
    assert "Traceback" not in captured.err and "a\\x00b.png" in captured.err
    assert _score_cli(trained, long_name) == 2
    assert "file name too long" in capsys.readouterr().err


@pytest.mark.parametrize(
    "device, message",
    [
        ("nonsense", "unknown device 'nonsense'"),
        ("cuda", "device 'cuda' is not available"),
        ("cuda:x", "unknown device 'cuda:x'"),
    ],
)
def test_bad_device_is_one_line_and_exit_2(trained, capsys, device, message):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert _score_cli(trained, _images(trained)[0], "--device", device) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_truncated_adapter_is_one_line_naming_the_file(trained, tmp_path, capsys):
    import shutil

    bad = tmp_path / "model"
    shutil.copytree(trained["model"], bad)
    weights = bad / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code = cli(["score", "--model", str(bad), "--no-progress", _images(trained)[0]])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"{weights} is truncated or corrupt" in err


def test_output_into_a_missing_folder_is_created(trained, tmp_path, capsys):
    out = tmp_path / "no" / "such" / "dir" / "s.csv"
    assert _score_cli(trained, *_images(trained)[:3], "-o", out) == 0
    assert len(_rows(out.read_text())) == 3
    blocked = tmp_path / "file.txt"
    blocked.write_text("x")
    assert _score_cli(trained, _images(trained)[0], "-o", blocked / "s.csv") == 2
    err = capsys.readouterr().err
    assert "cannot write the output" in err and "Traceback" not in err


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl"])
def test_interrupted_run_keeps_its_rows_and_resume_scores_the_rest(trained, tmp_path, capsys, monkeypatch, fmt):
    from deqa.score_files import read_results

    paths = _images(trained)[:10]
    out = tmp_path / f"s.{fmt}"
    real_forward, calls = Scorer.forward, []

    def interrupted(self, enc, pos, features=None):
        calls.append(len(pos))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_forward(self, enc, pos)

    monkeypatch.setattr(Scorer, "forward", interrupted)
    assert _score_cli(trained, *paths, "-o", out, "--batch-size", "3") == 130
    assert "--resume" in capsys.readouterr().err
    kept = read_results(out, fmt)
    assert [r["path"] for r in kept] == paths[:6]  # two finished batches
    if fmt == "json":
        json.loads(out.read_text())  # closed even when interrupted
    monkeypatch.setattr(Scorer, "forward", real_forward)
    calls.clear()
    monkeypatch.setattr(
        Scorer,
        "forward",
        lambda self, enc, pos, features=None: calls.append(len(pos)) or real_forward(self, enc, pos, features),
    )
    assert _score_cli(trained, *paths, "-o", out, "--batch-size", "3", "--resume") == 0
    assert sum(calls) == 4  # only the rest was scored
    rows = read_results(out, fmt)
    assert sorted(r["path"] for r in rows) == sorted(paths) and len(rows) == 10
    fresh = tmp_path / f"fresh.{fmt}"
    assert _score_cli(trained, *paths, "-o", fresh) == 0
    by_path = {r["path"]: float(r["score"]) for r in read_results(fresh, fmt)}
    assert all(abs(float(r["score"]) - by_path[r["path"]]) < 1e-5 for r in rows)


def test_resume_drops_a_row_cut_off_mid_write_and_retries_errors(trained, tmp_path, capsys):
    paths = _images(trained)[:3]
    out = tmp_path / "s.csv"
    assert _score_cli(trained, *paths, tmp_path / "missing.png", "-o", out) == 1
    text = out.read_text()
    lines = text.splitlines()
    out.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])  # killed while writing row 3
    (tmp_path / "missing.png").write_bytes(Path(paths[0]).read_bytes())
    assert _score_cli(trained, *paths, tmp_path / "missing.png", "-o", out, "--resume") == 0
    rows = _rows(out.read_text())
    assert sorted(r["path"] for r in rows) == sorted(paths + [str(tmp_path / "missing.png")])
    assert not any(r["error"] for r in rows)


def test_nothing_scorable_is_exit_2_and_resume_needs_output(trained, tmp_path, capsys):
    (tmp_path / "a.png").write_text("no")
    assert _score_cli(trained, tmp_path / "a.png", tmp_path / "b.png") == 2
    assert _score_cli(trained, _images(trained)[0], "--resume") == 2
    assert "--resume needs --output" in capsys.readouterr().err


def test_iter_score_streams_with_bounded_look_ahead(scorer, trained, monkeypatch):
    import deqa.scoring as scoring

    paths = _images(trained) * 2  # 36 inputs, batches of 4
    decoded = []
    real = scoring.to_pil
    monkeypatch.setattr(scoring, "to_pil", lambda x: decoded.append(x) or real(x))
    seen = []
    for batch in scorer.iter_score(  # noqa: B007 (the last batch is checked below)
        paths + ["/nonexistent.png"], batch_size=4, prefetch=2
    ):
        seen.append(len(decoded))
        if len(seen) == 1:
            time_limit = len(decoded)
    # when the first batch comes out, at most 1 (scored) + 2 (queued) + 1 (being read) batches were read
    assert time_limit <= 4 * 4
    assert len(seen) == 10 and decoded[-1] == "/nonexistent.png"
    last = batch.records()
    assert last == [{"path": "/nonexistent.png", "error": "no such file"}]


def test_decoders_give_the_same_scores(scorer, trained):
    paths = _images(trained)[:9] + ["/nonexistent.png"]
    results = {}
    for decoder in ("thread", "process", "none"):
        batches = list(scorer.iter_score(paths, batch_size=4, decoder=decoder))
        results[decoder] = [r for b in batches for r in b.records()]
    assert results["thread"] == results["none"]
    assert [r["path"] for r in results["process"]] == [r["path"] for r in results["none"]]
    assert all(
        abs(a.get("score", 0) - b.get("score", 0)) < 1e-6
        for a, b in zip(results["process"], results["none"], strict=False)
    )
    with pytest.raises(Exception, match="no such file"):
        scorer.score(paths)


# ---------------------------------------------------------------------------------------------
# evaluation: the same Scorer path; unreadable images and bad extra rows are quarantined
# ---------------------------------------------------------------------------------------------
def test_predict_quarantines_unreadable_images_and_keeps_provenance(scorer, trained, tmp_path):
    import pandas as pd

    from deqa.evaluation import predict, quarantined, write_predictions

    frame = pd.read_csv(trained["labels"] / "val.csv")
    frame["content"], frame["distortion"], frame["severity"] = "astronaut", "blur", 2
    frame.loc[2, "image"] = "gone.png"
    pred = predict(scorer, frame, batch_size=4, progress=False)
    assert len(pred) == len(frame) - 1 and "gone.png" not in set(pred["image"])
    assert {"content", "distortion", "severity"} <= set(pred.columns)
    q = quarantined(pred)
    assert list(q["image"]) == ["gone.png"] and q["reasons"][0] == "unreadable image: no such file"
    expected = scorer.score([str(Path(r) / i) for r, i in zip(pred["root"], pred["image"], strict=False)])
    assert np.abs(pred["pred_mean"].to_numpy() - expected.mean).max() < 1e-5
    written = write_predictions(pred, tmp_path / "out")
    assert pd.read_csv(tmp_path / "out" / "quarantine.csv")["image"].tolist() == ["gone.png"]
    assert tmp_path / "out" / "quarantine.csv" in written


def test_extra_sets_are_validated_and_quarantined(trained, tmp_path):
    import pandas as pd

    from deqa.config import EvaluateConfig, SourceConfig
    from deqa.evaluation import evaluation_frames, quarantine_counts, quarantined

    images = _images(trained)
    root = tmp_path / "extra"
    root.mkdir()
    lines = ["image,mos,std,content"]
    for i, p in enumerate(images[:8]):
        (root / f"e{i}.png").write_bytes(Path(p).read_bytes())
        lines.append(f"e{i}.png,{1 + i * 0.5},0.4,photo{i}")
    lines += [
        "nothere.png,3.0,0.5,x",
        f"../{Path(images[0]).name},3.0,0.5,x",
        f"{images[0]},3.0,0.5,x",
        "e9.png,3.0,0.5,x,surplus",
    ]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    cfg = EvaluateConfig(
        splits=["val"], extra=[SourceConfig(name="ext", format="generic-csv", labels=str(root / "labels.csv"))]
    )
    frame = evaluation_frames(cfg, trained["labels"], 0)
    cross = frame[frame["split"] == "cross"]
    assert sorted(cross["image"]) == [f"e{i}.png" for i in range(8)]
    assert list(cross["content"]) == [f"photo{i}" for i in range(8)]
    q = quarantined(frame).set_index("image")
    assert "file missing" in q.loc["nothere.png", "reasons"]
    assert "contains '..'" in q.loc[f"../{Path(images[0]).name}", "reasons"]
    assert "absolute path" in q.loc[images[0], "reasons"]
    assert q.loc["e9.png", "reasons"].startswith("row_parses: line 13 has 5 fields but the header has 4")
    assert quarantine_counts(frame) == {"quarantined": 4, "by_dataset": {"ext": 4}}
    assert pd.api.types.is_float_dtype(cross["m"])
