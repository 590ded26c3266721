"""A frozen vision tower's outputs, computed once per image and reused: :class:`FeatureCache`.

While the vision tower is frozen, its output for an image never changes, so after the first epoch
every training step (and every validation pass) can skip the tower. :class:`FeatureCache` installs
itself on the tower **module object** by giving that instance its own ``forward`` (the class's
``forward`` and whatever instance ``forward`` was there before are kept and put back by
:meth:`~FeatureCache.uninstall`); no module is replaced, renamed or wrapped, so the model's module
tree, parameter names and ``state_dict`` are untouched while it is installed. Use it as a context
manager::

    with FeatureCache(model.get_submodule("model.vision_tower")) as cache:
        with cache.keyed(batch["keys"]):      # optional: precomputed per-image keys
            out = model(**batch["inputs"])

**Keys.** An entry is keyed by the image's content: either keys the caller passes for the next call
(:meth:`~FeatureCache.keyed`; the training collator passes a digest of each image's processor
output, computed once per image) or, by default, a BLAKE2 digest of each input row's bytes (plus
shape and dtype) and of every per-row argument of the call. So scoring code that knows nothing
about the cache (validation through :class:`deqa.scoring.Scorer`) is served by it too.

**Exact by construction.** Each image's output is computed by the tower **on that image alone**
(a batch of one) and stored; every call's output is the concatenation of its images' entries. An
image's output therefore never depends on which images shared its batch, which is what makes a
resumed run (a fresh process with an empty cache) bit-identical to an uninterrupted one. The cache
turns itself off for good, with a log line (``vision feature caching disabled: <reason>``), and
the tower runs normally from then on, wherever its outputs would not equal the tower's:

- the tower holds trainable parameters (a trained tower, or a projector that the family keeps
  inside its vision module, as Qwen2-VL does with its merger);
- the caller's keys do not match the input's rows, or an argument of the call does not split
  per row (towers fed flattened patches or image tiles with a grid argument, as Qwen2-VL);
- an output field does not split per image along dim 0;
- on the first call, the batch computed whole differs from the same images computed one by one
  (beyond float rounding): rows that depend on each other (flattened patches without a grid
  argument, batch statistics).

Logged under ``deqa.training.feature_cache`` so that the training logger's level governs it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging

import torch
from torch import nn
from torch.utils import _pytree as pytree

log = logging.getLogger("deqa.training.feature_cache")

_MISSING = object()


def tensor_digest(*tensors: torch.Tensor | None, extra: str = "") -> str:
    """A BLAKE2 digest of tensors' dtypes, shapes and bytes (and ``extra``): a content key."""
    h = hashlib.blake2b(extra.encode(), digest_size=16)
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        t = t.detach()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            flat = t.to("cpu").contiguous().reshape(-1)
            h.update(memoryview(flat.view(torch.uint8).numpy()))
    return h.hexdigest()


