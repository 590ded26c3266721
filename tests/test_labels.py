"""Tests of deqa.labels, the soft_labels stage and `deqa labels`.

Expected values come from outside the code: the spec's test vectors and discretisation figures
(shared/method/DEQA-SCORE.md sections 2, 3 and 7), hand-derived values of the formulas, and the
scipy.stats / numerical-integration definitions of the Gaussian quantities.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from deqa import labels as L
from deqa import portable
from deqa.config import SoftLabelsConfig
from deqa.gate import KERNEL_SETS, KERNEL_VARIABLES
from deqa.schema import LABEL_COLUMNS, MANIFEST_COLUMNS, PROB_COLUMNS

REPO = Path(__file__).resolve().parents[1]
KONIQ_DIR = REPO.parent / "shared" / "data" / "koniq"
KONIQ_DERIVED = KONIQ_DIR / "koniq10k_scores_and_distributions_DERIVED.csv"
KONIQ_SETS = KONIQ_DIR / "koniq10k_distributions_sets.csv"
needs_koniq = pytest.mark.skipif(not KONIQ_DERIVED.exists(), reason="KonIQ-10k label files not found")

# DEQA-SCORE.md section 3: (raw mos, raw std, lo, hi) -> (m, s) and q (bad..excellent), pdf
KONIQ_LO, KONIQ_HI = 1.0961538462, 4.31
KADID_LO, KADID_HI = 1.0, 4.93
VECTORS = [
    ((3.8285714286, 0.527277894494, KONIQ_LO, KONIQ_HI), (4.400807, 0.656258), [0, 0, 0.0590205, 0.5336234, 0.4222323]),
    ((4.57, 0.704273, KADID_LO, KADID_HI), (4.633588, 0.716817), [0, 0, 0.0309913, 0.4356850, 0.5707130]),
    ((4.33, 0.932202, KADID_LO, KADID_HI), (4.389313, 0.948806), [0, 0, 0.1548013, 0.4754675, 0.4163570]),
    (
        (2.67, 0.888257, KADID_LO, KADID_HI),
        (2.699746, 0.904078),
        [0.0704665, 0.3344934, 0.4294682, 0.1559717, 0.0096001],
    ),
]


# ------------------------------------------------------------------------------------------
# spec test vectors
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, ms, q", VECTORS)
def test_normalise_matches_spec(raw, ms, q):
    m, s = L.normalise(*raw)
    assert m == pytest.approx(ms[0], abs=1e-6)
    assert s == pytest.approx(ms[1], abs=1e-6)


def test_soft_labels_match_spec_vectors():
    m = np.array([v[1][0] for v in VECTORS])
    s = np.array([v[1][1] for v in VECTORS])
    probs, fallback = L.gaussian_soft_labels(m, s)
    assert probs.shape == (4, 5) and fallback.shape == (4,)
    np.testing.assert_allclose(probs, [v[2] for v in VECTORS], atol=1e-6, rtol=0)
    assert not fallback.any()


def test_soft_labels_from_raw_scores_match_spec_vectors():
    raw = np.array([v[0] for v in VECTORS])
    m, s = L.normalise(raw[:, 0], raw[:, 1], raw[:, 2], raw[:, 3])
    probs, _ = L.gaussian_soft_labels(m, s)
    np.testing.assert_allclose(probs, [v[2] for v in VECTORS], atol=1e-6, rtol=0)


def test_normalise_rejects_bad_bounds():
    with pytest.raises(ValueError, match="hi > lo"):
        L.normalise(3.0, 0.5, 4.0, 4.0)


# ------------------------------------------------------------------------------------------
# the steps of section 3
# ------------------------------------------------------------------------------------------
def test_level_weights_are_scipy_norm():
    m, s = np.array([1.3, 3.0, 4.7]), np.array([0.25, 0.8, 1.4])
    k = np.arange(1, 6)
    np.testing.assert_allclose(
        L.level_weights(m, s, "pdf"), stats.norm.pdf(k, m[:, None], s[:, None]), rtol=1e-12, atol=1e-15
    )
    cdf = stats.norm.cdf(k + 0.5, m[:, None], s[:, None]) - stats.norm.cdf(k - 0.5, m[:, None], s[:, None])
    np.testing.assert_allclose(L.level_weights(m, s, "cdf"), cdf, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("density", ["pdf", "cdf"])
def test_adjusted_label_keeps_sum_and_mean_before_clipping(density):
    # where no entry is clipped, sum q = 1 and sum k q = m exactly (step 2)
    m, s = np.array([2.8, 3.0, 3.3]), np.array([1.0, 1.2, 1.1])
    probs, fallback = L.gaussian_soft_labels(m, s, density=density)
    assert (probs > 0).all() and not fallback.any()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(probs @ np.arange(1, 6), m, atol=1e-8)


def test_cdf_density_follows_the_formulas():
    # steps 1-3 written out with scipy.stats.norm for one row
    m, s = 2.699746, 0.904078
    k = np.arange(1, 6)
    p = stats.norm.cdf(k + 0.5, m, s) - stats.norm.cdf(k - 0.5, m, s)
    alpha = (m - 3) / ((k * p).sum() - 3 * p.sum() + 1e-9)
    q = np.maximum(alpha * p + (1 - alpha * p.sum()) / 5, 0)
    probs, fallback = L.gaussian_soft_labels([m], [s], density="cdf")
    np.testing.assert_allclose(probs[0], q, atol=1e-12)
    assert not fallback[0]


def test_no_renormalisation_by_default_and_renormalise_option():
    # m near the top: negative entries clipped, so the authors' label sums to more than 1
    probs, fallback = L.gaussian_soft_labels([4.400807], [0.656258])
    assert not fallback[0] and probs[0].sum() > 1.0 + 1e-3
    renormalised, _ = L.gaussian_soft_labels([4.400807], [0.656258], renormalise=True)
    assert renormalised[0].sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(renormalised[0], probs[0] / probs[0].sum(), atol=1e-12)


def test_binary_labels_hand_values():
    probs = L.binary_labels([1.0, 2.0, 2.3, 4.75, 5.0])
    expected = [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0.7, 0.3, 0, 0], [0, 0, 0, 0.25, 0.75], [0, 0, 0, 0, 1]]
    np.testing.assert_allclose(probs, expected, atol=1e-12)


def test_onehot_bins_closed_on_the_right():
    m = [1.0, 1.8, 1.8000001, 2.6, 3.0, 3.4, 3.41, 4.2, 4.2000001, 5.0]
    levels = np.argmax(L.onehot_labels(m), axis=1) + 1
    assert levels.tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert (L.onehot_labels(m).sum(axis=1) == 1).all()


def test_fallback_rules_and_thresholds():
    m = np.array([3.3, 3.3, 3.3, 3.0, 4.400807])
    s = np.array([0.19, 0.0, np.nan, 0.2, 0.656258])
    probs, fallback = L.gaussian_soft_labels(m, s)
    assert fallback.tolist() == [True, True, True, False, False]
    np.testing.assert_allclose(probs[:3], [[0, 0, 0.7, 0.3, 0]] * 3, atol=1e-12)
    # the std threshold is a parameter
    _, fallback = L.gaussian_soft_labels(m, s, std_min=0.7)
    assert fallback.tolist() == [True] * 5
    # so is the mean-error threshold: this row's clipped label misses m by 0.017
    q, _ = L.gaussian_soft_labels([4.400807], [0.656258])
    miss = abs(q[0] @ np.arange(1, 6) - 4.400807)
    assert 1e-3 < miss < 0.1
    _, fallback = L.gaussian_soft_labels([4.400807], [0.656258], max_mean_error=miss / 2)
    assert fallback[0]


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="density"):
        L.gaussian_soft_labels([3.0], [0.5], density="ppf")
    with pytest.raises(ValueError, match="finite"):
        L.gaussian_soft_labels([np.nan], [0.5])
    with pytest.raises(ValueError, match="kind"):
        L.make_labels([3.0], [0.5], kind="hard")


def test_reconstruct_hand_values():
    mean, std = L.reconstruct([[0, 0.5, 0, 0.5, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0.5, 0.6]])
    np.testing.assert_allclose(mean, [3.0, 3.0, 5.0])
    # row 3 is not normalised (sum 1.1): raw moments by default
    np.testing.assert_allclose(std, [1.0, 0.0, math.sqrt(0.5 * 1 + 0.6 * 0)])
    mean_n, _ = L.reconstruct([[0, 0, 0, 0.5, 0.6]], normalised=True)
    assert mean_n[0] == pytest.approx((4 * 0.5 + 5 * 0.6) / 1.1)


def test_discretise_bundles_labels_and_reconstruction():
    lab = L.discretise([2.3, 4.400807], [0.1, 0.656258])
    assert lab.fallback.tolist() == [True, False]
    assert lab.mean[0] == pytest.approx(2.3, abs=1e-12)  # binary labels keep the mean exactly
    assert lab.std[0] == pytest.approx(math.sqrt(0.7 * 0.3), abs=1e-12)
    assert lab.mean[1] == pytest.approx(float(lab.probs[1] @ np.arange(1, 6)))


# ------------------------------------------------------------------------------------------
# Gaussian gaps (section 7)
# ------------------------------------------------------------------------------------------
def _kl_numeric(mu1, s1, mu2, s2):
    def f(x):
        return stats.norm.pdf(x, mu1, s1) * (stats.norm.logpdf(x, mu1, s1) - stats.norm.logpdf(x, mu2, s2))

    return integrate.quad(f, -30, 30, points=[mu1, mu2], limit=200)[0]


def test_gaussian_kl_hand_value_and_integral():
    assert L.gaussian_kl(0.0, 1.0, 1.0, 2.0) == pytest.approx(math.log(2) + 2 / 8 - 0.5, abs=1e-12)
    assert L.gaussian_kl(3.2, 0.6, 3.5, 0.8) == pytest.approx(_kl_numeric(3.2, 0.6, 3.5, 0.8), abs=1e-8)
    assert L.gaussian_kl(2.0, 0.7, 2.0, 0.7) == 0.0


def test_gaussian_js_is_the_spec_midpoint_form():
    mu1, s1, mu2, s2 = 3.2, 0.6, 3.5, 0.8
    mu_m, s_m = (mu1 + mu2) / 2, math.sqrt((s1**2 + s2**2) / 2)
    expected = 0.5 * _kl_numeric(mu1, s1, mu_m, s_m) + 0.5 * _kl_numeric(mu2, s2, mu_m, s_m)
    assert L.gaussian_js(mu1, s1, mu2, s2) == pytest.approx(expected, abs=1e-8)
    assert L.gaussian_js(mu2, s2, mu1, s1) == pytest.approx(expected, abs=1e-12)


def test_gaussian_w2_and_vectorisation():
    assert L.gaussian_w2(1.0, 0.5, 4.0, 4.5) == pytest.approx(5.0)
    mu1, s1 = np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.6, 0.7])
    out = L.gaussian_js(mu1, s1, 2.5, 0.8)
    assert out.shape == (3,)
    assert out[1] == pytest.approx(float(L.gaussian_js(2.0, 0.6, 2.5, 0.8)))


# ------------------------------------------------------------------------------------------
# real KonIQ-10k labels: the published discretisation figures
# ------------------------------------------------------------------------------------------
def _koniq_manifest_from_derived() -> pd.DataFrame:
    d = pd.read_csv(KONIQ_DERIVED)
    return pd.DataFrame(
        {
            "image": d["image_name"],
            "root": "",
            "dataset": "koniq",
            "split": d["set"].map({"training": "train", "validation": "val", "test": "test"}),
            "mos": d["MOS"],
            "std": d["SD"],
            "n_votes": d["c_total"],
            "lo": d["MOS"].min(),
            "hi": d["MOS"].max(),
        }
    )


@needs_koniq
def test_koniq_bounds_are_the_spec_bounds():
    man = _koniq_manifest_from_derived()
    assert len(man) == 10073
    assert man["lo"].iloc[0] == pytest.approx(1.0961538, abs=1e-7)
    assert man["hi"].iloc[0] == pytest.approx(4.31)


@needs_koniq
def test_koniq_discretisation_figures():
    metrics = L.dataset_metrics(_koniq_manifest_from_derived())["koniq"]
    assert metrics["n"] == 10073
    assert metrics["mean_error"] == pytest.approx(0.0072, abs=0.0005)
    assert metrics["onehot_mean_error"] == pytest.approx(0.303, abs=0.002)
    assert metrics["fallbacks"] == 83


@needs_koniq
def test_koniq_gaussian_js_of_soft_labels():
    # the article: JS between the Gaussian and the soft label's Gaussian is about 0.001
    man = _koniq_manifest_from_derived()
    m, s = L.normalise(man["mos"], man["std"], man["lo"], man["hi"])
    lab = L.discretise(m, s)
    soft = ~lab.fallback
    js = L.gaussian_js(m[soft], s[soft], lab.mean[soft], lab.std[soft])
    assert js.mean() == pytest.approx(0.001, abs=0.0005)


@needs_koniq
def test_koniq_distributions_layout_gives_the_same_figures():
    # the 0-100 MOS there is MOS_zscore: the 1-5 mean comes from the vote fractions c1..c5
    d = pd.read_csv(KONIQ_SETS)
    mos = d[["c1", "c2", "c3", "c4", "c5"]].to_numpy() @ np.arange(1, 6) / d[["c1", "c2", "c3", "c4", "c5"]].sum(axis=1)
    m, s = L.normalise(mos, d["SD"], mos.min(), mos.max())
    metrics = L.discretisation_metrics(m, s)
    assert metrics["mean_error"] == pytest.approx(0.0072, abs=0.0005)
    assert metrics["onehot_mean_error"] == pytest.approx(0.303, abs=0.002)
    assert metrics["fallbacks"] == 83


def test_onehot_kind_metrics():
    m, s = np.array([1.0, 2.0, 3.7, 4.6]), np.array([0.5, 0.5, 0.5, 0.5])
    metrics = L.discretisation_metrics(m, s, SoftLabelsConfig(kind="onehot"))
    # bins: 1 -> 1, 2 -> 2, 3.7 -> 4, 4.6 -> 5
    assert metrics["mean_error"] == pytest.approx((0 + 0 + 0.3 + 0.4) / 4)
    assert metrics["mean_error"] == metrics["onehot_mean_error"]
    assert metrics["std_error"] == pytest.approx(0.5)  # one-hot labels have no spread
    assert metrics["js"] is None and metrics["fallbacks"] == 0


# ------------------------------------------------------------------------------------------
# label table, stage, CLI
# ------------------------------------------------------------------------------------------
def _tiny_manifest() -> pd.DataFrame:
    rows = [  # the spec's four test-vector images plus one without std
        ("10004473376.jpg", "koniq", "train", 3.8285714286, 0.527277894494, KONIQ_LO, KONIQ_HI),
        ("I01_01_01.png", "kadid", "train", 4.57, 0.704273, KADID_LO, KADID_HI),
        ("I01_01_02.png", "kadid", "val", 4.33, 0.932202, KADID_LO, KADID_HI),
        ("I01_01_03.png", "kadid", "test", 2.67, 0.888257, KADID_LO, KADID_HI),
        ("I01_01_04.png", "kadid", "test", 3.3, np.nan, KADID_LO, KADID_HI),
    ]
    man = pd.DataFrame(rows, columns=["image", "dataset", "split", "mos", "std", "lo", "hi"])
    man["root"] = "images"
    man["n_votes"] = 30
    man["c1"] = 1
    return man[MANIFEST_COLUMNS + ["c1"]]


def test_label_table_columns_and_values():
    table = L.label_table(_tiny_manifest())
    assert table.columns.tolist() == LABEL_COLUMNS + ["c1"]
    np.testing.assert_allclose(table[PROB_COLUMNS].to_numpy()[:4], [v[2] for v in VECTORS], atol=1e-6)
    assert table["fallback"].tolist() == [False, False, False, False, True]
    assert (table["label_kind"] == "soft").all()


def test_label_table_names_missing_columns():
    with pytest.raises(ValueError, match=r"missing column\(s\) std, lo.*expected columns image, dataset, mos, std"):
        L.label_table(_tiny_manifest().drop(columns=["std", "lo"]))


def _load_stage():
    spec = importlib.util.spec_from_file_location("soft_labels_stage", REPO / "stages" / "soft_labels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STAGE_ARGS = [
    "--manifest",
    "data/validate/manifest.csv",
    "--out",
    "data/soft_labels",
    "--metrics",
    "metrics/discretisation.json",
]


def test_stage_writes_label_files_and_metrics(tmp_path, monkeypatch):
    (tmp_path / "data" / "validate").mkdir(parents=True)
    _tiny_manifest().to_csv(tmp_path / "data" / "validate" / "manifest.csv", index=False)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    stage = _load_stage()
    assert stage.main(STAGE_ARGS) == 0
    splits = {s: pd.read_csv(tmp_path / "data" / "soft_labels" / f"{s}.csv") for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [2, 1, 2]
    assert splits["train"].columns.tolist() == LABEL_COLUMNS + ["c1"]
    np.testing.assert_allclose(splits["val"][PROB_COLUMNS].to_numpy()[0], VECTORS[2][2], atol=1e-6)
    metrics = json.loads((tmp_path / "metrics" / "discretisation.json").read_text())
    assert sorted(metrics) == ["kadid", "koniq"]
    assert metrics["kadid"]["n"] == 4 and metrics["kadid"]["fallbacks"] == 1
    # the spec's q: clipping moves the mean by |sum k q_k - m| on each row; binary rows keep it
    spec_errors = [abs(np.dot(np.arange(1, 6), v[2]) - v[1][0]) for v in VECTORS]
    assert metrics["koniq"]["mean_error"] == pytest.approx(spec_errors[0], abs=2e-6)
    assert metrics["kadid"]["mean_error"] == pytest.approx(sum(spec_errors[1:]) / 4, abs=2e-6)
    # kind=onehot (what `dvc exp run -S soft_labels.kind=onehot` changes)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text().replace("kind: soft", "kind: onehot"))
    assert stage.main(STAGE_ARGS) == 0
    onehot = json.loads((tmp_path / "metrics" / "discretisation.json").read_text())
    assert onehot["koniq"]["mean_error"] == pytest.approx(5 - 4.400807, abs=1e-6)  # m > 4.2: level 5
    assert onehot["kadid"]["fallbacks"] == 0 and onehot["kadid"]["js"] is None
    assert (pd.read_csv(tmp_path / "data" / "soft_labels" / "train.csv")["label_kind"] == "onehot").all()


def test_stage_reports_missing_manifest(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"data/validate/manifest\.csv not found"):
        _load_stage().main(STAGE_ARGS)


@needs_koniq
def test_cli_prints_discretisation_table(tmp_path, capsys):
    from deqa.cli import main

    path = tmp_path / "koniq_manifest.csv"
    _koniq_manifest_from_derived().to_csv(path, index=False)
    assert main(["labels", str(path)]) == 0
    out = capsys.readouterr().out
    assert "0.0072" in out and "0.3027" in out and " 83" in out
    assert main(["labels", str(path), "--json", "--kind", "onehot"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["koniq"]["mean_error"] == pytest.approx(0.303, abs=0.002)


@needs_koniq
def test_cli_reads_koniq_layout_through_importers(capsys):
    pytest.importorskip("deqa.importers")
    from deqa.cli import main

    assert main(["labels", str(KONIQ_DERIVED)]) == 0
    out = capsys.readouterr().out
    assert "0.0072" in out and "0.3027" in out


def test_cli_error_names_expected_columns(tmp_path, capsys):
    from deqa.cli import main

    path = tmp_path / "bad.csv"
    pd.DataFrame({"picture": ["a.jpg"], "score": [3.0]}).to_csv(path, index=False)
    assert main(["labels", str(path)]) == 2
    err = capsys.readouterr().err
    assert "--format" in err


def test_m_exactly_three_keeps_its_spread():
    """At m = 3 the spec's alpha is 0/0; the label must still follow N(3, s), not go flat."""
    from deqa.labels import gaussian_soft_labels

    # hand-computed: N(3, 0.7) density at 1..5, normalised
    expected = [0.00962006, 0.20542370, 0.56991249, 0.20542370, 0.00962006]
    probs, fallback = gaussian_soft_labels(np.array([3.0, 3.0 + 1e-7]), np.array([0.7, 0.7]))
    assert not fallback.any()
    np.testing.assert_allclose(probs[0], expected, atol=1e-6)
    np.testing.assert_allclose(probs[1], expected, atol=5e-3)  # near-continuous (the spec's 1e-9 eps)


