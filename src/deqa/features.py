"""A frozen vision tower's outputs, computed once per image: :class:`FeatureStore`.

While the vision tower is frozen (the default, and LoRA on the language model of a real
checkpoint), its output for an image never changes. The ``features`` stage computes it once per
image with :func:`deqa.feature_extract.extract` and saves a store (``data/features/``); ``train`` and ``evaluate`` read
it, so a loss, label or head experiment never runs the tower again, and no image is decoded or
processed after the store exists.

**What an entry holds.** For each image, keyed by a digest of its file's bytes
(:func:`file_key`): the tower's output for that image alone (a batch of one, so an entry is a
function of the image and the model only, never of its batch), and what the processor made of the
image besides its pixels (:class:`ImageEncoding`: the token ids it put in place of the image
token, per-token fields, masks and grids). The store's ``meta`` records the tower (a digest of its
weights, buffers and config), the processor (a digest of its image settings and the prompt's
tokens), the tower's call arguments and the output's structure; a store is used only with a model
and processor whose digests match (:meth:`FeatureStore.usable_with`).

**The seam.** :meth:`FeatureStore.batch` assembles a batch from entries: the token ids (each
text tokenized, its image token replaced by its image's expansion, right-padded), the non-pixel
tensors, and ``features``, the joined tower outputs. The pixel tensors are shape-only placeholders
(a broadcast constant, no memory): the model's forward needs a ``pixel_values`` argument to route
through its vision path, and :func:`fed` makes the tower return ``features`` for that call without
reading them. The caller states image-free batches explicitly (``batch["features"]``); nothing
looks at tensor values to tell. The first assembled batch of a :class:`deqa.data.Collator` or a
:class:`deqa.scoring.Scorer` is checked against the processor's own encoding of the same images.

**Where it does not apply**, :func:`~deqa.feature_extract.extract` returns a store that is off, with the reason logged
and saved (``vision features not stored: <reason>``), and training and scoring run the tower as
usual: a tower holding trainable parameters (a trained tower, or a projector inside the vision
module, as Qwen2-VL's merger), a tower fed several rows per image (flattened patches or tiles), an
output that does not split per image along dim 0, or one image's output that differs when it is
computed in a batch with another (rows that depend on each other).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils import _pytree as pytree

log = logging.getLogger(__name__)

TENSORS_FILE, INDEX_FILE = "features.safetensors", "index.json"
TEXT_KEYS = ("input_ids", "attention_mask")
FORMAT = 1


def file_key(path: str | Path) -> str:
    """A BLAKE2 digest of a file's bytes: an image's identity in a store."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensors_digest(named: Iterable[tuple[str, torch.Tensor]], extra: str = "") -> str:
    """A BLAKE2 digest of named tensors (names, dtypes, shapes, bytes) and ``extra``."""
    h = hashlib.blake2b(extra.encode(), digest_size=16)
    for name, t in named:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def tower_digest(tower: nn.Module) -> str:
    """The tower's weights, buffers and config: what its output depends on besides the image."""
    config = getattr(tower, "config", None)
    extra = config.to_json_string(use_diff=False) if hasattr(config, "to_json_string") else type(tower).__name__
    return tensors_digest(sorted(tower.state_dict().items()), extra=extra)


def image_token_id(processor) -> int | None:
    """The id of the token the processor expands into an image's tokens, if it names one."""
    tokenizer = getattr(processor, "tokenizer", processor)
    tid = getattr(processor, "image_token_id", None)
    token = getattr(processor, "image_token", None)
    if tid is None and isinstance(token, str):
        tid = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(tid, int) or tid < 0 or tid == getattr(tokenizer, "unk_token_id", None):
        return None
    return tid


def processor_digest(processor, text: str) -> str:
    """The processor's image settings and the tokens of ``text``: what an image's encoding depends on."""
    tokenizer = getattr(processor, "tokenizer", processor)
    images = getattr(processor, "image_processor", None)
    settings = images.to_dict() if hasattr(images, "to_dict") else {}
    settings = {k: v for k, v in settings.items() if not k.startswith("_") and k != "processor_class"}
    ids = tokenizer(text)["input_ids"]
    return hashlib.blake2b(
        json.dumps([settings, ids], sort_keys=True, default=str).encode(), digest_size=16
    ).hexdigest()