class FeatureCache:
    """Caches a frozen vision module's per-image outputs (see the module docstring)."""

    def __init__(self, tower: nn.Module, *, enabled: bool = True, check_first_call: bool = True,
                 rtol: float = 1e-4, atol: float = 1e-5):
        self.tower = tower
        self.entries: dict[str, list] = {}
        self.enabled = enabled  # ``False``: install() does nothing and the tower always runs
        self.installed = False
        self.hits = self.misses = 0
        self._keys: list[str] | None = None
        self._previous = _MISSING
        self._checked = not check_first_call
        self._tol = (rtol, atol)

    # ------------------------------------------------------------------ install / uninstall
    def install(self) -> FeatureCache:
        if self.installed or not self.enabled:
            return self
        if self._trainable():
            self.disable("the vision module holds trainable parameters (a projector inside it, or a trained tower)")
            return self
        self._previous = self.tower.__dict__.get("forward", _MISSING)
        self._original = self.tower.forward  # the instance's forward as it was (class or instance)
        self.tower.forward = self._forward
        self.installed = True
        return self

    def uninstall(self) -> None:
        """Put the tower's ``forward`` back as it was and drop every entry."""
        if self.installed:
            if self._previous is _MISSING:
                del self.tower.forward
            else:
                self.tower.forward = self._previous
            self.installed = False
            self._previous = _MISSING
        self.entries.clear()

    def __enter__(self) -> FeatureCache:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()

    def disable(self, reason: str) -> None:
        if self.enabled:
            log.info("vision feature caching disabled: %s", reason)
        self.enabled = False
        self.entries.clear()

    @contextlib.contextmanager
    def keyed(self, keys: list[str] | None):
        """Use ``keys`` (one per image, in row order) as the entry keys of the calls inside."""
        self._keys = list(keys) if keys is not None else None
        try:
            yield self
        finally:
            self._keys = None

    def __len__(self) -> int:
        return len(self.entries)

    # ------------------------------------------------------------------ the forward
    def _trainable(self) -> bool:
        return any(p.requires_grad for p in self.tower.parameters())

    def _forward(self, *args, **kwargs):
        original = self._original
        if not self.enabled:
            return original(*args, **kwargs)
        if self._trainable():
            self.disable("the vision module holds trainable parameters (a projector inside it, or a trained tower)")
            return original(*args, **kwargs)
        rows = self._split_inputs(args, kwargs)
        if rows is None:
            return original(*args, **kwargs)
        keys = self._row_keys(rows)
        if keys is None:
            return original(*args, **kwargs)
        with torch.no_grad():
            for key, (row_args, row_kwargs) in zip(keys, rows, strict=True):
                if key in self.entries:
                    self.hits += 1
                    continue
                self.misses += 1
                leaves, spec = pytree.tree_flatten(original(*row_args, **row_kwargs))
                if not all(leaf is None or (torch.is_tensor(leaf) and leaf.dim() and leaf.shape[0] == 1)
                           for leaf in leaves):
                    self.disable("the vision outputs do not split per image along dim 0")
                    return original(*args, **kwargs)
                self.entries[key] = [spec, [None if leaf is None else leaf.detach() for leaf in leaves]]
        out = self._join([self.entries[k] for k in keys])
        if out is None:
            self.disable("the vision outputs of different images do not have one structure and shape")
            return original(*args, **kwargs)
        if not self._checked:  # the first call: the same batch, computed whole by the tower
            self._checked = True
            with torch.no_grad():
                whole = original(*args, **kwargs)
            if not self._same(out, whole):
                self.disable("the tower's output for an image depends on the other images in its batch "
                             "(flattened patches, tiles or batch statistics)")
                return original(*args, **kwargs)
        return out

    def _split_inputs(self, args: tuple, kwargs: dict) -> list[tuple[tuple, dict]] | None:
        """Per-row ``(args, kwargs)`` of a call: tensors split along dim 0, everything else shared."""
        main = args[0] if args else kwargs.get("pixel_values", kwargs.get(getattr(self.tower, "main_input_name", "")))
        if not torch.is_tensor(main) or main.dim() == 0:
            self.disable("the tower's input is not a batch tensor")
            return None
        n = main.shape[0]
        if self._keys is not None and len(self._keys) != n:
            self.disable(f"the tower's input has {n} rows for {len(self._keys)} images (flattened patches or "
                         "image tiles), so its outputs do not split per image")
            return None
        for value in (*args, *kwargs.values()):
            if torch.is_tensor(value) and (value.dim() == 0 or value.shape[0] != n):
                self.disable(f"an argument of shape {tuple(value.shape)} does not split over the input's {n} rows "
                             "(flattened patches or image tiles with a grid argument)")
                return None

        def row(value, i):
            return value[i:i + 1] if torch.is_tensor(value) else value

        return [(tuple(row(a, i) for a in args), {k: row(v, i) for k, v in kwargs.items()}) for i in range(n)]

    def _row_keys(self, rows) -> list[str] | None:
        if self._keys is not None:
            return self._keys
        keys = []
        for row_args, row_kwargs in rows:
            named = list(enumerate(row_args)) + sorted(row_kwargs.items())
            tensors = [v for _, v in named if torch.is_tensor(v)]
            rest = repr([(k, v) for k, v in named if not torch.is_tensor(v)])
            keys.append(tensor_digest(*tensors, extra=rest))
        return keys

    @staticmethod
    def _join(entries: list[list]):
        spec = entries[0][0]
        if any(e[0] != spec for e in entries):
            return None
        joined = []
        for leaves in zip(*(e[1] for e in entries), strict=True):
            if leaves[0] is None:
                if any(leaf is not None for leaf in leaves):
                    return None
                joined.append(None)
            elif any(leaf is None or leaf.shape[1:] != leaves[0].shape[1:] for leaf in leaves):
                return None
            else:
                joined.append(torch.cat(leaves, dim=0))  # a new tensor: the model cannot alter an entry
        return pytree.tree_unflatten(joined, spec)

    def _same(self, cached, computed) -> bool:
        a, spec_a = pytree.tree_flatten(cached)
        b, spec_b = pytree.tree_flatten(computed)
        if spec_a != spec_b:
            return False
        rtol, atol = self._tol
        for x, y in zip(a, b, strict=True):
            if (x is None) != (y is None):
                return False
            if x is not None and (x.shape != y.shape or not torch.allclose(x.float(), y.detach().float(),
                                                                           rtol=rtol, atol=atol)):
                return False
        return True
