"""``deqa export``: merge a LoRA adapter into its base model and save a standalone checkpoint.

The output folder is an ordinary Hugging Face checkpoint (safetensors weights, config, processor
and tokenizer), loadable with ``AutoModelForImageTextToText``/``AutoProcessor`` and by
``deqa score --model``, plus ``deqa_model.json`` and a ``README.md`` model card stating the data,
params and metrics the model was trained and evaluated with. The merged model gives the same
scores as the adapter (the tests hold them to 1e-4).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from deqa.modeling import MODEL_CARD
from deqa.scoring import Scorer


def export(model_dir: str | Path, output: str | Path, base: str | Path | None = None,
           metrics_dir: str | Path = "metrics", overwrite: bool = False) -> Path:
    """Merge ``model_dir`` (adapter or full) into a standalone checkpoint at ``output``."""
    model_dir, out = Path(model_dir), Path(output)
    if out.exists():
        if not overwrite and any(out.iterdir()):
            raise FileExistsError(f"{out} exists and is not empty (use --overwrite)")
        shutil.rmtree(out)
    scorer = Scorer.from_pretrained(model_dir, base=base, device="cpu", dtype="float32")
    model = scorer.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    out.mkdir(parents=True)
    model.save_pretrained(out, safe_serialization=True)
    scorer.processor.save_pretrained(out)
    card = json.loads((model_dir / MODEL_CARD).read_text()) if (model_dir / MODEL_CARD).exists() else {}
    card.update({"adapter": False, "merged_from": str(model_dir), "base_model": card.get("base_model")})
    metrics = {}
    for name in ("evaluate", "discretisation", "validate", "train"):
        f = Path(metrics_dir) / f"{name}.json"
        if f.exists():
            metrics[name] = json.loads(f.read_text())
    card["metrics"] = metrics
    (out / MODEL_CARD).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    (out / "README.md").write_text(model_card_markdown(card))
    return out


def model_card_markdown(card: dict) -> str:
    params = card.get("params", {})
    lines = [
        "# DeQA-Score image-quality model",
        "",
        "Exported by `deqa export`: the LoRA adapter merged into its base model. It reads an image and "
        "answers \"The quality of the image is {level}.\"; the score is the probability-weighted level "
        "(1 = bad .. 5 = excellent) and the predicted std comes from the same probabilities.",
        "",
        "```python",
        "from deqa.scoring import Scorer",
        "scorer = Scorer.from_pretrained('PATH')",
        "result = scorer.score(['image.jpg'])  # result.mean, result.std, result.probs",
        "```",
        "",
        f"- base model: `{card.get('base_model')}`",
        f"- levels: {', '.join(card.get('levels', []))}",
    ]
    if params:
        data = params.get("prepare", {}).get("sources", [])
        lines.append(f"- training data: {', '.join(s.get('name', '?') + ' (' + s.get('format', '?') + ')' for s in data)}")
        lines.append(f"- labels: {params.get('soft_labels', {}).get('kind')}; loss: {json.dumps(params.get('loss', {}))}")
        lines.append(f"- training: {json.dumps(params.get('train', {}))}")
        lines.append(f"- LoRA: {json.dumps(params.get('lora', {}))}")
    ev = card.get("metrics", {}).get("evaluate")
    if ev:
        lines += ["", "## Evaluation", "", "```json", json.dumps(ev, indent=2)[:6000], "```"]
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="models/deqa", help="trained adapter folder (default: models/deqa)")
    p.add_argument("--output", "-o", required=True, help="folder for the merged checkpoint")
    p.add_argument("--base", default=None, help="base checkpoint (default: from the adapter's deqa_model.json)")
    p.add_argument("--metrics", default="metrics", help="folder of metrics JSON files for the model card")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")


def run(args: argparse.Namespace) -> int:
    try:
        out = export(args.model, args.output, base=args.base, metrics_dir=args.metrics, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {args.model} -> {out}")
    return 0
