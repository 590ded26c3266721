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
shape and dtype) and of every per-row argument of the call; either way combined with the call's
other (non-tensor) arguments. So scoring code that knows nothing about the cache (validation
through :class:`deqa.scoring.Scorer`) is served by it too.

**Exact by construction.** Every call's output is the concatenation of its images' entries, and
an entry is computed so that it never depends on the history of the run: by the tower **on that
image alone** (a batch of one) where a call mixes cached and new images, or, inside
:meth:`~FeatureCache.whole`, as one batch where all of a call's images are new and the caller
guarantees that the batch is a function of the data alone (the training warm-up's fixed chunks,
validation). This is what makes a resumed run (a fresh process with an empty cache) bit-identical
to an uninterrupted one. Per-image and batched outputs of a tower agree to float rounding (about
1e-5 here; bit for bit for the default tower on this CPU), like any two batchings do. The cache
turns itself off for good, with a log line (``vision feature caching disabled: <reason>``), and
the tower runs normally from then on, wherever its outputs would not equal the tower's:

- the tower holds trainable parameters (a trained tower, or a projector that the family keeps
  inside its vision module, as Qwen2-VL does with its merger);
- the caller's keys do not match the input's rows, or an argument of the call does not split
  per row (towers fed flattened patches or image tiles with a grid argument, as Qwen2-VL);
- an output field does not split per image along dim 0;
- on the first call, the batch computed whole differs from the same images computed one by one
  beyond float rounding (1e-4 relative in fp32, 16 epsilons of a half-precision dtype): rows that
  depend on each other (flattened patches without a grid argument, batch statistics).

Entries are kept for the whole run on the tower's device: 32 KiB per image for the default tiny
model; a CLIP-L tower's hidden states are tens of MB per image, which is why the recipes for real
checkpoints switch the cache off.

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


class StopForward(Exception):
    """Raised by the tower inside ``FeatureCache.whole(stop=True)`` once its outputs are cached:
    filling the cache needs nothing of the model's forward after the tower."""


