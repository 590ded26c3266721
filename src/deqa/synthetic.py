"""The embedded synthetic rated IQA dataset: generated offline and deterministically from a seed.

Design (measured to learn on CPU, see ``shared/method/CPU-DEFAULT.md``):

* **Content**: natural colour photos that installed packages ship -- scikit-image's
  ``astronaut``, ``chelsea``, ``coffee``, ``rocket``, ``hubble_deep_field``,
  ``immunohistochemistry``, ``stereo_motorcycle`` (left and right views), scikit-learn's ``china``
  and ``flower`` and matplotlib's ``grace_hopper``. ``extra_train_photos`` may add any other
  shipped ``skimage.data`` image (grey ones are converted to RGB) as training-only content.
* **Images**: ``crops_per_photo`` random square crops per photo, resized to ``image_size``; each
  crop appears pristine and under every distortion of ``distortions`` (from
  :data:`deqa.distortions.DISTORTIONS`) at ``severities``
  levels (default: 11 photos x 20 crops x (6 x 5 + 1) = 6,820 PNG files).
* **Latent quality** (1-5): a pristine level that depends on the crop's own contrast, lowered by
  an impairment that mixes a per-distortion severity table with ``1 - SSIM`` against the pristine
  crop, so that the same distortion hurts some contents more than others.
* **Ratings**: a panel of ``raters`` simulated raters, each with its own bias and noise, gives
  integer 1-5 votes for every image; the noise is scaled per image by its :func:`ambiguity`
  (mid-range quality and taste-driven distortions divide raters more), so the std is informative; the per-image vote counts, MOS, SD (ddof=1) and a KonIQ-style
  MOS_zscore follow from them.
* **Splits**: content-disjoint by whole photo: ``test_photos`` -> test, ``val_photos`` -> val,
  all others -> train.

:func:`generate` writes ``images/*.png``, the ratings in KonIQ-10k's
``koniq10k_scores_and_distributions.csv`` layout (``synthetic_koniq.csv``, loaded afterwards by
the KonIQ importer, so the default pipeline exercises a real importer) and a side table
``synthetic_meta.csv`` (photo, crop, distortion, severity, SSIM, latent quality) for analysis.
Same seed and params give byte-identical files.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from deqa.distortions import DISTORTIONS, SyntheticError, check_distortions, fresh_folder, luma, write_versions
from deqa.labels import normalise
from deqa.schema import DEFAULT_DISTORTIONS

BASE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "motorcycle_left",
    "motorcycle_right",
    "china",
    "flower",
    "grace_hopper",
)
"""The default content: 11 natural photos shipped with scikit-image, scikit-learn, matplotlib."""


# --------------------------------------------------------------------------------------------
# content
# --------------------------------------------------------------------------------------------
def load_photo(name: str) -> np.ndarray:
    """One source photo as an ``uint8`` RGB array (H, W, 3); grey photos are stacked to RGB."""
    import skimage.data

    if name in ("motorcycle_left", "motorcycle_right"):
        left, right, _ = skimage.data.stereo_motorcycle()
        img = left if name == "motorcycle_left" else right
    elif name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        img = load_sample_image(f"{name}.jpg")
    elif name == "grace_hopper":
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as fh:
            img = np.asarray(Image.open(fh).convert("RGB"))
    else:
        loader = getattr(skimage.data, name, None)
        if loader is None or name.startswith("_") or not callable(loader):
            raise SyntheticError(
                f"unknown photo {name!r}: use one of {', '.join(BASE_PHOTOS)} or a skimage.data image name"
            )
        try:
            img = loader()
        except Exception as exc:  # e.g. an image skimage would have to download (we are offline)
            raise SyntheticError(f"photo {name!r} could not be loaded offline: {exc}") from None
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = (np.clip(img.astype(np.float64) / max(float(img.max()), 1e-12), 0, 1) * 255).round().astype(np.uint8)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or min(img.shape[:2]) < 32:
        raise SyntheticError(f"photo {name!r} is not a usable RGB image (shape {img.shape})")
    return np.ascontiguousarray(img[..., :3])


def random_crops(photo: np.ndarray, n: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` random square crops (35-80% of the short side, at least ``size`` px), resized to ``size``."""
    h, w = photo.shape[:2]
    short = min(h, w)
    crops = []
    for _ in range(n):
        side = round(rng.uniform(0.35, 0.8) * short)
        side = min(max(side, min(size, short)), short)
        top = int(rng.integers(0, h - side + 1))
        left = int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(photo[top : top + side, left : left + side])
        crops.append(np.asarray(crop.resize((size, size), Image.Resampling.LANCZOS)))
    return crops


