"""Score uploaded images in dynamic micro-batches: the engine of ``deqa serve`` (no web framework).

>>> service = ScoringService(Scorer.from_pretrained("models/deqa"), Limits(max_batch=16))  # doctest: +SKIP
>>> service.start()                                                                       # doctest: +SKIP
>>> futures = service.submit([("a.jpg", data)])     # None when the queue is full (overload)  # doctest: +SKIP
>>> futures[0].result()     # {"name": "a.jpg", "score": 3.9, "std": 0.6, "p_bad": ..., ...} or {"name", "error"}

**Same scores as ``deqa score``.** Each upload is read by :func:`deqa.images.load_image` (EXIF
orientation, 16-bit scaling, alpha on white, the decompression-bomb guard) and scored by the
:class:`~deqa.scoring.Scorer`'s own ``encode`` / ``forward``. Scores do not depend on the batch an
image lands in (right padding, per-row level positions; see :mod:`deqa.scoring`).

**Where the work runs** (``encode_in``). One model thread runs the forward passes.

- ``threads``: a pool of ``decode_threads`` threads decodes each upload and encodes it alone
  (resize, normalise, tokenise) while the model runs; the model thread only assembles a batch from
  those per-image encodings (token rows right-padded with the pad id, image tensors concatenated).
  The assembly is checked once at start-up: two synthetic images of different sizes, encoded one
  by one and assembled, must equal the processor's own batch encoding exactly, else (a processor
  that pads images across a batch) ``model`` is used.
- ``model``: the threads only decode; the model thread encodes each batch with the processor.
- ``inline``: the model thread decodes and encodes each batch itself, as ``deqa score`` does
  with ``--decoder none``; the request handlers only parse HTTP.
- ``auto`` (default): ``threads`` where :meth:`deqa.scoring.Scorer.pick_decoder` would decode in
  a background thread (an accelerator, or two CPU cores spare beyond torch's threads), else
  ``inline``. On a 2-core CPU, work running beside the model slows the model's own convolutions
  more than it saves: ``inline`` served about 1.5x the images/s of ``threads`` there
  (``bench/bench_serve.py``, BENCHMARKS.md).

**Micro-batching.** The model thread takes the first waiting image, then keeps taking images until
it has ``max_batch`` or ``max_wait_ms`` has passed since the first (0: only what is already
waiting). Under load the batch fills with whatever arrived while the previous batch ran.

**Bounded memory.** At most ``max_queue`` images are admitted at once (being decoded, waiting, or
being scored); :meth:`ScoringService.submit` refuses a request that would exceed it, whole, and the
app answers 503 with a ``Retry-After`` estimated from the recent time per image. Admitted uploads
wait as their bytes; at most ``2 x max_batch`` prepared images (bytes with ``inline``, decoded
images with ``model``, encodings with ``threads``: 192 KiB each for the default 128 px model)
wait for the model, and the decoding threads pause beyond that, so at most ``3 x max_batch +
decode_threads`` decoded images exist at once (about what ``deqa score`` holds with its
background decoder; ``max_batch`` with ``inline``).

**Bad input is one image's error.** An upload that cannot be read (empty, truncated, not an
image, too many pixels...) becomes ``{"name", "error"}`` with the reason; the other images of the
request and of other requests are scored. A batch whose forward pass fails is retried image by
image, so only the image that breaks the model gets the error.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import queue
import threading
import time
import warnings
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from deqa.config import ValidateConfig
from deqa.images import ImageLoadError, array_to_rgb, load_image
from deqa.scoring import Scorer

log = logging.getLogger(__name__)

ENCODE_IN = ("auto", "threads", "model", "inline")
Upload = tuple[str, bytes]
"""One uploaded image: its name (file name or index) and its bytes."""


@dataclass(frozen=True)
class Limits:
    """Batching and admission limits of the service and the app (all checked by :meth:`check`)."""

    max_batch: int = 16  # images per forward pass
    max_wait_ms: float = 5.0  # how long the model thread waits for a batch to fill
    max_queue: int = 256  # images admitted at once (decoding, waiting, scoring); beyond: 503
    max_images: int = 64  # images in one request; beyond: 413
    max_request_mb: float = 32.0  # request body; beyond: 413
    max_requests: int = 64  # POST /score requests handled at once (uploads included); beyond: 503
    max_pixels: int = ValidateConfig().max_pixels  # per image (decompression-bomb guard, as validation)
    decode_threads: int = 0  # 0: the CPU cores left beside torch's threads (at least 1, at most 4)
    encode_in: str = "auto"  # threads, model or auto (module docstring)

    def check(self) -> Limits:
        """Self, or ``ValueError`` naming the first limit out of range."""
        for name in ("max_batch", "max_queue", "max_images", "max_requests", "max_pixels"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or not math.isfinite(self.max_wait_ms):
            raise ValueError(f"max_wait_ms must be a finite number >= 0, got {self.max_wait_ms}")
        if not self.max_request_mb > 0:
            raise ValueError(f"max_request_mb must be > 0, got {self.max_request_mb}")
        if self.encode_in not in ENCODE_IN:
            raise ValueError(f"encode_in must be one of {', '.join(ENCODE_IN)}, got {self.encode_in!r}")
        if self.decode_threads < 0:
            raise ValueError(f"decode_threads must be >= 0 (0: automatic), got {self.decode_threads}")
        if self.max_images > self.max_queue:
            raise ValueError(f"max_images ({self.max_images}) cannot exceed max_queue ({self.max_queue})")
        return self

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * 2**20)

    def threads(self) -> int:
        """Decoding threads: ``decode_threads``, or the cores beside torch's threads (1..4)."""
        if self.decode_threads:
            return self.decode_threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, min(4, cores - torch.get_num_threads()))


