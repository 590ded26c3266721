"""Shared builders for the model tests: a tiny base checkpoint and a small labelled image set."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

torch.set_num_threads(1)

from deqa.schema import PROB_COLUMNS  # noqa: E402


def build_base(path: Path, image_size: int = 64, tokens: str = "pooled") -> Path:
    from deqa.tiny import build_tiny_llava

    return build_tiny_llava(
        path,
        image_size=image_size,
        vision_tokens=tokens,
        hidden_size=32,
        intermediate_size=64,
        layers=1,
        heads=2,
        seed=0,
    )


def _soft(m: float, s: float) -> np.ndarray:
    k = np.arange(1, 6)
    p = np.exp(-0.5 * ((k - m) / s) ** 2)
    return p / p.sum()


def build_labels(root: Path, n_train: int = 12, n_val: int = 6, size: int = 64) -> Path:
    """Blurred crops of a photo with MOS falling with blur; writes train.csv and val.csv."""
    from PIL import Image, ImageFilter
    from skimage import data

    photo = Image.fromarray(data.astronaut())
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_train + n_val):
        x, y = rng.integers(0, 512 - 2 * size, size=2)
        blur = float(i % 6) * 0.8
        im = photo.crop((x, y, x + 2 * size, y + 2 * size)).resize((size, size)).filter(ImageFilter.GaussianBlur(blur))
        name = f"img_{i:03d}.png"
        im.save(img_dir / name)
        m = 4.6 - 0.7 * (i % 6)
        s = 0.5
        rows.append(
            {
                "image": name,
                "root": str(img_dir),
                "dataset": "fixture",
                "split": "train" if i < n_train else "val",
                "mos": m,
                "std": s,
                "n_votes": 10,
                "lo": 1.0,
                "hi": 5.0,
                "m": m,
                "s": s,
                **dict(zip(PROB_COLUMNS, _soft(m, s), strict=False)),
                "label_kind": "soft",
                "fallback": False,
            }
        )
    df = pd.DataFrame(rows)
    out = root / "labels"
    out.mkdir(exist_ok=True)
    for split in ("train", "val"):
        df[df.split == split].to_csv(out / f"{split}.csv", index=False)
    return out


_CACHE: dict[str, Path] = {}


def small_params(**train):
    from deqa.config import Params

    p = Params()
    p.train.epochs = 2
    p.train.batch_pairs = 4
    p.train.lr = 3e-3
    p.train.checkpoint_every = 1000
    p.train.log_every = 1
    for k, v in train.items():
        setattr(p.train, k, v)
    return p


def trained_model(tmp_root: Path) -> dict[str, Path]:
    """Build (once per test session) a base checkpoint, labels and a trained adapter."""
    if "model" not in _CACHE:
        from deqa.training import train

        root = Path(tmp_root)
        base = build_base(root / "base")
        labels = build_labels(root)
        train(small_params(), labels, base, root / "model", root / "ckpt", None, progress=False)
        _CACHE.update(base=base, labels=labels, model=root / "model", images=root / "images", root=root)
    return dict(_CACHE)
