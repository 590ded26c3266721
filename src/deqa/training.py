"""LoRA (or full) fine-tuning of any HF VLM with the DeQA-Score losses, on an accelerate loop.

The loop is plain on purpose (read it top to bottom in :func:`train`): accelerate supplies the
device placement, mixed precision, gradient accumulation, multi-process data sharding and
checkpoint state; transformers the cosine schedule with warm-up; peft the adapters; dvclive the
logs. Everything model-specific goes through :mod:`deqa.modeling`, so the same code trains the
embedded default and a real checkpoint, on one CPU or under ``accelerate launch`` on many GPUs.

Batches hold image **pairs** from the same dataset: ``B`` pairs are laid out as ``2B`` sequences
``[A_1..A_B, B_1..B_B]`` and go through **one** forward pass (the authors' code runs two).

When the vision tower is frozen and ``train.cache_vision_features`` is on, :class:`CachedTower`
stores each image's tower output the first time it is computed and returns it afterwards, so
later epochs skip the tower. It works for any family whose tower takes one row per image and
whose outputs split per image along dim 0 (LLaVA, Idefics3 without image splitting), and turns
itself off (normal path, logged) where that does not hold: towers fed flattened patches or image
tiles (Qwen2-VL, Idefics3 with splitting) and towers holding trainable parameters (Qwen2-VL's
projector lives inside its ``visual`` module).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from deqa import LEVELS
from deqa.config import Params, to_dict
from deqa.losses import deqa_loss, read_scores
from deqa.modeling import (
    MODEL_CARD, Conversation, freeze_batchnorm, get_module, load_model, load_processor, resolve_checkpoint,
    resolve_modules, set_module,
)
from deqa.prompts import QUESTIONS
from deqa.schema import PROB_COLUMNS

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
@dataclass
class Examples:
    """Label rows ready for training: image paths, normalised m/s, label probs, dataset ids."""

    paths: list[str]
    m: np.ndarray
    s: np.ndarray
    probs: np.ndarray
    dataset: np.ndarray

    @classmethod
    def from_csv(cls, path: str | Path) -> "Examples":
        df = pd.read_csv(path)
        missing = [c for c in ["image", "root", "dataset", "m", "s", *PROB_COLUMNS] if c not in df.columns]
        if missing:
            raise ValueError(f"{path}: missing label columns {missing}")
        paths = [str(Path(r) / i) for r, i in zip(df["root"].astype(str), df["image"].astype(str))]
        return cls(paths=paths, m=df["m"].to_numpy(float), s=df["s"].to_numpy(float),
                   probs=df[PROB_COLUMNS].to_numpy(float), dataset=df["dataset"].astype(str).to_numpy())

    def __len__(self) -> int:
        return len(self.paths)


def make_pairs(dataset: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """One ``(a, b)`` pair per image ``a`` in a seeded random order; ``b`` from ``a``'s dataset."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(dataset))
    groups = {d: np.flatnonzero(dataset == d) for d in np.unique(dataset)}
    pairs = np.empty((len(order), 2), dtype=np.int64)
    for row, a in enumerate(order):
        pool = groups[dataset[a]]
        b = pool[rng.integers(len(pool))]
        if b == a and len(pool) > 1:
            b = pool[(np.flatnonzero(pool == a)[0] + 1 + rng.integers(len(pool) - 1)) % len(pool)]
        pairs[row] = (a, b)
    return pairs


class PairDataset(torch.utils.data.Dataset):
    """The epoch's pairs; :meth:`set_epoch` redraws them (accelerate calls it per epoch)."""

    def __init__(self, n_dataset: np.ndarray, seed: int):
        self.dataset, self.seed = n_dataset, seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.pairs = make_pairs(self.dataset, self.seed, epoch)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        return int(self.pairs[i, 0]), int(self.pairs[i, 1]), self.epoch


def load_image(path: str):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


