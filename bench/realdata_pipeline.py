"""Bench: the recommended real-data pipeline, cold, stage by stage, timed with ``/usr/bin/time -v``.

Until ``params.yaml`` has keys for the new pieces (the distorted-photos source, the sensitivity
set, ``model.tiny.vision_stats``/``vision_layers``), two stages are stood in for by the same
library calls they would make, each in its own process:

- ``prepare``: BIQ2021 as a ``generic-csv`` source (``lo: 0, hi: 1``, seeded split with
  ``val_fraction``/``test_fraction``), :func:`deqa.synthetic.photos_from_manifest` +
  :func:`deqa.synthetic.generate_from_photos` (distorted versions of BIQ2021 photos, imported as
  ``generic-csv`` with ``lo: 1, hi: 5``), :func:`deqa.sensitivity.generate_sensitivity_set`;
  writes the manifest;
- ``base_model``: :func:`deqa.tiny.build_tiny_llava` with the chosen read-out.

``validate``, ``soft_labels``, ``train``, ``evaluate`` and ``report`` are the real stage scripts of
the checkout given by ``--repo`` (its ``stages/`` and ``src/``), run with a params file written
here. The evaluate stage scores val/test of both training sets and two extra sets: LIVE-C (a
cross-dataset test) and the sensitivity set. Prints per-stage wall time and peak RSS, and the
totals (wall: sum; peak RSS: max).

    nice -n 10 .venv/bin/python bench/realdata_pipeline.py /tmp/r-pipe --repo /tmp/r-x
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

SHARED = Path("/work/shared/realdata")


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path)
    ap.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--step", default="all", choices=["all", "prepare", "base_model"])
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--vision-stats", nargs="+", default=["mean", "std"])
    ap.add_argument("--vision-layers", default="all")
    ap.add_argument("--min-quality", type=float, default=4.0)
    ap.add_argument("--max-photos", type=int, default=150)
    ap.add_argument("--distortions-per-photo", type=int, default=2)
    ap.add_argument("--no-distorted", dest="distorted", action="store_false")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# stand-ins for prepare and base_model (library calls)
# ---------------------------------------------------------------------------------------------
def step_prepare(args, params) -> None:
    import pandas as pd

    from deqa.importers import import_labels
    from deqa.sensitivity import generate_sensitivity_set
    from deqa.synthetic import generate_from_photos, photos_from_manifest

    out = args.work / "data" / "prepare"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    p = params["prepare"]
    biq = import_labels(
        SHARED / "biq2021" / "labels.csv",
        "generic-csv",
        root=SHARED / "biq2021",
        name="biq2021",
        lo=0.0,
        hi=1.0,
        seed=args.seed,
        val_fraction=p["val_fraction"],
        test_fraction=p["test_fraction"],
    )
    frames = [biq]
    if args.distorted:
        photos = photos_from_manifest(biq, min_quality=args.min_quality, max_photos=args.max_photos, seed=args.seed)
        labels = generate_from_photos(
            photos,
            out / "biq2021_distorted",
            image_size=args.size,
            distortions_per_photo=args.distortions_per_photo,
            seed=args.seed,
        )
        frames.append(import_labels(labels, "generic-csv", name="biq2021_distorted", lo=1.0, hi=5.0))
    generate_sensitivity_set(out / "sensitivity", image_size=args.size, seed=args.seed)
    manifest = pd.concat(frames, ignore_index=True)
    manifest.to_csv(out / "manifest.csv", index=False)
    print(
        f"prepare: {len(manifest)} rows; "
        + ", ".join(f"{d}/{s}={n}" for (d, s), n in manifest.groupby(["dataset", "split"]).size().items())
    )


def step_base_model(args, params) -> None:
    from deqa.tiny import build_tiny_llava

    t = params["model"]["tiny"]
    out = args.work / "models" / "base"
    shutil.rmtree(out, ignore_errors=True)
    build_tiny_llava(
        out,
        image_size=t["image_size"],
        vision_tokens=t["vision_tokens"],
        hidden_size=t["hidden_size"],
        intermediate_size=t["intermediate_size"],
        layers=t["layers"],
        heads=t["heads"],
        seed=params["base"]["seed"],
        standardise=t["standardise"],
        projector_act=t["projector_act"],
        vision_stats=args.vision_stats,
        vision_layers=args.vision_layers,
    )


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
def write_params(args) -> dict:
    params = yaml.safe_load((args.repo / "params.yaml").read_text())
    params["base"]["seed"] = args.seed
    params["prepare"]["val_fraction"], params["prepare"]["test_fraction"] = 0.1, 0.2
    params["model"]["tiny"]["image_size"] = args.size
    params["train"].update(epochs=args.epochs, lr=args.lr)
    sens = args.work / "data" / "prepare" / "sensitivity"
    params["evaluate"]["extra"] = [
        {
            "name": "livec",
            "format": "livec",
            "labels": str(SHARED / "livec" / "labels.csv"),
            "root": str(SHARED / "livec"),
            "lo": None,
            "hi": None,
            "split": "",
            "required": True,
        },
        {
            "name": "sensitivity",
            "format": "generic-csv",
            "labels": str(sens / "labels.csv"),
            "root": str(sens),
            "lo": 1.0,
            "hi": 5.0,
            "split": "",
            "required": True,
        },
    ]
    (args.work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def timed(name: str, cmd: list[str], cwd: Path, log: Path) -> dict:
    import os

    env = {**os.environ, "PYTHONPATH": str(cwd / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.run(
            ["/usr/bin/time", "-v", *cmd], cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT
        ).returncode
    wall = time.perf_counter() - t0
    text = log.read_text()
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) / 1024
    user = float(re.search(r"User time \(seconds\): ([\d.]+)", text).group(1))
    system = float(re.search(r"System time \(seconds\): ([\d.]+)", text).group(1))
    print(f"{name:12s} rc={rc} wall {wall:7.1f} s  cpu {user + system:7.1f} s  peak RSS {rss:7.0f} MiB", flush=True)
    if rc:
        print(text[-3000:])
        raise SystemExit(f"{name} failed (log: {log})")
    return {"stage": name, "wall_s": round(wall, 1), "cpu_s": round(user + system, 1), "peak_rss_mib": round(rss)}


def main(argv=None) -> int:
    args = parse(argv)
    args.work = args.work.resolve()
    if args.step != "all":
        params = yaml.safe_load((args.work / "params.yaml").read_text())
        {"prepare": step_prepare, "base_model": step_base_model}[args.step](args, params)
        return 0
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    write_params(args)
    w, p = args.work, str(args.work / "params.yaml")
    me = [
        sys.executable,
        str(Path(__file__).resolve()),
        str(w),
        "--repo",
        str(args.repo),
        "--size",
        str(args.size),
        "--vision-stats",
        *args.vision_stats,
        "--vision-layers",
        args.vision_layers,
        "--min-quality",
        str(args.min_quality),
        "--max-photos",
        str(args.max_photos),
        "--distortions-per-photo",
        str(args.distortions_per_photo),
        "--seed",
        str(args.seed),
    ] + ([] if args.distorted else ["--no-distorted"])
    st = [sys.executable]
    stage = str(args.repo / "stages")
    steps = [
        ("prepare", [*me, "--step", "prepare"]),
        (
            "validate",
            [
                *st,
                f"{stage}/validate.py",
                "--params",
                p,
                "--manifest",
                f"{w}/data/prepare/manifest.csv",
                "--out",
                f"{w}/data/validate",
                "--metrics",
                f"{w}/metrics/validate.json",
            ],
        ),
        (
            "soft_labels",
            [
                *st,
                f"{stage}/soft_labels.py",
                "--params",
                p,
                "--manifest",
                f"{w}/data/validate/manifest.csv",
                "--out",
                f"{w}/data/soft_labels",
                "--metrics",
                f"{w}/metrics/discretisation.json",
            ],
        ),
        ("base_model", [*me, "--step", "base_model"]),
        (
            "train",
            [
                *st,
                f"{stage}/train.py",
                "--params",
                p,
                "--labels",
                f"{w}/data/soft_labels",
                "--base",
                f"{w}/models/base",
                "--out",
                f"{w}/models/deqa",
                "--checkpoints",
                f"{w}/checkpoints",
                "--live",
                f"{w}/dvclive/train",
                "--metrics",
                f"{w}/metrics/train.json",
            ],
        ),
        (
            "evaluate",
            [
                *st,
                f"{stage}/evaluate.py",
                "--params",
                p,
                "--labels",
                f"{w}/data/soft_labels",
                "--model",
                f"{w}/models/deqa",
                "--base",
                f"{w}/models/base",
                "--out",
                f"{w}/data/evaluate",
                "--detail",
                f"{w}/data/evaluate/metrics.json",
                "--metrics",
                f"{w}/metrics/evaluate.json",
            ],
        ),
        (
            "report",
            [
                *st,
                f"{stage}/report.py",
                "--params",
                p,
                "--out",
                f"{w}/reports",
                "--evaluate-detail",
                f"{w}/data/evaluate/metrics.json",
                "--predictions",
                f"{w}/data/evaluate/predictions.csv",
                "--discretisation",
                f"{w}/metrics/discretisation.json",
                "--validate-metrics",
                f"{w}/metrics/validate.json",
                "--validate-report",
                f"{w}/data/validate/report.json",
                "--manifest",
                f"{w}/data/validate/manifest.csv",
                "--train-metrics",
                f"{w}/metrics/train.json",
                "--dvclive",
                f"{w}/dvclive/train",
            ],
        ),
    ]
    rows = [timed(name, cmd, args.repo, w / f"{name}.log") for name, cmd in steps]
    total = {
        "stage": "TOTAL",
        "wall_s": round(sum(r["wall_s"] for r in rows), 1),
        "cpu_s": round(sum(r["cpu_s"] for r in rows), 1),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in rows),
    }
    print(
        f"{'TOTAL':12s} wall {total['wall_s']:7.1f} s  cpu {total['cpu_s']:7.1f} s  peak RSS {total['peak_rss_mib']:7.0f} MiB"
    )
    load = Path("/proc/loadavg").read_text().split()[:3]
    (w / "timing.json").write_text(json.dumps({"stages": [*rows, total], "load_after": load}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
