"""Probe: which read-out of the frozen MobileNetV2 tower, at which image size, carries image quality?

Ridge regression (standardised columns, alpha chosen inside each training part) on columns of the
block-statistics cache of ``realdata_features.py``. Every choice is made on BIQ2021 train+val only
(the 480-image test part is never read here unless ``--final`` is given):

- ``cv``: 5-fold cross-validated SRCC on train+val (1,920 images; seeded folds);
- ``loso``: leave-one-subset-out SRCC on train+val -- fit on two of BIQ2021's three sub-collections
  (ss01 a photographer's gallery, ss02 shot as IQA material, ss03 Unsplash), score the third; a
  proxy for generalisation to unfamiliar photos that uses no other dataset;
- ``val``: fit on train (1,680), score val (240).

``--final NAME ...`` fits the named read-outs on train(+val) and reports BIQ2021 test and LIVE-C
SRCC/PLCC with bootstrap CIs (only for the finally chosen configurations).

    nice -n 10 .venv/bin/python bench/realdata_ridge.py [--sizes 128 224 ...] [--final NAME ...]
"""

from __future__ import annotations

import argparse

import numpy as np

import realdata_common as rc

ALL = tuple(range(rc.N_LAYERS))
SE = rc.STAGE_ENDS
READOUTS = {
    # name: (stats, layers, transform)
    "pooled": ((("mean",), (18,)), None),
    "multistage": ((("mean", "std"), SE), None),
    "multistage_log": ((("mean", "std"), SE), "logstd"),
    "ms_all_layers": ((("mean", "std"), ALL), None),
    "ms_max": ((("mean", "std", "max"), SE), None),
    "ms_gstd": ((("mean", "std", "gstd"), SE), None),
    "ms_skew": ((("mean", "std", "skew"), SE), None),
    "all_stats": ((rc.STATS, SE), None),
    "all_stats_all_layers": ((rc.STATS, ALL), None),
}


def columns(feats: np.ndarray, name: str) -> np.ndarray:
    (stats, layers), transform = READOUTS[name]
    x = rc.readout(feats, stats, layers)
    if transform == "logstd":
        n_mean = sum(rc.LAYER_CHANNELS[i] for i in layers)
        x = np.concatenate([x[:, :n_mean], np.log(x[:, n_mean:] + 1e-3)], axis=1)
    return x


def build(cache: dict, spec: str, dataset: str) -> np.ndarray:
    """``spec``: ``readout@size`` or several joined by ``+`` (multi-scale: columns concatenated)."""
    parts = []
    for item in spec.split("+"):
        name, size = item.rsplit("@", 1)
        parts.append(columns(cache[(dataset, int(size))], name))
    return np.concatenate(parts, axis=1)


def folds(n: int, k: int = 5, seed: int = 0) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(order[i::k]) for i in range(k)]


def scores(x: np.ndarray, y: np.ndarray, split: np.ndarray, subset: np.ndarray) -> dict:
    trval = np.flatnonzero(split != "test")
    xt, yt, st = x[trval], y[trval], subset[trval]
    cv = []
    for f in folds(len(trval)):
        rest = np.setdiff1d(np.arange(len(trval)), f)
        inner = folds(len(rest), 4, seed=1)[0]  # alpha chosen on a quarter of the training part
        fit_idx = np.setdiff1d(rest, rest[inner])
        _, alpha, _ = rc.ridge_select(xt[fit_idx], yt[fit_idx], xt[rest[inner]], yt[rest[inner]])
        cv.append(rc.srcc(rc.ridge_fit(xt[rest], yt[rest], alpha)(xt[f]), yt[f]))
    loso = []
    for sub in ("ss01", "ss02", "ss03"):
        held = st == sub
        rest = np.flatnonzero(~held)
        inner = rest[folds(len(rest), 4, seed=2)[0]]  # alpha chosen inside the two fitted subsets
        fit_idx = np.setdiff1d(rest, inner)
        _, alpha, _ = rc.ridge_select(xt[fit_idx], yt[fit_idx], xt[inner], yt[inner])
        loso.append(rc.srcc(rc.ridge_fit(xt[rest], yt[rest], alpha)(xt[held]), yt[held]))
    tr, va = split == "train", split == "val"
    val, alpha, _ = rc.ridge_select(x[tr], y[tr], x[va], y[va])
    return {
        "cv": float(np.mean(cv)),
        "cv_sd": float(np.std(cv)),
        "loso": float(np.mean(loso)),
        "loso_parts": [round(v, 3) for v in loso],
        "val": val,
        "alpha": alpha,
    }


def load(sizes) -> tuple:
    biq, livec = rc.biq_frame(), rc.livec_frame()
    cache = {}
    for size in sizes:
        cache[("biq2021", size)] = rc.cached_features("biq2021", [str(rc.BIQ / p) for p in biq["image"]], size)
        f = rc.CACHE / f"livec_{size}.npz"
        if f.exists():
            cache[("livec", size)] = np.load(f)["feats"]
    return cache, biq, livec


def final(cache, biq, livec, specs) -> None:
    y, split = biq["mos"].to_numpy(), biq["split"].to_numpy()
    trval = split != "test"
    for spec in specs:
        x = build(cache, spec, "biq2021")
        tr, va = split == "train", split == "val"
        _, alpha, _ = rc.ridge_select(x[tr], y[tr], x[va], y[va])
        f = rc.ridge_fit(x[trval], y[trval], alpha)
        pt = f(x[split == "test"])
        yt = y[split == "test"]
        line = (
            f"{spec}: alpha {alpha}; BIQ test SRCC {rc.srcc(pt, yt):.3f} {rc.bootstrap_ci(pt, yt)} "
            f"PLCC {rc.plcc(pt, yt):.3f}"
        )
        try:
            xl = build(cache, spec, "livec")
            pl = f(xl)
            line += f"; LIVE-C SRCC {rc.srcc(pl, livec['mos']):.3f} {rc.bootstrap_ci(pl, livec['mos'].to_numpy())}"
        except KeyError:
            line += "; LIVE-C features not cached"
        print(line, flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[224])
    ap.add_argument("--readouts", nargs="+", default=list(READOUTS))
    ap.add_argument("--multiscale", nargs="*", default=[], help="specs like multistage@224+multistage@384")
    ap.add_argument("--final", nargs="*", default=[])
    args = ap.parse_args(argv)
    sizes = sorted(
        {int(s.rsplit("@", 1)[1]) for spec in args.multiscale + args.final for s in spec.split("+")} | set(args.sizes)
    )
    cache, biq, livec = load(sizes)
    if args.final:
        final(cache, biq, livec, args.final)
        return 0
    y, split = biq["mos"].to_numpy(), biq["split"].to_numpy()
    subset = biq["image"].str.extract(r"(ss0\d)")[0].to_numpy()
    specs = [f"{r}@{s}" for s in args.sizes for r in args.readouts] + args.multiscale
    print(f"{'read-out':42s} {'dim':>6s} {'cv':>6s} {'±':>5s} {'loso':>6s} {'ss01/02/03':>20s} {'val':>6s} alpha")
    for spec in specs:
        x = build(cache, spec, "biq2021")
        r = scores(x, y, split, subset)
        print(
            f"{spec:42s} {x.shape[1]:6d} {r['cv']:6.3f} {r['cv_sd']:5.3f} {r['loso']:6.3f} "
            f"{r['loso_parts']!s:>20s} {r['val']:6.3f} {r['alpha']}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
