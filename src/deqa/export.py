"""Merge a LoRA adapter into its base model and save a standalone checkpoint, without ever losing data.

The output folder is an ordinary Hugging Face checkpoint (safetensors weights, config, processor
and tokenizer), loadable with ``AutoModelForImageTextToText``/``AutoProcessor`` and by
``deqa score --model``, plus ``deqa_model.json`` (the adapter's record, with the evaluation
metrics) and a ``README.md`` model card written with ``huggingface_hub.ModelCard``: YAML metadata
(base model, datasets, metrics with their values, license, tags) and a short body with the
headline numbers. The merged model gives the same scores as the adapter (tested to 1e-4).

Safety (:func:`export`):

- the export is written to a temporary folder beside the target and moved into place only when
  complete; a failed export leaves the target as it was and no temporary folder behind;
- an existing non-empty target is replaced only with ``overwrite=True``, and only after the new
  export is complete (the old one is moved aside and deleted last);
- a target that contains the repository, the adapter or its base checkpoint (``.``, ``models``,
  ``~``...) is refused before anything is loaded.

``dtype="auto"`` merges in the dtype the base checkpoint is stored in (bf16 for most real VLMs:
half the memory of float32, so merging a 7B model needs about 14 GB, not 28 GB); ``device="auto"``
merges on the GPU when there is one. The command line is :mod:`deqa.commands.export`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from deqa.modeling import MODEL_CARD, resolve_checkpoint

log = logging.getLogger(__name__)

TAGS = ["deqa", "image-quality-assessment", "iqa", "lora", "vision-language-model"]
HEADLINE = ("n", "srcc", "plcc", "krcc", "rmse")


def export(
    model_dir: str | Path,
    output: str | Path,
    base: str | Path | None = None,
    metrics_file: str | Path | None = "data/evaluate/metrics.json",
    overwrite: bool = False,
    dtype: str = "auto",
    device: str = "auto",
    license: str | None = None,
) -> Path:
    """Merge ``model_dir`` (adapter or full checkpoint) into a standalone checkpoint at ``output``."""
    model_dir, out = Path(model_dir), Path(output)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    base_path = _base_checkpoint(model_dir, base)
    _refuse_target(out, model_dir, base_path)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (use --overwrite)")
    torch_dtype = export_dtype(dtype, base_path or model_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        _write_export(model_dir, tmp, base, torch_dtype, device, metrics_file, license, base_path)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_export(model_dir: Path, tmp: Path, base, torch_dtype, device: str, metrics_file, license, base_path) -> None:
    from deqa.scoring import Scorer

    log.info("merging %s in %s on %s", model_dir, str(torch_dtype).replace("torch.", ""), device)
    scorer = Scorer.from_pretrained(model_dir, base=base, device=device, dtype=torch_dtype)
    model = scorer.model.merge_and_unload() if hasattr(scorer.model, "merge_and_unload") else scorer.model
    model.save_pretrained(tmp, safe_serialization=True)
    scorer.processor.save_pretrained(tmp)
    card = json.loads((model_dir / MODEL_CARD).read_text()) if (model_dir / MODEL_CARD).exists() else {}
    metrics = json.loads(Path(metrics_file).read_text()) if metrics_file and Path(metrics_file).is_file() else {}
    card.update({"adapter": False, "merged_from": str(model_dir), "metrics": {"evaluate": metrics} if metrics else {}})
    (tmp / MODEL_CARD).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    model_card(card, metrics, license or _base_license(base_path)).save(tmp / "README.md")


def _swap_in(tmp: Path, out: Path) -> None:
    """Move the finished export ``tmp`` to ``out``; an old ``out`` is moved aside, deleted last."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old / out.name, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _refuse_target(out: Path, model_dir: Path, base_path: Path | None) -> None:
    target = out.resolve()
    protected = {"the model being exported": model_dir.resolve()}
    if base_path is not None:
        protected["its base checkpoint"] = base_path.resolve()
    for start in (model_dir, Path.cwd()):
        repo = _repository(start)
        if repo is not None:
            protected[f"the repository {repo.name}"] = repo
    for what, path in protected.items():
        if target == path or target in path.parents:
            raise ValueError(f"refusing to export into {out}: it contains {what} ({path})")
    if target in (Path.home().resolve(), Path(target.anchor)):
        raise ValueError(f"refusing to export into {out}: give a folder of its own")


def _repository(model_dir: Path) -> Path | None:
    res = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=model_dir, capture_output=True, text=True)
    return Path(res.stdout.strip()).resolve() if res.returncode == 0 else None