# ------------------------------------------------------------------------------------------
# the same bits on every CPU (project issue 21: the soft_labels stage is byte-exact in gate.yaml)
# ------------------------------------------------------------------------------------------
LABELS_DIGEST = """
import hashlib, json, sys
import numpy as np, pandas as pd
from deqa import labels as L
rng = np.random.default_rng(0)
n = 20000  # KonIQ-like scores, wide stds: every branch (soft, clipped, both fallbacks)
manifest = pd.DataFrame({"image": [f"{i}.png" for i in range(n)], "root": "", "split": "train",
    "dataset": np.where(rng.random(n) < 0.5, "a", "b"), "mos": rng.uniform(1, 100, n),
    "std": rng.uniform(0.5, 30, n), "lo": 1.0, "hi": 100.0, "n_votes": 10})
table = L.label_table(manifest).to_csv(index=False)
metrics = json.dumps(L.dataset_metrics(manifest))
print(hashlib.md5((table + metrics).encode()).hexdigest())
"""


def _digest(**env: str) -> str:
    import os
    import subprocess
    import sys

    run_env = {k: v for k, v in os.environ.items() if k not in KERNEL_VARIABLES}
    run_env["PYTHONPATH"] = str(REPO / "src")
    res = subprocess.run(
        [sys.executable, "-c", LABELS_DIGEST], env={**run_env, **env}, capture_output=True, text=True, check=True
    )
    return res.stdout.strip()


