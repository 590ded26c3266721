"""Resumable training: the run's fingerprint, and checkpoints that continue a killed run exactly.

**Fingerprint** (:func:`fingerprint`): a checkpoint is resumed only by a run with the same
fingerprint, which alone decides (the ``checkpoints/`` folder is the train stage's private resume
cache, not a DVC output). It has four parts, each a SHA-256, and the number of processes (each
rank's share of an epoch and its position in it depend on it: a run on 2 processes resumes only
on 2); a log line names the parts that differ when a checkpoint is skipped:

- ``params``: the params sections that shape the run (``base``, ``soft_labels``, ``model``,
  ``train``, ``lora``, ``loss``), minus the keys that do not change the trained weights
  (``train.resume``, ``checkpoint_every``, ``log_every``, ``threads``);
- ``data``: the bytes of ``train.csv`` and ``val.csv`` and of **every image file they point at**
  (content hashes, not sizes or times; no hash cache, so nothing can go stale; SHA-256 on a
  thread pool: ~0.3-0.6 s for the 4,960 default train and val images here, ~2 s per GB per core);
- ``base``: every file of the base checkpoint (resolved through ``models/base/deqa_base.json``
  where it points elsewhere), names and bytes;
- ``code``: every ``.py`` file of the installed ``deqa`` package, names and bytes (conservative:
  any change to the package, even outside training, invalidates old checkpoints).

**A checkpoint** ``step_NNNNNNN/`` holds (on N processes rank 0 writes everything below but the
per-rank RNG states, and every rank waits for it)

- what ``accelerate.Accelerator.save_state`` writes: ``model.safetensors`` (only the trainable
  tensors), ``optimizer.bin`` and ``scheduler.bin`` (``torch.save`` pickles), and
  ``random_states_<process>.pkl`` (pickle: Python, NumPy, torch and CUDA RNG states; each rank
  writes its own, so on several machines the folder must be shared); under
  DeepSpeed its own engine checkpoint instead; with fp16 a ``scaler.pt``;
- ``deqa_state.json`` (written by deqa): the fingerprint and its parts, the optimizer step, the
  epoch and the batches done in it, the running sums of the losses not yet logged, the per-epoch
  validation history and the best epoch so far (``train.select``);
- ``best.safetensors``: the trainable tensors of the best epoch so far (``train.select: best``);
- ``dvclive/``: a copy of the run's dvclive folder as of this step, put back on resume, so that the
  final logs have one row per step and equal an uninterrupted run's (DVC deletes an unpersisted
  ``dvclive/train`` before the stage re-runs).

A checkpoint is written to ``step_NNNNNNN.tmp`` and renamed when complete, so a run killed while
saving leaves nothing that looks resumable. The newest two checkpoints of the run are kept;
checkpoints of other fingerprints are deleted at the first save.

The data order and the dropout masks need no saved state: pairs are drawn from ``(seed, epoch)``
and every micro-batch reseeds all RNGs from ``(seed, epoch, batch, process)`` (see
:mod:`deqa.training`), so a resumed run skips the batches done and continues bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from deqa.config import Params, to_dict

log = logging.getLogger("deqa.training.checkpointing")

STATE_FILE = "deqa_state.json"
BEST_FILE = "best.safetensors"
LIVE_COPY = "dvclive"
_NAME = re.compile(r"step_(\d+)$")
_UNSHAPED = ("resume", "checkpoint_every", "log_every", "threads")


# ---------------------------------------------------------------------------------------------
# fingerprint
# ---------------------------------------------------------------------------------------------
def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _digest_files(named: list[tuple[str, Path]]) -> str:
    """SHA-256 over (name, content hash) pairs, in the given order; files hashed on threads."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        hashes = list(pool.map(file_sha256, [p for _, p in named]))
    h = hashlib.sha256()
    for (name, _), digest in zip(named, hashes, strict=True):
        h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest()


def params_digest(params: Params) -> str:
    h = hashlib.sha256()
    for section in ("base", "soft_labels", "model", "train", "lora", "loss"):
        data = to_dict(getattr(params, section))
        if section == "train":
            data = {k: v for k, v in data.items() if k not in _UNSHAPED}
        h.update(json.dumps({section: data}, sort_keys=True).encode())
    return h.hexdigest()


def data_digest(labels_dir: str | Path) -> str:
    """The label files' bytes and the bytes of every image they point at."""
    labels_dir = Path(labels_dir)
    named = []
    for split in ("train", "val"):
        f = labels_dir / f"{split}.csv"
        if f.exists():
            named.append((f.name, f))
            df = pd.read_csv(f, usecols=["root", "image"])
            named += [
                (f"{split}:{r}/{i}", Path(r) / i)
                for r, i in zip(df["root"].astype(str), df["image"].astype(str), strict=True)
            ]
    return _digest_files(named)


def base_digest(base_dir: str | Path, checkpoint: str | Path) -> str:
    """Every file of the base checkpoint (hidden folders aside) plus the pointer file, if any."""
    checkpoint, base_dir = Path(checkpoint), Path(base_dir)
    files = sorted(
        f
        for f in checkpoint.rglob("*")
        if f.is_file() and not any(part.startswith(".") for part in f.relative_to(checkpoint).parts)
    )
    named = [(str(f.relative_to(checkpoint)), f) for f in files]
    pointer = base_dir / "deqa_base.json"
    if pointer.exists() and base_dir.resolve() != checkpoint.resolve():
        named.append(("pointer", pointer))
    return _digest_files(named)


def code_digest() -> str:
    """Every ``.py`` file of the ``deqa`` package that is running (names and bytes)."""
    import deqa

    root = Path(deqa.__file__).resolve().parent
    return _digest_files([(str(f.relative_to(root)), f) for f in sorted(root.rglob("*.py"))])


