"""Training data: label rows, image pairs and the one collator that turns pairs into model inputs.

- :class:`Examples`: the rows of a ``soft_labels`` file (image path, normalised ``m``/``s``, the
  five label probabilities, dataset id).
- :func:`make_pairs` / :class:`PairDataset`: one pair per image per epoch, the partner drawn from
  the same dataset, both seeded by ``(seed, epoch)`` only, so an epoch's data order is a pure
  function of the seed and never depends on what ran before it (exact resume).
- :class:`Collator`: a batch of pairs ``[(a, b), ...]`` becomes ``2B`` sequences ``[A_1..A_B,
  B_1..B_B]`` with their level positions, CE labels, soft-label targets and ``m``/``s``.

**Encoding without the images.** Images are loaded only through :func:`deqa.images.load_image`
and encoded by the model's own processor. :class:`EncodingCache` keeps, per image, what the
processor produced for it (its image tensors, and the token ids that the processor put in place of
the image token, e.g. LLaVA's repeated ``<image>``, Qwen2-VL's ``<|image_pad|>`` run, Idefics3's
``<fake_token_around_image>...``). A batch is then assembled without decoding or processing any
image: each text is tokenized (memoised per distinct text), its image token replaced by its
image's expansion, the rows padded as the tokenizer pads, the image tensors concatenated. The first
batch is also encoded by the processor itself and the two must be identical (keys, dtypes, values);
otherwise the cache turns off, with a log line, and every batch goes through the processor. A later
batch whose images' tensors do not concatenate (different sizes that the processor would pad) goes
through the processor too. Each image also gets a content key (a digest of its tensors) that
:class:`deqa.feature_cache.FeatureCache` uses, so cached batches need no hashing.

**Image-free batches.** With a frozen tower, training reads its outputs from
:class:`deqa.feature_cache.FeatureCache` (given as ``features``), which fills before step 1. Once
the feature cache holds an image's features, its entry drops its float image tensors (keeping
their shape and dtype; masks and grids stay): a batch whose images all have cached features gets
NaN-filled stand-ins of the right shape (not zeros: Idefics3 drops all-zero images as padding),
which the tower never sees (the cache answers every row by key), so no image is decoded,
processed or kept in memory after the warm-up. A batch with an image whose features are
not cached (the feature cache off, or turned off) is assembled only from entries that still hold
their tensors, else it goes through the processor: never from placeholders.

Without a feature cache the entries keep the processed image tensors, so they take memory: 192 KiB
per image for the default 128 px model (~0.8 GiB for its 4,340 training images), 1.3 MiB for a
336 px LLaVA, 1.7 MiB at 384 px. A batch is assembled only when *all* its images have entries, so
a cache that cannot hold every training image saves almost nothing (random pairs nearly always
include one it lacks) while still costing its memory: then, when the first entry times the number
of training images exceeds :data:`MAX_ENTRY_BYTES`, the cache turns off at once (logged) and every
batch goes through the processor. Entries also stop growing at that budget (logged once).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from deqa import LEVELS
from deqa.feature_cache import tensor_digest
from deqa.images import load_image
from deqa.modeling import Conversation
from deqa.prompts import QUESTIONS
from deqa.schema import PROB_COLUMNS

log = logging.getLogger(__name__)

MAX_ENTRY_BYTES = 2 << 30
"""Memory budget of the per-image entries of one :class:`EncodingCache` (2 GiB)."""


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
# per-image processor outputs
# ---------------------------------------------------------------------------------------------
@dataclass
class _Entry:
    tensors: dict[str, torch.Tensor]  # the processor's image tensors for this image alone (floats dropped once cached)
    expansion: list[int]  # the token ids the processor put in place of the image token
    key: str  # content digest of ``tensors`` (the feature cache's key)
    aligned: dict[str, tuple[int, list[int]]]  # per-token fields: (value on text, values on the expansion)
    shapes: dict[str, tuple[tuple[int, ...], torch.dtype]]  # shape and dtype of each of ``tensors``


def _same_encoding(a: dict, b: dict) -> str | None:
    """``None`` where two encodings are identical, else what differs."""
    if set(a) != set(b):
        return f"keys {sorted(a)} != {sorted(b)}"
    for k in a:
        x, y = a[k], b[k]
        if torch.is_tensor(x) != torch.is_tensor(y):
            return f"{k}: types differ"
        if torch.is_tensor(x):
            if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x, y):
                return f"{k}: {x.dtype}{tuple(x.shape)} != {y.dtype}{tuple(y.shape)} or values differ"
        elif x != y:
            return f"{k}: values differ"
    return None


class EncodingCache:
    """Per-image processor outputs; assembles batches without touching the images (module docstring)."""

    TEXT_KEYS = ("input_ids", "attention_mask")

    def __init__(
        self, processor, probe_text: str, enabled: bool = True, max_bytes: int = MAX_ENTRY_BYTES, images: int = 0
    ):
        self.processor = processor
        self.images = images  # how many distinct images the run will encode (0: unknown)
        self.features = None  # a FeatureCache: entries whose features it holds drop their image tensors
        self._holding: list[_Entry] = []  # entries still holding image tensors
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.probe_text = probe_text
        self.entries: dict[str, _Entry] = {}
        self.bytes, self.max_bytes = 0, max_bytes
        self._plain_ids: dict[str, list[int]] = {}
        self.state = "unverified" if enabled else "off"
        self.image_token_id = self._image_token_id()

    def _image_token_id(self) -> int | None:
        if self.state == "off":
            return None
        tid = getattr(self.processor, "image_token_id", None)
        token = getattr(self.processor, "image_token", None)
        if tid is None and isinstance(token, str):
            tid = self.tokenizer.convert_tokens_to_ids(token)
        if not isinstance(tid, int) or tid < 0 or tid == getattr(self.tokenizer, "unk_token_id", None):
            self._off("the processor names no image token")
            return None
        extra = set(self.tokenizer([self.probe_text]).keys()) - set(self.TEXT_KEYS)
        if extra:
            self._off(f"the tokenizer also returns {sorted(extra)}")
            return None
        return tid

    def _off(self, reason: str) -> None:
        if self.state != "off":
            log.info("fast collation off (every batch goes through the processor): %s", reason)
        self.state = "off"
        self.entries.clear()
        self._holding.clear()

    # ------------------------------------------------------------------ encoding
    def _image_free(self) -> bool:
        return self.features is not None and self.features.enabled and self.state == "on"

    def _drop_cached_images(self) -> None:
        """Release the image tensors of the entries whose features the feature cache now holds."""
        if not self._image_free():
            return
        keep = []
        for e in self._holding:
            if self.features.holds(e.key):
                # float image tensors only; masks and grids are small and some models read them
                floats = [n for n, t in e.tensors.items() if t.is_floating_point()]
                self.bytes -= sum(e.tensors.pop(n).nbytes for n in floats)
            else:
                keep.append(e)
        self._holding = keep

    def encode(self, paths: list[str], texts: list[str]) -> tuple[dict, list[str] | None]:
        """The processor's encoding of ``texts`` with the images at ``paths`` (padded, tensors),
        and per-image content keys where it was assembled from cached entries."""
        if self.state == "off":
            return self.process(paths, texts), None
        self._drop_cached_images()
        loaded: dict[str, object] = {}
        entries = [self._entry(p, loaded) for p in paths]
        fast = None if self.state == "off" or None in entries else self._assemble(entries, texts)
        if self.state == "unverified":
            slow = self.process(paths, texts, loaded)
            problem = (
                "its batches cannot be assembled from per-image encodings"
                if fast is None
                else _same_encoding(fast, slow)
            )
            if problem is not None:
                self._off(f"the assembled batch differs from the processor's ({problem})")
                return slow, None
            self.state = "on"
            log.info("fast collation on: batches are assembled from per-image processor outputs")
            return slow, [e.key for e in entries]
        if fast is None:
            return self.process(paths, texts, loaded), None
        return fast, [e.key for e in entries]

    def process(self, paths: list[str], texts: list[str], loaded: dict | None = None) -> dict:
        """The processor's own encoding (loads the images)."""
        loaded = loaded if loaded is not None else {}
        images = [loaded[p] if p in loaded else load_image(p) for p in paths]
        return dict(self.processor(text=texts, images=images, padding=True, return_tensors="pt"))

    def _plain(self, text: str) -> list[int]:
        ids = self._plain_ids.get(text)
        if ids is None:
            if len(self._plain_ids) > 100_000:
                self._plain_ids.clear()
            ids = self._plain_ids[text] = list(self.tokenizer(text)["input_ids"])
        return ids

    def _entry(self, path: str, loaded: dict) -> _Entry | None:
        entry = self.entries.get(path)
        if entry is not None or self.state == "off" or self.bytes > self.max_bytes:
            return entry
        loaded[path] = image = load_image(path)
        enc = self.processor(text=[self.probe_text], images=[image], return_tensors="pt")
        ids, plain = enc["input_ids"][0].tolist(), self._plain(self.probe_text)
        if plain.count(self.image_token_id) != 1:
            self._off("the prompt does not hold exactly one image token")
            return None
        k, tail = plain.index(self.image_token_id), len(plain) - plain.index(self.image_token_id) - 1
        if len(ids) < len(plain) or ids[:k] != plain[:k] or ids[len(ids) - tail :] != plain[k + 1 :]:
            self._off("the processor changes the text around the image token")
            return None
        span = slice(k, len(ids) - tail)
        tensors, aligned = {}, {}
        for name, value in enc.items():
            if name in self.TEXT_KEYS:
                continue
            if not torch.is_tensor(value) or value.dim() == 0:
                self._off(f"the processor returns {name!r}, which is not a batch tensor")
                return None
            if value.shape == (1, len(ids)):  # a per-token field (e.g. Qwen2-VL's mm_token_type_ids)
                row = value[0].tolist()
                outside = set(row[: span.start] + row[span.stop :])
                if len(outside) > 1:
                    self._off(f"the per-token field {name!r} varies outside the image's tokens")
                    return None
                aligned[name] = (outside.pop() if outside else 0, row[span])
            else:
                tensors[name] = value
        size = sum(t.nbytes for t in tensors.values())
        if size * self.images > self.max_bytes and not (self.features is not None and self.features.enabled):
            self._off(
                f"entries for the {self.images:,} images would take {size * self.images / 2**30:.1f} GiB "
                f"(budget {self.max_bytes / 2**30:.1f} GiB)"
            )
            return None
        names = sorted(tensors)
        key = tensor_digest(*(tensors[n] for n in names), extra=str(names))
        shapes = {n: (tuple(t.shape), t.dtype) for n, t in tensors.items()}
        entry = _Entry(tensors, ids[span], key, aligned, shapes)
        self.entries[path] = entry
        self._holding.append(entry)
        self.bytes += size
        if self.bytes > self.max_bytes:
            log.info(
                "fast collation: the per-image entries reached %.1f GiB (%d images); batches with other "
                "images go through the processor",
                self.bytes / 2**30,
                len(self.entries),
            )
        return entry

    def _assemble(self, entries: list[_Entry], texts: list[str]) -> dict | None:
        rows, fields = [], {name: [] for name in entries[0].aligned}
        for entry, text in zip(entries, texts, strict=True):
            plain = self._plain(text)
            if plain.count(self.image_token_id) != 1 or set(entry.aligned) != set(fields):
                return None
            k = plain.index(self.image_token_id)
            rows.append(plain[:k] + entry.expansion + plain[k + 1 :])
            for name, (fill, values) in entry.aligned.items():
                fields[name].append([fill] * k + values + [fill] * (len(plain) - k - 1))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out = {"input_ids": self._pad(rows, pad), "attention_mask": self._pad([[1] * len(r) for r in rows], 0)}
        for name, values in fields.items():
            out[name] = self._pad(values, entries[0].aligned[name][0])
        image_free = any(name not in e.tensors for e in entries for name in e.shapes)
        if image_free and not (self._image_free() and all(self.features.holds(e.key) for e in entries)):
            return None  # never a stand-in for an image whose features are not cached
        for name, (shape, dtype) in entries[0].shapes.items():
            if any(e.shapes.get(name, ((), None))[0][1:] != shape[1:] or e.shapes[name][1] != dtype for e in entries):
                return None
            if all(name in e.tensors for e in entries):
                out[name] = torch.cat([e.tensors[name] for e in entries], dim=0)
            else:  # NaN, not zeros: some families drop all-zero images as padding (Idefics3)
                rows = sum(e.shapes[name][0][0] for e in entries)
                out[name] = torch.full((), float("nan"), dtype=dtype).expand(rows, *shape[1:])
        return out

    def _pad(self, rows: list[list[int]], value: int) -> torch.Tensor:
        """Rows padded to the longest on the tokenizer's padding side, as one long tensor."""
        width = max(len(r) for r in rows)
        out = torch.full((len(rows), width), value, dtype=torch.long)
        left = self.tokenizer.padding_side == "left"
        for i, r in enumerate(rows):
            out[i, slice(width - len(r), width) if left else slice(0, len(r))] = torch.tensor(r, dtype=torch.long)
        return out


