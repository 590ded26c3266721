"""Tests of deqa.metrics (pure metrics) and deqa.metric_tables (the evaluate stage's tables)
against scipy references and hand-computed cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from deqa import metric_tables, metrics
from deqa.schema import PREDICTION_COLUMNS, PROB_COLUMNS


@pytest.fixture
def xy():
    rng = np.random.default_rng(42)
    y = rng.uniform(1, 5, 120)
    x = y + rng.normal(0, 0.6, y.size)
    x[:10] = np.round(x[:10])  # a few ties
    return x, y


# ---- correlations ---------------------------------------------------------------------------
def test_correlations_match_scipy(xy):
    x, y = xy
    assert metrics.srcc(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert metrics.krcc(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    assert metrics.plcc(x, y) == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)


def test_correlations_hand_cases():
    x = [1, 2, 3, 4]
    # one discordant pair out of 6: tau = (5 - 1) / 6
    assert metrics.krcc(x, [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # ranks 1,3,2,4 vs 1,2,3,4: rho = 1 - 6*sum(d^2)/(n(n^2-1)) = 1 - 6*2/60
    assert metrics.srcc(x, [1, 3, 2, 4]) == pytest.approx(0.8)
    # monotone but non-linear: rank correlations are 1, Pearson is not
    y = np.exp(np.array(x, float) * 2)
    assert metrics.srcc(x, y) == pytest.approx(1.0)
    assert metrics.plcc(x, y) < 0.95
    assert metrics.plcc(x, [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_correlations_undefined_are_none():
    assert metrics.srcc([3, 3, 3], [1, 2, 3]) is None
    assert metrics.plcc([1, 2, 3], [2, 2, 2]) is None
    assert metrics.krcc([1], [1]) is None


def test_non_finite_pairs_are_dropped():
    x = [1, 2, np.nan, 3, 4]
    y = [1, 3, 5, 2, np.inf]
    assert metrics.srcc(x, y) == pytest.approx(stats.spearmanr([1, 2, 3], [1, 3, 2]).statistic)


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="same length"):
        metrics.srcc([1, 2, 3], [1, 2])


# ---- logistic -------------------------------------------------------------------------------
def test_logistic4_hand_values():
    b1, b2, b3, b4 = 5.0, 1.0, 0.5, 0.2
    assert metrics.logistic4(b3, b1, b2, b3, b4) == pytest.approx(3.0)  # midpoint
    # one |b4| above the midpoint: b2 + (b1 - b2) / (1 + e^-1)
    assert metrics.logistic4(0.7, b1, b2, b3, b4) == pytest.approx(1 + 4 / (1 + math.exp(-1)))
    # the sign of b4 does not matter
    assert metrics.logistic4(0.7, b1, b2, b3, -b4) == pytest.approx(1 + 4 / (1 + math.exp(-1)))
    assert metrics.logistic4(1e6, b1, b2, b3, b4) == pytest.approx(b1)
    assert metrics.logistic4(-1e6, b1, b2, b3, b4) == pytest.approx(b2)


def test_fit_logistic_recovers_known_curve():
    true = (4.6, 1.3, 0.2, 0.35)
    x = np.linspace(-1.5, 1.5, 200)
    y = metrics.logistic4(x, *true)
    fit = metrics.fit_logistic(x, y)
    assert fit.ok, fit.message
    b1, b2, b3, b4 = fit.params
    assert (b1, b2, b3, abs(b4)) == pytest.approx(true, abs=1e-4)
    assert fit.init == pytest.approx((y.max(), y.min(), x.mean(), x.std() / 4))
    # a perfect fit: PLCC 1 and RMSE 0, while the plain PLCC of the S-curve is below 1
    assert metrics.plcc_fitted(x, y) == pytest.approx(1.0, abs=1e-9)
    assert metrics.rmse_fitted(x, y) == pytest.approx(0.0, abs=1e-4)
    assert metrics.plcc(x, y) < 0.99


def test_fit_logistic_failure_falls_back_to_plain_plcc(xy):
    x, y = xy
    fit = metrics.fit_logistic(x, y, maxfev=1)  # cannot converge in one evaluation
    assert not fit.ok
    assert "curve_fit failed" in fit.message
    assert metrics.plcc_fitted(x, y, fit) == pytest.approx(stats.pearsonr(x, y).statistic)
    slope, intercept = np.polyfit(x, y, 1)
    expected_rmse = np.sqrt(np.mean((slope * x + intercept - y) ** 2))
    assert metrics.rmse_fitted(x, y, fit) == pytest.approx(expected_rmse)


def test_fit_logistic_degenerate_inputs():
    fit = metrics.fit_logistic([2, 2, 2, 2, 2, 2], [1, 2, 3, 4, 5, 6])
    assert not fit.ok and "constant" in fit.message
    assert not metrics.fit_logistic([1, 2, 3], [1, 2, 3]).ok  # too few points


def test_fitted_plcc_beats_plain_on_a_nonlinear_relation():
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, 300)
    y = metrics.logistic4(x, 5, 1, 0, 0.3) + rng.normal(0, 0.1, x.size)
    assert metrics.plcc_fitted(x, y) > metrics.plcc(x, y) + 0.03


# ---- bootstrap ------------------------------------------------------------------------------
@pytest.mark.parametrize("name,ref", [("srcc", stats.spearmanr), ("plcc", stats.pearsonr)])
def test_bootstrap_vectorised_matches_scipy_per_resample(xy, name, ref):
    x, y = xy
    fast = metrics.bootstrap_ci(x, y, name, n_resamples=200, seed=3, chunk_elements=5000)
    slow = metrics.bootstrap_ci(x, y, lambda a, b: ref(a, b).statistic, n_resamples=200, seed=3)
    assert fast == pytest.approx(slow, abs=1e-10)


def test_bootstrap_interval_properties(xy):
    x, y = xy
    lo, hi = metrics.bootstrap_ci(x, y, "srcc", n_resamples=500, seed=0)
    point = stats.spearmanr(x, y).statistic
    assert lo < point < hi
    assert metrics.bootstrap_ci(x, y, "srcc", n_resamples=500, seed=0) == (lo, hi)
    assert metrics.bootstrap_ci(x, y, "srcc", n_resamples=500, seed=1) != (lo, hi)
    # close to scipy's own percentile bootstrap (different draws, so loosely)
    res = stats.bootstrap(
        (x, y),
        lambda a, b: stats.spearmanr(a, b).statistic,
        paired=True,
        vectorized=False,
        n_resamples=500,
        method="percentile",
        rng=np.random.default_rng(0),
    )
    assert lo == pytest.approx(res.confidence_interval.low, abs=0.03)
    assert hi == pytest.approx(res.confidence_interval.high, abs=0.03)


def test_bootstrap_degenerate_and_bad_arguments():
    assert metrics.bootstrap_ci([1, 2], [1, 2]) == (None, None)
    assert metrics.bootstrap_ci([1, 1, 1, 1], [1, 2, 3, 4]) == (None, None)
    with pytest.raises(ValueError, match="unknown statistic"):
        metrics.bootstrap_ci([1, 2, 3], [1, 2, 3], "rmse")
    with pytest.raises(ValueError, match="level"):
        metrics.bootstrap_ci([1, 2, 3], [1, 2, 3], level=95)


# ---- levels ---------------------------------------------------------------------------------
def test_score_to_level_bins_closed_on_the_right():
    scores = [1.0, 1.8, 1.80001, 2.6, 3.0, 3.4, 3.5, 4.2, 4.21, 5.0, 0.5, 5.5]
    assert metrics.score_to_level(scores).tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 1, 5]
    with pytest.raises(ValueError):
        metrics.score_to_level([np.nan])


def test_level_entropy_hand_cases():
    assert metrics.level_entropy([0.2] * 5) == pytest.approx(math.log(5))
    assert metrics.level_entropy([0, 0, 1, 0, 0]) == pytest.approx(0.0)
    h = metrics.level_entropy([[0.5, 0.5, 0, 0, 0], [1, 1, 0, 0, 0], [0.1, 0.2, 0.3, 0.4, 0.0]])
    assert h[0] == pytest.approx(math.log(2))
    assert h[1] == pytest.approx(math.log(2))  # rows are renormalised
    assert h[2] == pytest.approx(stats.entropy([0.1, 0.2, 0.3, 0.4]))
    with pytest.raises(ValueError):
        metrics.level_entropy([0.5, 0.5])
    with pytest.raises(ValueError):
        metrics.level_entropy([-0.1, 0.5, 0.6, 0, 0])


def test_confusion_matrix_hand_case():
    cm = metrics.confusion_matrix([1, 1, 2, 5, 5, 3], [1, 2, 2, 4, 5, 3])
    expected = np.zeros((5, 5), int)
    expected[0, 0] = 1
    expected[0, 1] = 1
    expected[1, 1] = 1
    expected[4, 3] = 1
    expected[4, 4] = 1
    expected[2, 2] = 1
    np.testing.assert_array_equal(cm, expected)
    with pytest.raises(ValueError, match=r"1\.\.5"):
        metrics.confusion_matrix([0, 1], [1, 1])
    with pytest.raises(ValueError, match="length"):
        metrics.confusion_matrix([1, 2], [1])


def test_std_correlation_matches_scipy_and_drops_missing():
    true = np.array([0.5, 0.7, np.nan, 0.9, 0.4, 0.8])
    pred = np.array([0.6, 0.65, 0.1, 0.95, 0.3, 0.7])
    keep = ~np.isnan(true)
    assert metrics.std_correlation(true, pred) == pytest.approx(stats.spearmanr(true[keep], pred[keep]).statistic)
    assert metrics.std_correlation(true, pred, "plcc") == pytest.approx(
        stats.pearsonr(true[keep], pred[keep]).statistic
    )
    with pytest.raises(ValueError):
        metrics.std_correlation(true, pred, "mae")


def test_distribution_gap_hand_cases():
    # identical distributions: no gap
    gap = metrics.distribution_gap([3.0, 4.0], [1.0, 0.5], [3.0, 4.0], [1.0, 0.5])
    assert gap["n"] == 2
    assert gap["kl"] == pytest.approx(0.0, abs=1e-12)
    assert gap["js"] == pytest.approx(0.0, abs=1e-12)
    assert gap["w2"] == pytest.approx(0.0, abs=1e-12)
    # KL(N(3,1) || N(3,2)) = ln 2 + 1/8 - 1/2; W2 = |1 - 2|; the s=0 and NaN rows are skipped
    gap = metrics.distribution_gap([3.0, 2.0, 2.0], [1.0, 0.0, np.nan], [3.0, 2.0, 2.0], [2.0, 1.0, 1.0])
    assert gap["n"] == 1
    assert gap["kl"] == pytest.approx(math.log(2) + 1 / 8 - 1 / 2)
    assert gap["w2"] == pytest.approx(1.0)
    assert 0 < gap["js"] < gap["kl"]
    assert metrics.distribution_gap([3.0], [0.0], [3.0], [1.0]) == {"n": 0, "kl": None, "js": None, "w2": None}


# ---- evaluate_predictions / plot_tables -----------------------------------------------------
def make_predictions(n_per=40, seed=0, datasets=("alpha", "beta"), splits=("val", "test")):
    rng = np.random.default_rng(seed)
    rows = []
    for split in splits:
        for d, dataset in enumerate(datasets):
            m = rng.uniform(1, 5, n_per)
            s = rng.uniform(0.3, 1.0, n_per)
            mu = np.clip(m + rng.normal(0, 0.5 + d * 0.3, n_per), 1, 5)
            sigma = np.clip(s + rng.normal(0, 0.2, n_per), 0.05, None)
            p = rng.dirichlet(np.ones(5), n_per)
            for i in range(n_per):
                rows.append(
                    {
                        "image": f"{dataset}/{split}_{i:03d}.png",
                        "root": "/data",
                        "dataset": dataset,
                        "split": split,
                        "mos": 10 * m[i],
                        "std": 10 * s[i],
                        "m": m[i],
                        "s": s[i],
                        "pred_mean": mu[i],
                        "pred_std": sigma[i],
                        **dict(zip(PROB_COLUMNS, p[i], strict=True)),
                    }
                )
    return pd.DataFrame(rows, columns=PREDICTION_COLUMNS)


def test_evaluate_predictions_structure_and_values():
    df = make_predictions()
    out = metric_tables.evaluate_predictions(df, bootstrap=100, seed=0)
    assert list(out) == ["test", "val"]
    assert list(out["test"]) == ["overall", "alpha", "beta"]
    json.dumps(out, allow_nan=False)  # JSON-ready, no NaN

    beta = df[(df.split == "test") & (df.dataset == "beta")]
    got = out["test"]["beta"]
    assert got["n"] == 40
    assert got["srcc"] == pytest.approx(stats.spearmanr(beta.pred_mean, beta.m).statistic, abs=1e-6)
    # the raw MOS gives the same correlations: m is an affine map of it within a dataset
    assert got["srcc"] == pytest.approx(stats.spearmanr(beta.pred_mean, beta.mos).statistic, abs=1e-6)
    assert got["krcc"] == pytest.approx(stats.kendalltau(beta.pred_mean, beta.m).statistic, abs=1e-6)
    assert got["plcc_plain"] == pytest.approx(stats.pearsonr(beta.pred_mean, beta.m).statistic, abs=1e-6)
    assert got["srcc_lo"] < got["srcc"] < got["srcc_hi"]
    assert got["plcc_lo"] < got["plcc"] < got["plcc_hi"]
    assert got["logistic_ok"] is True
    assert got["n_gap"] == 40 and got["kl"] > 0 and got["w2"] > 0
    assert got["std_srcc"] == pytest.approx(stats.spearmanr(beta.pred_std, beta.s).statistic, abs=1e-6)
    assert got["entropy"] == pytest.approx(stats.entropy(beta[PROB_COLUMNS].to_numpy(), axis=1).mean(), abs=1e-6)
    cm = np.array(got["confusion"])
    assert cm.shape == (5, 5) and cm.sum() == 40
    assert got["level_acc"] == pytest.approx(np.trace(cm) / 40, abs=1e-6)
    overall = df[df.split == "test"]
    assert out["test"]["overall"]["n"] == 80
    assert out["test"]["overall"]["srcc"] == pytest.approx(
        stats.spearmanr(overall.pred_mean, overall.m).statistic, abs=1e-6
    )
    # seeded: the same call gives the same intervals
    assert metric_tables.evaluate_predictions(df, bootstrap=100, seed=0) == out


def test_evaluate_predictions_constant_predictions_give_nulls_not_nan():
    df = make_predictions(n_per=10, datasets=("alpha",), splits=("test",))
    df["pred_mean"] = 3.0
    out = metric_tables.evaluate_predictions(df, bootstrap=50)
    group = out["test"]["alpha"]
    assert group["srcc"] is None and group["plcc"] is None and group["srcc_lo"] is None
    assert group["logistic_ok"] is False
    text = json.dumps(out, allow_nan=False)
    assert "NaN" not in text


def test_evaluate_predictions_rejects_bad_frames():
    df = make_predictions(n_per=5)
    with pytest.raises(ValueError, match="pred_std"):
        metric_tables.evaluate_predictions(df.drop(columns=["pred_std"]))
    df["dataset"] = "overall"
    with pytest.raises(ValueError, match="overall"):
        metric_tables.evaluate_predictions(df)


def test_plot_tables(tmp_path):
    df = make_predictions(n_per=20)
    tables = metric_tables.plot_tables(df)
    assert sorted(tables) == ["confusion", "scatter/alpha", "scatter/beta"]
    alpha, confusion = tables["scatter/alpha"], tables["confusion"]
    assert set(alpha.split) == {"test"} and set(alpha.dataset) == {"alpha"}  # test split by default
    assert len(alpha) == 20 and len(confusion) == 40
    assert {"dataset", "m", "mos", "pred_mean"} <= set(alpha.columns)
    assert list(confusion.columns) == ["dataset", "split", "actual", "predicted"]
    assert set(confusion.actual) <= set(metric_tables.LEVEL_NAMES)
    row = alpha.iloc[0]
    match = confusion.iloc[0]  # both sorted by dataset, image
    assert match.actual == metric_tables.LEVEL_NAMES[metrics.score_to_level(row.m) - 1]
    assert match.predicted == metric_tables.LEVEL_NAMES[metrics.score_to_level(row.pred_mean) - 1]
    assert len(metric_tables.plot_tables(df, split=None)["confusion"]) == 80
    assert set(metric_tables.plot_tables(df, split="val")["scatter/beta"].split) == {"val"}
    with pytest.raises(ValueError, match="no predictions"):
        metric_tables.plot_tables(df, split="train")
    df.loc[df.dataset == "beta", "dataset"] = "LIVE C/wild"
    paths = metric_tables.write_plot_tables(df, tmp_path / "plots")
    names = sorted(p.relative_to(tmp_path / "plots").as_posix() for p in paths)
    assert names == ["confusion.csv", "scatter/LIVE_C_wild.csv", "scatter/alpha.csv"]
    assert len(pd.read_csv(tmp_path / "plots/scatter/LIVE_C_wild.csv")) == 20


def test_levels_agree_with_the_onehot_labels_of_deqa_labels():
    from deqa import labels

    np.testing.assert_allclose(metrics.LEVEL_THRESHOLDS, labels.ONEHOT_THRESHOLDS)
    m = np.array([1.0, 1.8, 1.81, 2.6, 3.39, 3.4, 3.41, 4.2, 4.5, 5.0])
    np.testing.assert_array_equal(metrics.score_to_level(m), labels.onehot_labels(m).argmax(axis=-1) + 1)


# ---- provenance breakdowns, monotonicity, the headline file ----------------------------------------
def provenance_frame(rows):
    """Predictions from ``(content, distortion, severity, m, pred_mean)`` tuples (one test split)."""
    records = []
    for i, (content, distortion, severity, m, mu) in enumerate(rows):
        records.append(
            {
                "image": f"img_{i:02d}.png",
                "root": "",
                "dataset": "synthetic",
                "split": "test",
                "mos": m,
                "std": 0.5,
                "m": m,
                "s": 0.5,
                "pred_mean": mu,
                "pred_std": 0.6,
                **dict(zip(PROB_COLUMNS, [0.2] * 5, strict=True)),
                "content": content,
                "distortion": distortion,
                "severity": severity,
            }
        )
    return pd.DataFrame(records)


# scene A: blur falls (perfect), noise wobbles; scene B: blur falls, noise rises (reversed)
MONOTONICITY_ROWS = [
    ("A", "pristine", 0, 4.5, 4.0),
    ("A", "blur", 1, 4.0, 3.5),
    ("A", "blur", 2, 3.0, 3.0),
    ("A", "noise", 1, 4.0, 3.9),
    ("A", "noise", 2, 3.0, 4.1),
    ("B", "pristine", 0, 4.0, 3.0),
    ("B", "blur", 1, 3.5, 2.5),
    ("B", "blur", 2, 2.5, 2.0),
    ("B", "noise", 1, 3.5, 3.5),
    ("B", "noise", 2, 2.5, 4.0),
]


def test_severity_monotonicity_hand_case():
    out = metrics.severity_monotonicity(provenance_frame(MONOTONICITY_ROWS))
    # A/blur and B/blur: the score falls at every step -> +1.
    # A/noise: severities 0,1,2 vs -score -4.0,-3.9,-4.1: ranks (1,2,3) vs (2,3,1),
    #   d = (-1,-1,2), rho = 1 - 6*6/(3*(9-1)) = -0.5.  B/noise: score rises 3.0 -> 3.5 -> 4.0 -> -1.
    assert out["n_series"] == 4 and out["n_undefined"] == 0
    assert out["by_distortion"]["blur"] == {"mean": pytest.approx(1.0), "n_series": 2}
    assert out["by_distortion"]["noise"]["mean"] == pytest.approx((-0.5 - 1.0) / 2)
    assert out["mean"] == pytest.approx((1 + 1 - 0.5 - 1) / 4)


def test_severity_monotonicity_edge_cases():
    # a constant score makes the series undefined: counted, not averaged
    rows = [
        ("C", "pristine", 0, 4.0, 3.0),
        ("C", "blur", 1, 3.0, 3.0),
        ("C", "blur", 2, 2.0, 3.0),
        ("D", "original", 0, 4.0, 4.0),
        ("D", "blur", 1, 3.0, 3.0),
    ]  # any severity-0 row is the reference
    out = metrics.severity_monotonicity(provenance_frame(rows))
    assert out["n_undefined"] == 1 and out["n_series"] == 1 and out["mean"] == pytest.approx(1.0)
    # no provenance columns: nothing to measure
    plain = make_predictions(n_per=5)
    assert metrics.severity_monotonicity(plain) == {"mean": None, "n_series": 0, "n_undefined": 0, "by_distortion": {}}


def test_provenance_breakdown_hand_case():
    out = metric_tables.provenance_breakdown(provenance_frame(MONOTONICITY_ROWS))
    blur = out["by_distortion"]["blur"]  # m = 4, 3, 3.5, 2.5; mu = 3.5, 3, 2.5, 2
    assert blur["n"] == 4
    assert blur["mean_m"] == pytest.approx(3.25) and blur["mean_pred"] == pytest.approx(2.75)
    assert blur["bias"] == pytest.approx(-0.5)  # errors -0.5, 0, -1, -0.5
    assert blur["mae"] == pytest.approx(0.5)
    assert sorted(out["by_severity"]) == ["0", "1", "2"]
    pristine = out["by_severity"]["0"]  # m 4.5, 4.0; mu 4.0, 3.0
    assert pristine["n"] == 2 and pristine["bias"] == pytest.approx(-0.75)
    assert out["by_distortion_severity"]["noise"]["2"]["mean_pred"] == pytest.approx(4.05)
    assert metric_tables.provenance_breakdown(make_predictions(n_per=5)) == {}


def test_evaluate_predictions_overall_only_with_several_datasets_and_breakdowns():
    single = provenance_frame(MONOTONICITY_ROWS)
    out = metric_tables.evaluate_predictions(single, bootstrap=0)
    assert list(out["test"]) == ["synthetic"]  # no 'overall' repeating the one dataset
    group = out["test"]["synthetic"]
    assert group["monotonicity"]["mean"] == pytest.approx(0.125)
    assert set(group["by_distortion"]) == {"blur", "noise", "pristine"}
    two = metric_tables.evaluate_predictions(make_predictions(n_per=10), bootstrap=0)
    assert list(two["test"]) == ["overall", "alpha", "beta"]
    assert "monotonicity" not in two["test"]["alpha"] and "by_distortion" not in two["test"]["alpha"]


def test_headline_rows_keep_the_few_readable_numbers_one_flat_row_per_set(tmp_path):
    detail = {
        "test": {
            "synthetic": {
                "n": 10,
                "srcc": 0.812345,
                "srcc_lo": 0.7,
                "plcc": 0.8,
                "krcc": 0.6,
                "rmse": 0.45678,
                "std_srcc": None,
                "kl": 0.25,
                "js": 0.1,
                "confusion": [[1]],
                "monotonicity": {"mean": 0.96666, "n_series": 3},
            }
        },
        "cross": {"livec": {"n": 5, "srcc": 0.3, "plcc": 0.31, "krcc": 0.2, "rmse": 0.9, "std_srcc": -0.01, "kl": 0.8}},
    }
    rows = metric_tables.headline_rows(detail)
    assert rows == {
        "test.synthetic": {
            "n": 10,
            "srcc": 0.8123,
            "plcc": 0.8,
            "krcc": 0.6,
            "rmse": 0.4568,
            "kl": 0.25,
            "monotonicity": 0.9667,
        },
        "cross.livec": {"n": 5, "srcc": 0.3, "plcc": 0.31, "krcc": 0.2, "rmse": 0.9, "std_srcc": -0.01, "kl": 0.8},
    }
    # one vocabulary for every row (docs/metrics.md): the keys dvc metrics show prints as columns
    assert set().union(*rows.values()) <= set(metric_tables.RESULT_KEYS)
    # the validation split picks the checkpoint: left out, unless it is all there is
    with_val = {**detail, "val": {"synthetic": {"n": 4, "srcc": 0.5}}}
    assert "val.synthetic" not in metric_tables.headline_rows(with_val)
    assert metric_tables.headline_rows({"val": with_val["val"]}) == {"val.synthetic": {"n": 4, "srcc": 0.5}}
    assert metric_tables.headline_rows(with_val, leave_out=())["val.synthetic"] == {"n": 4, "srcc": 0.5}
    table = metric_tables.headline_table(rows).splitlines()
    assert table[0].split() == ["set", "n", "srcc", "plcc", "krcc", "rmse", "std_srcc", "kl", "monotonicity"]
    assert table[1].split() == ["test.synthetic", "10", "0.8123", "0.8000", "0.6000", "0.4568", "-", "0.2500", "0.9667"]
    assert table[2].split()[-1] == "-"
    # one file per set; a set no longer evaluated leaves no file behind
    folder = tmp_path / "metrics" / "evaluate"
    folder.mkdir(parents=True)
    (folder / "test.gone.json").write_text("{}")
    paths = metric_tables.write_headline(rows, folder)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["cross.livec.json", "test.synthetic.json"] == sorted(p.name for p in paths)
    assert json.loads((folder / "test.synthetic.json").read_text()) == rows["test.synthetic"]
    with pytest.raises(ValueError, match="not a file name"):
        metric_tables.write_headline({"../x": {"n": 1}}, folder)


def _std_frame() -> pd.DataFrame:
    """Predictions of three sets: a simulated panel's, people's (with std) and MOS-only photos."""
    rows = []
    for split, dataset, s in (("test", "synthetic", 0.5), ("test", "photos", np.nan), ("cross", "livec", 0.6)):
        rows += [{"split": split, "dataset": dataset, "s": s}] * 3
    return pd.DataFrame(rows)


def test_std_notes_say_where_a_std_correlation_is_not_a_result():
    from deqa.config import SourceConfig

    sources = [
        SourceConfig(name="synthetic", format="synthetic"),
        SourceConfig(name="photos", format="generic-csv", labels="p.csv"),
        SourceConfig(name="livec", format="livec", labels="l.csv"),
    ]
    df = _std_frame()
    # trained on MOS only: no std anywhere, every set with a std is flagged
    mos_only = {"photos": {"rows": 9, "with_std": 0, "raters": "human"}}
    notes = metric_tables.std_notes(df, mos_only, sources)
    assert set(notes) == {("test", "synthetic"), ("test", metrics.OVERALL), ("cross", "livec")}
    assert "no raters' std" in notes[("cross", "livec")]
    # std from a simulated panel only: fine on the simulated set, not a result on people's
    simulated = {**mos_only, "synthetic": {"rows": 9, "with_std": 9, "raters": "simulated"}}
    notes = metric_tables.std_notes(df, simulated, sources)
    assert set(notes) == {("cross", "livec")}
    assert (
        "simulated raters only (synthetic)" in notes[("cross", "livec")] and "human raters" in notes[("cross", "livec")]
    )
    # people's std in training: a result everywhere; an old model card (no record): nothing known, no notes
    human = {**simulated, "livec": {"rows": 9, "with_std": 9, "raters": "human"}}
    assert metric_tables.std_notes(df, human, sources) == {} == metric_tables.std_notes(df, None, sources)
    # the headline row leaves a flagged std SRCC out; the detail keeps the number and says why
    detail = {
        "cross": {"livec": {"n": 3, "srcc": 0.5, "std_srcc": 0.09}},
        "test": {"synthetic": {"n": 3, "std_srcc": 0.4}},
    }
    metric_tables.mark_std_notes(detail, metric_tables.std_notes(df, simulated, sources))
    assert detail["cross"]["livec"]["std_srcc"] == 0.09 and "not a result" in detail["cross"]["livec"]["std_note"]
    rows = metric_tables.headline_rows(detail)
    assert "std_srcc" not in rows["cross.livec"] and rows["test.synthetic"]["std_srcc"] == 0.4
