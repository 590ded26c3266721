"""The ``base_model`` stage's logic: the checkpoint that training starts from.

``model.base: tiny`` builds the embedded default (:mod:`deqa.tiny`) into ``models/base/``.
Any other value is a local Hugging Face checkpoint directory: it is checked (it must load as an
image-text-to-text model config with a processor) and recorded, not copied, in
``models/base/deqa_base.json`` with its config and a SHA-256 over its weight files, so that
``dvc repro`` retrains when the checkpoint changes. Nothing downloads: a hub id is refused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from deqa.config import ModelConfig


def _hash_files(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file() and f.suffix in (".safetensors", ".bin", ".json", ".model", ".txt", ".jinja"):
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def prepare_base(cfg: ModelConfig, seed: int, out_dir: str | Path) -> dict:
    """Build or record the base model in ``out_dir``; returns a summary."""
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    if cfg.base == "tiny":
        from deqa.tiny import build_tiny_llava

        t = cfg.tiny
        build_tiny_llava(
            out,
            image_size=t.image_size,
            vision_tokens=t.vision_tokens,
            hidden_size=t.hidden_size,
            intermediate_size=t.intermediate_size,
            layers=t.layers,
            heads=t.heads,
            seed=seed,
            standardise=t.standardise,
            projector_act=t.projector_act,
            vision_stats=t.vision_stats,
            vision_layers=t.vision_layers,
        )
        return {"kind": "tiny", "parameters": count_parameters(out)}
    src = Path(cfg.base).expanduser()
    if not src.is_dir():
        raise FileNotFoundError(
            f"model.base: {cfg.base!r} is neither 'tiny' nor a local checkpoint directory "
            "(nothing is downloaded: point it at a folder holding config.json and the weights)"
        )
    config = json.loads((src / "config.json").read_text()) if (src / "config.json").exists() else None
    if config is None:
        raise FileNotFoundError(f"model.base: {src} has no config.json")
    from transformers import AutoConfig

    AutoConfig.from_pretrained(src, trust_remote_code=cfg.trust_remote_code)  # fails clearly if unknown
    if not any(src.glob("*processor_config.json")) and not (src / "tokenizer_config.json").exists():
        raise FileNotFoundError(f"model.base: {src} has no processor/tokenizer files")
    out.mkdir(parents=True)
    record = {"kind": "local", "path": str(src.resolve()), "config": config, "sha256": _hash_files(src)}
    (out / "deqa_base.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return {"kind": "local", "parameters": count_parameters(src)}


def count_parameters(path: Path) -> int:
    """Number of weights stored in a checkpoint's safetensors files (read from the headers)."""
    from math import prod

    from safetensors import safe_open

    n = 0
    for f in Path(path).glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            n += sum(prod(st.get_slice(k).get_shape()) for k in st.keys())  # noqa: SIM118 (safe_open is not iterable)
    return n
