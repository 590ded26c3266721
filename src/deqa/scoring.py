"""Score images with a trained DeQA model: the :class:`Scorer` API and the ``deqa score`` command.

>>> from deqa.scoring import Scorer
>>> scorer = Scorer.from_pretrained("models/deqa")          # adapter dir or merged checkpoint
>>> result = scorer.score(["a.jpg", pil_image, numpy_array])  # doctest: +SKIP
>>> result.mean, result.std, result.probs                      # (N,), (N,), (N, 5) bad..excellent

The score is the probability-weighted level ``μ = Σ k·p_k`` on 1..5 and the predicted std
``σ = sqrt(Σ p_k (k − μ)²)``, with ``p`` the softmax over the five level-token logits at the level
position (spec §4). Scoring always runs the normal processor path (no cached features).

**Batch invariance.** Sequences are right-padded (so real tokens keep their positions) and the
level position is found per row, so a score does not depend on the batch it was computed in;
the tests hold batch 1 and batch 32 to within 1e-4.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deqa import LEVELS
from deqa.losses import read_scores
from deqa.modeling import MODEL_CARD, Conversation, load_model, load_processor, resolve_checkpoint

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
EXIT_OK, EXIT_PARTIAL, EXIT_FAILED = 0, 1, 2


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
            {"path": n, "score": float(m), "std": float(s), **{f"p_{lv}": float(p) for lv, p in zip(LEVELS, ps)}}
            for n, m, s, ps in zip(names, self.mean, self.std, self.probs)
        ]


def _device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(table)}")
    return table[dtype]


def to_pil(image):
    """A path, PIL image or numpy array (HxW, HxWx3/4; uint8, or float in [0, 1]) as RGB PIL."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            im.load()
            return im.convert("RGB")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:
            arr = (np.clip(arr.astype(np.float64), 0, 1) * 255 + 0.5).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
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


class Scorer:
    """A trained DeQA model ready to score images in batches."""

    def __init__(self, model, processor, device: torch.device, batch_size: int = 32):
        self.model, self.processor, self.device = model.eval(), processor, device
        self.conversation = Conversation(processor)
        self.conversation.tokenizer.padding_side = "right"
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(cls, path: str | Path = "models/deqa", *, base: str | Path | None = None,
                        device: str | None = None, dtype: str | torch.dtype | None = None,
                        batch_size: int = 32, trust_remote_code: bool = False) -> "Scorer":
        """Load an adapter directory (with its base) or a merged/standalone checkpoint."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"model directory {path} does not exist (train one with `dvc repro`)")
        dev = _device(device)
        dt = _dtype(dtype, dev)
        processor = load_processor(path, trust_remote_code=trust_remote_code)
        if (path / "adapter_config.json").exists():
            from peft import PeftModel

            base_model = load_model(find_base(path, base), dtype=dt, trust_remote_code=trust_remote_code)
            model = PeftModel.from_pretrained(base_model, path)
        else:
            model = load_model(path, dtype=dt, trust_remote_code=trust_remote_code)
        model.to(dev)
        return cls(model, processor, dev, batch_size=batch_size)

    @torch.no_grad()
    def score_batch(self, images: list) -> ScoreResult:
        """Score one batch of PIL images (no splitting)."""
        conv = self.conversation
        enc = self.processor(text=[conv.scoring_text()] * len(images), images=images, padding=True,
                             return_tensors="pt")
        pos = conv.level_positions(enc["input_ids"], enc["attention_mask"])
        enc = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in enc.items()}
        if "pixel_values" in enc and enc["pixel_values"].is_floating_point():
            enc["pixel_values"] = enc["pixel_values"].to(self.model.dtype)
        probs, mu, sigma = read_scores(self.model(**enc).logits, pos, conv.level_ids)
        return ScoreResult(mu.cpu().numpy(), sigma.cpu().numpy(), probs.cpu().numpy())

    def score(self, images, batch_size: int | None = None, progress: bool | None = None) -> ScoreResult:
        """Score paths, PIL images or numpy arrays; returns means, stds and level probabilities."""
        from tqdm.auto import tqdm

        images = list(images) if not isinstance(images, (str, Path, np.ndarray)) else [images]
        bs = batch_size or self.batch_size
        show = progress if progress is not None else len(images) > 16
        parts = []
        with tqdm(total=len(images), desc="score", unit="img", disable=not show, file=sys.stderr) as bar:
            for start in range(0, len(images), bs):
                chunk = [to_pil(im) for im in images[start:start + bs]]
                parts.append(self.score_batch(chunk))
                bar.update(len(chunk))
        if not parts:
            return ScoreResult(np.zeros(0), np.zeros(0), np.zeros((0, 5)))
        return ScoreResult(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("mean", "std", "probs")))


# ---------------------------------------------------------------------------------------------
# the `deqa score` command
# ---------------------------------------------------------------------------------------------
def expand_inputs(inputs: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Files, folders (recursively, image extensions), globs and CSV/text lists -> paths, errors."""
    paths, errors = [], []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                errors.append((item, "folder holds no image files"))
            paths += found
        elif p.suffix.lower() in (".csv", ".txt") and p.is_file():
            paths += _read_list(p)
        elif p.exists():
            paths.append(str(p))
        elif any(ch in item for ch in "*?["):
            found = sorted(f for f in glob.glob(item, recursive=True) if Path(f).is_file())
            if not found:
                errors.append((item, "pattern matched no files"))
            paths += found
        else:
            errors.append((item, "no such file or directory"))
    return paths, errors


