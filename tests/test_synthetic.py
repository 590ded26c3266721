"""The synthetic rated dataset: determinism, design (content, distortions, raters, splits)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import spearmanr

from deqa.config import DistortedConfig, SourceConfig, SyntheticConfig, ValidateConfig
from deqa.importers import import_labels
from deqa.schema import MANIFEST_COLUMNS, PROVENANCE_COLUMNS, VOTE_COLUMNS
from deqa.sources import load_sources
from deqa.synthetic import (
    BASE_PHOTOS,
    DISTORTIONS,
    SyntheticError,
    generate,
    generate_from_photos,
    load_photo,
    photo_splits,
    photos_from_manifest,
)
from deqa.validation import validate_manifest

SMALL = dict(crops_per_photo=2, image_size=48, severities=3, raters=9)


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(folder).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    labels, images = generate(SyntheticConfig(**SMALL), out, seed=0, progress=False)
    return out, labels, images


def test_all_photos_load_offline():
    for name in BASE_PHOTOS:
        img = load_photo(name)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 256


def test_size_and_koniq_layout(small):
    _out, labels, images = small
    table = pd.read_csv(labels)
    assert list(table.columns) == ["image_name", *VOTE_COLUMNS, "c_total", "MOS", "SD", "MOS_zscore", "set"]
    n_dist = len(SyntheticConfig().distortions)
    assert n_dist >= 6
    assert len(table) == len(BASE_PHOTOS) * 2 * (n_dist * 3 + 1)
    assert sorted(p.name for p in images.iterdir()) == sorted(table["image_name"])
    # integer votes from the whole panel; MOS and SD (ddof=1) follow from them
    counts = table[VOTE_COLUMNS].to_numpy()
    assert (counts.sum(axis=1) == 9).all() and (table["c_total"] == 9).all()
    mean = (counts * np.arange(1, 6)).sum(axis=1) / 9
    np.testing.assert_allclose(table["MOS"], mean, atol=1e-9)
    var = (counts * (np.arange(1, 6) - mean[:, None]) ** 2).sum(axis=1) / 8
    np.testing.assert_allclose(table["SD"], np.sqrt(var), atol=1e-9)
    assert table["MOS_zscore"].between(0, 100).all()


def test_deterministic_by_seed(small, tmp_path):
    out, labels, _ = small
    again, _ = generate(SyntheticConfig(**SMALL), tmp_path / "a", seed=0, progress=False)
    assert again.read_bytes() == labels.read_bytes()
    assert _digest(tmp_path / "a" / "images") == _digest(out / "images")
    other, _ = generate(SyntheticConfig(**SMALL), tmp_path / "b", seed=1, progress=False)
    assert other.read_bytes() != labels.read_bytes()


def test_splits_are_content_disjoint(small):
    out, labels, _ = small
    meta = pd.read_csv(out / "synthetic_meta.csv")
    table = pd.read_csv(labels)
    per_photo = table.groupby(meta["photo"])["set"].agg(set)
    assert (per_photo.map(len) == 1).all()
    split_of = per_photo.map(lambda s: next(iter(s)))
    assert sorted(split_of[split_of == "test"].index) == ["china", "coffee", "grace_hopper"]
    assert list(split_of[split_of == "validation"].index) == ["rocket"]
    assert (split_of == "training").sum() == len(BASE_PHOTOS) - 4


def test_quality_depends_on_severity_and_content(small):
    out, labels, _ = small
    meta = pd.read_csv(out / "synthetic_meta.csv")
    meta["MOS"] = pd.read_csv(labels)["MOS"]
    # severity: the latent quality falls with severity for every distortion, below pristine
    q = meta.groupby(["distortion", "severity"])["quality"].mean().unstack()
    pristine = q.loc["pristine", 0]
    for name in SyntheticConfig().distortions:
        row = q.loc[name, [1, 2, 3]].to_numpy()
        assert (np.diff(row) < 0).all() and row[0] < pristine, name
    # content: within one distortion and severity, quality still varies with the crop (via SSIM)
    spread = meta[meta["severity"] > 0].groupby(["distortion", "severity"])["quality"].std()
    assert spread.mean() > 0.05
    # the votes follow the latent quality closely (rater-noise ceiling)
    assert spearmanr(meta["quality"], meta["MOS"])[0] > 0.9


def test_distortions_change_the_image():
    img = load_photo("astronaut")[:64, :64].astype(np.float32) / 255
    for name, d in DISTORTIONS.items():
        out = d.fn(img, d.level(3, 5), np.random.default_rng(0))
        assert out.shape == img.shape and np.abs(out - img).mean() > 1e-3, name


def test_bad_params_are_clear(tmp_path):
    with pytest.raises(SyntheticError, match="unknown photo"):
        photo_splits(SyntheticConfig(val_photos=["mars"]))
    with pytest.raises(SyntheticError, match="both val_photos and test_photos"):
        photo_splits(SyntheticConfig(val_photos=["coffee"]))
    with pytest.raises(SyntheticError, match="distortions: unknown"):
        generate(SyntheticConfig(distortions=["sepia"]), tmp_path, progress=False)


def test_extra_train_photo_is_training_content():
    splits = photo_splits(SyntheticConfig(extra_train_photos=["camera"]))
    assert splits["camera"] == "train"
    assert load_photo("camera").shape[2] == 3  # grey -> RGB


def test_loaded_through_koniq_importer_and_validates(tmp_path):
    cfg = SyntheticConfig(crops_per_photo=1, image_size=32, severities=2, raters=5)
    df = load_sources([SourceConfig()], synthetic=cfg, out_dir=tmp_path, progress=False)
    assert list(df.columns) == MANIFEST_COLUMNS + VOTE_COLUMNS
    assert (df["dataset"] == "synthetic").all() and (df["n_votes"] == 5).all()
    assert df["split"].value_counts().to_dict() == {"train": 7 * 13, "test": 3 * 13, "val": 13}
    assert df["lo"].iloc[0] == df["mos"].min() and df["hi"].iloc[0] == df["mos"].max()
    result = validate_manifest(df, ValidateConfig())
    assert result.success, result.message


def test_rating_spread_carries_information():
    """Raters disagree more on mid-range and taste-driven images, so the std is learnable."""
    from deqa.synthetic import ambiguity, rate

    q = np.array([1.5, 3.0, 3.0, 4.6])
    a = ambiguity(q, np.array(["gaussian_noise", "gaussian_noise", "contrast", "pristine"]))
    assert a[1] > a[0] and a[2] > a[1] and a[1] > a[3]
    rng = np.random.default_rng(0)
    quality = rng.uniform(1.5, 4.5, 400)
    kinds = rng.choice(["gaussian_noise", "contrast"], 400)
    votes = rate(quality, 25, np.random.default_rng(1), scale=ambiguity(quality, kinds))
    assert spearmanr(votes.std(axis=1), ambiguity(quality, kinds)).statistic > 0.4


# ---------------------------------------------------------------------------------------------
# distorted versions of rated photos (photos_from_manifest / generate_from_photos)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rated_photos(tmp_path_factory):
    """Six 'rated photos' (crops of package photos saved as JPEG) with a generic CSV on 0..1."""
    root = tmp_path_factory.mktemp("rated")
    (root / "images").mkdir()
    rows = []
    for i, name in enumerate(["astronaut", "chelsea", "coffee", "rocket", "china", "flower"]):
        img = load_photo(name)
        side = min(img.shape[:2])
        Image.fromarray(img[:side, :side]).save(root / "images" / f"p{i}.jpg", quality=95)
        rows.append((f"images/p{i}.jpg", [0.9, 0.2, 0.8, 0.75, 0.95, 0.5][i]))
    pd.DataFrame(rows, columns=["image", "mos"]).to_csv(root / "labels.csv", index=False)
    return root


def _manifest(root, splits=("train", "train", "val", "test", "train", "train")):
    rows = pd.read_csv(root / "labels.csv")
    return rows.assign(root=str(root), split=list(splits), lo=0.0, hi=1.0)


def test_photo_sources_keep_split_and_pass_the_quality_bar(rated_photos):
    photos = photos_from_manifest(_manifest(rated_photos), min_quality=4.0)
    # normalised m = 4 mos + 1: p0 4.6, p2 4.2, p3 4.0, p4 4.8 pass; p1 (1.8) and p5 (3.0) do not
    assert [p.content for p in photos] == ["p0", "p2", "p3", "p4"]
    assert [p.split for p in photos] == ["train", "val", "test", "train"]
    np.testing.assert_allclose([p.quality for p in photos], [4.6, 4.2, 4.0, 4.8])
    assert photos[0].path == rated_photos / "images" / "p0.jpg"
    some = photos_from_manifest(_manifest(rated_photos), min_quality=4.0, max_photos=2, seed=3)
    assert len(some) == 2 and set(p.content for p in some) <= {"p0", "p2", "p3", "p4"}
    assert some == photos_from_manifest(_manifest(rated_photos), min_quality=4.0, max_photos=2, seed=3)
    with pytest.raises(SyntheticError, match="no photo"):
        photos_from_manifest(_manifest(rated_photos), min_quality=4.9)


def test_a_distorted_source_keeps_the_split_its_photos_got_from_the_importer(rated_photos, tmp_path):
    """prepare's path: a generic-csv source split by the importer, then a distorted source of its photos."""
    sources = [
        SourceConfig(name="photos", format="generic-csv", labels=str(rated_photos / "labels.csv"), lo=0.0, hi=1.0),
        SourceConfig(name="dist", format="distorted", photos="photos"),
    ]
    cfg = DistortedConfig(image_size=32, min_quality=1.0, max_photos=0, distortions_per_photo=1, severities=2)
    df = load_sources(
        sources, seed=0, val_fraction=0.2, test_fraction=0.2, distorted=cfg, out_dir=tmp_path, progress=False
    )
    photos = df[df["dataset"] == "photos"]
    split_of = {Path(i).stem: s for i, s in zip(photos["image"], photos["split"], strict=True)}
    assert set(photos["split"]) == {"train", "val", "test"}  # the seeded split, not one split for all
    dist = df[df["dataset"] == "dist"]
    assert len(dist) == len(photos) * (1 + 2) and set(dist["content"]) == set(split_of)
    assert all(split_of[c] == s for c, s in zip(dist["content"], dist["split"], strict=True))
    assert (dist["lo"] == 1.0).all() and (dist["hi"] == 5.0).all()


