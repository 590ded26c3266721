"""The great-expectations suite: one test per kind of bad input, each asserting the reported reason."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from deqa.cli import main as cli_main
from deqa.config import ValidateConfig
from deqa.schema import MANIFEST_COLUMNS
from deqa.validation import metrics, summary, validate_manifest, write_outputs

N = 24  # 16 train, 4 val, 4 test


@pytest.fixture
def data(tmp_path) -> tuple[Path, pd.DataFrame]:
    """A clean dataset: N small PNGs (distinct content) and their manifest."""
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(root / f"img{i:02d}.png")
        split = "train" if i < 16 else ("val" if i < 20 else "test")
        rows.append(
            {
                "image": f"img{i:02d}.png",
                "root": str(root),
                "dataset": "toy",
                "split": split,
                "mos": 1.0 + 4.0 * i / (N - 1),
                "std": 0.5,
                "n_votes": 10.0,
                "lo": 1.0,
                "hi": 5.0,
            }
        )
    return root, pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def run(df, on_error="fail", **kw):
    return validate_manifest(df, ValidateConfig(on_error=on_error, **kw))


def failing(result, name):
    """Reasons of the failing rows of one expectation (asserting that it failed)."""
    entry = next(e for e in result.report["expectations"] if e["name"] == name)
    assert not entry["success"], f"{name} unexpectedly passed"
    return [r["reason"] for r in entry["failing_rows"]]


def failed_names(result):
    return {e["name"] for e in result.report["expectations"] if not e["success"]}


def test_clean_dataset_passes(data):
    _, df = data
    res = run(df)
    assert res.success and res.message == ""
    assert failed_names(res) == set()
    assert len(res.kept) == N and len(res.quarantined) == 0
    assert len(res.report["expectations"]) >= 25


def test_missing_file(data):
    root, df = data
    (root / "img03.png").unlink()
    res = run(df)
    assert not res.success
    assert failing(res, "file_decodes") == ["file missing"]
    assert "file_decodes" in res.message and "img03.png" in res.message


def test_zero_byte_file(data):
    root, df = data
    (root / "img04.png").write_bytes(b"")
    assert failing(run(df), "file_decodes") == ["zero-byte file"]


def test_truncated_jpeg(data):
    root, df = data
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "t.jpg", quality=90)
    blob = (root / "t.jpg").read_bytes()
    (root / "t.jpg").write_bytes(blob[: len(blob) // 2])
    df.loc[5, "image"] = "t.jpg"
    (reason,) = failing(run(df), "file_decodes")
    assert reason.startswith("truncated image")


def test_text_file_named_jpg(data):
    root, df = data
    (root / "notes.jpg").write_text("this is not an image\n")
    df.loc[6, "image"] = "notes.jpg"
    assert failing(run(df), "file_decodes") == ["not an image: Pillow cannot identify the file format"]


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A tiny PNG that claims width x height 1-bit pixels: a decompression bomb's header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_decompression_bomb(data):
    root, df = data
    _png_header_only(root / "bomb.png", 100_000, 100_000)  # 1e10 pixels in < 100 bytes
    df.loc[7, "image"] = "bomb.png"
    res = run(df)
    assert failing(res, "max_pixels") == ["decompression bomb: 10000000000 pixels > max_pixels 40000000"]
    (reason,) = failing(res, "file_decodes")
    assert "decompression-bomb guard" in reason
    # a smaller limit catches a real, fully decodable image too (Pillow's warning band)
    res = run(df.drop(index=7), max_pixels=24 * 32 - 1)
    assert len(failing(res, "max_pixels")) == N - 1


def test_image_too_small(data):
    root, df = data
    Image.new("RGB", (8, 40)).save(root / "tiny.png")
    df.loc[8, "image"] = "tiny.png"
    assert failing(run(df), "min_side") == ["image too small: 8x40 px (min side 16)"]


def test_path_traversal_absolute_and_escaping_symlink(data, tmp_path):
    root, df = data
    outside = tmp_path / "secret.png"
    shutil.copy(root / "img00.png", outside)
    (root / "link.png").symlink_to(outside)
    df.loc[1, "image"] = "../secret.png"
    df.loc[2, "image"] = str(outside)
    df.loc[3, "image"] = "link.png"
    reasons = failing(run(df), "path_inside_root")
    assert reasons[0] == "path traversal: '../secret.png' contains '..'"
    assert reasons[1].startswith("absolute path")
    assert reasons[2].startswith("symlink escapes the data root")


def test_symlink_inside_root_is_fine(data):
    root, df = data
    (root / "sub").mkdir()
    (root / "sub" / "alias.png").symlink_to(root / "img09.png")
    df.loc[9, "image"] = "sub/alias.png"
    assert "path_inside_root" not in failed_names(run(df))


@pytest.mark.parametrize(
    "value, name, reason",
    [
        (np.nan, "not_null_mos", "mos is missing (empty or NaN)"),
        (-2.0, "mos_in_scale", "mos=-2.0 is outside the dataset's scale [1.0, 5.0]"),
        (7.5, "mos_in_scale", "mos=7.5 is outside the dataset's scale [1.0, 5.0]"),
        (np.inf, "mos_in_scale", "mos=inf is not finite"),
        ("good", "type_mos", "mos 'good' is not a number"),
    ],
)
def test_bad_mos(data, value, name, reason):
    _, df = data
    df["mos"] = df["mos"].astype(object)
    df.loc[10, "mos"] = value
    assert failing(run(df), name) == [reason]


@pytest.mark.parametrize(
    "value, name, reason",
    [
        (-0.3, "std_non_negative", "std=-0.3 is negative"),
        (9.0, "std_in_scale", "std=9.0 exceeds the scale's span hi - lo = 4.0"),
        (np.inf, "std_in_scale", "std=inf is not finite"),
    ],
)
def test_bad_std(data, value, name, reason):
    _, df = data
    df.loc[11, "std"] = value
    assert failing(run(df), name) == [reason]


def test_missing_std_is_allowed(data):
    _, df = data
    df["std"] = np.nan
    assert run(df).success


def test_bad_bounds(data):
    _, df = data
    df.loc[12, "hi"] = 1.0
    (reason,) = failing(run(df), "bounds")
    assert "not finite with lo < hi" in reason


def test_std_inconsistent_with_votes(data):
    _, df = data
    votes = np.array([[0, 2, 4, 3, 1]] * N, dtype=float)  # mean 3.3, sample std ~1.0593
    for i, c in enumerate(["c1", "c2", "c3", "c4", "c5"]):
        df[c] = votes[:, i]
    df["mos"], df["std"] = 3.3, np.sqrt(((np.arange(1, 6) - 3.3) ** 2 * votes[0]).sum() / 9)
    assert run(df).success
    df.loc[13, "std"] = 0.2
    df.loc[14, "n_votes"] = 12
    res = run(df)
    (reason,) = failing(res, "std_matches_votes")
    assert reason.startswith("std=0.2 does not match the vote counts c1..c5")
    assert failing(res, "n_votes_matches_votes")[0].startswith("n_votes=12.0 does not match")


def test_duplicate_ids(data):
    _, df = data
    df.loc[15, "image"] = "img14.png"  # same train split: a duplicate, not a leak
    reasons = failing(run(df), "unique_ids")
    assert len(reasons) == 2 and all(r.startswith("duplicate image id") for r in reasons)


def test_split_leakage_by_path_and_by_content(data):
    root, df = data
    df.loc[16, "image"] = "img00.png"  # val row pointing at a train image
    shutil.copy(root / "img01.png", root / "copy_of_01.png")
    df.loc[20, "image"] = "copy_of_01.png"  # test row: same bytes as a train image
    res = run(df)
    reasons = failing(res, "no_split_leak")
    assert len(reasons) == 4
    assert "split leakage: the same image is in splits train,val" in reasons
    assert "split leakage: the same image is in splits test,train" in reasons


def test_wrong_column_names(data):
    _, df = data
    df = df.rename(columns={"mos": "score"})
    for mode in ("fail", "quarantine"):
        res = run(df, on_error=mode)
        assert not res.success
        assert res.report["missing_columns"] == ["mos"]
        assert "missing required column(s): mos" in res.message
        assert "columns" in failed_names(res)


def test_bad_split_value_and_empty_split(data):
    _, df = data
    df.loc[20:, "split"] = "validation"
    res = run(df)
    assert failing(res, "split_values")[0] == "split='validation' is not one of train, val, test"
    entry = next(e for e in res.report["expectations"] if e["name"] == "splits_not_empty")
    assert not entry["success"] and entry["observed"] == "empty split(s): test"


def test_empty_dataset(data):
    _, df = data
    res = run(df.iloc[0:0])
    assert not res.success
    assert "row_count" in failed_names(res) and "splits_not_empty" in failed_names(res)
    assert "at least 20 rows (observed: 0)" in res.message


def test_quarantine_keeps_good_rows_with_reasons(data, tmp_path):
    root, df = data
    (root / "img02.png").unlink()
    df.loc[3, "mos"] = np.nan
    df.loc[4, "image"] = "../x.png"
    res = run(df, on_error="quarantine")
    assert res.success
    r = res.report
    assert r["rows_in"] == N and r["kept"] == N - 3 and r["quarantined"] == 3
    assert r["rows_in"] == r["kept"] + r["quarantined"]
    q = res.quarantined.set_index("row")
    assert q.loc[2, "reasons"] == "file_decodes: file missing"
    assert q.loc[3, "reasons"] == "not_null_mos: mos is missing (empty or NaN)"
    assert q.loc[4, "reasons"].startswith("path_inside_root: path traversal")
    assert not res.kept["image"].isin(["img02.png", "img03.png", "../x.png"]).any()
    write_outputs(res, tmp_path / "out", tmp_path / "out" / "report.json", tmp_path / "m.json")
    assert len(pd.read_csv(tmp_path / "out" / "manifest.csv")) == N - 3
    assert metrics(res)["rows_in_equals_kept_plus_quarantined"] is True
    assert "3 quarantined" in summary(res)


def test_quarantine_fails_when_a_split_empties(data):
    root, df = data
    for i in range(20, 24):  # every test image is bad
        (root / f"img{i:02d}.png").write_bytes(b"")
    res = run(df, on_error="quarantine")
    assert not res.success and res.report["quarantined"] == 4
    assert "splits_not_empty" in res.message and "empty split(s): test" in res.message


def test_stage_fail_mode_exits_with_message_not_traceback(data, tmp_path, monkeypatch, capsys):
    import importlib.util

    root, df = data
    (root / "img05.png").write_bytes(b"")
    work = tmp_path / "work"
    (work / "data" / "prepare").mkdir(parents=True)
    df.to_csv(work / "data" / "prepare" / "manifest.csv", index=False)
    repo = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((repo / "params.yaml").read_text())  # a params file spells out every section
    params["validate"].update(on_error="fail", min_rows=5)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    spec = importlib.util.spec_from_file_location("validate_stage", repo / "stages" / "validate.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    monkeypatch.chdir(work)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    with pytest.raises(SystemExit) as exc:
        stage.main(
            ["--manifest", "data/prepare/manifest.csv", "--out", "data/validate", "--metrics", "metrics/validate.json"]
        )
    message = str(exc.value.code)
    assert message.startswith("validation failed (on_error=fail)")
    assert "file_decodes" in message and "img05.png: zero-byte file" in message
    assert (work / "data" / "validate" / "report.json").is_file()


def test_cli_validate(data, tmp_path, capsys):
    root, df = data
    labels = tmp_path / "labels.csv"
    df[["image", "mos", "std", "split"]].to_csv(labels, index=False)
    report = tmp_path / "report.json"
    code = cli_main(
        [
            "validate",
            str(labels),
            "--format",
            "generic-csv",
            "--root",
            str(root),
            "--lo",
            "1",
            "--hi",
            "5",
            "--report",
            str(report),
            "--quiet",
        ]
    )
    assert code == 0 and report.is_file()
    assert "24 rows in, 24 kept" in capsys.readouterr().out
    (root / "img07.png").write_text("not a png")
    code = cli_main(["validate", str(labels), "--format", "generic-csv", "--root", str(root), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "img07.png: not an image" in err
    code = cli_main(
        [
            "validate",
            str(labels),
            "--format",
            "generic-csv",
            "--root",
            str(root),
            "--quiet",
            "--on-error",
            "quarantine",
            "--out",
            str(tmp_path / "q"),
        ]
    )
    assert code == 0 and len(pd.read_csv(tmp_path / "q" / "quarantine.csv")) == 1
    code = cli_main(["validate", str(tmp_path / "nope.csv"), "--format", "koniq", "--quiet"])
    assert code == 2 and "label file not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# hostile rows: each is a reason of its own row, never an aborted run
# ---------------------------------------------------------------------------------------------
def _hostile(root: Path, case: str) -> str:
    import os

    if case == "loop":
        os.symlink(root / "loopB.png", root / "loopA.png")
        os.symlink(root / "loopA.png", root / "loopB.png")
        return "loopA.png"
    if case == "nul":
        return "a\0b.png"
    return "x" * 300 + ".png"


@pytest.mark.parametrize("on_error", ["fail", "quarantine"])
@pytest.mark.parametrize(
    "case, reason",
    [
        ("loop", "file_decodes: unreadable: symlink loop (too many levels of symbolic links)"),
        ("nul", "path_inside_root: the image path 'a\\x00b.png' contains a NUL byte"),
        ("long", "file_decodes: unreadable: file name too long"),
    ],
)
def test_loop_nul_and_long_name_are_row_reasons(data, on_error, case, reason):
    root, df = data
    df.loc[3, "image"] = _hostile(root, case)
    res = run(df, on_error=on_error)
    entries = [e for e in res.report["expectations"] if not e["success"]]
    reasons = [f"{e['name']}: {r['reason']}" for e in entries for r in e["failing_rows"]]
    assert reasons and reasons[0].startswith(reason)
    assert all(r["row"] == 3 for e in entries for r in e["failing_rows"])
    if on_error == "quarantine":
        assert res.success and res.report["quarantined"] == 1 and len(res.kept) == N - 1
        assert res.quarantined["reasons"][0].startswith(reason)
    else:
        assert not res.success and "Traceback" not in res.message and "\0" not in res.message


def _labels_file(root: Path, tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text("image,mos,std\n" + "\n".join(lines) + "\n")
    return path


def _generic_lines(n=N):
    return [f"img{i:02d}.png,{1 + 4 * i / (n - 1):.3f},0.5" for i in range(n)]


def _validate_cli(labels, root, out, *extra):
    return cli_main(
        [
            "validate",
            str(labels),
            "--format",
            "generic-csv",
            "--root",
            str(root),
            "--lo",
            "1",
            "--hi",
            "5",
            "--split",
            "train",
            "--on-error",
            "quarantine",
            "--out",
            str(out),
            "-q",
            *extra,
        ]
    )


def test_extra_field_on_the_first_data_row_quarantines_that_row_only(data, tmp_path, capsys):
    root, _ = data
    lines = _generic_lines()
    lines[0] += ",surplus"
    assert _validate_cli(_labels_file(root, tmp_path, lines), root, tmp_path / "q") == 0
    q = pd.read_csv(tmp_path / "q" / "quarantine.csv")
    assert list(q["image"]) == ["img00.png"] and list(q["line"]) == [2]
    assert q["reasons"][0] == "row_parses: line 2 has 4 fields but the header has 3"
    kept = pd.read_csv(tmp_path / "q" / "manifest.csv")
    assert list(kept["image"]) == [f"img{i:02d}.png" for i in range(1, N)]
    assert kept["mos"].tolist() == pytest.approx([1 + 4 * i / (N - 1) for i in range(1, N)], abs=1e-3)


def test_decimal_comma_is_named_and_kept_in_the_quarantine(data, tmp_path, capsys):
    root, _ = data
    lines = _generic_lines()
    lines[5] = 'img05.png,"4,5",0.5'
    assert _validate_cli(_labels_file(root, tmp_path, lines), root, tmp_path / "q") == 0
    q = pd.read_csv(tmp_path / "q" / "quarantine.csv", dtype=str)
    assert q["reasons"].tolist() == ["type_mos: mos '4,5' is not a number"]
    assert q["mos"].tolist() == ["4,5"] and q["line"].tolist() == ["7"]


def test_negative_std_is_reported_as_negative_only(data):
    _, df = data
    df.loc[11, "std"] = -0.5
    res = run(df, on_error="quarantine")
    assert res.quarantined["reasons"].tolist() == ["std_non_negative: std=-0.5 is negative"]


def test_screen_says_where_every_failing_row_is(data, tmp_path, capsys):
    root, _ = data
    lines = _generic_lines() + [f"missing{i}.png,3.0,0.5" for i in range(8)]
    labels = _labels_file(root, tmp_path, lines)
    report = tmp_path / "r.json"
    code = cli_main(
        [
            "validate",
            str(labels),
            "--format",
            "generic-csv",
            "--root",
            str(root),
            "-q",
            "--split",
            "train",
            "--report",
            str(report),
        ]
    )
    captured = capsys.readouterr()
    assert code == 1
    assert "... and 5 more: the report " + str(report) in captured.err
    assert "every failing row with its reasons: the report " + str(report) in captured.out
    import json

    listed = next(e for e in json.loads(report.read_text())["expectations"] if e["name"] == "file_decodes")
    assert len(listed["failing_rows"]) == 8 and listed["failing_rows"][0]["line"] == 26
    cli_main(["validate", str(labels), "--format", "generic-csv", "--root", str(root), "-q", "--split", "train"])
    assert "rerun with --report FILE to list every row" in capsys.readouterr().err


def test_images_that_cannot_be_converted_faithfully_are_quarantined(data):
    tifffile = pytest.importorskip("tifffile")
    from test_images import write_png16

    root, df = data
    tifffile.imwrite(root / "hdr.tif", np.linspace(0, 40, 24 * 32, dtype=np.float32).reshape(24, 32))
    write_png16(root / "deep.png", np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 80)
    frames = [Image.fromarray(np.full((24, 32, 3), v, np.uint8)) for v in (10, 200)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:])
    df.loc[1, "image"], df.loc[2, "image"], df.loc[3, "image"] = "hdr.tif", "deep.png", "anim.gif"
    res = run(df, on_error="quarantine")
    q = res.quarantined.set_index("image")["reasons"]
    assert q["hdr.tif"].startswith("file_converts: float image values span [0, 40], outside [0, 1]")
    assert q["anim.gif"] == "file_converts: 2 frames; only the first would be used"
    assert "deep.png" not in q.index  # 16-bit is converted faithfully now


def test_manifest_format_reads_malformed_lines_as_row_reasons(data, tmp_path, capsys):
    _root, df = data
    path = tmp_path / "manifest.csv"
    df.to_csv(path, index=False)
    text = path.read_text().splitlines()
    text[4] += ",oops"
    path.write_text("\n".join(text) + "\n")
    code = cli_main(
        ["validate", str(path), "--format", "manifest", "-q", "--on-error", "quarantine", "--out", str(tmp_path / "q")]
    )
    assert code == 0
    q = pd.read_csv(tmp_path / "q" / "quarantine.csv")
    assert list(q["line"]) == [5] and q["reasons"][0].startswith("row_parses: line 5 has 10 fields")
