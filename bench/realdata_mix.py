"""Probe: does mixing synthetic distortions of many photos into BIQ2021 help, at the ridge level?

A fast screen of the "Mix" ingredients before training the real model (``realdata_train.py``):
ridge regression on the frozen tower's read-out (``realdata_common``'s cached block statistics),
trained on BIQ2021 train (+ a synthetic set's train split, targets on the normalised 1-5 scale),
scored on

- BIQ2021 val SRCC (the real-photo choice criterion; test is never read here);
- the synthetic set's own val split SRCC (distorted versions of BIQ2021 val photos);
- the sensitivity set (:mod:`deqa.sensitivity`): mean per-scene SRCC between severity and
  (minus) the score, and the mean score of pristine vs strongest-severity images.

Synthetic sets: ``distorted`` (:func:`deqa.synthetic.generate_from_photos` on BIQ2021 photos with
normalised MOS >= ``--min-quality``; ``--max-photos``, ``--dist-per-photo``) and ``synthetic``
(the default embedded dataset, 128 px, upsampled by the read-out's resize).

    nice -n 10 .venv/bin/python bench/realdata_mix.py --size 224 [--min-quality 4.0 ...]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

import realdata_common as rc
from realdata_ridge import READOUTS, columns
from realdata_train import distorted_source, monotonicity, sensitivity_source, synthetic_source


def features(name: str, frame: pd.DataFrame, size: int) -> np.ndarray:
    paths = [str(rc.Path(r) / i) for r, i in zip(frame["root"], frame["image"], strict=True)]
    return rc.cached_features(name, paths, size)


def load_sets(args) -> dict:
    from deqa.importers import import_labels
    from deqa.labels import normalise

    biq = rc.biq_frame()
    sets = {"biq": biq}
    if args.distorted:
        labels, root = distorted_source(args)
        d = import_labels(labels, "generic-csv", root=root, name="distorted", lo=1.0, hi=5.0)
        if "content" not in d.columns:  # an importer that does not carry the provenance columns
            d = d.join(pd.read_csv(labels)[["content", "distortion", "severity"]])
        sets["distorted"] = d
    if args.synthetic:
        labels, root = synthetic_source()
        sets["synthetic"] = import_labels(labels, "koniq", root=root, name="synthetic")
    sens_labels = sensitivity_source(args.size)
    sens = import_labels(sens_labels, "generic-csv", name="sensitivity")
    if "severity" not in sens.columns:  # an importer that does not carry the provenance columns
        sens = sens.join(pd.read_csv(sens_labels)[["content", "distortion", "severity"]])
    sets["sensitivity"] = sens.assign(severity=pd.to_numeric(sens["severity"]))
    for frame in sets.values():
        frame["m"], _ = normalise(frame["mos"], frame["std"], frame["lo"], frame["hi"])
    return sets


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--readout", default="multistage", choices=list(READOUTS))
    ap.add_argument("--min-quality", type=float, default=4.0)
    ap.add_argument("--max-photos", type=int, default=0)
    ap.add_argument("--dist-per-photo", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--alpha", type=float, default=0, help="fixed ridge alpha (0: chosen on BIQ2021 val)")
    ap.add_argument(
        "--weights",
        type=float,
        nargs="*",
        default=[1.0],
        help="sample weight(s) of the synthetic rows relative to BIQ2021 rows",
    )
    ap.add_argument(
        "--photos",
        type=int,
        nargs="*",
        default=[0],
        help="use the distorted images of only this many (seeded) training photos (0: all)",
    )
    ap.add_argument("--no-distorted", dest="distorted", action="store_false")
    ap.add_argument("--synthetic", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    sets = load_sets(args)
    tag = f"q{args.min_quality}_n{args.max_photos}_d{args.dist_per_photo}"
    names = {
        "biq": "biq2021",
        "distorted": f"distorted_{tag}",
        "synthetic": "synthetic_default",
        "sensitivity": "sensitivity",
    }
    x = {k: columns(features(names[k], f, args.size), args.readout) for k, f in sets.items()}
    print(
        f"features ready in {time.perf_counter() - t0:.0f} s; rows "
        + ", ".join(f"{k}={len(f)}" for k, f in sets.items()),
        flush=True,
    )
    biq = sets["biq"]
    tr, va = (biq["split"] == "train").to_numpy(), (biq["split"] == "val").to_numpy()
    synth = [k for k in ("distorted", "synthetic") if k in sets]
    combos = [()] + [(k,) for k in synth] + ([tuple(synth)] if len(synth) > 1 else [])
    if args.distorted:
        d = sets["distorted"]
        train_photos = sorted(set(d.loc[d["split"] == "train", "content"]))
    runs = [
        (combo, w, n)
        for combo in combos
        for w in (args.weights if combo else [1.0])
        for n in (args.photos if "distorted" in combo else [0])
    ]
    for combo, w, n_photos in runs:
        if True:  # one ridge per (sources, weight, photos)
            xs, ys, ws = [x["biq"][tr]], [biq["m"].to_numpy()[tr]], [np.ones(tr.sum())]
            for k in combo:
                part = (sets[k]["split"] == "train").to_numpy().copy()
                if k == "distorted" and n_photos:
                    keep = set(np.random.default_rng(5).permutation(train_photos)[:n_photos])
                    part &= sets[k]["content"].isin(keep).to_numpy()
                xs.append(x[k][part])
                ys.append(sets[k]["m"].to_numpy()[part])
                ws.append(np.full(part.sum(), w))
            xt, yt, wt = np.concatenate(xs), np.concatenate(ys), np.concatenate(ws)
            mu, sd = xt.mean(0), xt.std(0) + 1e-6
            best = None
            from sklearn.linear_model import Ridge

            for alpha in [args.alpha] if args.alpha else (300, 1000, 3000, 10000, 30000):
                model = Ridge(alpha=alpha).fit((xt - mu) / sd, yt, sample_weight=wt)
                s = rc.srcc(model.predict((x["biq"][va] - mu) / sd), biq["m"].to_numpy()[va])
                if best is None or s > best[0]:
                    best = (s, alpha, model)
            s, alpha, model = best
            line = (
                f"train on biq{''.join('+' + k for k in combo)} (w={w}, photos={n_photos or 'all'}, "
                f"rows={len(yt)}): alpha {alpha}; BIQ val {s:.3f}"
            )
            for k in synth:
                part = (sets[k]["split"] == "val").to_numpy()
                line += f"; {k} val {rc.srcc(model.predict((x[k][part] - mu) / sd), sets[k]['m'][part]):.3f}"
            sens = sets["sensitivity"].assign(pred=model.predict((x["sensitivity"] - mu) / sd))
            mono = monotonicity(sens)
            line += (
                f"; sensitivity {mono['mean']:.3f} "
                f"({', '.join(f'{k} {v}' for k, v in mono.items() if k != 'mean')}); "
                f"pristine {sens[sens.severity == 0].pred.mean():.2f} worst {sens[sens.severity == 5].pred.mean():.2f}"
            )
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
