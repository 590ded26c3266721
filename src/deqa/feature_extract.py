"""Computing a :class:`~deqa.features.FeatureStore`: the frozen tower's output per image.

:func:`extract` runs the model's own forward on each image alone (a batch of one, so an entry is
a function of the image and the model, never of its batch) and stops it right after the tower
(:func:`captured`), keeping the tower's output tensors that the model reads (found on the first
image by replacing each by NaN in turn, :func:`_read_leaves`) and the processor's encoding of
the image (:func:`encode_image`). Where the store would not be exact it is off, with the reason
(see :mod:`deqa.features`).

**Entry cache.** With ``cache_dir`` (the ``features`` stage passes a private, DVC-ignored folder,
as training does for its checkpoints) each image's entry is also written under a folder named by
the digests of the tower, the processor, the tower's call and the fields read, and later runs
with the same digests load it instead of running the tower. A head or language-model change that
rebuilds the base model but keeps its tower then re-runs the stage in seconds, with the same
bytes. The cache is never read for another tower or processor; delete the folder to clear it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils import _pytree as pytree

from deqa.features import (
    FORMAT,
    TEXT_KEYS,
    Entry,
    FeatureStore,
    ImageEncoding,
    fed,
    file_key,
    image_token_id,
    processor_digest,
    tower_digest,
)

log = logging.getLogger("deqa.features")


class StopForward(Exception):
    """Raised by the capture hook once the tower has run: nothing after it is needed."""


def encode_image(processor, text: str, image, token_id: int) -> tuple[dict, ImageEncoding]:
    """The processor's encoding of ``text`` with one image, and that image's :class:`ImageEncoding`.

    Raises ``ValueError`` naming what keeps the encoding from being split per image.
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    enc = dict(processor(text=[text], images=[image], return_tensors="pt"))
    ids, plain = enc["input_ids"][0].tolist(), list(tokenizer(text)["input_ids"])
    if plain.count(token_id) != 1:
        raise ValueError("the prompt does not hold exactly one image token")
    k, tail = plain.index(token_id), len(plain) - plain.index(token_id) - 1
    if len(ids) < len(plain) or ids[:k] != plain[:k] or ids[len(ids) - tail :] != plain[k + 1 :]:
        raise ValueError("the processor changes the text around the image token")
    span = slice(k, len(ids) - tail)
    out = ImageEncoding(expansion=ids[span])
    for name, value in enc.items():
        if name in TEXT_KEYS:
            continue
        if not torch.is_tensor(value) or value.dim() == 0:
            raise ValueError(f"the processor returns {name!r}, which is not a batch tensor")
        if value.shape == (1, len(ids)):  # a per-token field
            row = value[0].tolist()
            outside = set(row[: span.start] + row[span.stop :])
            if len(outside) > 1:
                raise ValueError(f"the per-token field {name!r} varies outside the image's tokens")
            out.aligned[name] = (outside.pop() if outside else 0, row[span])
        elif value.is_floating_point():
            out.shapes[name] = (list(value.shape), str(value.dtype).replace("torch.", ""))
        else:
            out.tensors[name] = value.clone()
    return enc, out


def _call_arguments(args: tuple, kwargs: dict) -> tuple[dict, list[torch.Tensor]]:
    """The non-tensor arguments of a tower call (JSON) and its tensor arguments."""
    named = [(str(i), a) for i, a in enumerate(args)] + sorted(kwargs.items())
    tensors = [v for _, v in named if torch.is_tensor(v)]
    rest = {k: v for k, v in named if not torch.is_tensor(v)}
    return json.loads(json.dumps(rest, sort_keys=True, default=repr)), tensors


