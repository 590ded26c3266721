"""Score images with a trained DeQA model: :class:`Scorer` and its streaming batches.

>>> from deqa.scoring import Scorer
>>> scorer = Scorer.from_pretrained("models/deqa")          # adapter dir or merged checkpoint
>>> result = scorer.score(["a.jpg", pil_image, numpy_array])  # doctest: +SKIP
>>> result.mean, result.std, result.probs                      # (N,), (N,), (N, 5) bad..excellent
>>> for batch in scorer.iter_score(paths):                     # doctest: +SKIP
...     batch.records()        # this batch's rows in input order; unreadable images as error rows

The score is the probability-weighted level ``μ = Σ k·p_k`` on 1..5 and the predicted std
``σ = sqrt(Σ p_k (k − μ)²)``, with ``p`` the softmax over the five level-token logits at the level
position (spec §4). ``deqa score``, the ``evaluate`` stage and training-time validation all score
through this one class; every image file is read by :func:`deqa.images.load_image`.

**Streaming.** :meth:`Scorer.iter_score` yields each batch as soon as it is scored. Memory is
bounded by a few batches, not by the number of inputs: decoded full-size images live only while
their batch is encoded (processor: resize, normalise, tokenise), and at most ``prefetch`` encoded
batches wait ahead of the model. An unreadable image becomes an error entry of its batch; the
rest of the batch is scored. Where the images are read (``decoder``): ``thread`` reads and
encodes batch ``i + 1`` in a background thread while the model runs batch ``i``; ``process`` in
one ``torch.utils.data.DataLoader`` worker; ``none`` inline. ``auto`` (the default) takes
``thread`` when the model runs on an accelerator or the CPU has at least two cores beyond
torch's threads, else ``none``: on a 2-core CPU a concurrent decoder slows the model's own
convolutions by about 40% in CPU time, more than it saves (``bench/bench_score.py``).

**Batch invariance.** Sequences are right-padded (so real tokens keep their positions) and the
level position is found per row, so a score does not depend on the batch it was computed in;
the tests hold batch 1 and batch 32 to within 1e-4.

**Stored vision features.** ``Scorer(..., features=store)`` (or ``from_pretrained(...,
features=folder)``) scores the image files that a :class:`deqa.features.FeatureStore` holds
without decoding them or running the tower: their batches are assembled from the store and the
tower is fed the stored outputs (:func:`deqa.features.fed`). A store computed by another tower or
processor is not used (logged). Other inputs are scored as usual.

What ``deqa score`` reads and writes around it (files, folders, globs, path lists; streamed
result files) is :mod:`deqa.score_files`.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.utils.data
from torch.utils import _pytree as pytree

from deqa import LEVELS
from deqa.features import FeatureStore, check_batch, fed, image_token_id
from deqa.images import ImageLoadError, array_to_rgb, display_path, load_image, to_rgb
from deqa.losses import read_scores
from deqa.modeling import (
    MODEL_CARD,
    Conversation,
    get_module,
    load_model,
    load_processor,
    quiet_peft,
    resolve_checkpoint,
    resolve_modules,
)

log = logging.getLogger(__name__)

DECODERS = ("auto", "thread", "process", "none")


class ModelLoadError(ValueError):
    """A model that cannot be loaded (missing, corrupt, unknown device...); names the folder."""


@dataclass
class ScoreResult:
    """Scores of N images: ``mean`` and ``std`` on 1..5, ``probs`` (N, 5) ordered bad..excellent."""

    mean: np.ndarray
    std: np.ndarray
    probs: np.ndarray

    def __len__(self) -> int:
        return len(self.mean)

    def records(self, names: list[str] | None = None) -> list[dict]:
        names = names if names is not None else [str(i) for i in range(len(self))]
        return [
            {
                "path": n,
                "score": float(m),
                "std": float(s),
                **{f"p_{lv}": float(p) for lv, p in zip(LEVELS, ps, strict=False)},
            }
            for n, m, s, ps in zip(names, self.mean, self.std, self.probs, strict=False)
        ]

    @classmethod
    def concat(cls, parts: list[ScoreResult]) -> ScoreResult:
        if not parts:
            return cls(np.zeros(0), np.zeros(0), np.zeros((0, len(LEVELS))))
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("mean", "std", "probs")))


@dataclass
class ScoredBatch:
    """One batch of :meth:`Scorer.iter_score`: its inputs' names, the scored rows and the failures.

    ``start`` is the index of the batch's first input in the whole input list; ``ok`` the
    positions (within the batch) that were scored, one ``result`` row each; ``errors`` maps the
    other positions to the reason they could not be read.
    """

    start: int
    names: list[str]
    ok: list[int]
    result: ScoreResult
    errors: dict[int, str] = field(default_factory=dict)

    def records(self) -> list[dict]:
        """Rows in input order: ``path, score, std, p_*`` or ``path, error``."""
        scored = dict(zip(self.ok, self.result.records([self.names[j] for j in self.ok]), strict=False))
        return [
            scored[j] if j in scored else {"path": self.names[j], "error": self.errors[j]}
            for j in range(len(self.names))
        ]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto``/None (CUDA when available, else CPU) or a device string that exists on this machine.

    Raises ``ValueError`` with a one-line reason for an unknown or unavailable device.
    """
    if isinstance(device, torch.device):
        return device
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    available = {
        "cpu": lambda: True,
        "cuda": lambda: torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count(),
        "mps": lambda: torch.backends.mps.is_available(),
        "xpu": lambda: hasattr(torch, "xpu") and torch.xpu.is_available(),
    }
    if dev.type not in available:
        raise ValueError(f"device {device!r} cannot run a model here; use auto, cpu, cuda, cuda:N or mps")
    if not available[dev.type]():
        why = (
            "this torch build has no CUDA support"
            if dev.type == "cuda" and not torch.backends.cuda.is_built()
            else "no such device is visible"
        )
        raise ValueError(f"device {device!r} is not available ({why}); use --device cpu or auto")
    return dev