class Collator:
    """Turns pairs (training) or indices (scoring) into model inputs with level positions."""

    def __init__(self, conversation: Conversation, examples: Examples, seed: int):
        self.conv, self.ex, self.seed = conversation, examples, seed
        self.conv.tokenizer.padding_side = "right"

    def _encode(self, idx: list[int], texts: list[str]) -> dict:
        images = [load_image(self.ex.paths[i]) for i in idx]
        enc = dict(self.conv.processor(text=texts, images=images, padding=True, return_tensors="pt"))
        level_pos = self.conv.level_positions(enc["input_ids"], enc["attention_mask"])
        return {"inputs": enc, "level_pos": level_pos, "keys": [self.ex.paths[i] for i in idx],
                "index": torch.tensor(idx)}

    def pairs(self, batch: list[tuple[int, int, int]]) -> dict:
        idx = [a for a, _, _ in batch] + [b for _, b, _ in batch]
        epoch = batch[0][2]
        texts = []
        for i in idx:
            q = QUESTIONS[np.random.default_rng([self.seed, epoch, i]).integers(len(QUESTIONS))]
            texts.append(self.conv.training_text(q, LEVELS[int(np.argmax(self.ex.probs[i]))]))
        out = self._encode(idx, texts)
        enc = out["inputs"]
        out["labels"] = self.conv.answer_labels(enc["input_ids"], enc["attention_mask"], out["level_pos"])
        out["target"] = torch.tensor(self.ex.probs[idx], dtype=torch.float32)
        out["m"] = torch.tensor(self.ex.m[idx], dtype=torch.float32)
        out["s"] = torch.tensor(self.ex.s[idx], dtype=torch.float32)
        return out

    def scoring(self, idx: list[int]) -> dict:
        return self._encode(list(idx), [self.conv.scoring_text()] * len(idx))


# ---------------------------------------------------------------------------------------------
# frozen-tower feature cache
# ---------------------------------------------------------------------------------------------
class CachedTower(nn.Module):
    """Wraps a frozen vision tower; caches its per-image outputs by image key (and input shape).

    The cache is used only while it is exact: every parameter of the tower is frozen, the tower's
    input has one row per image (``pixel_values.shape[0] == len(keys)``) and every output field
    splits per image along dim 0. The first batch that breaks one of these turns the cache off for
    good (with a log line) and the tower runs normally from then on. Entries are keyed by the image
    key *and* the image's input shape, so a family that pads images to the batch's largest size
    recomputes instead of joining outputs of different shapes.
    """

    def __init__(self, tower: nn.Module):
        super().__init__()
        self.tower = tower
        self.cache: dict[tuple, dict[str, object]] = {}
        self.keys: list[str] | None = None
        self.enabled = True

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["tower"], name)

    def disable(self, reason: str) -> None:
        log.info("vision feature caching disabled: %s", reason)
        self.enabled = False
        self.cache.clear()

    @staticmethod
    def _split(value, n: int):
        if value is None:
            return [None] * n
        if torch.is_tensor(value):
            return list(value.detach().chunk(n, dim=0)) if value.dim() and value.shape[0] == n else None
        if isinstance(value, tuple):
            parts = [CachedTower._split(v, n) for v in value]
            return None if any(p is None for p in parts) else [tuple(p[i] for p in parts) for i in range(n)]
        return None

    @staticmethod
    def _join(values):
        if values[0] is None:
            return None
        if torch.is_tensor(values[0]):
            return torch.cat(values, dim=0)
        return tuple(CachedTower._join([v[i] for v in values]) for i in range(len(values[0])))

    def forward(self, pixel_values, **kwargs):
        keys = self.keys
        if keys is None or not self.enabled:
            return self.tower(pixel_values, **kwargs)
        if any(p.requires_grad for p in self.tower.parameters()):
            self.disable("the vision module holds trainable parameters (a projector inside it, or a trained tower)")
            return self.tower(pixel_values, **kwargs)
        if pixel_values.shape[0] != len(keys):
            self.disable(f"the tower's input has {pixel_values.shape[0]} rows for {len(keys)} images "
                         "(flattened patches or image tiles), so its outputs do not split per image")
            return self.tower(pixel_values, **kwargs)
        shape = tuple(pixel_values.shape[1:])
        ids = [(k, shape) for k in keys]
        if all(i in self.cache for i in ids):
            entries = [self.cache[i] for i in ids]
            out = entries[0]["__type__"](**{f: self._join([e[f] for e in entries]) for f in entries[0] if f != "__type__"})
            return out
        with torch.no_grad():
            out = self.tower(pixel_values, **kwargs)
        fields = {k: v for k, v in out.items() if v is not None}
        split = {k: self._split(v, len(keys)) for k, v in fields.items()}
        if any(v is None for v in split.values()):
            self.disable("the vision outputs do not split per image along dim 0")
            return out
        for i, key in enumerate(ids):
            self.cache[key] = {"__type__": type(out), **{f: split[f][i] for f in fields}}
        return out


