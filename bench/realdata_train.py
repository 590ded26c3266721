"""Probe: train the real model (``deqa.training.train``) on real and/or synthetic data and score it.

One run = the pipeline's library calls in a row, without DVC: import the sources
(:func:`deqa.importers.import_labels`, BIQ2021 split 70/10/20 with seed 0 as a ``generic-csv``
source with ``lo: 0, hi: 1``), labels (:func:`deqa.labels.label_table`), the tiny base model
(:func:`deqa.tiny.build_tiny_llava`), :func:`deqa.training.train`, then
:class:`deqa.scoring.Scorer` on BIQ2021 val, the synthetic val split (when trained on it) and the
sensitivity set (:mod:`deqa.sensitivity`, content outside every source). ``--final`` also scores
BIQ2021 test and LIVE-C (only for finally chosen configurations). ``--ridge`` fits a ridge
regression on the model's own standardised vision tokens (same images, same split) for comparison.

Sources (``--sources``): ``biq`` (BIQ2021), ``distorted`` (:func:`deqa.synthetic.generate_from_photos`
on BIQ2021 photos with normalised MOS >= ``--min-quality``, derived images keep their photo's
split, imported with ``lo: 1, hi: 5``), ``synthetic`` (the default embedded dataset, 128 px).

The tower's tokens are memoised on disk per read-out (``$R_CACHE/tokens_*.pt``, keyed by the
bytes of each processed image), so repeated runs skip the frozen tower; results are identical.

    PYTHONPATH=src nice -n 10 .venv/bin/python bench/realdata_train.py NAME --sources biq --size 384 ...
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import realdata_common as rc

RUNS = Path("/tmp/r-runs")


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name")
    ap.add_argument("--sources", nargs="+", default=["biq"], choices=["biq", "distorted", "synthetic"])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--tokens", default="multistage")
    ap.add_argument("--stats", nargs="+", default=["mean", "std"])
    ap.add_argument("--layers", default="stages")
    ap.add_argument("--projector-act", default="gelu")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--warmup", type=float, default=0.03)
    ap.add_argument("--label-kind", default="soft", choices=["soft", "onehot", "binary"])
    ap.add_argument("--select", default="best", choices=["best", "last"])
    ap.add_argument("--kl", type=float, default=1.0)
    ap.add_argument("--token-weight", type=float, default=0.05)
    ap.add_argument("--fidelity", type=float, default=1.0)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--min-quality", type=float, default=4.0)
    ap.add_argument("--max-photos", type=int, default=0)
    ap.add_argument("--dist-per-photo", type=int, default=2)
    ap.add_argument("--train-photos", type=int, default=0, help="distorted: training photos kept (0: all)")
    ap.add_argument("--train-fraction", type=float, default=1.0, help="subsample BIQ2021 train rows")
    ap.add_argument("--final", action="store_true")
    ap.add_argument("--ridge", action="store_true")
    ap.add_argument("--seed", type=int, default=0, help="data seed (split, photo choice)")
    ap.add_argument("--train-seed", type=int, default=None, help="model seed (init, pairs; default: --seed)")
    return ap.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# a disk memo of the frozen tower's raw tokens (probe speed only: identical values)
# ---------------------------------------------------------------------------------------------
def install_token_memo(path: Path):
    import hashlib

    from deqa.tiny import MobileNetV2VisionModel

    store: dict[str, torch.Tensor] = torch.load(path) if path.exists() else {}
    original = MobileNetV2VisionModel._tokens
    state = {"new": 0}

    def _tokens(self, x):
        keys = [hashlib.blake2b(row.contiguous().numpy().tobytes(), digest_size=16).hexdigest() for row in x]
        todo = [i for i, k in enumerate(keys) if k not in store]
        if todo:
            out = torch.cat([original(self, x[todo][j : j + 4]) for j in range(0, len(todo), 4)])
            for i, row in zip(todo, out, strict=True):
                store[keys[i]] = row.clone()
            state["new"] += len(todo)
        return torch.stack([store[k] for k in keys])

    MobileNetV2VisionModel._tokens = _tokens

    def save():
        if state["new"]:
            torch.save(store, path)
            state["new"] = 0

    return save


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def distorted_source(args) -> tuple[Path, Path]:
    from deqa.synthetic import generate_from_photos, photos_from_manifest

    out = rc.CACHE / f"distorted_{args.size}_q{args.min_quality}_n{args.max_photos}_d{args.dist_per_photo}"
    labels = out / "labels.csv"
    if not labels.exists():
        photos = photos_from_manifest(
            rc.biq_frame(seed=args.seed), min_quality=args.min_quality, max_photos=args.max_photos, seed=args.seed
        )
        t0 = time.perf_counter()
        generate_from_photos(
            photos, out, image_size=args.size, distortions_per_photo=args.dist_per_photo, seed=args.seed
        )
        print(f"distorted set: {len(photos)} photos in {time.perf_counter() - t0:.0f} s", flush=True)
    return labels, out


def synthetic_source() -> tuple[Path, Path]:
    from deqa.config import SyntheticConfig
    from deqa.synthetic import generate

    out = rc.CACHE / "synthetic_default"
    if not (out / "synthetic_koniq.csv").exists():
        generate(SyntheticConfig(), out, seed=0)
    return out / "synthetic_koniq.csv", out / "images"


def sensitivity_source(size: int) -> Path:
    from deqa.sensitivity import generate_sensitivity_set

    out = rc.CACHE / f"sensitivity_{size}"
    if not (out / "labels.csv").exists():
        generate_sensitivity_set(out, image_size=size, seed=0)
    return out / "labels.csv"


def manifest(args) -> pd.DataFrame:
    from deqa.importers import import_labels

    frames = []
    if "biq" in args.sources:
        biq = rc.biq_frame(seed=args.seed)
        if args.train_fraction < 1:
            keep = np.random.default_rng(7).uniform(size=len(biq)) < args.train_fraction
            biq = biq[(biq["split"] != "train") | keep]
        frames.append(biq)
    if "distorted" in args.sources:
        labels, root = distorted_source(args)
        d = import_labels(labels, "generic-csv", root=root, name="distorted", lo=1.0, hi=5.0)
        if args.train_photos:  # keep the derived images of only this many (seeded) training photos
            content = pd.read_csv(labels)["content"]
            photos = sorted(set(content[d["split"] == "train"]))
            keep = set(np.random.default_rng(5).permutation(photos)[: args.train_photos])
            d = d[(d["split"] != "train") | content.isin(keep)]
        frames.append(d)
    if "synthetic" in args.sources:
        labels, root = synthetic_source()
        frames.append(import_labels(labels, "koniq", root=root, name="synthetic", seed=0))
    return pd.concat(frames, ignore_index=True)


def write_labels(frame: pd.DataFrame, kind: str, out: Path) -> None:
    from deqa.config import SoftLabelsConfig
    from deqa.labels import label_table

    table = label_table(frame, SoftLabelsConfig(kind=kind))
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        table[table["split"] == split].to_csv(out / f"{split}.csv", index=False)


def params_for(args):
    from deqa.config import LoraConfig, LossConfig, Params, TrainConfig

    p = Params()
    p.base.seed = args.seed if args.train_seed is None else args.train_seed
    p.train = TrainConfig(
        epochs=args.epochs,
        batch_pairs=args.batch,
        lr=args.lr,
        weight_decay=args.wd,
        warmup_ratio=args.warmup,
        select=args.select,
        resume="never",
        log_every=1000,
        checkpoint_every=100000,
    )
    p.lora = LoraConfig(r=args.lora_r, alpha=2 * args.lora_r)
    p.loss = LossConfig(kl_weight=args.kl, token_weight=args.token_weight, fidelity_weight=args.fidelity)
    return p


# ---------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------
def monotonicity(df: pd.DataFrame, score: str = "pred", bootstrap: int = 0) -> dict:
    """Mean over (content, distortion) series of SRCC(severity, -score), pristine rows included
    (as :func:`deqa.metrics.severity_monotonicity`); ``bootstrap`` > 0 adds a 95% interval from
    resampling the scenes (contents) with replacement."""
    df = df.assign(severity=pd.to_numeric(df["severity"]))
    pristine = df[df["severity"] == 0]
    per, by_content = {}, {}
    for (content, name), part in df[df["severity"] > 0].groupby(["content", "distortion"]):
        series = pd.concat([pristine[pristine["content"] == content], part])
        if series[score].nunique() > 1:
            rho = rc.srcc(series["severity"], -series[score])
            per.setdefault(name, []).append(rho)
            by_content.setdefault(content, []).append(rho)
    every = [v for vs in per.values() for v in vs]
    out = {"mean": float(np.mean(every)), **{k: round(float(np.mean(v)), 3) for k, v in per.items()}}
    if bootstrap:
        rng = np.random.default_rng(0)
        scenes = list(by_content.values())
        means = [
            np.mean([v for i in rng.integers(0, len(scenes), len(scenes)) for v in scenes[i]]) for _ in range(bootstrap)
        ]
        out["ci"] = [round(float(np.percentile(means, 2.5)), 3), round(float(np.percentile(means, 97.5)), 3)]
    return out


def summarise(pred, truth) -> dict:
    lo, hi = rc.bootstrap_ci(pred, truth)
    return {
        "n": len(pred),
        "srcc": round(rc.srcc(pred, truth), 4),
        "srcc_ci": [round(lo, 3), round(hi, 3)],
        "plcc": round(rc.plcc(pred, truth), 4),
    }


def evaluate(model_dir: Path, args, labels_dir: Path) -> dict:
    from deqa.importers import import_labels
    from deqa.scoring import Scorer

    scorer = Scorer.from_pretrained(model_dir, batch_size=32)
    out = {}
    sets = {}
    val = pd.read_csv(labels_dir / "val.csv")
    for name, part in val.groupby("dataset"):
        sets[f"val/{name}"] = part
    if args.final:
        test = pd.read_csv(labels_dir / "test.csv")
        for name, part in test.groupby("dataset"):
            sets[f"test/{name}"] = part
        if "test/biq2021" not in sets:  # a model trained without BIQ2021: its test split, zero-shot
            biq = rc.biq_frame(seed=args.seed)
            sets["test/biq2021"] = biq[biq["split"] == "test"]
        sets["cross/livec"] = rc.livec_frame()
    sens = import_labels(sensitivity_source(args.size), "generic-csv", name="sensitivity")
    sens_meta = pd.read_csv(sensitivity_source(args.size))
    for key, part in sets.items():
        paths = [str(Path(r) / i) for r, i in zip(part["root"], part["image"], strict=True)]
        pred = scorer.score(paths, progress=False).mean
        out[key] = summarise(pred, part["mos"].to_numpy())
    paths = [str(Path(r) / i) for r, i in zip(sens["root"], sens["image"], strict=True)]
    sens_meta["pred"] = scorer.score(paths, progress=False).mean
    out["sensitivity"] = monotonicity(sens_meta, bootstrap=1000 if args.final else 0)
    pristine = sens_meta[sens_meta["severity"] == 0]["pred"].mean()
    worst = sens_meta[sens_meta["severity"] == sens_meta["severity"].max()]["pred"].mean()
    out["sensitivity"]["pristine_mean"], out["sensitivity"]["worst_mean"] = round(pristine, 3), round(worst, 3)
    return out


def ridge_on_tokens(base_dir: Path, labels_dir: Path, final: bool) -> dict:
    """Ridge on the model's own standardised vision tokens: train rows -> val (and test) rows."""
    from deqa.images import load_image
    from deqa.modeling import load_model, load_processor

    processor = load_processor(base_dir)
    tower = load_model(base_dir).model.vision_tower.eval()

    def tokens(frame):
        feats = []
        paths = [str(Path(r) / i) for r, i in zip(frame["root"], frame["image"], strict=True)]
        with torch.no_grad():
            for j in range(0, len(paths), 32):
                pix = processor.image_processor([load_image(p) for p in paths[j : j + 32]], return_tensors="pt")
                feats.append(tower(pix["pixel_values"]).last_hidden_state.mean(1).numpy())
        return np.concatenate(feats)

    train = pd.read_csv(labels_dir / "train.csv")
    val = pd.read_csv(labels_dir / "val.csv")
    test = pd.read_csv(labels_dir / "test.csv")
    out = {}
    for name in sorted(set(train["dataset"]) & set(val["dataset"])):
        tr, va = train[train["dataset"] == name], val[val["dataset"] == name]
        xt, xv = tokens(tr), tokens(va)
        s, alpha, f = rc.ridge_select(xt, tr["m"].to_numpy(), xv, va["m"].to_numpy(), standardise="none")
        out[f"ridge_val/{name}"] = {"srcc": round(s, 4), "alpha": alpha}
        if final:
            te = test[test["dataset"] == name]
            out[f"ridge_test/{name}"] = summarise(f(tokens(te)), te["mos"].to_numpy())
            if name == "biq2021":
                livec = rc.livec_frame()
                out["ridge_cross/livec"] = summarise(f(tokens(livec)), livec["mos"].to_numpy())
    return out