class FeatureCache:
    """Caches a frozen vision module's per-image outputs (see the module docstring)."""

    def __init__(
        self,
        tower: nn.Module,
        *,
        enabled: bool = True,
        check_first_call: bool = True,
        rtol: float = 1e-4,
        atol: float = 1e-5,
    ):
        """``rtol``/``atol`` (``atol`` relative to the output's largest magnitude, at least 1): the
        first call's comparison, widened to 16 machine epsilons of the output's dtype."""
        self.tower = tower
        self.entries: dict[str, list] = {}
        self.keyed_rows: set[str] = set()  # caller keys (keyed()) whose rows have entries
        self.enabled = enabled  # ``False``: install() does nothing and the tower always runs
        self.installed = False
        self.hits = self.misses = 0
        self._keys: list[str] | None = None
        self._previous = _MISSING
        self._checked = not check_first_call
        self._whole = self._stop = False
        self._params: list | None = None
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

    @contextlib.contextmanager
    def whole(self, stop: bool = False):
        """Inside, a call whose images are all missing is computed as one batch and split.

        Only for calls whose batch composition is a function of the data alone (the warm-up's
        fixed chunks, validation), so that a resumed run computes the same batches; a call with
        some images cached computes the missing ones one by one, as outside. ``stop``: each tower
        call raises :class:`StopForward` once its images are cached, ending the model's forward
        there (for filling the cache only; not under DeepSpeed ZeRO-3, whose hooks must finish).
        """
        self._whole, self._stop = True, stop
        try:
            yield self
        finally:
            self._whole = self._stop = False

    def holds(self, key: str) -> bool:
        """Whether the features of the image with caller key ``key`` (:meth:`keyed`) are cached
        (and the cache is on), so that its rows need no image."""
        return self.enabled and key in self.keyed_rows

    def __len__(self) -> int:
        return len(self.entries)

    # ------------------------------------------------------------------ the forward
    def _trainable(self) -> bool:
        if self._params is None:  # listed once: walking the module tree on every call costs ~2 ms
            self._params = list(self.tower.parameters())
        return any(p.requires_grad for p in self._params)

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
        missing = [i for i, k in enumerate(keys) if k not in self.entries]
        if missing and _placeholder(self._main_input(args, kwargs)):
            raise RuntimeError(
                "an image-free batch (deqa.data) reached the vision tower without cached features for "
                f"{len(missing)} of its images"
            )
        self.hits, self.misses = self.hits + len(keys) - len(missing), self.misses + len(missing)
        whole = None
        with torch.no_grad():
            if missing and (not self._checked or (self._whole and len(missing) == len(keys))):
                whole = original(*args, **kwargs)
            if self._whole and whole is not None and len(missing) == len(keys):
                fresh = self._split(whole, len(keys))
                if fresh is None:
                    return whole
            else:
                fresh = [self._split(original(*rows[i][0], **rows[i][1]), 1) for i in missing]
                if any(f is None for f in fresh):
                    return original(*args, **kwargs)
                fresh = [f[0] for f in fresh]
        if not self._checked and whole is not None:  # the first call: per image against the whole batch
            self._checked = True
            alone = (
                fresh
                if len(fresh) == len(keys) and not self._whole
                else [self._split(original(*r[0], **r[1]), 1)[0] for r in rows]
            )
            if not self._same(self._join(alone), whole):
                self.disable(
                    "the tower's output for an image depends on the other images in its batch "
                    "(flattened patches, tiles or batch statistics)"
                )
                return whole
        for i, entry in zip(missing, fresh, strict=True):
            self.entries[keys[i]] = entry
            if self._keys is not None:
                self.keyed_rows.add(self._keys[i])
        out = self._join([self.entries[k] for k in keys])
        if out is None:
            self.disable("the vision outputs of different images do not have one structure and shape")
            return original(*args, **kwargs)
        if self._stop:
            raise StopForward
        return out

    def _split(self, out, n: int) -> list[list] | None:
        """``out`` as ``n`` per-image entries ``[spec, leaves]`` (copies), or ``None`` (and off)."""
        leaves, spec = pytree.tree_flatten(out)
        if not all(leaf is None or (torch.is_tensor(leaf) and leaf.dim() and leaf.shape[0] == n) for leaf in leaves):
            self.disable("the vision outputs do not split per image along dim 0")
            return None
        return [
            [spec, [None if leaf is None else leaf[i : i + 1].detach().clone() for leaf in leaves]] for i in range(n)
        ]

    def _main_input(self, args: tuple, kwargs: dict):
        return args[0] if args else kwargs.get("pixel_values", kwargs.get(getattr(self.tower, "main_input_name", "")))

    def _split_inputs(self, args: tuple, kwargs: dict) -> list[tuple[tuple, dict]] | None:
        """Per-row ``(args, kwargs)`` of a call: tensors split along dim 0, everything else shared."""
        main = self._main_input(args, kwargs)
        if not torch.is_tensor(main) or main.dim() == 0:
            self.disable("the tower's input is not a batch tensor")
            return None
        n = main.shape[0]
        if self._keys is not None and len(self._keys) != n:
            self.disable(
                f"the tower's input has {n} rows for {len(self._keys)} images (flattened patches or "
                "image tiles), so its outputs do not split per image"
            )
            return None
        for value in (*args, *kwargs.values()):
            if torch.is_tensor(value) and (value.dim() == 0 or value.shape[0] != n):
                self.disable(
                    f"an argument of shape {tuple(value.shape)} does not split over the input's {n} rows "
                    "(flattened patches or image tiles with a grid argument)"
                )
                return None

        def row(value, i):
            return value[i : i + 1] if torch.is_tensor(value) else value

        return [(tuple(row(a, i) for a in args), {k: row(v, i) for k, v in kwargs.items()}) for i in range(n)]

    def _row_keys(self, rows) -> list[str]:
        """The caller's keys, else digests of each row's tensors; both with the call's other arguments."""
        keys = []
        for i, (row_args, row_kwargs) in enumerate(rows):
            named = list(enumerate(row_args)) + sorted(row_kwargs.items())
            rest = repr([(k, v) for k, v in named if not torch.is_tensor(v)])
            if self._keys is not None:
                keys.append(f"{self._keys[i]}|{rest}")
            else:
                keys.append(tensor_digest(*(v for _, v in named if torch.is_tensor(v)), extra=rest))
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
        for x, y in zip(a, b, strict=True):
            if (x is None) != (y is None):
                return False
            if x is None:
                continue
            if x.shape != y.shape or x.dtype != y.dtype:
                return False
            # float rounding of the dtype (bf16 under autocast rounds far more than fp32), not more
            eps = torch.finfo(y.dtype).eps if y.is_floating_point() else 0.0
            rtol, atol = max(self._tol[0], 16 * eps), max(self._tol[1], 16 * eps)
            scale = float(y.detach().abs().max()) if y.numel() and y.is_floating_point() else 1.0
            if not torch.allclose(x.double(), y.detach().double(), rtol=rtol, atol=atol * max(scale, 1.0)):
                return False
        return True


def _placeholder(value) -> bool:
    """An image stand-in of :mod:`deqa.data`: a float tensor of NaN only (checked on misses only)."""
    return (
        torch.is_tensor(value)
        and value.is_floating_point()
        and value.numel() > 0
        and bool(value.reshape(-1)[0].isnan())  # a real image fails here, without a full scan
        and bool(value.isnan().all())
    )