def pixel_guard(max_pixels: int) -> None:
    """Pillow's decompression-bomb guard at ``max_pixels`` for this process, as validation sets it.

    ``Image.MAX_IMAGE_PIXELS`` is process-wide; the warning filter is made permanent too, so that
    concurrent :func:`deqa.images.load_image` calls (whose ``catch_warnings`` is not thread-safe)
    always turn Pillow's bomb warning into a per-image error.
    """
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = int(max_pixels)
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


# ---------------------------------------------------------------------------------------------
# per-image encodings and their assembly into a batch
# ---------------------------------------------------------------------------------------------
def collate(encodings: list[dict], pad_id: int) -> dict | None:
    """One batch from per-image processor outputs, as the processor pads a batch; None if it cannot.

    Per-token rows (shape ``(1, length)``) are right-padded (``input_ids`` with ``pad_id``, the
    others with 0); other tensors are concatenated on their first axis when their other axes agree.
    """
    if not encodings or any(set(e) != set(encodings[0]) for e in encodings):
        return None
    lengths = [e["input_ids"].shape[1] for e in encodings]
    width = max(lengths)
    out = {}
    for key in encodings[0]:
        values = [e[key] for e in encodings]
        if not all(torch.is_tensor(v) and v.dim() >= 1 for v in values):
            return None
        if all(v.shape == (1, n) for v, n in zip(values, lengths, strict=True)):
            fill = pad_id if key == "input_ids" else 0
            out[key] = torch.cat([F.pad(v, (0, width - v.shape[1]), value=fill) for v in values])
        elif all(v.shape[1:] == values[0].shape[1:] and v.dtype == values[0].dtype for v in values):
            out[key] = torch.cat(values)
        else:
            return None
    return out


def encoding_difference(a: dict, b: dict) -> str | None:
    """None where two encodings are identical (keys, dtypes, shapes, values), else what differs."""
    if set(a) != set(b):
        return f"keys {sorted(a)} != {sorted(b)}"
    for k in a:
        x, y = a[k], b[k]
        if not (torch.is_tensor(x) and torch.is_tensor(y)):
            if x != y:
                return f"{k} differs"
        elif x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x, y):
            return f"{k}: {x.dtype}{tuple(x.shape)} != {y.dtype}{tuple(y.shape)} or its values differ"
    return None


