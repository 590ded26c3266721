"""Ray Data: ``map_batches`` with the Scorer on a local 2-CPU Ray cluster equals ``Scorer.score``.

The cluster runs on this machine only (``127.0.0.1``, no dashboard, no usage reporting). Skipped,
with the reason, where Ray is not installed (``pip install 'deqa[ray]'``; the dev extra has it).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'deqa[ray]')")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own settings

from deqa.ray_scoring import score_dataset, score_paths  # noqa: E402
from deqa.scoring import Scorer  # noqa: E402
from model_fixtures import trained_model  # noqa: E402

FIELDS = ("score", "std", "p_bad", "p_poor", "p_fair", "p_good", "p_excellent")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_model(tmp_path_factory.mktemp("ray"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 2**20,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def _expected(trained, paths):
    res = Scorer.from_pretrained(trained["model"]).score(paths, batch_size=1)
    return {
        p: {"score": m, "std": s, **dict(zip(FIELDS[2:], pr, strict=True))}
        for p, m, s, pr in zip(paths, res.mean, res.std, res.probs, strict=True)
    }


def test_map_batches_on_two_actors_equals_the_scorer(trained, cluster, tmp_path):
    good = sorted(str(p) for p in trained["images"].glob("*.png"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    rows = score_paths([*good, str(broken)], trained["model"], actors=2, batch_size=4)
    assert [r["path"] for r in rows] == [*good, str(broken)]
    assert rows[-1]["error"] and np.isnan(rows[-1]["score"])
    expected = _expected(trained, good)
    for r in rows[:-1]:
        assert r["error"] == ""
        for f in FIELDS:
            assert abs(r[f] - expected[r["path"]][f]) <= 1e-6, (r["path"], f)


def test_image_bytes_column_scores_like_the_files(trained, cluster):
    ds = ray.data.read_binary_files(str(trained["images"]), include_paths=True)
    rows = {os.path.basename(r["path"]): r for r in score_dataset(ds, trained["model"], column="bytes").iter_rows()}
    good = sorted(str(p) for p in trained["images"].glob("*.png"))
    expected = _expected(trained, good)
    assert sorted(rows) == sorted(os.path.basename(p) for p in good)
    for p in good:
        assert abs(rows[os.path.basename(p)]["score"] - expected[p]["score"]) <= 1e-6