# ---------------------------------------------------------------------------------------------
# one image: its encoding and its tower output
# ---------------------------------------------------------------------------------------------
@dataclass
class ImageEncoding:
    """What the processor made of one image, besides the text around it.

    ``expansion``: the token ids in place of the image token; ``aligned``: per-token fields
    (``name -> (value on the text, values on the expansion)``, e.g. Qwen2-VL's
    ``mm_token_type_ids``); ``tensors``: the image's non-float tensors (masks, grids, sizes);
    ``shapes``: shape and dtype of its float tensors (the pixels), which a batch gets as placeholders.
    """

    expansion: list[int]
    aligned: dict[str, tuple[int, list[int]]] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    shapes: dict[str, tuple[list[int], str]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# the store
# ---------------------------------------------------------------------------------------------
@dataclass
class Entry:
    """One image: its encoding and its tower output's tensors (each with batch dimension 1)."""

    encoding: ImageEncoding
    leaves: list[torch.Tensor]


class FeatureStore:
    """Per-image tower outputs and encodings, keyed by image file digest (module docstring)."""

    def __init__(self, meta: dict | None = None, entries: dict[str, Entry] | None = None):
        self.meta = dict(meta or {})
        self.entries: dict[str, Entry] = dict(entries or {})
        self.paths: dict[str, str] = {}  # path -> key, memoised
        self.checked: set[str] = set()  # kinds of text whose assembled batches matched the processor
        self._spec = _load_spec(self.meta["spec"]) if self.meta.get("spec") else None

    # -- state ------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return bool(self.meta.get("enabled")) and self._spec is not None

    @property
    def reason(self) -> str | None:
        return self.meta.get("reason")

    @classmethod
    def off(cls, reason: str, **meta) -> FeatureStore:
        """A store that holds nothing, with the reason why."""
        log.info("vision features not stored: %s", reason)
        return cls({"format": FORMAT, **meta, "enabled": False, "reason": reason})

    def __len__(self) -> int:
        return len(self.entries)

    def key(self, path: str | Path) -> str | None:
        """The key of the image file at ``path`` (memoised; ``None`` for an unreadable file)."""
        p = str(path)
        if p not in self.paths:
            try:
                self.paths[p] = file_key(p)
            except OSError:
                return None
        return self.paths[p]

    def holds(self, paths: Iterable) -> list[str] | None:
        """The keys of ``paths`` where the store is on and holds every one of them, else ``None``."""
        if not self.enabled:
            return None
        keys = []
        for p in paths:
            k = self.key(p) if isinstance(p, (str, Path)) else None
            if k is None or k not in self.entries:
                return None
            keys.append(k)
        return keys

    def usable_with(self, tower: nn.Module, processor, text: str) -> str | None:
        """``None`` where this store's entries are what ``tower`` and ``processor`` compute, else why not."""
        if not self.enabled:
            return self.reason or "the store is off"
        if any(p.requires_grad for p in tower.parameters()):
            return "the vision module holds trainable parameters"
        if self.meta.get("tower") != tower_digest(tower):
            return "the store was computed by another vision tower (weights, dtype or config differ)"
        if self.meta.get("processor") != processor_digest(processor, text):
            return "the store was computed with other processor settings"
        return None

    # -- batches ----------------------------------------------------------------------------
    def outputs(self, keys: list[str]):
        """The tower output of a batch of these images: each stored tensor joined along dim 0, and
        broadcast zeros for the output fields the model does not read (``meta["unread"]``)."""
        stored = iter(torch.cat(parts, dim=0) for parts in zip(*(self.entries[k].leaves for k in keys), strict=True))
        unread = {int(j): v for j, v in self.meta.get("unread", {}).items()}
        leaves = [
            (
                None
                if unread[j] is None
                else torch.zeros((), dtype=getattr(torch, unread[j][1])).expand(len(keys), *unread[j][0])
            )
            if j in unread
            else next(stored)
            for j in range(self._spec.num_leaves)
        ]
        return pytree.tree_unflatten(leaves, self._spec)

    def batch(self, keys: list[str], texts: list[str], tokenizer, token_id: int) -> dict:
        """Model inputs for ``texts`` with the stored images ``keys`` (right-padded), and ``features``.

        Returns ``{"inputs": ..., "features": ...}``; the pixel tensors of ``inputs`` are
        placeholders that :func:`fed` keeps the tower from reading.
        """
        encodings = [self.entries[k].encoding for k in keys]
        rows, fields = [], {name: [] for name in encodings[0].aligned}
        for e, text in zip(encodings, texts, strict=True):
            plain = _plain_ids(tokenizer, text)
            if plain.count(token_id) != 1 or set(e.aligned) != set(fields):
                raise ValueError("a text does not hold exactly one image token")
            k = plain.index(token_id)
            rows.append(plain[:k] + e.expansion + plain[k + 1 :])
            for name, (fill, values) in e.aligned.items():
                fields[name].append([fill] * k + values + [fill] * (len(plain) - k - 1))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        inputs = {"input_ids": _pad_right(rows, pad), "attention_mask": _pad_right([[1] * len(r) for r in rows], 0)}
        for name, values in fields.items():
            inputs[name] = _pad_right(values, encodings[0].aligned[name][0])
        for name in encodings[0].tensors:
            inputs[name] = torch.cat([e.tensors[name] for e in encodings], dim=0)
        for name, (shape, dtype) in encodings[0].shapes.items():
            rows_total = sum(e.shapes[name][0][0] for e in encodings)
            # a broadcast constant: no memory, never read (fed() answers the tower); not zeros,
            # which some families (Idefics3) drop as padding images before the tower
            inputs[name] = torch.ones((), dtype=getattr(torch, dtype)).expand(rows_total, *shape[1:])
        return {"inputs": inputs, "features": self.outputs(keys)}

    # -- files ------------------------------------------------------------------------------
    def save(self, out_dir: str | Path) -> None:
        """``index.json`` (meta, keys, encodings) and ``features.safetensors`` (the tensors, stacked)."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        keys = sorted(self.entries)
        tensors: dict[str, torch.Tensor] = {}
        index = []
        if keys:
            first = self.entries[keys[0]]
            for j in range(len(first.leaves)):
                tensors[f"leaf.{j}"] = torch.cat([self.entries[k].leaves[j] for k in keys]).contiguous()
            for name in first.encoding.tensors:
                tensors[f"enc.{name}"] = torch.cat([self.entries[k].encoding.tensors[name] for k in keys]).contiguous()
        for k in keys:
            e = self.entries[k].encoding
            index.append(
                {
                    "key": k,
                    "expansion": e.expansion,
                    "aligned": {n: [f, v] for n, (f, v) in e.aligned.items()},
                    "shapes": e.shapes,
                    "rows": {n: int(t.shape[0]) for n, t in e.tensors.items()},
                }
            )
        save_file(tensors, str(out / TENSORS_FILE), metadata={"format": str(FORMAT)})
        (out / INDEX_FILE).write_text(json.dumps({"meta": self.meta, "images": index}, sort_keys=True) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> FeatureStore:
        """Read a store written by :meth:`save`; raises ``FileNotFoundError``/``ValueError`` naming the folder."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / INDEX_FILE).is_file():
            raise FileNotFoundError(f"{folder} holds no feature store ({INDEX_FILE} missing; run the features stage)")
        data = json.loads((folder / INDEX_FILE).read_text())
        meta = data["meta"]
        if meta.get("format") != FORMAT:
            raise ValueError(f"{folder}: feature store format {meta.get('format')!r}, this deqa reads {FORMAT}")
        if not meta.get("enabled"):
            return cls(meta)
        tensors = load_file(str(folder / TENSORS_FILE))
        n_leaves = sum(1 for name in tensors if name.startswith("leaf."))
        leaves = [tensors[f"leaf.{j}"] for j in range(n_leaves)]
        entries, enc_offset = {}, {}
        for i, row in enumerate(data["images"]):
            own = {}
            for name, n in row["rows"].items():
                start = enc_offset.get(name, 0)
                own[name] = tensors[f"enc.{name}"][start : start + n]
                enc_offset[name] = start + n
            encoding = ImageEncoding(
                row["expansion"],
                {n: (f, v) for n, (f, v) in row["aligned"].items()},
                own,
                {n: (list(s), d) for n, (s, d) in row["shapes"].items()},
            )
            entries[row["key"]] = Entry(encoding, [leaf[i : i + 1] for leaf in leaves])
        return cls(meta, entries)


SPEC_MODULES = ("transformers.", "torch.", "collections.")
"""Packages whose output types a stored spec may name (their modules are imported to register them)."""


def _load_spec(text: str):
    """The output structure recorded by :meth:`FeatureStore.save`. The types it names register
    themselves with pytree when their module is imported, so those modules (of the packages in
    :data:`SPEC_MODULES` only) are imported first; a type from anywhere else is refused."""
    import importlib

    def types(node) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("type"), str):
                yield node["type"]
            for child in node.get("children_spec", []):
                yield from types(child)

    for name in set(types(json.loads(text)[1])):
        module = name.rpartition(".")[0]
        if module == "builtins":
            continue
        if not module.startswith(SPEC_MODULES):
            raise ValueError(f"the feature store names the output type {name!r}, which deqa does not load")
        importlib.import_module(module)
    return pytree.treespec_loads(text)


