"""The distortion-sensitivity set: unseen content, rising severities, a generic-csv label file."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.ndimage import laplace

from deqa.importers import import_labels
from deqa.schema import PROVENANCE_COLUMNS
from deqa.sensitivity import (
    PACKAGE_IMAGES,
    SCENE_KINDS,
    contents,
    generate_sensitivity_set,
    nominal_mos,
    package_image,
)
from deqa.synthetic import BASE_PHOTOS, SyntheticError
from deqa.tiny import CALIBRATION_PHOTOS

DISTS = ("gaussian_blur", "gaussian_noise", "jpeg")


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(folder).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("sens")
    labels = generate_sensitivity_set(
        out, image_size=64, scenes_per_kind=2, severities=4, distortions=DISTS, photos=("colorwheel", "minduka"), seed=0
    )
    return out, labels


def test_content_is_outside_every_training_and_calibration_source():
    used = set(BASE_PHOTOS) | set(CALIBRATION_PHOTOS) | {"cat"}  # skimage's cat is chelsea
    assert not used & set(PACKAGE_IMAGES)
    for name in PACKAGE_IMAGES:
        img = package_image(name, 48)
        assert img.shape == (48, 48, 3) and img.dtype == np.uint8 and img.std() > 10


def test_scenes_are_seeded_varied_and_clean():
    a = contents(64, 2, seed=0, photos=())
    b = contents(64, 2, seed=0, photos=())
    c = contents(64, 2, seed=1, photos=())
    assert list(a) == [f"{k}_{i:02d}" for k in SCENE_KINDS for i in range(2)]
    for name in a:
        assert a[name].shape == (64, 64, 3) and a[name].dtype == np.uint8
        np.testing.assert_array_equal(a[name], b[name])
        assert not np.array_equal(a[name], c[name])
        assert a[name].std() > 5, name  # not a flat image
    # two scenes of one kind differ
    assert not np.array_equal(a["shapes_00"], a["shapes_01"])


def test_layout_counts_and_nominal_mos(small):
    out, labels = small
    df = pd.read_csv(labels)
    assert list(df.columns) == ["image", "mos", "split", *PROVENANCE_COLUMNS]
    n_content = 2 * len(SCENE_KINDS) + 2
    assert len(df) == n_content * (1 + len(DISTS) * 4)
    assert df["content"].nunique() == n_content
    assert all((out / p).is_file() for p in df["image"])
    pristine = df[df["distortion"] == "pristine"]
    assert (pristine["severity"] == 0).all() and (pristine["mos"] == 5).all() and len(pristine) == n_content
    for _, part in df[df["severity"] > 0].groupby(["content", "distortion"]):
        assert sorted(part["severity"]) == [1, 2, 3, 4]
        assert part.sort_values("severity")["mos"].is_monotonic_decreasing
    np.testing.assert_allclose(nominal_mos([0, 2, 4], 4), [5.0, 3.0, 1.0])


def test_severity_degrades_every_scene(small):
    out, labels = small
    df = pd.read_csv(labels)

    def grey(path):
        return np.asarray(Image.open(out / path).convert("L"), dtype=float)

    for content, part in df.groupby("content"):
        clean = grey(part.loc[part["severity"] == 0, "image"].iloc[0])
        blur = part[part["distortion"] == "gaussian_blur"].sort_values("severity")
        sharp = [laplace(clean).var()] + [laplace(grey(p)).var() for p in blur["image"]]
        assert all(x > y for x, y in itertools.pairwise(sharp)), (content, sharp)
        noise = part[part["distortion"] == "gaussian_noise"].sort_values("severity")
        err = [np.abs(grey(p) - clean).mean() for p in noise["image"]]
        assert all(x < y for x, y in itertools.pairwise(err)), (content, err)


def test_deterministic(small, tmp_path):
    out, _ = small
    generate_sensitivity_set(
        tmp_path,
        image_size=64,
        scenes_per_kind=2,
        severities=4,
        distortions=DISTS,
        photos=("colorwheel", "minduka"),
        seed=0,
    )
    assert _digest(tmp_path) == _digest(out)


def test_generic_csv_importer_reads_it(small):
    _, labels = small
    rows = import_labels(labels, "generic-csv", name="sensitivity")
    df = pd.read_csv(labels)
    assert len(rows) == len(df) and (rows["split"] == "test").all()
    assert rows["lo"].iloc[0] == 1.0 and rows["hi"].iloc[0] == 5.0
    np.testing.assert_allclose(rows["mos"], df["mos"])


def test_bad_arguments_are_clear(tmp_path):
    with pytest.raises(SyntheticError, match="unknown"):
        generate_sensitivity_set(tmp_path, distortions=("sharpen",))
    with pytest.raises(SyntheticError, match="scene kind"):
        contents(32, 1, kinds=("clouds",))
    with pytest.raises(SyntheticError, match="sensitivity image"):
        package_image("astronaut", 32)