def _read_list(path: Path) -> list[str]:
    text = path.read_text()
    if path.suffix.lower() == ".txt":
        return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return []
    header = [h.strip().lower() for h in rows[0]]
    col = next((header.index(c) for c in ("path", "image", "file", "filename") if c in header), None)
    body = rows[1:] if col is not None else rows
    col = col or 0
    base = path.parent
    out = []
    for r in body:
        if len(r) > col and r[col].strip():
            f = Path(r[col].strip())
            out.append(str(f if f.is_absolute() or f.exists() else base / f))
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Score images with a trained DeQA model. Prints one row per image: path, score (1-5), "
        "predicted std and the five level probabilities (bad..excellent). Exit codes: 0 every image "
        "scored; 1 some images could not be read (reported on stderr and in the output's error "
        "column), the rest scored; 2 nothing scored (no inputs, all unreadable, or the model failed to load)."
    )
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="image files, folders (searched recursively), glob patterns, or CSV/text lists of paths")
    p.add_argument("--model", default="models/deqa",
                   help="trained model: an adapter folder or a merged checkpoint (default: models/deqa)")
    p.add_argument("--base", default=None, help="base checkpoint of an adapter (default: from its deqa_model.json)")
    p.add_argument("--format", choices=["csv", "json"], default=None,
                   help="output format (default: from --output's extension, else csv)")
    p.add_argument("--output", "-o", default=None, help="write here instead of stdout")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: 16)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default: auto)")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's own Python code")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size < 1:
        print("error: --batch-size must be at least 1", file=sys.stderr)
        return EXIT_FAILED
    paths, errors = expand_inputs(args.paths)
    try:
        scorer = Scorer.from_pretrained(args.model, base=args.base, device=args.device, dtype=args.dtype,
                                        batch_size=args.batch_size, trust_remote_code=args.trust_remote_code)
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"error: cannot load the model: {exc}", file=sys.stderr)
        return EXIT_FAILED
    ok_paths, images = [], []
    for p in paths:
        try:
            images.append(to_pil(p))
            ok_paths.append(p)
        except Exception as exc:  # noqa: BLE001 - every unreadable file is reported, none stops the run
            errors.append((p, f"{type(exc).__name__}: {exc}"))
    result = scorer.score(images, progress=False if args.no_progress else None)
    records = result.records(ok_paths) + [{"path": p, "error": reason} for p, reason in errors]
    for p, reason in errors:
        print(f"warning: {p}: {reason}", file=sys.stderr)
    fmt = args.format or ("json" if args.output and args.output.endswith(".json") else "csv")
    text = _render(records, fmt)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    if not ok_paths:
        print("error: no image could be scored", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_PARTIAL if errors else EXIT_OK


def _render(records: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(records, indent=2) + "\n"
    fields = ["path", "score", "std", *[f"p_{lv}" for lv in LEVELS], "error"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in records:
        w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()