def main(argv=None) -> int:
    args = parse(argv)
    torch.set_num_threads(1)
    from deqa.tiny import build_tiny_llava
    from deqa.training import train

    run = RUNS / args.name
    run.mkdir(parents=True, exist_ok=True)
    memo = install_token_memo(rc.CACHE / f"tokens_{args.tokens}_{args.size}_{'-'.join(args.stats)}_{args.layers}.pt")
    t0 = time.perf_counter()
    frame = manifest(args)
    write_labels(frame, args.label_kind, run / "labels")
    base = build_tiny_llava(
        run / "base",
        image_size=args.size,
        vision_tokens=args.tokens,
        hidden_size=args.hidden,
        intermediate_size=2 * args.hidden,
        layers=2,
        heads=4,
        seed=params_for(args).base.seed,
        standardise=True,
        projector_act=args.projector_act,
        vision_stats=args.stats,
        vision_layers=args.layers,
    )
    t1 = time.perf_counter()
    summary = train(params_for(args), run / "labels", base, run / "model", run / "ckpt", live_dir=None, progress=False)
    memo()
    t2 = time.perf_counter()
    result = {
        "args": vars(args),
        "rows": frame.groupby(["dataset", "split"]).size().to_dict(),
        "history": summary["history"],
        "selected": summary.get("selected"),
        "train_s": round(t2 - t1, 1),
    }
    result["rows"] = {f"{d}/{s}": int(n) for (d, s), n in result["rows"].items()}
    result.update(evaluate(run / "model", args, run / "labels"))
    if args.ridge:
        result.update(ridge_on_tokens(base, run / "labels", args.final))
    memo()
    result["total_s"] = round(time.perf_counter() - t0, 1)
    (run / "result.json").write_text(json.dumps(result, indent=1, default=str))
    brief = {
        k: (v["srcc"] if isinstance(v, dict) and "srcc" in v else v)
        for k, v in result.items()
        if k.startswith(("val/", "test/", "cross/", "ridge"))
    }
    print(
        json.dumps(
            {
                "name": args.name,
                **brief,
                "sens": result["sensitivity"]["mean"],
                "sens_pristine": result["sensitivity"]["pristine_mean"],
                "sens_worst": result["sensitivity"]["worst_mean"],
                "history": [round(h.get("val_srcc", 0), 3) for h in summary["history"]],
                "train_s": result["train_s"],
                "total_s": result["total_s"],
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