@contextlib.contextmanager
def captured(tower: nn.Module) -> Iterator[dict]:
    """Inside, the tower's next call is recorded (``call``, ``inputs``, ``output``) and the model's
    forward stops right after it (:class:`StopForward`)."""
    record: dict = {}

    def pre(module, args, kwargs):
        record["call"], record["inputs"] = _call_arguments(args, kwargs)

    def post(module, args, kwargs, output):
        record["output"] = output
        raise StopForward

    hooks = [
        tower.register_forward_pre_hook(pre, with_kwargs=True),
        tower.register_forward_hook(post, with_kwargs=True),
    ]
    try:
        with contextlib.suppress(StopForward):
            yield record
    finally:
        for h in hooks:
            h.remove()


def tower_output(model: nn.Module, tower: nn.Module, enc: dict, device) -> dict:
    """Run the model's forward on ``enc`` up to (and including) the tower; the capture record."""
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in enc.items()}
    if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():  # as Scorer.forward
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    with torch.no_grad(), captured(tower) as record:
        model(**inputs)
    if "output" not in record:
        raise ValueError("the model's forward did not call its vision tower")
    return record


def extract(
    model: nn.Module,
    processor,
    paths: Iterable[str | Path],
    *,
    progress: bool = True,
    check_batching: bool = True,
    cache_dir: str | Path | None = None,
) -> FeatureStore:
    """The store of the tower outputs of the images at ``paths`` (each image alone, in path order,
    one entry per distinct file), or a store that is off with the reason (module docstring).

    Unreadable images are left out (logged); whoever needs them later meets the same error.
    ``cache_dir``: the entry cache of earlier runs (module docstring).
    """
    from tqdm.auto import tqdm

    from deqa.images import ImageLoadError, load_image
    from deqa.modeling import Conversation, get_module, resolve_modules

    tower = get_module(model, resolve_modules(model).vision)
    device = next(tower.parameters()).device
    text = Conversation(processor).scoring_text()
    token_id = image_token_id(processor)
    meta = {"format": FORMAT, "tower": tower_digest(tower), "processor": processor_digest(processor, text)}
    if any(p.requires_grad for p in tower.parameters()):
        return FeatureStore.off("the vision module holds trainable parameters", **meta)
    if token_id is None:
        return FeatureStore.off("the processor names no image token", **meta)
    model.eval()
    store, unreadable, cache = FeatureStore(meta), [], None
    todo = list(dict.fromkeys(str(p) for p in paths))
    for path in tqdm(todo, desc="vision features", unit="img", disable=not progress):
        try:
            key = file_key(path)
            if key in store.entries:
                continue
            entry = cache.get(key) if cache is not None else None
            image = load_image(path) if entry is None else None
        except (OSError, ImageLoadError) as exc:
            unreadable.append(f"{path}: {exc}")
            continue
        if entry is None:
            try:
                enc, encoding = encode_image(processor, text, image, token_id)
                record = tower_output(model, tower, enc, device)
                leaves, spec = _per_image(record)
                if store._spec is None:
                    _start(store, model, tower, enc, record, spec, device)
                    cache = EntryCache(cache_dir, store.meta) if cache_dir is not None else None
                entry = _entry(store, encoding, leaves, spec, record)
            except ValueError as exc:
                return FeatureStore.off(str(exc), **meta)
            if cache is not None:
                cache.put(key, entry)
        store.entries[key] = entry
        store.paths[path] = key
    if cache is not None and cache.hits:
        log.info("vision features: %d of %d images from the entry cache %s", cache.hits, len(store), cache.folder)
    if unreadable:
        log.warning("vision features: %d unreadable image(s) left out, e.g. %s", len(unreadable), unreadable[0])
    if store._spec is None:
        return FeatureStore.off("no readable image", **meta)
    store.meta.update(enabled=True, reason=None)
    if check_batching and len(store) >= 2:
        problem = _batching_problem(model, tower, processor, text, store, todo, device)
        if problem:
            return FeatureStore.off(problem, **meta)
    log.info(
        "vision features of %d images stored (%d of the tower's %d output tensors are read by the model)",
        len(store),
        store._spec.num_leaves - len(store.meta["unread"]),
        store._spec.num_leaves,
    )
    return store