@dataclass
class Fingerprint:
    params: str
    data: str
    base: str
    code: str
    processes: str = "1"  # the ranks' shares and positions hold only for the same number of processes

    @property
    def value(self) -> str:
        return hashlib.sha256("".join(asdict(self).values()).encode()).hexdigest()[:16]

    def differences(self, other: dict) -> list[str]:
        return [k for k, v in asdict(self).items() if other.get(k) != v]


def fingerprint(
    params: Params, labels_dir: str | Path, base_dir: str | Path, checkpoint: str | Path, processes: int = 1
) -> Fingerprint:
    """The identity of a training run (module docstring): params, data, base model, code, processes."""
    return Fingerprint(
        params=params_digest(params),
        data=data_digest(labels_dir),
        base=base_digest(base_dir, checkpoint),
        code=code_digest(),
        processes=str(processes),
    )


# ---------------------------------------------------------------------------------------------
# the run's state
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainState:
    """Everything of a run's progress besides model, optimizer and scheduler (saved as JSON)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch in progress
    batches_done: int = 0  # batches of ``epoch`` done (these are skipped on resume)
    running: dict = field(default_factory=dict)  # loss sums (and "n") since the last log row
    history: list = field(default_factory=list)  # one dict per validated epoch
    best: dict | None = None  # the best history entry so far (train.select: best)
    best_weights: dict | None = field(default=None, repr=False)  # its trainable tensors (not in the JSON)

    def add_batch(self, losses: dict[str, float]) -> None:
        """Count a micro-batch done and add its losses to the running sums."""
        self.batches_done += 1
        for k, v in {**losses, "n": 1}.items():
            self.running[k] = self.running.get(k, 0) + v

    def to_json(self, fp: Fingerprint) -> str:
        data = {k: v for k, v in asdict(self).items() if k != "best_weights"}
        return json.dumps({"fingerprint": fp.value, "parts": asdict(fp), **data}, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainState:
        data = json.loads(text)
        return cls(**{k: data[k] for k in ("step", "epoch", "batches_done", "running", "history", "best")})


class Checkpoints:
    """Save, find and resume the checkpoints of one run (one fingerprint) in ``directory``."""

    def __init__(self, accelerator, directory: str | Path, fp: Fingerprint, live_dir: str | Path | None, keep: int = 2):
        self.acc, self.dir, self.fp, self.keep = accelerator, Path(directory), fp, keep
        self.live_dir = Path(live_dir) if live_dir is not None else None
        self.live_restored = False  # the dvclive folder was put back as of the resumed checkpoint

    def _all(self) -> list[tuple[int, Path, dict]]:
        found = []
        for d in self.dir.glob("step_*"):
            match = _NAME.match(d.name)
            if match and (d / STATE_FILE).exists():
                info = json.loads((d / STATE_FILE).read_text())
                found.append((int(match.group(1)), d, info))
        return sorted(found, key=lambda t: t[0])

    def latest(self) -> Path | None:
        """The newest checkpoint of this run; logs why any newer one of another run is skipped."""
        for _, path, info in reversed(self._all()):
            if info.get("fingerprint") == self.fp.value:
                return path
            diff = self.fp.differences(info.get("parts", {}))
            log.info(
                "not resuming %s: its %s differ%s from this run's",
                path,
                ", ".join(diff) or "fingerprint",
                "s" if len(diff) == 1 else "",
            )
        return None

    def save(self, state: TrainState) -> Path:
        """Write a checkpoint of ``state`` (every process calls this: saving may be collective)."""
        from safetensors.torch import save_file

        target = self.dir / f"step_{state.step:07d}"
        tmp = target.with_name(target.name + ".tmp")
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.acc.wait_for_everyone()
        self.acc.save_state(str(tmp))
        if self.acc.is_main_process:
            if state.best_weights is not None:
                save_file(state.best_weights, str(tmp / BEST_FILE))
            if self.live_dir is not None and self.live_dir.exists():
                shutil.copytree(self.live_dir, tmp / LIVE_COPY)
            (tmp / STATE_FILE).write_text(state.to_json(self.fp))
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
            self._prune()
        self.acc.wait_for_everyone()
        return target

    def _prune(self) -> None:
        mine = []
        for _, path, info in self._all():
            if info.get("fingerprint") == self.fp.value:
                mine.append(path)
            else:
                log.info("deleting %s: a checkpoint of another run", path)
                shutil.rmtree(path, ignore_errors=True)
        for path in mine[: -self.keep]:
            shutil.rmtree(path, ignore_errors=True)
        for path in self.dir.glob("step_*.tmp"):
            shutil.rmtree(path, ignore_errors=True)

    def resume(self) -> TrainState:
        """Load the latest checkpoint of this run into the prepared objects; a fresh state if none."""
        path = self.latest()
        if path is None:
            return TrainState()
        from safetensors.torch import load_file

        self.acc.load_state(str(path), strict=False)  # checkpoints hold only the trainable tensors
        state = TrainState.from_json((path / STATE_FILE).read_text())
        if (path / BEST_FILE).exists():
            state.best_weights = load_file(str(path / BEST_FILE))
        if self.acc.is_main_process and self.live_dir is not None:
            shutil.rmtree(self.live_dir, ignore_errors=True)
            if (path / LIVE_COPY).exists():
                shutil.copytree(path / LIVE_COPY, self.live_dir)
                self.live_restored = True
        self.acc.wait_for_everyone()
        self.acc.print(
            f"resuming from {path} (step {state.step}, epoch {state.epoch}, {state.batches_done} batches of it done)"
        )
        return state