@pytest.fixture(scope="module")
def distorted(rated_photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("distorted")
    photos = photos_from_manifest(_manifest(rated_photos), min_quality=1.0)
    labels = generate_from_photos(photos, out, image_size=48, severities=3, raters=15, seed=0, progress=False)
    return out, labels, photos


def test_distorted_photos_layout_and_anchor(distorted):
    out, labels, photos = distorted
    df = pd.read_csv(labels)
    assert list(df.columns) == ["image", "mos", "std", "n_votes", "split", *PROVENANCE_COLUMNS]
    n_dist = len(SyntheticConfig().distortions)
    assert len(df) == len(photos) * (1 + 3 * n_dist)
    assert all((out / p).is_file() for p in df["image"])
    assert Image.open(out / df["image"].iloc[0]).size == (48, 48)
    # every derived image keeps its photo's split
    split_of = {p.content: p.split for p in photos}
    assert (df["split"] == df["content"].map(split_of)).all()
    quality = pd.read_csv(out / "quality.csv")
    pristine = quality[quality["distortion"] == "pristine"].set_index("content")["quality"]
    np.testing.assert_allclose(pristine[[p.content for p in photos]], [p.quality for p in photos])
    # distortions only lower quality, more with severity; pristine MOS follows the source quality
    q = quality.set_index(["content", "distortion", "severity"])["quality"]
    for (content, name), part in quality[quality["severity"] > 0].groupby(["content", "distortion"]):
        values = part.sort_values("severity")["quality"].to_numpy()
        assert (values <= pristine[content] + 1e-9).all() and values[-1] < values[0], (content, name)
    mos = df[df["distortion"] == "pristine"].set_index("content")["mos"]
    assert spearmanr(mos[pristine.index], pristine).statistic > 0.8
    assert len(q) == len(df)


def test_distorted_photos_deterministic_and_subset_of_distortions(distorted, rated_photos, tmp_path):
    out, labels, photos = distorted
    again = generate_from_photos(photos, tmp_path / "a", image_size=48, severities=3, raters=15, seed=0, progress=False)
    assert again.read_bytes() == labels.read_bytes() and _digest(tmp_path / "a") == _digest(out)
    two = pd.read_csv(
        generate_from_photos(
            photos,
            tmp_path / "b",
            image_size=48,
            severities=2,
            distortions_per_photo=2,
            raters=5,
            seed=0,
            progress=False,
        )
    )
    per = two[two["severity"] > 0].groupby("content")["distortion"].nunique()
    assert (per == 2).all() and len(two) == len(photos) * (1 + 2 * 2)
    assert two[two["severity"] > 0]["distortion"].nunique() > 2  # the pick differs between photos


def test_distorted_photos_import_and_validate(distorted):
    _, labels, _ = distorted
    rows = import_labels(labels, "generic-csv", name="distorted", lo=1.0, hi=5.0)
    assert set(rows["split"]) == {"train", "val", "test"}
    assert rows["std"].notna().all() and (rows["n_votes"] == 15).all()
    result = validate_manifest(rows, ValidateConfig())
    assert result.success, result.message


def test_distorted_photos_bad_arguments(distorted, tmp_path):
    _, _, photos = distorted
    with pytest.raises(SyntheticError, match="distortions_per_photo"):
        generate_from_photos(photos, tmp_path, distortions_per_photo=9, progress=False)
    with pytest.raises(SyntheticError, match="unknown"):
        generate_from_photos(photos, tmp_path, distortions=("sepia",), progress=False)
    with pytest.raises(SyntheticError, match="no source photos"):
        generate_from_photos([], tmp_path, progress=False)


# ------------------------------------------------------------------------------------------
# the same bits on every CPU: prepare is byte-exact in gate.yaml (project issue 21)
# ------------------------------------------------------------------------------------------
QUALITY_DIGEST = """
import hashlib
import numpy as np
from skimage import data
from deqa import distortions as D, synthetic as S
crops = S.random_crops(data.astronaut(), 3, 96, np.random.default_rng(0))
out = []
for k, crop in enumerate(crops):
    grey0 = S._grey(crop)
    out.append(float(S.pristine_quality(grey0)).hex())
    for name in ("gaussian_blur", "saturation", "jpeg"):
        dist = D.DISTORTIONS[name]
        v = D.to_uint8(dist.fn(crop.astype(np.float32) / 255.0, dist.level(3, 5), np.random.default_rng(k)))
        out += [hashlib.md5(v.tobytes()).hexdigest(), S._ssim(v, grey0).hex()]
print(hashlib.md5(" ".join(out).encode()).hexdigest())
"""


def test_ssim_and_latent_quality_are_the_same_bits_under_other_cpu_kernels():
    """OpenBLAS's dot-product kernels (by CPU model) changed the luma, hence the SSIM, the latent
    quality and synthetic_meta.csv, on an SSE-only machine: the luma is elementwise now."""
    import os
    import subprocess
    import sys

    from deqa.gate import KERNEL_SETS, KERNEL_VARIABLES

    env = {k: v for k, v in os.environ.items() if k not in KERNEL_VARIABLES}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    digests = {
        name: subprocess.run(
            [sys.executable, "-c", QUALITY_DIGEST],
            env={**env, **KERNEL_SETS[name]},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for name in ("default", "openblas-sandybridge", "numpy-baseline", "sse-machine")
    }
    assert len(set(digests.values())) == 1, digests