def _start(store: FeatureStore, model, tower, enc: dict, record: dict, spec, device) -> None:
    """Record the first image's call, output structure and which output tensors the model reads."""
    try:
        store.meta["spec"] = pytree.treespec_dumps(spec)
    except (TypeError, NotImplementedError) as exc:
        raise ValueError(f"the tower's output type cannot be recorded ({exc})") from None
    store._spec, store.meta["call"] = spec, record["call"]
    leaves = pytree.tree_leaves(record["output"])
    read = _read_leaves(model, tower, enc, leaves, spec, device)
    store.meta["unread"] = {
        str(j): None if t is None else [list(t.shape[1:]), str(t.dtype).replace("torch.", "")]
        for j, t in enumerate(leaves)
        if j not in read
    }


def _entry(store: FeatureStore, encoding: ImageEncoding, leaves: list[torch.Tensor], spec, record: dict) -> Entry:
    """The image's entry (the output tensors the model reads), checked against the first image's."""
    if spec != store._spec or record["call"] != store.meta["call"]:
        raise ValueError("the tower's output structure or call differs between images")
    unread = {int(j) for j in store.meta["unread"]}
    entry = Entry(encoding, [t for j, t in enumerate(leaves) if j not in unread])
    if store.entries and not _stackable(next(iter(store.entries.values())), entry):
        raise ValueError("the tower outputs or processor tensors of different images differ in shape")
    return entry


def _read_leaves(model, tower, enc: dict, leaves: list[torch.Tensor], spec, device) -> set[int]:
    """The output tensors the model's forward reads: those whose replacement by NaN changes the
    logits (a CLIP tower returns every layer's hidden states; LLaVA reads one of them)."""
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in enc.items()}
    if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)

    half = {t.dtype for t in leaves if t is not None and t.dtype in (torch.bfloat16, torch.float16)}
    # a half-precision checkpoint whose trainable parts were cast to fp32 computes under autocast
    autocast = torch.autocast(device.type, dtype=half.pop()) if half else contextlib.nullcontext()

    def logits(values: list[torch.Tensor | None]) -> torch.Tensor:
        values = [None if v is None else v.to(device) for v in values]
        with torch.no_grad(), autocast, fed(tower, pytree.tree_unflatten(values, spec)):
            return model(**inputs).logits

    reference, read = logits(leaves), set()
    for j, t in enumerate(leaves):
        if t is None:
            continue
        if not t.is_floating_point():
            read.add(j)
            continue
        probe = list(leaves)
        probe[j] = torch.full_like(t, float("nan"))
        if not torch.equal(logits(probe), reference):
            read.add(j)
    if not read:
        raise ValueError("the model's logits do not depend on its vision tower's outputs")
    return read


def _per_image(record: dict) -> tuple[list[torch.Tensor], object]:
    """The captured tower output as per-image tensors (CPU copies), and its structure."""
    rows = {t.shape[0] for t in record["inputs"] if t.dim()}
    if rows != {1}:
        raise ValueError(
            f"the tower's inputs have {sorted(rows)} rows for one image (flattened patches or image tiles), "
            "so its outputs do not split per image"
        )
    leaves, spec = pytree.tree_flatten(record["output"])
    tensors = [t for t in leaves if t is not None]
    if not tensors or not all(torch.is_tensor(t) and t.dim() and t.shape[0] == 1 for t in tensors):
        raise ValueError("the vision outputs do not split per image along dim 0")
    return [None if t is None else t.detach().to("cpu").clone() for t in leaves], spec