# ---------------------------------------------------------------------------------------------
# model preparation
# ---------------------------------------------------------------------------------------------
def prepare_model(model: nn.Module, params: Params):
    """Freeze/unfreeze and wrap with LoRA according to ``params``; returns (model, names)."""
    names = resolve_modules(model)
    tcfg, lcfg = params.train, params.lora
    vision = get_module(model, names.vision)
    if tcfg.full_finetune:
        for p in model.parameters():
            p.requires_grad_(True)
        if not tcfg.train_vision:
            vision.requires_grad_(False)
        return model, names
    from peft import LoraConfig, get_peft_model

    targets = "|".join(re.escape(t) for t in lcfg.target_modules)
    save = [n for n in [names.projector, names.lm_head if lcfg.train_lm_head else None,
                        names.vision if tcfg.train_vision else None] if n]
    # a module inside another saved one (Qwen2-VL's projector inside its vision module) goes with it
    save = [n for n in save if not any(n.startswith(other + ".") for other in save)]
    config = LoraConfig(
        r=lcfg.r, lora_alpha=lcfg.alpha, lora_dropout=lcfg.dropout,
        target_modules=rf"{re.escape(names.language)}\..*\.({targets})",
        modules_to_save=save or None,
    )
    model = get_peft_model(model, config)
    return model, resolve_modules(model)


def set_train_mode(model: nn.Module, names, train_vision: bool) -> None:
    model.train()
    if not train_vision:
        vision = get_module(model, names.vision)
        vision.eval()
        freeze_batchnorm(vision)


def fingerprint(params: Params, *files: str | Path) -> str:
    """Identity of a training run: the params that shape it and the bytes of its inputs."""
    h = hashlib.sha256()
    for section in ("base", "soft_labels", "model", "train", "lora", "loss"):
        data = to_dict(getattr(params, section))
        if section == "train":
            data = {k: v for k, v in data.items() if k not in ("resume", "checkpoint_every", "log_every", "threads")}
        h.update(json.dumps({section: data}, sort_keys=True).encode())
    for f in files:
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:16]