_PLAIN: dict[tuple[int, str], list[int]] = {}


def _plain_ids(tokenizer, text: str) -> list[int]:
    """``tokenizer(text)["input_ids"]``, memoised (training texts repeat: 10 questions x 5 levels)."""
    key = (id(tokenizer), text)
    if key not in _PLAIN:
        if len(_PLAIN) > 10_000:
            _PLAIN.clear()
        _PLAIN[key] = list(tokenizer(text)["input_ids"])
    return _PLAIN[key]


def _pad_right(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


# ---------------------------------------------------------------------------------------------
# feeding the tower
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def fed(tower: nn.Module, features) -> Iterator[None]:
    """Inside, the tower's one call returns ``features`` (a batch's stored outputs) instead of
    computing them; ``features=None`` changes nothing. The call must have as many input rows as
    ``features`` has, and must happen (else ``RuntimeError``)."""
    if features is None:
        yield
        return
    rows = next(t for t in pytree.tree_leaves(features) if t is not None).shape[0]
    state = {"calls": 0}

    def forward(*args, **kwargs):
        main = args[0] if args else next((v for v in kwargs.values() if torch.is_tensor(v)), None)
        if main is None or main.shape[0] != rows:
            raise RuntimeError(
                f"the vision tower was called with {None if main is None else main.shape[0]} rows for "
                f"{rows} stored images"
            )
        state["calls"] += 1
        return features

    previous = tower.__dict__.get("forward")
    tower.forward = forward
    try:
        yield
    finally:
        if previous is None:
            del tower.forward
        else:
            tower.forward = previous
    if state["calls"] != 1:
        raise RuntimeError(f"the vision tower was called {state['calls']} times for one batch of stored features")


def check_batch(
    store: FeatureStore, processor, paths: list[str], texts: list[str], token_id: int, kind: str
) -> str | None:
    """``None`` where batches assembled from ``store`` for texts of ``kind`` equal the processor's
    own encoding of the same images (pixel placeholders aside), else what differs. Checked once
    per store and kind, on the first rows of a batch (``store.checked``)."""
    from deqa.images import load_image

    if kind in store.checked:
        return None
    paths, texts = paths[:4], texts[:4]
    tokenizer = getattr(processor, "tokenizer", processor)
    assembled = store.batch([store.key(p) for p in paths], texts, tokenizer, token_id)["inputs"]
    slow = dict(processor(text=texts, images=[load_image(p) for p in paths], padding=True, return_tensors="pt"))
    if set(slow) != set(assembled):
        return f"keys {sorted(assembled)} != {sorted(slow)}"
    for name, x in assembled.items():
        y = slow[name]
        if x.dtype != y.dtype or x.shape != y.shape:
            return f"{name}: {x.dtype}{tuple(x.shape)} != {y.dtype}{tuple(y.shape)}"
        if not y.is_floating_point() and not torch.equal(x, y):
            return f"{name}: values differ"
    store.checked.add(kind)
    return None