# --------------------------------------------------------------------------------------------
# quality model and raters
# --------------------------------------------------------------------------------------------
def _grey(u8: np.ndarray) -> np.ndarray:
    """Luma in [0, 1], float32 (:func:`deqa.distortions.luma`: the same bits on any CPU)."""
    return luma(u8.astype(np.float32)) / np.float32(255.0)


def pristine_quality(grey: np.ndarray) -> float:
    """Quality of an undistorted crop: 4.0 for a flat crop up to 4.5 for a contrasty one."""
    return 4.0 + 0.5 * float(np.clip(grey.std() / 0.25, 0.0, 1.0))


def latent_quality(p0: float, table: float, ssim: float) -> float:
    """1 + (p0 - 1)(1 - impairment), impairment = 0.6 * severity table + 0.4 * (1 - SSIM)."""
    impairment = float(np.clip(0.6 * table + 0.4 * (1.0 - ssim), 0.0, 1.0))
    return 1.0 + (p0 - 1.0) * (1.0 - impairment)


# How much raters disagree about each kind of impairment (added to the image's ambiguity):
# contrast and colour changes are partly a matter of taste, noise and blur much less so.
DISAGREEMENT = {
    "pristine": 0.0,
    "gaussian_blur": 0.1,
    "gaussian_noise": 0.0,
    "jpeg": 0.1,
    "contrast": 0.45,
    "pixelation": 0.2,
    "motion_blur": 0.1,
    "saturation": 0.45,
}


def ambiguity(quality: np.ndarray, distortion: np.ndarray) -> np.ndarray:
    """Per-image scale of the raters' noise: larger for mid-range quality and taste-driven changes.

    ``0.6 + 0.5 * midness + DISAGREEMENT[distortion]`` with ``midness = 1 - ((q - 3) / 2)^2``, so
    that, as in real IQA data, the spread of the votes carries information about the image (the
    quantity DeQA-Score's predicted std learns), not only sampling noise.
    """
    midness = 1.0 - ((np.clip(quality, 1.0, 5.0) - 3.0) / 2.0) ** 2
    extra = np.array([DISAGREEMENT.get(d, 0.0) for d in distortion])
    return 0.6 + 0.5 * midness + extra


def rate(quality: np.ndarray, raters: int, rng: np.random.Generator, scale: np.ndarray | None = None) -> np.ndarray:
    """Integer 1-5 votes (images x raters) of a panel with per-rater bias and noise.

    ``scale`` (per image, default 1) multiplies every rater's noise on that image.
    """
    bias = rng.normal(0.0, 0.3, raters)
    noise = rng.uniform(0.4, 0.8, raters)
    eps = rng.standard_normal((len(quality), raters))
    scale = np.ones(len(quality)) if scale is None else np.asarray(scale, dtype=float)
    votes = quality[:, None] + bias[None, :] + noise[None, :] * scale[:, None] * eps
    return np.clip(np.rint(votes), 1, 5).astype(np.int64)


def koniq_table(votes: np.ndarray) -> pd.DataFrame:
    """Vote counts, MOS, SD (ddof=1) and MOS_zscore (per-rater z-scores, rescaled to 0-100)."""
    counts = np.stack([(votes == k).sum(axis=1) for k in range(1, 6)], axis=1)
    mos = votes.mean(axis=1)
    sd = votes.std(axis=1, ddof=1) if votes.shape[1] > 1 else np.zeros(len(votes))
    rater_sd = votes.std(axis=0)
    z = (votes - votes.mean(axis=0)) / np.where(rater_sd > 0, rater_sd, 1.0)
    zm = z.mean(axis=1)
    span = zm.max() - zm.min() if len(zm) else 0.0
    zscore = (zm - zm.min()) / span * 100.0 if span > 0 else np.full(len(zm), 50.0)
    table = pd.DataFrame(counts, columns=["c1", "c2", "c3", "c4", "c5"])
    table["c_total"] = votes.shape[1]
    table["MOS"], table["SD"], table["MOS_zscore"] = mos, sd, zscore
    return table