def _stackable(a: Entry, b: Entry) -> bool:
    """Whether two entries' tensors have the same dtypes and shapes beyond dim 0 (so they stack)."""

    def same(x: torch.Tensor, y: torch.Tensor) -> bool:
        return x.dtype == y.dtype and x.shape[1:] == y.shape[1:]

    ea, eb = a.encoding, b.encoding
    return (
        len(a.leaves) == len(b.leaves)
        and all(same(x, y) for x, y in zip(a.leaves, b.leaves, strict=True))
        and ea.tensors.keys() == eb.tensors.keys()
        and all(same(ea.tensors[n], eb.tensors[n]) for n in ea.tensors)
        and ea.shapes.keys() == eb.shapes.keys()
        and ea.aligned.keys() == eb.aligned.keys()
        and all(ea.shapes[n][0][1:] == eb.shapes[n][0][1:] and ea.shapes[n][1] == eb.shapes[n][1] for n in ea.shapes)
    )


def _batching_problem(model, tower, processor, text, store: FeatureStore, paths: list[str], device) -> str | None:
    """Why stored per-image outputs would not stand for the outputs of a batch, if they would not."""
    from deqa.images import load_image

    pair = [p for p in paths if store.paths.get(p) in store.entries][:2]
    try:
        enc = dict(processor(text=[text] * 2, images=[load_image(p) for p in pair], padding=True, return_tensors="pt"))
    except Exception:  # images the processor cannot batch: the batch check is moot
        return None
    record = tower_output(model, tower, enc, device)
    batched = pytree.tree_leaves(record["output"])
    stored = pytree.tree_leaves(store.outputs([store.paths[p] for p in pair]))
    unread = {int(j) for j in store.meta["unread"]}
    for j, (x, y) in enumerate(zip(stored, batched, strict=True)):
        if j in unread:
            continue
        y = y.detach().to("cpu")
        eps = torch.finfo(y.dtype).eps if y.is_floating_point() else 0.0
        scale = max(float(y.abs().max()) if y.numel() and y.is_floating_point() else 1.0, 1.0)
        if x.shape != y.shape or not torch.allclose(
            x.double(), y.double(), rtol=max(1e-4, 16 * eps), atol=max(1e-5, 16 * eps) * scale
        ):
            return (
                "the tower's output for an image depends on the other images in its batch "
                "(flattened patches, tiles or batch statistics)"
            )
    return None


class EntryCache:
    """Entries of earlier runs, one safetensors file per image under a folder named by the digests
    that determine them (module docstring)."""

    def __init__(self, root: str | Path, meta: dict):
        ident = {k: meta.get(k) for k in ("format", "tower", "processor", "call", "spec", "unread")}
        name = hashlib.blake2b(json.dumps(ident, sort_keys=True).encode(), digest_size=12).hexdigest()
        self.folder = Path(root) / name
        self.hits = 0

    def get(self, key: str) -> Entry | None:
        """The cached entry of image ``key``, or ``None`` (absent or unreadable: computed again)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        path = self.folder / f"{key}.safetensors"
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as fh:
                info = json.loads(fh.metadata()["encoding"])
            tensors = load_file(str(path))
        except (OSError, SafetensorError, KeyError, ValueError):
            return None
        encoding = ImageEncoding(
            info["expansion"],
            {n: (f, v) for n, (f, v) in info["aligned"].items()},
            {n[4:]: t for n, t in tensors.items() if n.startswith("enc.")},
            {n: (list(sh), d) for n, (sh, d) in info["shapes"].items()},
        )
        leaves = [tensors[f"leaf.{j}"] for j in range(sum(n.startswith("leaf.") for n in tensors))]
        self.hits += 1
        return Entry(encoding, leaves)

    def put(self, key: str, entry: Entry) -> None:
        """Write image ``key``'s entry (atomically: a partial file never stands for an entry)."""
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        e = entry.encoding
        info = {"expansion": e.expansion, "aligned": {n: [f, v] for n, (f, v) in e.aligned.items()}, "shapes": e.shapes}
        tensors = {f"leaf.{j}": t.contiguous() for j, t in enumerate(entry.leaves)}
        tensors.update({f"enc.{n}": t.contiguous() for n, t in e.tensors.items()})
        tmp = self.folder / f".{key}.tmp"
        save_file(tensors, str(tmp), metadata={"encoding": json.dumps(info)})
        tmp.replace(self.folder / f"{key}.safetensors")