def _dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(table)}")
    return table[dtype]


def to_pil(image):
    """A path, PIL image or numpy array as 8-bit RGB PIL, by the rules of :mod:`deqa.images`."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, np.ndarray):
        return array_to_rgb(image)
    raise TypeError(f"cannot score an object of type {type(image).__name__}; pass a path, PIL image or numpy array")


def find_base(model_dir: Path, base: str | Path | None) -> Path:
    """The base checkpoint of an adapter directory: ``base``, else its model card's, resolved."""
    if base is None:
        card = model_dir / MODEL_CARD
        if card.exists():
            base = json.loads(card.read_text()).get("base_model")
        if not base:
            cfg = json.loads((model_dir / "adapter_config.json").read_text())
            base = cfg.get("base_model_name_or_path")
    candidates = [Path(base)] if Path(base).is_absolute() else [Path(base), model_dir.resolve().parents[1] / base]
    for c in candidates:
        if c.exists():
            return resolve_checkpoint(c)
    raise FileNotFoundError(f"the base model {base!r} of adapter {model_dir} was not found; pass its path (--base)")


def _corrupt_safetensors(folder: Path) -> Path | None:
    """The first ``*.safetensors`` file in ``folder`` whose header cannot be read, if any."""
    from safetensors import safe_open

    for f in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as st:
                st.keys()
        except Exception:
            return f
    return None


def _load_error(path: Path, exc: Exception, base: Path | None = None) -> ModelLoadError:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "safetensors" in type(exc).__module__.lower() or "deserializing" in text:
        bad = next((f for f in (_corrupt_safetensors(d) for d in (path, base) if d) if f), None)
        what = display_path(bad) if bad else "a .safetensors file"
        text = f"{what} is truncated or corrupt ({text})"
    elif isinstance(exc, json.JSONDecodeError):
        text = f"a JSON file of the model is not valid JSON ({text})"
    return ModelLoadError(f"cannot load the model {display_path(path)}: {text}")


