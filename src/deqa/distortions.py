"""Distortions of a clean image at rising severities, and the one loop that writes them.

Every generated set distorts its clean images here: the synthetic crops and the distorted
versions of rated photos (:mod:`deqa.synthetic`) and the sensitivity scenes
(:mod:`deqa.sensitivity`). :data:`DISTORTIONS` holds each distortion's function with its parameter
at the mildest and the strongest severity (geometric in between, :meth:`Distortion.level`), so
severity ``s`` means the same thing in every set. :func:`write_versions` saves an image pristine
and under each distortion at severities 1..N, every distortion drawing its randomness from a
stream seeded by the caller's key and the distortion's name: the same inputs give byte-identical
PNG files, and adding a distortion leaves the others' images unchanged.

A distortion maps float32 RGB in [0, 1] (H, W, 3) to the same; its parameter is the ``level``.
"""

from __future__ import annotations

import io
import shutil
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


class SyntheticError(ValueError):
    """Bad parameters of a generated set (unknown photo or distortion, overlapping splits...)."""


# --------------------------------------------------------------------------------------------
# distortions: float32 RGB in [0, 1] -> same; ``level`` is the distortion parameter
# --------------------------------------------------------------------------------------------
def _gaussian_blur(img, sigma, rng):
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(img, sigma=(sigma, sigma, 0), mode="reflect")


def _gaussian_noise(img, sd, rng):
    return img + rng.normal(0.0, sd, img.shape).astype(np.float32)


def _jpeg(img, quality, rng):
    buf = io.BytesIO()
    Image.fromarray(to_uint8(img)).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0


def _contrast(img, factor, rng):
    mean = float(img.mean())
    return mean + factor * (img - mean)


def _pixelation(img, block, rng):
    size = img.shape[0]
    small = max(1, round(size / block))
    pil = Image.fromarray(to_uint8(img)).resize((small, small), Image.Resampling.BOX)
    return np.asarray(pil.resize((size, size), Image.Resampling.NEAREST), dtype=np.float32) / 255.0


def _motion_blur(img, length, rng):
    from scipy.signal import fftconvolve
    from skimage.draw import line

    length = int(length)
    angle = rng.uniform(0, np.pi)
    c = length // 2
    dx, dy = np.cos(angle) * c, np.sin(angle) * c
    kernel = np.zeros((2 * c + 1, 2 * c + 1), np.float32)
    rr, cc = line(round(c - dy), round(c - dx), round(c + dy), round(c + dx))
    kernel[rr, cc] = 1.0
    kernel /= kernel.sum()
    padded = np.pad(img, ((c, c), (c, c), (0, 0)), mode="reflect")
    return fftconvolve(padded, kernel[:, :, None], mode="valid", axes=(0, 1)).astype(np.float32)


LUMA = np.array([0.299, 0.587, 0.114], np.float32)
"""BT.601 luma weights of R, G, B."""


def luma(img: np.ndarray) -> np.ndarray:
    """The luma of a float32 ``(..., 3)`` image, from elementwise products and sums only.

    ``img @ LUMA`` would go to the BLAS, whose dot-product kernels (picked by CPU model) round
    differently in the last bit, so the distorted images, SSIMs and latent qualities of the
    deterministic stages would differ between machines.
    """
    return img[..., 0] * LUMA[0] + img[..., 1] * LUMA[1] + img[..., 2] * LUMA[2]


def _saturation(img, factor, rng):
    grey = luma(img)
    return grey[..., None] + factor * (img - grey[..., None])


@dataclass(frozen=True)
class Distortion:
    """A distortion with its parameter at the mildest and the strongest severity and the
    severity-table impairment (0 = none, 1 = worst) at those two ends."""

    fn: Callable
    mild: float
    strong: float
    impairment: tuple[float, float]
    integer: bool = False

    def level(self, s: int, severities: int) -> float:
        """Parameter of severity ``s`` (1..severities), geometric between mild and strong."""
        t = 1.0 if severities == 1 else (s - 1) / (severities - 1)
        value = self.mild * (self.strong / self.mild) ** t
        return float(round(value)) if self.integer else value

    def table(self, s: int, severities: int) -> float:
        t = 1.0 if severities == 1 else (s - 1) / (severities - 1)
        return self.impairment[0] + t * (self.impairment[1] - self.impairment[0])


DISTORTIONS: dict[str, Distortion] = {
    "gaussian_blur": Distortion(_gaussian_blur, 0.6, 3.5, (0.12, 0.80)),
    "gaussian_noise": Distortion(_gaussian_noise, 0.02, 0.16, (0.12, 0.80)),
    "jpeg": Distortion(_jpeg, 45, 4, (0.12, 0.80), integer=True),
    "contrast": Distortion(_contrast, 0.7, 0.12, (0.08, 0.65)),
    "pixelation": Distortion(_pixelation, 2, 8, (0.10, 0.78), integer=True),
    "motion_blur": Distortion(_motion_blur, 3, 17, (0.12, 0.80), integer=True),
    "saturation": Distortion(_saturation, 0.6, 0.05, (0.05, 0.45)),
}
"""Available distortions (``prepare.synthetic.distortions``, ``prepare.distorted.distortions`` and
``sensitivity.distortions`` pick from these)."""


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Float RGB in [0, 1] to ``uint8`` (clipped, rounded half up)."""
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def check_distortions(names: Iterable[str], what: str) -> None:
    """Raise :class:`SyntheticError` naming ``what`` (the params key) if a name is not in :data:`DISTORTIONS`."""
    unknown = [d for d in names if d not in DISTORTIONS]
    if unknown:
        raise SyntheticError(f"{what}: unknown {unknown}; known: {', '.join(DISTORTIONS)}")


# --------------------------------------------------------------------------------------------
# the loop: distort -> save -> record
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Version:
    """One image written by :func:`write_versions`: file name, distortion (``pristine`` for the
    clean image), severity (0 for pristine) and its pixels (uint8 RGB)."""

    name: str
    distortion: str
    severity: int
    pixels: np.ndarray


def fresh_folder(path: str | Path) -> Path:
    """``path`` as a new empty folder (removed first if it exists: stale files never leak in)."""
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def write_versions(
    clean: np.ndarray, folder: Path, stem: str, distortions: Sequence[str], severities: int, key: Sequence[int]
) -> list[Version]:
    """Save ``clean`` (uint8 RGB) and its distorted versions as PNG under ``folder``.

    Files: ``<stem>_pristine.png``, then ``<stem>_<distortion>_<s>.png`` for every distortion (in
    the given order) at severities 1..``severities``. Distortion ``d`` draws from
    ``numpy.random.default_rng([*key, crc32(d)])``. Returns the written images in that order.
    """
    Image.fromarray(clean).save(folder / f"{stem}_pristine.png", compress_level=1)
    written = [Version(f"{stem}_pristine.png", "pristine", 0, clean)]
    base = clean.astype(np.float32) / 255.0
    for name in distortions:
        dist = DISTORTIONS[name]
        rng = np.random.default_rng([*key, zlib.crc32(name.encode())])
        for s in range(1, severities + 1):
            pixels = to_uint8(dist.fn(base, dist.level(s, severities), rng))
            file = f"{stem}_{name}_{s}.png"
            Image.fromarray(pixels).save(folder / file, compress_level=1)
            written.append(Version(file, name, s, pixels))
    return written