# --------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------
def photo_splits(cfg) -> dict[str, str]:
    """Photo name -> split (test_photos: test, val_photos: val, all others: train)."""
    photos = list(BASE_PHOTOS) + [p for p in cfg.extra_train_photos if p not in BASE_PHOTOS]
    for group, names in (("val_photos", cfg.val_photos), ("test_photos", cfg.test_photos)):
        unknown = [p for p in names if p not in BASE_PHOTOS]
        if unknown:
            raise SyntheticError(
                f"prepare.synthetic.{group}: unknown photo(s) {unknown}; known: {', '.join(BASE_PHOTOS)}"
            )
    both = sorted(set(cfg.val_photos) & set(cfg.test_photos))
    if both:
        raise SyntheticError(f"photo(s) {both} are in both val_photos and test_photos")
    extra_held = sorted(set(cfg.extra_train_photos) & (set(cfg.val_photos) | set(cfg.test_photos)))
    if extra_held:
        raise SyntheticError(f"extra_train_photos {extra_held} are also val/test photos")
    split = {p: "train" for p in photos}
    split.update({p: "val" for p in cfg.val_photos})
    split.update({p: "test" for p in cfg.test_photos})
    if "train" not in split.values():
        raise SyntheticError("no training photo left: every photo is in val_photos or test_photos")
    return split


def _check(distortions, what: str = "prepare.synthetic", **sizes: int) -> None:
    """The distortion names and the sizes (``crops_per_photo``, ``image_size``, ``severities``,
    ``raters``, those given) of a generated set; ``what`` is its params section."""
    check_distortions(distortions, f"{what}.distortions")
    for key, low in (("crops_per_photo", 1), ("image_size", 16), ("severities", 1), ("raters", 1)):
        if key in sizes and sizes[key] < low:
            raise SyntheticError(f"{what}.{key} must be >= {low}, got {sizes[key]}")


def panel_ratings(quality: np.ndarray, distortion: np.ndarray, raters: int, rng: np.random.Generator) -> pd.DataFrame:
    """:func:`koniq_table` of the simulated panel's votes (:func:`rate`, noise scaled by :func:`ambiguity`)."""
    return koniq_table(rate(quality, raters, rng, scale=ambiguity(quality, distortion)))


def _ssim(pixels: np.ndarray, grey0: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(_grey(pixels), grey0, data_range=1.0))


def _rated_crop(crop: np.ndarray, images_dir: Path, stem: str, cfg, key: list[int]) -> list[tuple]:
    """Write one crop's versions; ``(file, distortion, severity, SSIM, latent quality)`` of each."""
    grey0 = _grey(crop)
    p0 = pristine_quality(grey0)
    rows = []
    for v in write_versions(crop, images_dir, stem, cfg.distortions, cfg.severities, key):
        if v.distortion == "pristine":
            rows.append((v.name, v.distortion, 0, 1.0, p0))
            continue
        ssim = _ssim(v.pixels, grey0)
        table = DISTORTIONS[v.distortion].table(v.severity, cfg.severities)
        rows.append((v.name, v.distortion, v.severity, ssim, latent_quality(p0, table, ssim)))
    return rows


