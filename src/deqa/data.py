"""Training data: label rows, image pairs and the one collator that turns pairs into model inputs.

- :class:`Examples`: the rows of a ``soft_labels`` file (image path, normalised ``m``/``s``, the
  five label probabilities, dataset id).
- :func:`make_pairs` / :class:`PairDataset`: one pair per image per epoch, the partner drawn from
  the same dataset, both seeded by ``(seed, epoch)`` only, so an epoch's data order is a pure
  function of the seed and never depends on what ran before it (exact resume).
- :class:`Collator`: a batch of pairs ``[(a, b), ...]`` becomes ``2B`` sequences ``[A_1..A_B,
  B_1..B_B]`` with their level positions, CE labels, soft-label targets and ``m``/``s``.

**With a feature store** (:class:`deqa.features.FeatureStore`, given to the collator): where the
store holds every image of a batch, the batch is assembled from the stored encodings without
decoding or processing any image, and carries the images' tower outputs in ``batch["features"]``
(training feeds them to the tower with :func:`deqa.features.fed`). The first such batch is checked
against the processor's own encoding of the same images; if they differ the collator stops using
the store (logged) and every batch goes through the processor. Without a store, or for a batch
with an image the store lacks, ``batch["features"]`` is ``None`` and the processor encodes the
images (loaded with :func:`deqa.images.load_image`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from deqa import LEVELS
from deqa.features import FeatureStore, check_batch, image_token_id
from deqa.images import load_image
from deqa.modeling import Conversation
from deqa.prompts import QUESTIONS
from deqa.schema import PROB_COLUMNS

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# label rows and pairs
# ---------------------------------------------------------------------------------------------
@dataclass
class Examples:
    """Label rows ready for training: image paths, normalised m/s, label probs, dataset ids."""

    paths: list[str]
    m: np.ndarray
    s: np.ndarray
    probs: np.ndarray
    dataset: np.ndarray

    @classmethod
    def from_csv(cls, path: str | Path) -> Examples:
        df = pd.read_csv(path)
        missing = [c for c in ["image", "root", "dataset", "m", "s", *PROB_COLUMNS] if c not in df.columns]
        if missing:
            raise ValueError(f"{path}: missing label columns {missing}")
        paths = [str(Path(r) / i) for r, i in zip(df["root"].astype(str), df["image"].astype(str), strict=True)]
        return cls(
            paths=paths,
            m=df["m"].to_numpy(float),
            s=df["s"].to_numpy(float),
            probs=df[PROB_COLUMNS].to_numpy(float),
            dataset=df["dataset"].astype(str).to_numpy(),
        )

    def __len__(self) -> int:
        return len(self.paths)


def make_pairs(dataset: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """One ``(a, b)`` pair per image ``a`` in a seeded random order; ``b`` from ``a``'s dataset."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(dataset))
    groups = {d: np.flatnonzero(dataset == d) for d in np.unique(dataset)}
    pairs = np.empty((len(order), 2), dtype=np.int64)
    for row, a in enumerate(order):
        pool = groups[dataset[a]]
        b = pool[rng.integers(len(pool))]
        if b == a and len(pool) > 1:
            b = pool[(np.flatnonzero(pool == a)[0] + 1 + rng.integers(len(pool) - 1)) % len(pool)]
        pairs[row] = (a, b)
    return pairs


class PairDataset(torch.utils.data.Dataset):
    """The epoch's pairs; :meth:`set_epoch` redraws them (a pure function of seed and epoch)."""

    def __init__(self, n_dataset: np.ndarray, seed: int):
        self.dataset, self.seed = n_dataset, seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.pairs = make_pairs(self.dataset, self.seed, epoch)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        return int(self.pairs[i, 0]), int(self.pairs[i, 1]), self.epoch


# ---------------------------------------------------------------------------------------------
# the collator
# ---------------------------------------------------------------------------------------------
class Collator:
    """Turns a batch of pairs into model inputs, level positions, CE labels and targets.

    ``features``: a :class:`~deqa.features.FeatureStore` whose images need no decoding or
    processing (module docstring); ``None`` runs the processor on every batch.
    """

    def __init__(self, conversation: Conversation, examples: Examples, seed: int, features: FeatureStore | None = None):
        self.conv, self.ex, self.seed = conversation, examples, seed
        self.conv.tokenizer.padding_side = "right"
        self.features = features if features is not None and features.enabled else None
        self.token_id = image_token_id(conversation.processor)
        self._texts: dict[tuple[int, int], str] = {}

    def text(self, i: int, epoch: int) -> str:
        """Image ``i``'s training text in ``epoch``: a seeded question and its label's level."""
        key = (
            int(np.random.default_rng([self.seed, epoch, i]).integers(len(QUESTIONS))),
            int(np.argmax(self.ex.probs[i])),
        )
        if key not in self._texts:  # chat templates are slow to render: once per question and level
            self._texts[key] = self.conv.training_text(QUESTIONS[key[0]], LEVELS[key[1]])
        return self._texts[key]

    def encode(self, paths: list[str], texts: list[str]) -> tuple[dict, object]:
        """Model inputs for ``texts`` with the images at ``paths``, and the stored tower outputs
        (``None`` where the batch went through the processor)."""
        keys = self.features.holds(paths) if self.features is not None else None
        if keys is not None:
            problem = check_batch(self.features, self.conv.processor, paths, texts, self.token_id, "training")
            if problem:
                log.info("feature store not used for training batches: assembled batch differs (%s)", problem)
                self.features = None
                return self.process(paths, texts), None
            batch = self.features.batch(keys, texts, self.conv.tokenizer, self.token_id)
            return batch["inputs"], batch["features"]
        return self.process(paths, texts), None

    def process(self, paths: list[str], texts: list[str]) -> dict:
        """The processor's own encoding (loads the images)."""
        images = [load_image(p) for p in paths]
        return dict(self.conv.processor(text=texts, images=images, padding=True, return_tensors="pt"))

    def pairs(self, batch: list[tuple[int, int, int]]) -> dict:
        idx = [a for a, _, _ in batch] + [b for _, b, _ in batch]
        epoch = batch[0][2]
        enc, features = self.encode([self.ex.paths[i] for i in idx], [self.text(i, epoch) for i in idx])
        level_pos = self.conv.level_positions(enc["input_ids"], enc["attention_mask"])
        return {
            "inputs": enc,
            "features": features,
            "level_pos": level_pos,
            "index": torch.tensor(idx),
            "labels": self.conv.answer_labels(enc["input_ids"], enc["attention_mask"], level_pos),
            "target": torch.tensor(self.ex.probs[idx], dtype=torch.float32),
            "m": torch.tensor(self.ex.m[idx], dtype=torch.float32),
            "s": torch.tensor(self.ex.s[idx], dtype=torch.float32),
        }