def _base_checkpoint(model_dir: Path, base: str | Path | None) -> Path | None:
    """The weights folder of an adapter's base (None for a full checkpoint)."""
    if not (model_dir / "adapter_config.json").exists():
        return None
    from deqa.scoring import find_base

    return resolve_checkpoint(find_base(model_dir, base))


DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


def export_dtype(dtype: str, checkpoint: Path):
    """``auto``: the dtype the checkpoint's weights are stored in (float32 when it says none)."""
    import torch

    if dtype != "auto":
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use auto or one of {', '.join(DTYPES)}")
        return getattr(torch, DTYPES[dtype])
    config = json.loads((checkpoint / "config.json").read_text()) if (checkpoint / "config.json").exists() else {}
    stored = config.get("dtype") or config.get("torch_dtype") or (config.get("text_config") or {}).get("dtype")
    return (
        getattr(torch, stored)
        if isinstance(stored, str) and isinstance(getattr(torch, stored, None), torch.dtype)
        else torch.float32
    )


def _base_license(base_path: Path | None) -> str:
    """The base checkpoint's license from its model card, else this project's (the embedded default)."""
    from huggingface_hub import ModelCard

    if base_path is not None and (base_path / "README.md").is_file():
        found = ModelCard.load(base_path / "README.md").data.to_dict().get("license")
        if found:
            return found
    return "apache-2.0"


def model_card(card: dict, metrics: dict, license: str):
    """The ``README.md`` model card: metadata for the Hub plus the headline numbers."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    params = card.get("params", {})
    base = (params.get("model") or {}).get("base") or card.get("base_model") or "unknown"
    base_id = "deqa-tiny-llava" if base == "tiny" else Path(str(base)).name
    datasets = card.get("datasets") or [s.get("name") for s in (params.get("prepare") or {}).get("sources", [])]
    rows = [
        (split, name, block)
        for split, groups in metrics.items()
        if isinstance(groups, dict)
        for name, block in groups.items()
        if isinstance(block, dict) and "srcc" in block
    ]
    results = [
        EvalResult(
            task_type="image-text-to-text",
            task_name="Image quality assessment",
            dataset_type=name,
            dataset_name=name,
            dataset_split=split,
            metric_type=metric,
            metric_name=metric.upper(),
            metric_value=block[metric],
        )
        for split, name, block in rows
        if name != "overall"
        for metric in ("srcc", "plcc")
        if isinstance(block.get(metric), (int, float))
    ]
    data = ModelCardData(
        base_model=base_id,
        datasets=[d for d in datasets if d] or None,
        license=license,
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        tags=TAGS,
        metrics=["spearmanr", "pearsonr"],
        model_name=f"DeQA-Score {base_id}",
        eval_results=results or None,
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{_card_body(card, base, datasets, rows)}")


def _card_body(card: dict, base: str, datasets: list, rows: list) -> str:
    params = card.get("params", {})
    lines = [
        "# DeQA-Score image-quality model",
        "",
        "Exported by `deqa export`: a LoRA adapter merged into its base model. It reads an image and answers "
        '"The quality of the image is {level}."; the score is the probability-weighted level (1 = bad .. '
        "5 = excellent) and the predicted std comes from the same probabilities.",
        "",
        "```python",
        "from deqa.scoring import Scorer",
        "scorer = Scorer.from_pretrained('PATH')",
        "result = scorer.score(['image.jpg'])  # result.mean, result.std, result.probs",
        "```",
        "",
        f"- base model: `{base}`",
        f"- levels: {', '.join(card.get('levels', []))}",
        f"- training data: {', '.join(map(str, datasets)) or 'unknown'}",
    ]
    if params:
        lines.append(
            f"- labels: {(params.get('soft_labels') or {}).get('kind')}; "
            f"loss: {json.dumps(params.get('loss', {}), sort_keys=True)}"
        )
    if rows:
        lines += [
            "",
            "## Evaluation",
            "",
            "| split | dataset | " + " | ".join(HEADLINE) + " |",
            "|---|---|" + "---|" * len(HEADLINE),
        ]
        for split, name, block in rows:
            cells = [f"{block[k]:.4g}" if isinstance(block.get(k), (int, float)) else "" for k in HEADLINE]
            lines.append(f"| {split} | {name} | " + " | ".join(cells) + " |")
        lines += ["", f"Every metric is in `{MODEL_CARD}` (`metrics.evaluate`)."]
    return "\n".join(lines) + "\n"