def generate(cfg, out_dir: str | Path, seed: int = 0, progress: bool = True) -> tuple[Path, Path]:
    """Write the synthetic dataset under ``out_dir``; return (KonIQ-layout CSV, images folder).

    The images folder is recreated from scratch, so stale files from an earlier run never leak in.
    """
    from tqdm import tqdm

    _check(cfg.distortions, **{k: getattr(cfg, k) for k in ("crops_per_photo", "image_size", "severities", "raters")})
    splits = photo_splits(cfg)
    out_dir = Path(out_dir)
    images_dir = fresh_folder(out_dir / "images")
    meta = []
    bar = tqdm(total=len(splits) * cfg.crops_per_photo, desc="synthetic crops", unit="crop", disable=not progress)
    for photo, split in splits.items():
        photo_id = zlib.crc32(photo.encode())
        rng = np.random.default_rng([seed, photo_id])
        for ci, crop in enumerate(random_crops(load_photo(photo), cfg.crops_per_photo, cfg.image_size, rng)):
            for name, dname, s, ssim, q in _rated_crop(
                crop, images_dir, f"{photo}_{ci:03d}", cfg, [seed, photo_id, ci]
            ):
                meta.append((name, photo, ci, dname, s, ssim, q, split))
            bar.update(1)
    bar.close()
    meta_df = pd.DataFrame(
        meta, columns=["image_name", "photo", "crop", "distortion", "severity", "ssim", "quality", "split"]
    )
    meta_df["ambiguity"] = ambiguity(meta_df["quality"].to_numpy(), meta_df["distortion"].to_numpy())
    table = panel_ratings(
        meta_df["quality"].to_numpy(),
        meta_df["distortion"].to_numpy(),
        cfg.raters,
        np.random.default_rng([seed, 0x5EED]),
    )
    table.insert(0, "image_name", meta_df["image_name"])
    table["set"] = meta_df["split"].map({"train": "training", "val": "validation", "test": "test"})
    labels = out_dir / "synthetic_koniq.csv"
    table.to_csv(labels, index=False, float_format="%.10g")
    meta_df.drop(columns="split").to_csv(out_dir / "synthetic_meta.csv", index=False, float_format="%.10g")
    return labels, images_dir


# --------------------------------------------------------------------------------------------
# distorted versions of rated photos (KADID-style: many pristine sources, quality anchored)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourcePhoto:
    """A rated photo used as a pristine source: its content id, file, split and quality (1-5)."""

    content: str
    path: Path
    split: str
    quality: float


def photos_from_manifest(
    rows: pd.DataFrame, min_quality: float = 1.0, max_photos: int = 0, seed: int = 0
) -> list[SourcePhoto]:
    """Pristine sources from manifest rows (``image``, ``root``, ``split``, ``mos``, ``lo``, ``hi``).

    A photo qualifies when its normalised MOS ``m = 4 (mos - lo)/(hi - lo) + 1`` is at least
    ``min_quality`` (KADID-10k's references were chosen as high-quality photos). ``max_photos``
    > 0 keeps a seeded random subset of that many, drawn in proportion from each split. Each
    source keeps its row's split, so derived images never cross the real data's split.
    """
    missing = [c for c in ("image", "root", "split", "mos", "lo", "hi") if c not in rows.columns]
    if missing:
        raise SyntheticError(f"photo sources: manifest rows lack columns {missing}")
    m, _ = normalise(rows["mos"], np.zeros(len(rows)), rows["lo"], rows["hi"])
    keep = rows.assign(m=m)[m >= min_quality].sort_values("image", kind="stable")
    if keep.empty:
        raise SyntheticError(f"photo sources: no photo has normalised MOS >= {min_quality}")
    if 0 < max_photos < len(keep):
        order = np.random.default_rng([seed, 0x9E0]).permutation(len(keep))
        keep = keep.iloc[np.sort(order[:max_photos])]
    return [
        SourcePhoto(
            content=Path(str(r.image)).stem,
            path=Path(str(r.root)) / str(r.image),
            split=str(r.split),
            quality=float(r.m),
        )
        for r in keep.itertuples()
    ]


