"""The ``features`` stage's logic: which images get stored tower outputs, and the store itself.

:func:`stage_images` lists every image the later stages read: the validated manifest's rows (all
splits: training, validation and test) and every ``evaluate.extra`` set's. :func:`build_store`
loads the base model as training does (weights in the checkpoint's dtype, on CUDA where
available), freezes it, and calls :func:`deqa.features.extract`; where the tower will be trained
(``train.train_vision``) or ``features.enabled`` is false, the store is off with that reason.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from deqa.config import Params
from deqa.feature_extract import extract
from deqa.features import FeatureStore

log = logging.getLogger(__name__)


def stage_images(manifest: str | Path, extra: list, seed: int = 0) -> list[str]:
    """Image paths of the manifest's rows and of the ``evaluate.extra`` sets, in that order."""
    from deqa.importers import import_source

    df = pd.read_csv(manifest, usecols=["image", "root"])
    frames = [df]
    for source in extra:
        if not source.required and not Path(source.labels).is_file():
            continue
        frames.append(import_source(source, split="test", seed=seed)[["image", "root"]])
    rows = pd.concat(frames, ignore_index=True)
    return [str(Path(r) / i) for r, i in zip(rows["root"].astype(str), rows["image"].astype(str), strict=True)]


def build_store(
    params: Params, images: list[str], base_dir: str | Path, progress: bool = True, cache_dir: str | Path | None = None
) -> FeatureStore:
    """The feature store of ``images`` for the base model in ``base_dir`` (module docstring);
    ``cache_dir``: entries of earlier runs (:class:`deqa.feature_extract.EntryCache`)."""
    import torch

    from deqa.modeling import load_model, load_processor, resolve_checkpoint

    if not params.features.enabled:
        return FeatureStore.off("features.enabled is false")
    if params.train.train_vision:
        return FeatureStore.off("train.train_vision is true: the tower is trained, its outputs change")
    path = resolve_checkpoint(base_dir)
    trust = params.model.trust_remote_code
    model = load_model(path, trust_remote_code=trust, device="cuda" if torch.cuda.is_available() else None)
    model.requires_grad_(False)
    processor = load_processor(path, trust_remote_code=trust)
    return extract(model, processor, images, progress=progress, cache_dir=cache_dir)