def test_soft_labels_are_the_same_bytes_under_other_cpu_kernels():
    # numpy's exp kernels (AVX-512 vs AVX2 vs baseline), OpenBLAS's dot-product kernels and glibc's
    # FMA vs SSE2 libm each changed the last bit of some labels before (issue 21)
    sets = ["numpy-baseline", "openblas-sandybridge", "libm-sse2", "sse-machine"]
    digests = {name: _digest(**KERNEL_SETS[name]) for name in ["default", *sets]}
    assert len(set(digests.values())) == 1, digests


def test_soft_labels_do_not_depend_on_the_last_bit_of_numpys_exp_and_log(monkeypatch):
    # a CPU whose exp/log kernels round the other way on every third element (all within 1 ulp)
    manifest = _tiny_manifest()
    for m in (3.1, 1.7, 4.9, 2.2):
        manifest.loc[len(manifest)] = {**manifest.iloc[0].to_dict(), "image": f"x{m}.png", "mos": m, "std": 0.4}
    before = L.label_table(manifest).to_csv(index=False) + json.dumps(L.dataset_metrics(manifest))

    def other_cpu(func):
        def wrapped(x, *args, **kwargs):
            out = func(x, *args, **kwargs)
            flat = np.asarray(out).reshape(-1)
            flat[::3] = np.nextafter(flat[::3], np.inf)
            return out

        return wrapped

    monkeypatch.setattr(np, "exp", other_cpu(np.exp))
    monkeypatch.setattr(np, "log", other_cpu(np.log))
    assert L.label_table(manifest).to_csv(index=False) + json.dumps(L.dataset_metrics(manifest)) == before