def square_photo(path: str | Path, size: int) -> np.ndarray:
    """The centre square of a photo file, resized to ``size`` (Lanczos), as uint8 RGB."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        im = im.crop((left, top, left + side, top + side))
        return np.asarray(im.resize((size, size), Image.Resampling.LANCZOS))


def generate_from_photos(
    photos: list[SourcePhoto],
    out_dir: str | Path,
    *,
    image_size: int = 224,
    distortions=DEFAULT_DISTORTIONS,
    severities: int = 5,
    distortions_per_photo: int = 0,
    raters: int = 25,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Distorted versions of rated photos; writes ``images/*.png`` and ``labels.csv``, returns it.

    Each photo (its centre square at ``image_size``) appears pristine and under
    ``distortions_per_photo`` seeded-random distortions of ``distortions`` (0: all of them) at
    severities 1..``severities``, with the same functions and parameters as :func:`generate`.
    **Quality model:** the pristine image keeps its photo's own rated quality ``q0`` (1-5); a
    distorted one gets :func:`latent_quality` ``1 + (q0 - 1)(1 - impairment)``, the impairment
    mixing the severity table with ``1 - SSIM`` against the pristine image, exactly as the default
    dataset does with its contrast-based pristine level. The simulated panel of :func:`rate`
    (``raters`` votes, noise scaled by :func:`ambiguity`) turns it into a MOS and std on 1-5 (so
    import this file with ``lo: 1, hi: 5`` to keep the anchor). ``labels.csv`` is in the layout
    the ``generic-csv`` importer reads: ``image, mos, std, n_votes, split`` plus the provenance
    columns ``content`` (the photo's file stem), ``distortion`` and ``severity``. Derived images
    keep their photo's split. Same inputs give byte-identical files.
    """
    from tqdm import tqdm

    _check_photos(
        photos, distortions, distortions_per_photo, image_size=image_size, severities=severities, raters=raters
    )
    out_dir = Path(out_dir)
    images_dir = fresh_folder(out_dir / "images")
    meta = []
    for photo in tqdm(photos, desc="distorted photos", unit="photo", disable=not progress):
        meta += _distorted_photo(photo, images_dir, image_size, distortions, severities, distortions_per_photo, seed)
    df = pd.DataFrame(meta, columns=["image", "content", "distortion", "severity", "split", "quality"])
    rng = np.random.default_rng([seed, 0x5EED, 0xF0])
    table = panel_ratings(df["quality"].to_numpy(), df["distortion"].to_numpy(), raters, rng)
    labels = pd.DataFrame(
        {
            "image": df["image"],
            "mos": table["MOS"],
            "std": table["SD"],
            "n_votes": raters,
            "split": df["split"],
            "content": df["content"],
            "distortion": df["distortion"],
            "severity": df["severity"],
        }
    )
    path = out_dir / "labels.csv"
    labels.to_csv(path, index=False, float_format="%.10g")
    df.to_csv(out_dir / "quality.csv", index=False, float_format="%.10g")
    return path


def _check_photos(photos: list[SourcePhoto], distortions, distortions_per_photo: int, **sizes: int) -> None:
    _check(list(distortions), **sizes)
    if not photos:
        raise SyntheticError("generate_from_photos: no source photos")
    if not 0 <= distortions_per_photo <= len(distortions):
        raise SyntheticError(f"distortions_per_photo must lie in 0..{len(distortions)}, got {distortions_per_photo}")
    contents = [p.content for p in photos]
    if len(set(contents)) != len(contents):
        raise SyntheticError("generate_from_photos: two source photos share a content id (file stem)")


def _distorted_photo(
    photo: SourcePhoto, images_dir: Path, size: int, distortions, severities: int, per_photo: int, seed: int
) -> list[tuple]:
    """Write one photo's versions; ``(image, content, distortion, severity, split, quality)`` of each."""
    pid = zlib.crc32(photo.content.encode())
    clean = square_photo(photo.path, size)
    grey0 = _grey(clean)
    chosen = list(distortions)
    if per_photo:
        pick = np.random.default_rng([seed, pid, 0xD15]).permutation(len(chosen))[:per_photo]
        chosen = [chosen[i] for i in sorted(pick)]
    rows = []
    for v in write_versions(clean, images_dir, photo.content, chosen, severities, [seed, pid]):
        quality = photo.quality
        if v.distortion != "pristine":
            table = DISTORTIONS[v.distortion].table(v.severity, severities)
            quality = latent_quality(photo.quality, table, _ssim(v.pixels, grey0))
        rows.append((f"images/{v.name}", photo.content, v.distortion, v.severity, photo.split, quality))
    return rows