def _latest_checkpoint(ckpt_dir: Path, fp: str) -> Path | None:
    found = []
    for d in ckpt_dir.glob("step_*"):
        state = d / "deqa_state.json"
        if state.exists():
            info = json.loads(state.read_text())
            if info.get("fingerprint") == fp:
                found.append((info["global_step"], d))
    return max(found)[1] if found else None


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------
def train(params: Params, labels_dir: str | Path, base_dir: str | Path, out_dir: str | Path,
          checkpoint_dir: str | Path, live_dir: str | Path | None = "dvclive/train",
          stop_after_steps: int | None = None, progress: bool = True) -> dict:
    """Train and save the model to ``out_dir``; returns a summary dict.

    ``stop_after_steps`` interrupts the run after that many optimizer steps (after a checkpoint),
    as a kill would; ``train.resume: auto`` then continues from the last checkpoint.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    tcfg, seed = params.train, params.base.seed
    labels_dir, out_dir, ckpt_dir = Path(labels_dir), Path(out_dir), Path(checkpoint_dir)
    mp = tcfg.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    accelerator = Accelerator(gradient_accumulation_steps=tcfg.grad_accum, mixed_precision=mp)
    set_seed(seed)

    train_ex = Examples.from_csv(labels_dir / "train.csv")
    val_path = labels_dir / "val.csv"
    val_ex = Examples.from_csv(val_path) if val_path.exists() else None
    if len(train_ex) < 2:
        raise ValueError(f"{labels_dir / 'train.csv'} has {len(train_ex)} rows; training needs at least 2")

    base_path = resolve_checkpoint(base_dir)
    trust = params.model.trust_remote_code
    processor = load_processor(base_path, trust_remote_code=trust)
    conv = Conversation(processor)
    model = load_model(base_path, trust_remote_code=trust)
    model, names = prepare_model(model, params)
    if mp != "no" and accelerator.distributed_type != "DEEPSPEED":
        # A half-precision checkpoint (bf16/fp16 as stored) computes under autocast, but what trains
        # is kept in fp32: AdamW's small updates would vanish in bf16/fp16 rounding. (DeepSpeed keeps
        # its own fp32 master weights.)
        for p in model.parameters():
            if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
                p.data = p.data.float()
    if tcfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    cached = None
    if tcfg.cache_vision_features and not tcfg.train_vision:
        cached = CachedTower(get_module(model, names.vision))
        set_module(model, names.vision, cached)
        names.vision = names.vision + ".tower"

    collate = Collator(conv, train_ex, seed)
    pairs = PairDataset(train_ex.dataset, seed)
    loader = torch.utils.data.DataLoader(pairs, batch_size=tcfg.batch_pairs, shuffle=False,
                                         collate_fn=collate.pairs, drop_last=len(pairs) >= 2 * tcfg.batch_pairs)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    steps_per_epoch = math.ceil(len(loader) / max(1, accelerator.num_processes) / tcfg.grad_accum)
    total = steps_per_epoch * tcfg.epochs
    if tcfg.max_steps > 0:
        total = min(total, tcfg.max_steps)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(round(tcfg.warmup_ratio * total)), total)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    def keep_trainable(models, weights, output_dir):
        for i, m in enumerate(models):
            names_grad = {n for n, p in accelerator.unwrap_model(m).named_parameters() if p.requires_grad}
            weights[i] = {k: v for k, v in weights[i].items() if k in names_grad}

    accelerator.register_save_state_pre_hook(keep_trainable)

    fp = fingerprint(params, labels_dir / "train.csv", base_path / "config.json")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    global_step, start_epoch, skip = 0, 0, 0
    resume_from = _latest_checkpoint(ckpt_dir, fp) if tcfg.resume == "auto" else None
    if resume_from is not None:
        accelerator.load_state(str(resume_from), strict=False)
        info = json.loads((resume_from / "deqa_state.json").read_text())
        global_step, start_epoch, skip = info["global_step"], info["epoch"], info["batches_done"]
        if skip >= len(loader):
            start_epoch, skip = start_epoch + 1, 0
        accelerator.print(f"resuming from {resume_from} (step {global_step})")

    live = None
    if live_dir is not None and accelerator.is_main_process:
        from dvclive import Live

        live = Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, resume=resume_from is not None)
        if resume_from is not None:
            live.step = global_step

    def save_checkpoint(epoch: int, batches_done: int) -> None:
        target = ckpt_dir / f"step_{global_step:07d}"
        accelerator.save_state(str(target))
        if accelerator.is_main_process:
            (target / "deqa_state.json").write_text(json.dumps(
                {"fingerprint": fp, "global_step": global_step, "epoch": epoch, "batches_done": batches_done}))
            for old in sorted(ckpt_dir.glob("step_*"))[:-2]:
                shutil.rmtree(old, ignore_errors=True)

    level_ids = conv.level_ids
    bar = tqdm(total=total, initial=global_step, desc="train", unit="step", disable=not progress or not accelerator.is_main_process)
    t0, history, running = time.time(), [], {}
    stopped = False
    for epoch in range(start_epoch, tcfg.epochs):
        if global_step >= total or stopped:
            break
        loader.set_epoch(epoch)  # redraws the pairs; a skipping loader inherits the epoch
        epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
        set_train_mode(model, names, tcfg.train_vision)
        for b_idx, batch in enumerate(epoch_loader, start=skip):
            with accelerator.accumulate(model):
                if cached is not None:
                    cached.keys = batch["keys"]
                out = model(**batch["inputs"])
                losses = deqa_loss(out.logits, batch["labels"], batch["level_pos"], level_ids,
                                   batch["target"], batch["m"], batch["s"], params.loss.kl_weight,
                                   params.loss.token_weight, params.loss.fidelity_weight,
                                   params.loss.fidelity_sigma)
                accelerator.backward(losses["loss"])
                if accelerator.sync_gradients and tcfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(trainable, tcfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            for k, v in losses.items():
                running[k] = running.get(k, 0.0) + float(v.detach())
            running["n"] = running.get("n", 0) + 1
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(losses['loss'].detach()):.4f}", epoch=epoch)
            if global_step % tcfg.log_every == 0 or global_step == total:
                n = running.pop("n")
                if live is not None:  # x axis: the optimizer step
                    live.step = global_step
                    for k, v in running.items():
                        live.log_metric(f"train/{k}", v / n)
                    live.log_metric("train/lr", scheduler.get_last_lr()[0])
                    live.make_summary()
                running = {}
            if global_step % tcfg.checkpoint_every == 0:
                save_checkpoint(epoch, b_idx + 1)
            if stop_after_steps is not None and global_step >= stop_after_steps:
                save_checkpoint(epoch, b_idx + 1)
                stopped = True
                break
            if global_step >= total:
                break
        skip = 0
        if stopped:
            break
        if val_ex is not None and len(val_ex) > 2:
            srcc, plcc = _validate(model, conv, val_ex, seed, cached, accelerator, tcfg.batch_pairs * 2)
            history.append({"epoch": epoch, "step": global_step, "val_srcc": srcc, "val_plcc": plcc})
            if live is not None:
                live.step = global_step
                live.log_metric("val/srcc", srcc)
                live.log_metric("val/plcc", plcc)
                live.make_summary()
            bar.write(f"epoch {epoch}: val SRCC {srcc:.4f} PLCC {plcc:.4f}")
    bar.close()
    if live is not None:
        live.end()
    summary = {"steps": global_step, "total_steps": total, "seconds": time.time() - t0,
               "trainable_params": sum(p.numel() for p in trainable), "history": history,
               "interrupted": stopped}
    if stopped:
        return summary
    accelerator.wait_for_everyone()
    wrapped, model = model, accelerator.unwrap_model(model)
    if cached is not None:
        set_module(model, names.vision[: -len(".tower")], cached.tower)
    state_dict = None
    if accelerator.distributed_type == "DEEPSPEED":
        # ZeRO-3 shards the weights: gather them (a collective call, so on every rank) before saving
        state_dict = accelerator.get_state_dict(wrapped)
    if accelerator.is_main_process:
        save_trained(model, processor, conv, params, base_dir, out_dir, summary, state_dict=state_dict)
    return summary


def _validate(model, conv, val_ex, seed, cached, accelerator, batch_size) -> tuple[float, float]:
    from scipy.stats import pearsonr, spearmanr

    model.eval()
    collate = Collator(conv, val_ex, seed)
    preds = []
    with torch.no_grad():
        for start in range(0, len(val_ex), batch_size):
            batch = collate.scoring(range(start, min(start + batch_size, len(val_ex))))
            if cached is not None:
                cached.keys = batch["keys"]
            inputs = {k: v.to(accelerator.device) for k, v in batch["inputs"].items()}
            _, mu, _ = read_scores(model(**inputs).logits, batch["level_pos"], conv.level_ids)
            preds.append(mu.cpu().numpy())
    model.train()
    pred = np.concatenate(preds)
    if np.ptp(pred) == 0:
        return 0.0, 0.0
    return float(spearmanr(pred, val_ex.m).statistic), float(pearsonr(pred, val_ex.m).statistic)


def save_trained(model, processor, conv: Conversation, params: Params, base_dir, out_dir, summary: dict,
                 state_dict: dict | None = None) -> None:
    """Write the adapter (or full model), the processor and ``deqa_model.json`` to ``out_dir``.

    ``state_dict``: the gathered weights where the model's own are sharded (DeepSpeed ZeRO-3).
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    if state_dict is None:
        model.save_pretrained(out_dir, safe_serialization=True)
    else:
        model.save_pretrained(out_dir, safe_serialization=True, state_dict=state_dict)
    processor.save_pretrained(out_dir)
    card = {
        "base_model": str(base_dir),
        "adapter": (out_dir / "adapter_config.json").exists(),
        "levels": list(conv.levels),
        "level_token_ids": conv.level_ids,
        "params": to_dict(params),
        "training": {k: v for k, v in summary.items() if k != "seconds"},
    }
    (out_dir / MODEL_CARD).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
