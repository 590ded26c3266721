"""A distortion-sensitivity set: clean content that no training source uses, at rising severities.

Does a scorer's output fall as an image gets blurrier, noisier, blockier...? On real test sets
that question is mixed up with content. This set isolates it: each *content* (a scene) is shown
pristine and under every distortion of :data:`deqa.distortions.DISTORTIONS` that is asked for, at
severities 1..N, written by the same loop as the training sets (:func:`deqa.distortions.write_versions`),
so severity ``s`` here is severity ``s`` there. The evaluation metric is the per-scene SRCC
between severity and score (:func:`deqa.metrics.severity_monotonicity`).

Content, chosen so that no training source sees it:

* **procedural scenes** (:data:`SCENE_KINDS`, seeded, rendered at twice the size and
  downsampled with a Lanczos filter so that edges are clean, not aliased):
  ``dead_leaves`` (occluding discs with power-law radii: the natural-image statistics of the
  ISO texture-sharpness chart), ``shapes`` (coloured ellipses, boxes and polygons on a gradient),
  ``landscape`` (sky, sun and fractal ridges), ``texture`` (coloured 1/f noise) and ``text``
  (lines of random words on a page);
* **package images that the synthetic source and the tiny model's standardisation do not use**
  (:data:`PACKAGE_IMAGES`): scikit-image ``colorwheel``, ``logo``, ``page``, ``text`` and
  matplotlib's ``Minduka_Present_Blue_Pack.png`` (disjoint from :data:`deqa.synthetic.BASE_PHOTOS`
  and :data:`deqa.tiny.CALIBRATION_PHOTOS`; a test holds that).

:func:`generate_sensitivity_set` writes ``images/*.png`` and ``labels.csv`` in the layout the
``generic-csv`` importer reads: ``image, mos, split`` plus the provenance columns ``content``,
``distortion`` (``pristine`` for the undistorted scene) and ``severity`` (0 for pristine).
**The MOS is nominal**, not rated: ``mos = 1 + 4 (1 - severity / N)`` (5 for pristine, 1 at the
strongest severity) -- only its order within a scene and distortion means anything, so read the
set through ``severity_monotonicity``, not through SRCC against this MOS across scenes.
Same arguments give byte-identical files.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from deqa.distortions import SyntheticError, check_distortions, fresh_folder, to_uint8, write_versions
from deqa.schema import DEFAULT_DISTORTIONS

SCENE_KINDS = ("dead_leaves", "shapes", "landscape", "texture", "text")
PACKAGE_IMAGES = ("colorwheel", "logo", "page", "text", "minduka")


# --------------------------------------------------------------------------------------------
# procedural scenes: (size, rng) -> uint8 RGB (size, size, 3)
# --------------------------------------------------------------------------------------------
def _colour(rng: np.random.Generator, lo: int = 20, hi: int = 235) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi + 1, 3))


def _downsample(img: Image.Image, size: int) -> np.ndarray:
    return np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.LANCZOS))


def _gradient(big: int, rng: np.random.Generator) -> Image.Image:
    a, b = np.array(_colour(rng), float), np.array(_colour(rng), float)
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:big, 0:big] / big
    t = np.clip(np.cos(angle) * xx + np.sin(angle) * yy, 0, 1)[..., None]
    return Image.fromarray((a + t * (b - a)).astype(np.uint8))


def dead_leaves(size: int, rng: np.random.Generator) -> np.ndarray:
    big = 2 * size
    img = Image.new("RGB", (big, big), _colour(rng))
    draw = ImageDraw.Draw(img)
    r_min, r_max = big / 100, big / 5
    for _ in range(600):
        u = rng.uniform()  # radius density ~ r^-3 between r_min and r_max
        r = (r_min**-2 - u * (r_min**-2 - r_max**-2)) ** -0.5
        x, y = rng.uniform(-r, big + r, 2)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=_colour(rng))
    return _downsample(img, size)


def shapes(size: int, rng: np.random.Generator) -> np.ndarray:
    big = 2 * size
    img = _gradient(big, rng)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(6, 16))):
        kind = rng.integers(3)
        x0, y0 = rng.uniform(-0.1, 0.9, 2) * big
        w, h = rng.uniform(0.08, 0.45, 2) * big
        box = [x0, y0, x0 + w, y0 + h]
        outline = _colour(rng, 0, 80) if rng.uniform() < 0.4 else None
        if kind == 0:
            draw.ellipse(box, fill=_colour(rng), outline=outline, width=max(1, big // 100))
        elif kind == 1:
            draw.rectangle(box, fill=_colour(rng), outline=outline, width=max(1, big // 100))
        else:
            pts = [(x0 + rng.uniform(0, w), y0 + rng.uniform(0, h)) for _ in range(int(rng.integers(3, 7)))]
            draw.polygon(pts, fill=_colour(rng), outline=outline)
    return _downsample(img, size)


def _fractal_1d(n: int, rng: np.random.Generator, beta: float = 2.0) -> np.ndarray:
    freqs = np.fft.rfftfreq(n)
    amp = np.where(freqs > 0, freqs.clip(1e-9) ** (-beta / 2), 0.0)
    spec = amp * np.exp(2j * np.pi * rng.uniform(size=freqs.size))
    line = np.fft.irfft(spec, n)
    return (line - line.min()) / max(np.ptp(line), 1e-12)


def _fractal_2d(n: int, rng: np.random.Generator, beta: float) -> np.ndarray:
    fy, fx = np.fft.fftfreq(n)[:, None], np.fft.rfftfreq(n)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    amp = np.where(f > 0, f.clip(1e-9) ** (-beta / 2), 0.0)
    field = np.fft.irfft2(amp * np.exp(2j * np.pi * rng.uniform(size=amp.shape)), s=(n, n))
    return (field - field.mean()) / max(field.std(), 1e-12)


def landscape(size: int, rng: np.random.Generator) -> np.ndarray:
    big = 2 * size
    img = _gradient(big, rng)
    draw = ImageDraw.Draw(img)
    sx, sy, sr = rng.uniform(0.1, 0.9) * big, rng.uniform(0.05, 0.35) * big, rng.uniform(0.03, 0.08) * big
    draw.ellipse([sx - sr, sy - sr, sx + sr, sy + sr], fill=_colour(rng, 200, 255))
    texture = _fractal_2d(big, rng, 2.5)
    arr = np.asarray(img, dtype=np.float64)
    layers = int(rng.integers(2, 5))
    for k in range(layers):
        base = (0.3 + 0.5 * (k + 1) / layers) * big
        ridge = base - _fractal_1d(big, rng) * rng.uniform(0.15, 0.4) * big
        below = np.arange(big)[:, None] >= ridge[None, :]
        colour = np.array(_colour(rng, 10, 200), float)
        shade = colour[None, None, :] * (1 + 0.12 * texture[..., None])
        arr = np.where(below[..., None], shade, arr)
    return _downsample(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), size)


def texture(size: int, rng: np.random.Generator) -> np.ndarray:
    big = 2 * size
    beta = rng.uniform(2.2, 3.2)
    shared = _fractal_2d(big, rng, beta)
    chans = [0.7 * shared + 0.3 * _fractal_2d(big, rng, beta) for _ in range(3)]
    centre, spread = rng.uniform(0.3, 0.7, 3), rng.uniform(0.08, 0.2, 3)
    arr = np.stack([c + s * ch for c, s, ch in zip(centre, spread, chans, strict=True)], axis=-1)
    return _downsample(Image.fromarray(to_uint8(arr)), size)


def text_page(size: int, rng: np.random.Generator) -> np.ndarray:
    big = 2 * size
    img = Image.new("RGB", (big, big), _colour(rng, 215, 255))
    draw = ImageDraw.Draw(img)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    y = rng.uniform(0.02, 0.08) * big
    if rng.uniform() < 0.5:  # a coloured header band
        h = rng.uniform(0.08, 0.18) * big
        draw.rectangle([0, y, big, y + h], fill=_colour(rng, 30, 200))
        y += h + 0.03 * big
    while y < big * 0.95:
        px = int(rng.integers(big // 28, big // 10))
        font = ImageFont.load_default(size=px)
        words = ["".join(rng.choice(letters, int(rng.integers(2, 10)))) for _ in range(int(rng.integers(3, 12)))]
        draw.text((rng.uniform(0.02, 0.1) * big, y), " ".join(words), fill=_colour(rng, 0, 90), font=font)
        y += px * rng.uniform(1.3, 2.0)
    return _downsample(img, size)


SCENES = {"dead_leaves": dead_leaves, "shapes": shapes, "landscape": landscape, "texture": texture, "text": text_page}


def package_image(name: str, size: int) -> np.ndarray:
    """One of :data:`PACKAGE_IMAGES`, centre-cropped to a square and resized to ``size``."""
    if name not in PACKAGE_IMAGES:
        raise SyntheticError(f"unknown sensitivity image {name!r}; known: {', '.join(PACKAGE_IMAGES)}")
    if name == "minduka":
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("Minduka_Present_Blue_Pack.png") as fh:
            img = Image.open(fh)
            img.load()
    else:
        import skimage.data

        img = Image.fromarray(np.asarray(getattr(skimage.data, name)()))
    if img.mode in ("RGBA", "LA", "P"):  # transparency over white
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(canvas, rgba)
    img = img.convert("RGB")
    w, h = img.size
    side = min(w, h)
    img = img.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    return np.asarray(img.resize((size, size), Image.Resampling.LANCZOS))


def contents(
    image_size: int, scenes_per_kind: int, seed: int = 0, kinds=SCENE_KINDS, photos=PACKAGE_IMAGES
) -> dict[str, np.ndarray]:
    """Content name -> clean uint8 RGB image: ``scenes_per_kind`` seeded scenes of each kind,
    then the package images."""
    unknown = [k for k in kinds if k not in SCENES]
    if unknown:
        raise SyntheticError(f"unknown scene kind(s) {unknown}; known: {', '.join(SCENE_KINDS)}")
    out = {}
    for kind in kinds:
        for i in range(scenes_per_kind):
            rng = np.random.default_rng([seed, zlib.crc32(kind.encode()), i])
            out[f"{kind}_{i:02d}"] = SCENES[kind](image_size, rng)
    for name in photos:
        out[name] = package_image(name, image_size)
    return out


def nominal_mos(severity: np.ndarray | int, severities: int) -> np.ndarray:
    """``1 + 4 (1 - severity / severities)``: 5 for pristine, 1 at the strongest severity."""
    return 1.0 + 4.0 * (1.0 - np.asarray(severity, dtype=float) / severities)


def generate_sensitivity_set(
    out_dir: str | Path,
    *,
    image_size: int = 224,
    scenes_per_kind: int = 4,
    severities: int = 5,
    distortions=DEFAULT_DISTORTIONS,
    kinds=SCENE_KINDS,
    photos=PACKAGE_IMAGES,
    seed: int = 0,
    split: str = "test",
) -> Path:
    """Write ``images/*.png`` and ``labels.csv`` under ``out_dir``; returns the label file.

    Every content appears pristine (severity 0) and at severities 1..``severities`` of every
    distortion in ``distortions`` (:mod:`deqa.distortions`). The images folder is
    recreated, so stale files never leak in.
    """
    check_distortions(distortions, "sensitivity distortions")
    if image_size < 32 or severities < 1 or scenes_per_kind < 0:
        raise SyntheticError(
            f"sensitivity set: need image_size >= 32, severities >= 1, scenes_per_kind >= 0; "
            f"got {image_size}, {severities}, {scenes_per_kind}"
        )
    out_dir = Path(out_dir)
    images = fresh_folder(out_dir / "images")
    rows = []
    for name, clean in contents(image_size, scenes_per_kind, seed, kinds, photos).items():
        key = [seed, zlib.crc32(name.encode())]
        for v in write_versions(clean, images, name, distortions, severities, key):
            rows.append((f"images/{v.name}", name, v.distortion, v.severity))
    df = pd.DataFrame(rows, columns=["image", "content", "distortion", "severity"])
    df.insert(1, "mos", nominal_mos(df["severity"].to_numpy(), severities))
    df.insert(2, "split", split)
    labels = out_dir / "labels.csv"
    df.to_csv(labels, index=False, float_format="%.10g")
    return labels
