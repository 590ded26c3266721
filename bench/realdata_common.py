"""Shared helpers of the ``bench/realdata_*.py`` probes (real photographs, issue #10).

Data: BIQ2021 (2,400 rated photos, ``../shared/realdata/biq2021``) split exactly as the pipeline
splits a ``generic-csv`` source without its own split (:func:`deqa.importers.import_labels`,
seed 0, 10% val, 20% test), and the LIVE Challenge test images (``../shared/realdata/livec``, a
cross-dataset TEST set: never used to choose anything).

Features: every block output of the frozen ImageNet MobileNetV2 tower (:mod:`deqa.tiny`) is
summarised per channel by several spatial statistics (:data:`STATS`), once per image size, and
cached on disk (``$R_CACHE``, default ``/tmp/r-cache``) so read-outs are compared without
recomputing the tower. Read-outs are then column selections of that cache (:func:`readout`).
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

SHARED = Path(os.environ.get("DEQA_SHARED", "/work/shared"))
BIQ = SHARED / "realdata" / "biq2021"
LIVEC = SHARED / "realdata" / "livec"
CACHE = Path(os.environ.get("R_CACHE", "/tmp/r-cache"))
STATS = ("mean", "std", "max", "gstd", "skew")
"""Per-channel statistics of each block output: spatial mean, std, max, the std of the 4x4 grid
of cell means (how the feature varies across the image) and the skewness."""
N_LAYERS = 19  # MobileNetV2 `features` blocks 0..18
LAYER_CHANNELS = (32, 16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320, 1280)
STAGE_ENDS = (1, 3, 6, 10, 13, 16, 17, 18)


def biq_frame(seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2) -> pd.DataFrame:
    """BIQ2021 rows with the pipeline's seeded split (``generic-csv``, lo 0, hi 1)."""
    from deqa.importers import import_labels

    return import_labels(
        BIQ / "labels.csv",
        "generic-csv",
        name="biq2021",
        lo=0.0,
        hi=1.0,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
    )


def livec_frame() -> pd.DataFrame:
    from deqa.importers import import_labels

    return import_labels(LIVEC / "labels.csv", "livec", name="livec", split="test")


def load_rgb(path: str | Path, size: int) -> np.ndarray:
    """Decode, convert to RGB and resize (bicubic, as the tiny model's CLIP image processor)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BICUBIC)
        return np.asarray(im, dtype=np.float32) / 255.0


def normalise(batch: np.ndarray) -> torch.Tensor:
    from deqa.tiny import IMAGENET_MEAN, IMAGENET_STD

    x = torch.from_numpy(batch).permute(0, 3, 1, 2)
    return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


_TOWER = None


def tower():
    """The frozen pretrained MobileNetV2 tower of :mod:`deqa.tiny` (eval mode)."""
    global _TOWER
    if _TOWER is None:
        from deqa.tiny import MobileNetV2VisionConfig, MobileNetV2VisionModel, load_imagenet_weights

        _TOWER = MobileNetV2VisionModel(MobileNetV2VisionConfig(image_size=224, tokens="pooled"))
        load_imagenet_weights(_TOWER)
        _TOWER.eval()
        _TOWER.to(memory_format=torch.channels_last)  # measured: faster on CPU
    return _TOWER


@torch.no_grad()
def block_stats(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) normalised images -> (B, len(STATS), sum(LAYER_CHANNELS)) float32."""
    out = []
    x = x.contiguous(memory_format=torch.channels_last)
    for layer in tower().features:
        x = layer(x)
        flat = x.flatten(2)
        mean = flat.mean(-1)
        std = flat.std(-1, unbiased=False)
        mx = flat.amax(-1)
        grid = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(2).std(-1, unbiased=False)
        skew = ((flat - mean[..., None]) ** 3).mean(-1) / std.clamp_min(1e-6) ** 3
        out.append(torch.stack([mean, std, mx, grid, skew], dim=1))
    return torch.cat(out, dim=-1).numpy().astype(np.float32)


def extract(paths: list[str], size: int, batch: int = 4, progress: str = "") -> tuple[np.ndarray, dict]:
    """Block statistics of every image; returns (features, timing: decode and tower seconds)."""
    feats, t_load, t_net = [], 0.0, 0.0
    for start in range(0, len(paths), batch):
        t0 = time.perf_counter()
        imgs = np.stack([load_rgb(p, size) for p in paths[start : start + batch]])
        t1 = time.perf_counter()
        feats.append(block_stats(normalise(imgs)))
        t2 = time.perf_counter()
        t_load, t_net = t_load + t1 - t0, t_net + t2 - t1
        if progress and (start // batch) % 100 == 0:
            print(f"  {progress} {start + len(imgs)}/{len(paths)}", flush=True)
    return np.concatenate(feats), {"decode_s": t_load, "tower_s": t_net, "n": len(paths)}


def cached_features(name: str, paths: list[str], size: int) -> np.ndarray:
    """Block statistics of ``paths`` at ``size``, computed once and kept in ``CACHE``."""
    CACHE.mkdir(parents=True, exist_ok=True)
    f = CACHE / f"{name}_{size}.npz"
    if f.exists():
        z = np.load(f, allow_pickle=False)
        if list(z["paths"]) == list(paths):
            return z["feats"]
    feats, timing = extract(paths, size, progress=f"{name}@{size}")
    np.savez(f, feats=feats, paths=np.array(paths), decode_s=timing["decode_s"], tower_s=timing["tower_s"])
    return feats


def layer_slices() -> list[slice]:
    edges = np.cumsum((0, *LAYER_CHANNELS))
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(edges)]


def readout(feats: np.ndarray, stats=("mean", "std"), layers=STAGE_ENDS) -> np.ndarray:
    """Columns of the cache: the named statistics of the named block outputs (stat-major, as
    :class:`deqa.tiny.MobileNetV2VisionModel`'s ``multistage`` token: all means, then all stds)."""
    sl = layer_slices()
    cols = [feats[:, STATS.index(s), sl[i]] for s in stats for i in layers]
    return np.concatenate(cols, axis=1)


# ---------------------------------------------------------------------------------------------
# read-out evaluation
# ---------------------------------------------------------------------------------------------
def srcc(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def plcc(a, b) -> float:
    from scipy.stats import pearsonr

    return float(pearsonr(a, b).statistic)


def bootstrap_ci(pred, truth, n: int = 1000, seed: int = 0, fn=srcc) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    pred, truth = np.asarray(pred), np.asarray(truth)
    vals = [fn(pred[i], truth[i]) for i in (rng.integers(0, len(pred), len(pred)) for _ in range(n))]
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def ridge_fit(x_train, y_train, alpha: float, standardise="train"):
    """Ridge on standardised columns; returns a predict function. ``standardise``: ``train``
    (the training rows' mean/std), a (mean, std) pair (fixed statistics), or ``none``."""
    from sklearn.linear_model import Ridge

    if standardise == "train":
        mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    elif standardise == "none":
        mu, sd = 0.0, 1.0
    else:
        mu, sd = standardise
    model = Ridge(alpha=alpha).fit((x_train - mu) / sd, y_train)
    return lambda x: model.predict((x - mu) / sd)


def ridge_select(x_tr, y_tr, x_val, y_val, alphas=(1, 10, 100, 1000, 3000, 10000, 30000), standardise="train"):
    """Best alpha by validation SRCC; returns (val SRCC, alpha, predict)."""
    best = None
    for a in alphas:
        f = ridge_fit(x_tr, y_tr, a, standardise)
        s = srcc(f(x_val), y_val)
        if best is None or s > best[0]:
            best = (s, a, f)
    return best
