"""The ``prepare`` stage's sources combined into one manifest (``prepare.sources``).

:func:`load_sources` reads every source in order, each keeping its own normalisation bounds (as
in the paper's Mix): a label file through its importer (:func:`deqa.importers.import_labels`), a
``synthetic`` source generated first by :func:`deqa.synthetic.generate` (and read back through
the KonIQ importer, so the default pipeline exercises a real importer), a ``distorted`` source
generated from the photos of an earlier source by :func:`deqa.synthetic.generate_from_photos`.

This is the one module that knows both the importers and the generators; neither of them imports
the other, and :mod:`deqa.labels` imports neither.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from deqa.config import DistortedConfig, SourceConfig, SyntheticConfig
from deqa.importers import LabelImportError, import_labels, manifest_columns
from deqa.schema import DERIVED_FORMATS
from deqa.synthetic import generate, generate_from_photos, photos_from_manifest

log = logging.getLogger(__name__)


def load_sources(
    sources: list[SourceConfig],
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    synthetic: SyntheticConfig | None = None,
    out_dir: str | Path = "data/prepare",
    progress: bool = True,
    annotate: bool = False,
    distorted: DistortedConfig | None = None,
) -> pd.DataFrame:
    """Import and concatenate several sources (``SourceConfig`` objects), each with its own bounds.

    A ``synthetic`` source is generated first (``synthetic``: a ``SyntheticConfig``) into
    ``out_dir`` and then loaded through the KonIQ importer. A ``distorted`` source is generated
    (``distorted``: a ``DistortedConfig``) into ``out_dir/<name>`` from the rated photos of the
    earlier source its ``photos`` names, each derived image in its photo's split, and loaded
    through the ``generic-csv`` importer with bounds ``lo: 1, hi: 5`` unless the source sets them
    (the simulated panel rates on 1-5). A source with ``required: false`` whose label file is
    absent is skipped with a warning. ``annotate``: as in :func:`deqa.importers.import_labels`.
    """
    if not sources:
        raise LabelImportError("prepare.sources is empty: name at least one data source")
    names = [s.name for s in sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise LabelImportError(f"source names must be unique, repeated: {', '.join(dupes)}")
    frames: dict[str, pd.DataFrame] = {}
    for src in sources:
        if src.format not in DERIVED_FORMATS and not src.required and not Path(src.labels).is_file():
            log.warning("source %s: label file %s not found; skipped (required: false)", src.name, src.labels)
            continue
        labels, fmt, root, lo, hi = _label_file(src, frames, synthetic, distorted, seed, out_dir, progress)
        frames[src.name] = import_labels(
            labels,
            fmt,
            root=root,
            name=src.name,
            lo=lo,
            hi=hi,
            split=src.split,
            seed=seed,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            annotate=annotate,
        )
    out = pd.concat(list(frames.values()), ignore_index=True)
    return out[manifest_columns(out, annotate)]


def _label_file(
    src: SourceConfig,
    frames: dict[str, pd.DataFrame],
    synthetic: SyntheticConfig | None,
    distorted: DistortedConfig | None,
    seed: int,
    out_dir: str | Path,
    progress: bool,
) -> tuple[Path | str, str, Path | str, float | None, float | None]:
    """``(label file, format, image root, lo, hi)`` of one source, generating it first if need be."""
    if src.format == "synthetic":
        labels, images = generate(synthetic or SyntheticConfig(), out_dir, seed=seed, progress=progress)
        return labels, "koniq", src.root or images, src.lo, src.hi
    if src.format == "distorted":
        labels = _generate_distorted(src, frames, distorted or DistortedConfig(), seed, out_dir, progress)
        lo, hi = (1.0 if src.lo is None else src.lo), (5.0 if src.hi is None else src.hi)
        return labels, "generic-csv", src.root or labels.parent, lo, hi
    return src.labels, src.format, src.root, src.lo, src.hi


def _generate_distorted(
    src: SourceConfig, frames: dict[str, pd.DataFrame], cfg: DistortedConfig, seed: int, out_dir, progress: bool
) -> Path:
    """The label file of a ``distorted`` source, generated from an earlier source's rated photos."""
    if src.photos not in frames:
        raise LabelImportError(
            f"source {src.name}: photos {src.photos!r} is not an earlier source "
            f"(loaded so far: {', '.join(frames) or 'none'})"
        )
    photos = photos_from_manifest(frames[src.photos], min_quality=cfg.min_quality, max_photos=cfg.max_photos, seed=seed)
    return generate_from_photos(
        photos,
        Path(out_dir) / src.name,
        image_size=cfg.image_size,
        distortions=cfg.distortions,
        severities=cfg.severities,
        distortions_per_photo=cfg.distortions_per_photo,
        raters=cfg.raters,
        seed=seed,
        progress=progress,
    )