class Encoder:
    """Upload bytes -> what the model thread needs, and a batch of those -> model inputs."""

    def __init__(self, scorer: Scorer, encode_in: str = "auto"):
        self.scorer = scorer
        tokenizer = scorer.conversation.tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._lock = threading.Lock()  # one processor call at a time (a fast tokenizer is not re-entrant)
        if encode_in == "auto":
            encode_in = "threads" if scorer.pick_decoder() == "thread" else "inline"
        problem = self._assembly_problem() if encode_in == "threads" else None
        if problem:
            log.info("batches are encoded by the processor in the model thread: %s", problem)
            encode_in = "model"
        self.where = encode_in
        """Where uploads are decoded and encoded: ``threads``, ``model`` or ``inline`` (module docstring)."""

    @property
    def per_image(self) -> bool:
        return self.where == "threads"

    def _assembly_problem(self) -> str | None:
        rng = np.random.default_rng(0)
        images = [array_to_rgb(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((48, 80), (97, 61))]
        whole, _ = self.scorer.encode(images)
        parts = collate([self.scorer.encode([im])[0] for im in images], self.pad_id)
        if parts is None:
            return "per-image encodings do not concatenate"
        why = encoding_difference(parts, whole)
        return f"an assembled batch differs from the processor's ({why})" if why else None

    @staticmethod
    def decode(data: bytes):
        """The upload as 8-bit RGB by :func:`deqa.images.load_image`; ``ImageLoadError`` if unreadable."""
        if not data:
            raise ImageLoadError("upload", "empty upload (0 bytes)")
        return load_image(io.BytesIO(data))

    def prepare(self, data: bytes):
        """What a decoding thread hands the model thread: the encoding, the image, or the bytes."""
        if self.where == "inline":
            return data
        image = self.decode(data)
        if self.where == "model":
            return image
        with self._lock:
            enc, _ = self.scorer.encode([image])
        return enc

    def inputs(self, items: list) -> tuple[dict, torch.Tensor] | None:
        """Model inputs and level positions for prepared items; None if they cannot form one batch."""
        if not self.per_image:
            return self.scorer.encode(items)
        enc = collate(items, self.pad_id)
        if enc is None:
            return None
        return enc, self.scorer.conversation.level_positions(enc["input_ids"], enc.get("attention_mask"))


def unreadable(exc: Exception) -> str:
    """The reason an upload could not be read: :class:`ImageLoadError`'s, else the exception."""
    if isinstance(exc, ImageLoadError):
        return exc.reason
    return f"cannot read the image: {type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------------------------
# the service: admission, decoding pool, model thread
# ---------------------------------------------------------------------------------------------
class ScoringService:
    """Uploads in, one row per image out, scored in micro-batches by one model thread (module doc)."""

    def __init__(self, scorer: Scorer, limits: Limits | None = None):
        self.limits = (limits or Limits()).check()
        pixel_guard(self.limits.max_pixels)
        self.scorer = scorer
        self.encoder = Encoder(scorer, self.limits.encode_in)
        self.decode_threads = self.limits.threads()
        # prepared images waiting for the model: 2 batches at most (decoding threads wait beyond that)
        self._waiting: queue.Queue = queue.Queue(maxsize=2 * self.limits.max_batch)
        self._lock = threading.Lock()
        self.pending = 0  # images admitted and not answered yet
        self.served = {"requests": 0, "images": 0, "errors": 0, "batches": 0, "refused": 0}
        self._seconds_per_image = 0.05  # moving average of the model thread's time per image
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._closing = False
        self.failure: str | None = None  # why the model thread stopped, if it did

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> ScoringService:
        if self._thread is None:
            self._pool = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="deqa-decode")
            self._thread = threading.Thread(target=self._run, name="deqa-model", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Refuse new requests, finish decoding, stop the model thread; what still waits gets an error."""
        with self._lock:
            self._closing = True
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._fail_waiting("the server is shutting down")

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    # -- requests -----------------------------------------------------------------------------
    def submit(self, uploads: list[Upload]) -> list[Future] | None:
        """One future per upload (its row), or None if admitting them would exceed ``max_queue``."""
        with self._lock:
            if self._closing or not self.alive or self.pending + len(uploads) > self.limits.max_queue:
                self.served["refused"] += 1
                return None
            self.pending += len(uploads)
            self.served["requests"] += 1
        futures = []
        for name, data in uploads:
            fut: Future = Future()
            self._pool.submit(self._prepare, name, data, fut)
            futures.append(fut)
        return futures

    def retry_after(self) -> int:
        """Seconds until the images now admitted are likely done (1..60): the ``Retry-After``."""
        return int(min(60, max(1, math.ceil(self.pending * self._seconds_per_image))))

    def health(self) -> dict:
        with self._lock:
            served = dict(self.served)
            pending = self.pending
        return {
            "status": "ok" if self.alive else "failed",
            **({"failure": self.failure} if self.failure else {}),
            "device": str(self.scorer.device),
            "encode_in": self.encoder.where,
            "decode_threads": self.decode_threads,
            "pending_images": pending,
            "limits": asdict(self.limits) | {"decode_threads": self.decode_threads, "encode_in": self.encoder.where},
            "served": served,
        }

    # -- decoding threads -----------------------------------------------------------------------
    def _prepare(self, name: str, data: bytes, fut: Future) -> None:
        try:
            item = self.encoder.prepare(data)
        except Exception as exc:  # whatever one upload does, it is that upload's error only
            self._answer(fut, {"name": name, "error": unreadable(exc)})
        else:
            self._wait_for_model((name, item, fut))

    def _wait_for_model(self, entry: tuple) -> None:
        """Queue a prepared image for the model thread, waiting while two batches already wait."""
        while True:
            try:
                self._waiting.put(entry, timeout=0.1)
                return
            except queue.Full:
                if self.failure or self._thread is None or not self._thread.is_alive():
                    self._answer(entry[2], {"name": entry[0], "error": "the model thread stopped"})
                    return

    def _answer(self, fut: Future, row: dict) -> None:
        with self._lock:
            self.pending -= 1
            self.served["images"] += 1
            self.served["errors"] += "error" in row
        with contextlib.suppress(InvalidStateError):  # the caller gave up (cancelled): nobody waits
            fut.set_result(row)

    # -- the model thread -----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                batch = self._collect()
                if batch:
                    self._score(batch)
        except BaseException as exc:  # the thread must not die silently: /health reports it
            self.failure = f"{type(exc).__name__}: {exc}"
            log.exception("the model thread stopped")
            self._fail_waiting(f"the model thread stopped ({self.failure})")

    def _collect(self) -> list:
        """The next batch: up to ``max_batch`` waiting images, waiting ``max_wait_ms`` to fill it."""
        try:
            batch = [self._waiting.get(timeout=0.1)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.limits.max_wait_ms / 1000
        while len(batch) < self.limits.max_batch:
            try:
                batch.append(self._waiting.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return batch

    def _score(self, batch: list) -> None:
        start = time.perf_counter()
        if self.encoder.where == "inline":
            batch = self._decode_inline(batch)
            if not batch:
                return
        rows = self._rows([item for _, item, _ in batch])
        per_image = (time.perf_counter() - start) / len(batch)
        self._seconds_per_image = 0.8 * self._seconds_per_image + 0.2 * per_image
        with self._lock:
            self.served["batches"] += 1
        for (name, _, fut), row in zip(batch, rows, strict=True):
            self._answer(fut, {"name": name, **row})

    def _decode_inline(self, batch: list) -> list:
        """``inline``: decode the batch's uploads here; an unreadable one is answered at once."""
        kept = []
        for name, data, fut in batch:
            try:
                kept.append((name, self.encoder.decode(data), fut))
            except Exception as exc:
                self._answer(fut, {"name": name, "error": unreadable(exc)})
        return kept

    def _rows(self, items: list) -> list[dict]:
        """Score rows for prepared items; a failing batch is retried image by image."""
        try:
            inputs = self.encoder.inputs(items)
            if inputs is None and len(items) > 1:
                raise ValueError("these images do not form one batch")
            if inputs is None:
                raise ValueError("the image could not be encoded")
            result = self.scorer.forward(*inputs)
        except Exception as exc:
            if len(items) > 1:
                return [row for item in items for row in self._rows([item])]
            return [{"error": f"the model failed on this image: {' '.join(str(exc).split()) or type(exc).__name__}"}]
        return [{k: v for k, v in r.items() if k != "path"} for r in result.records()]

    def _fail_waiting(self, reason: str) -> None:
        while True:
            try:
                name, _, fut = self._waiting.get_nowait()
            except queue.Empty:
                return
            self._answer(fut, {"name": name, "error": reason})