class Scorer:
    """A trained DeQA model ready to score images in batches."""

    def __init__(
        self, model, processor, device: torch.device, batch_size: int = 32, features: FeatureStore | None = None
    ):
        self.model, self.processor, self.device = model.eval(), processor, torch.device(device)
        self.conversation = Conversation(processor)
        self.conversation.tokenizer.padding_side = "right"
        self.batch_size = batch_size
        self.tower = get_module(model, resolve_modules(model).vision)
        self.features = None
        if features is not None:
            problem = features.usable_with(self.tower, processor, self.conversation.scoring_text())
            if problem:
                log.info("vision features not used for scoring: %s", problem)
            else:
                self.features, self._token_id = features, image_token_id(processor)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path = "models/deqa",
        *,
        base: str | Path | None = None,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 32,
        trust_remote_code: bool = False,
        features: str | Path | FeatureStore | None = None,
    ) -> Scorer:
        """Load an adapter directory (with its base) or a merged/standalone checkpoint.

        ``features``: a feature store (folder) for the images it holds (module docstring). Every
        failure is a :class:`ModelLoadError` (a ``ValueError``) naming the folder and the reason.
        """
        path = Path(path)
        if not path.is_dir():
            raise ModelLoadError(f"model directory {display_path(path)} does not exist (train one with `dvc repro`)")
        try:
            dev = resolve_device(device)
            dt = _dtype(dtype, dev)
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from None
        base_dir = None
        try:
            processor = load_processor(path, trust_remote_code=trust_remote_code)
            if (path / "adapter_config.json").exists():
                from peft import PeftModel

                base_dir = find_base(path, base)
                base_model = load_model(base_dir, dtype=dt, trust_remote_code=trust_remote_code)
                with quiet_peft():
                    model = PeftModel.from_pretrained(base_model, path)
            else:
                model = load_model(path, dtype=dt, trust_remote_code=trust_remote_code)
            model.to(dev)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:
            raise _load_error(path, exc, base_dir) from exc
        log.info("loaded %s on %s (%s)", display_path(path), dev, str(dt).replace("torch.", ""))
        if isinstance(features, (str, Path)):
            features = FeatureStore.load(features)
        return cls(model, processor, dev, batch_size=batch_size, features=features)

    # -- one batch: encode (CPU, may run in the background) and forward (the model) ---------------
    def encode(self, images: list) -> tuple[dict, torch.Tensor]:
        """Processor inputs and level positions for RGB PIL images (no model call)."""
        conv = self.conversation
        enc = self.processor(text=[conv.scoring_text()] * len(images), images=images, padding=True, return_tensors="pt")
        pos = conv.level_positions(enc["input_ids"], enc["attention_mask"])
        return dict(enc), pos

    def encode_stored(self, paths: list) -> tuple[dict, torch.Tensor, object] | None:
        """Inputs, level positions and stored tower outputs for image files the feature store
        holds (``None`` where it lacks one); the first such batch is checked against the processor."""
        keys = self.features.holds(paths) if self.features is not None else None
        if keys is None:
            return None
        texts = [self.conversation.scoring_text()] * len(paths)
        problem = check_batch(self.features, self.processor, [str(p) for p in paths], texts, self._token_id, "scoring")
        if problem:
            log.info("vision features not used for scoring: assembled batch differs (%s)", problem)
            self.features = None
            return None
        batch = self.features.batch(keys, texts, self.conversation.tokenizer, self._token_id)
        enc = batch["inputs"]
        return enc, self.conversation.level_positions(enc["input_ids"], enc["attention_mask"]), batch["features"]

    @torch.no_grad()
    def forward(self, enc: dict, pos: torch.Tensor, features=None) -> ScoreResult:
        """Run the model on encoded inputs (the tower fed ``features``, the batch's stored outputs,
        where given) and read the level probabilities, score and std."""
        enc = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in enc.items()}
        if "pixel_values" in enc and enc["pixel_values"].is_floating_point():
            enc["pixel_values"] = enc["pixel_values"].to(self.model.dtype)
        if features is not None:
            features = pytree.tree_map(lambda t: t.to(self.device) if torch.is_tensor(t) else t, features)
        with fed(self.tower, features):
            logits = self.model(**enc).logits
        probs, mu, sigma = read_scores(logits, pos, self.conversation.level_ids)
        return ScoreResult(*(t.detach().cpu().double().numpy() for t in (mu, sigma, probs)))  # float64 read-out

    def score_batch(self, images: list) -> ScoreResult:
        """Score one batch of images (paths, PIL or arrays; no splitting, no error tolerance)."""
        return self.forward(*self.encode([to_pil(im) for im in images]))

    def _prepare(self, items: list) -> tuple[dict | None, torch.Tensor | None, list[int], dict[int, str], object]:
        """Read and encode one batch: (inputs, positions, positions read, position -> reason,
        stored tower outputs or ``None``)."""
        if all(isinstance(x, (str, Path)) for x in items):
            stored = self.encode_stored(items)
            if stored is not None:
                enc, pos, features = stored
                return enc, pos, list(range(len(items))), {}, features
        images, ok, errors = [], [], {}
        for j, item in enumerate(items):
            try:
                images.append(to_pil(item))
                ok.append(j)
            except ImageLoadError as exc:
                errors[j] = exc.reason
            except (TypeError, ValueError) as exc:
                errors[j] = str(exc)
        if not images:
            return None, None, ok, errors, None
        enc, pos = self.encode(images)
        return enc, pos, ok, errors, None

    # -- streaming ----------------------------------------------------------------------------
    def iter_score(
        self,
        images: Iterable,
        batch_size: int | None = None,
        names: list[str] | None = None,
        decoder: str = "auto",
        prefetch: int = 2,
    ) -> Iterator[ScoredBatch]:
        """Score ``images`` batch by batch, yielding a :class:`ScoredBatch` as each one is done.

        ``names`` label the inputs in the records (default: the path, or the input's index).
        ``decoder``: ``thread`` reads and encodes the next batches in a background thread,
        ``process`` in one ``DataLoader`` worker process, ``none`` inline, ``auto`` (default) as
        :meth:`pick_decoder`. At most ``prefetch`` encoded batches wait ahead of the model.
        """
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
        decoder = self.pick_decoder() if decoder == "auto" else decoder
        items = [images] if isinstance(images, (str, Path, np.ndarray)) else list(images)
        bs = max(1, int(batch_size or self.batch_size))
        if names is None:
            names = [display_path(x) if isinstance(x, (str, Path)) else str(i) for i, x in enumerate(items)]
        starts = list(range(0, len(items), bs))
        prepare = _BatchPreparer(self, items, starts, bs)
        if decoder == "thread":
            batches = _in_thread(prepare, len(starts), prefetch)
        elif decoder == "process":
            batches = _in_process(prepare, prefetch)
        else:
            batches = (prepare[i] for i in range(len(starts)))
        for start, (enc, pos, ok, errors, features) in zip(starts, batches, strict=False):
            result = self.forward(enc, pos, features) if enc is not None else ScoreResult.concat([])
            yield ScoredBatch(start, names[start : start + bs], ok, result, errors)

    def pick_decoder(self) -> str:
        """``thread`` on an accelerator or with two spare CPU cores beyond torch's threads, else ``none``."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return "thread" if self.device.type != "cpu" or cores >= torch.get_num_threads() + 2 else "none"

    def score(
        self, images, batch_size: int | None = None, progress: bool | None = None, decoder: str = "auto"
    ) -> ScoreResult:
        """Score paths, PIL images or numpy arrays; returns means, stds and level probabilities.

        Raises :class:`deqa.images.ImageLoadError` for the first input that cannot be read (use
        :meth:`iter_score` to score the rest and collect the failures).
        """
        from tqdm.auto import tqdm

        items = [images] if isinstance(images, (str, Path, np.ndarray)) else list(images)
        show = progress if progress is not None else len(items) > 16
        parts = []
        with tqdm(total=len(items), desc="score", unit="img", disable=not show, file=sys.stderr) as bar:
            for batch in self.iter_score(items, batch_size, decoder=decoder):
                if batch.errors:
                    j, reason = min(batch.errors.items())
                    raise ImageLoadError(batch.names[j], reason)
                parts.append(batch.result)
                bar.update(len(batch.names))
        return ScoreResult.concat(parts)


class _BatchPreparer(torch.utils.data.Dataset):
    """Batch ``i`` of the inputs, read and encoded (a map-style dataset for the process decoder)."""

    def __init__(self, scorer: Scorer, items: list, starts: list[int], batch_size: int):
        self.scorer, self.items, self.starts, self.bs = scorer, items, starts, batch_size

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int):
        start = self.starts[i]
        return self.scorer._prepare(self.items[start : start + self.bs])


def _in_thread(produce, n: int, depth: int) -> Iterator:
    """``produce[0..n-1]`` computed in a daemon thread, at most ``depth`` results ahead, in order.

    An exception in the thread is re-raised here; closing the generator stops the thread.
    """
    results: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item) -> None:
        while not stop.is_set():
            try:
                results.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def work() -> None:
        try:
            for i in range(n):
                if stop.is_set():
                    return
                put(("ok", produce[i]))
        except BaseException as exc:
            put(("error", exc))
        put(("end", None))

    thread = threading.Thread(target=work, name="deqa-decode", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = results.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)


def _in_process(dataset: _BatchPreparer, depth: int) -> Iterator:
    """The batches of ``dataset`` from one ``DataLoader`` worker process, ``depth`` ahead."""
    from torch.utils.data import DataLoader

    if len(dataset) == 0:
        return iter(())
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=1,
        prefetch_factor=max(1, depth),
        collate_fn=lambda x: x,
        multiprocessing_context="fork",
    )
    return iter(loader)