def test_portable_exp_and_log_are_within_one_ulp_of_the_exact_values():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.prec = 100
    rng = np.random.default_rng(1)
    x = np.concatenate(
        [rng.uniform(-745, 709, 400), rng.uniform(-20, 0, 400), rng.uniform(-1e-6, 1e-6, 50), [0.0, 1.0]]
    )
    exact = np.array([float(mpmath.exp(mpmath.mpf(float(v)))) for v in x])
    ulps = np.abs(portable.exp(x) - exact) / np.spacing(exact)
    assert ulps.max() <= 1.0
    y = np.concatenate([np.exp(rng.uniform(-700, 700, 400)), rng.uniform(0.5, 2.0, 400), [1.0, 2.0, 1e-310]])
    exact = np.array([float(mpmath.log(mpmath.mpf(float(v)))) for v in y])
    ulps = np.abs(portable.log(y) - exact) / np.maximum(np.spacing(np.abs(exact)), np.spacing(1e-300))
    assert ulps.max() <= 1.0
    with np.errstate(over="ignore"):
        specials = np.array([np.inf, -np.inf, np.nan, 710.0, -746.0, 709.78, -745.1])
        np.testing.assert_array_equal(portable.exp(specials), np.exp(specials))
    np.testing.assert_array_equal(
        portable.log(np.array([0.0, -1.0, np.inf, np.nan])), [-np.inf, np.nan, np.inf, np.nan]
    )
    assert portable.exp(0.5) == pytest.approx(math.exp(0.5), rel=2e-16) and portable.log(2.0) == math.log(2.0)