# ---------------------------------------------------------------------------------------------
# the collator
# ---------------------------------------------------------------------------------------------
class Collator:
    """Turns a batch of pairs into model inputs, level positions, CE labels and targets.

    ``fast``: assemble batches from per-image processor outputs (:class:`EncodingCache`; verified
    against the processor on the first batch). ``False`` runs the processor on every batch.
    """

    def __init__(self, conversation: Conversation, examples: Examples, seed: int, fast: bool = True):
        self.conv, self.ex, self.seed = conversation, examples, seed
        self.conv.tokenizer.padding_side = "right"
        self.encoder = EncodingCache(
            conversation.processor, conversation.scoring_text(), enabled=fast, images=len(set(examples.paths))
        )
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

    def images(self, idx: list[int], epoch: int = 0) -> dict:
        """Images ``idx`` with their training texts of ``epoch``: model inputs and feature keys."""
        enc, keys = self.encoder.encode([self.ex.paths[i] for i in idx], [self.text(i, epoch) for i in idx])
        return {"inputs": enc, "keys": keys}

    def pairs(self, batch: list[tuple[int, int, int]]) -> dict:
        idx = [a for a, _, _ in batch] + [b for _, b, _ in batch]
        epoch = batch[0][2]
        enc, keys = self.encoder.encode([self.ex.paths[i] for i in idx], [self.text(i, epoch) for i in idx])
        level_pos = self.conv.level_positions(enc["input_ids"], enc["attention_mask"])
        return {
            "inputs": enc,
            "level_pos": level_pos,
            "keys": keys,
            "index": torch.tensor(idx),
            "labels": self.conv.answer_labels(enc["input_ids"], enc["attention_mask"], level_pos),
            "target": torch.tensor(self.ex.probs[idx], dtype=torch.float32),
            "m": torch.tensor(self.ex.m[idx], dtype=torch.float32),
            "s": torch.tensor(self.ex.s[idx], dtype=torch.float32),
        }
