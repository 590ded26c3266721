"""Fine-tune any HF VLM with the DeQA-Score losses: the training recipe.

Read :func:`train` top to bottom; every step is a small function below it. What it does:

- **LoRA or full fine-tuning** (peft): adapters on the language model's ``lora.target_modules``,
  the projector trained in full (``modules_to_save``), plus ``lm_head`` (``lora.train_lm_head``)
  and the vision tower (``train.train_vision``); ``train.full_finetune`` trains everything.
- **accelerate**: device placement, multi-process training (``deqa launch -n N``, ``torchrun``; each
  rank a disjoint share of every epoch's pairs, one writer; :mod:`deqa.distributed`),
  **mixed precision** (``train.mixed_precision: auto`` is bf16 on GPUs; trainable parameters stay
  fp32 under autocast), **gradient accumulation** (``train.grad_accum``), **DeepSpeed** (ZeRO-3
  weights are gathered before saving); transformers' cosine schedule with warm-up; activation
  checkpointing (``train.gradient_checkpointing``).
- **Pairs in one forward**: ``B`` pairs from the same dataset are ``2B`` sequences
  ``[A_1..A_B, B_1..B_B]`` through **one** forward pass (the authors' code runs two)
  (:mod:`deqa.data`).
- **Stored vision features** (frozen tower): the tower's output for each image comes from a
  :class:`deqa.features.FeatureStore` (the ``features`` stage's output, passed as ``features``;
  computed in memory before the first step where none is given), so training decodes, processes
  and runs the tower on no image; each batch carries its images' stored outputs
  (``batch["features"]``), which :func:`deqa.features.fed` hands to the tower. A store that does
  not match the model (another tower, processor or a trainable tower) is not used, with the
  reason logged, and the tower runs as usual. Validation reads the same store.
- **Exact resume** (``train.resume: auto``, :mod:`deqa.checkpointing`): checkpoints every
  ``train.checkpoint_every`` steps hold model, optimizer, scheduler, the step/epoch/batch
  position, the running loss sums, the validation history, the best epoch and the dvclive logs;
  a run is resumed only by a run with the same fingerprint (params, data, base model, code). The
  data order is a function of ``(seed, epoch)`` and every micro-batch reseeds all RNGs from
  ``(seed, epoch, batch, process)``, so a run killed at any point and resumed in a fresh process
  ends with bit-identical weights and logs.
- **Validation** after each epoch on ``val.csv`` with the same scoring code as ``deqa score``
  (:class:`deqa.scoring.Scorer` around the model in training), the images sharded over processes.
- **``train.select: best | last``**: save the weights of the epoch with the best validation SRCC,
  or the last ones; the summary's ``selected`` says which (epoch, step, val SRCC/PLCC). ``best``
  keeps a CPU copy of the best epoch's trainable tensors (in checkpoints too): small for LoRA, a
  second copy of the model for full fine-tuning. Without a validation set it falls back to ``last``.
- **dvclive** logs (``live_dir``): every loss component and the learning rate per
  ``train.log_every`` steps, validation SRCC/PLCC per epoch, against the optimizer step.
- Output: :func:`save_trained` writes the adapter (or the full model), the processor and
  ``deqa_model.json`` (base model, levels, level-token ids, params, training summary).
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deqa.checkpointing import Checkpoints, TrainState, fingerprint
from deqa.config import Params, TrainConfig, to_dict
from deqa.data import Collator, Examples, PairDataset
from deqa.distributed import RoundBatches, check_processes, describe, strided_share, use_cpu_ranks
from deqa.feature_extract import extract
from deqa.features import FeatureStore, fed
from deqa.losses import deqa_loss
from deqa.modeling import (
    MODEL_CARD,
    Conversation,
    freeze_batchnorm,
    get_module,
    load_model,
    load_processor,
    quiet_peft,
    resolve_checkpoint,
    resolve_modules,
)
from deqa.schema import rater_kind

log = logging.getLogger(__name__)

CARD_SECTIONS = ("base", "soft_labels", "model", "train", "lora", "loss")
"""The params sections written into ``deqa_model.json`` (those that shape the trained weights)."""


def train(
    params: Params,
    labels_dir: str | Path,
    base_dir: str | Path,
    out_dir: str | Path,
    checkpoint_dir: str | Path,
    live_dir: str | Path | None = "dvclive/train",
    stop_after_steps: int | None = None,
    progress: bool = True,
    features: str | Path | FeatureStore | bool | None = None,
) -> dict:
    """Train, save the selected weights to ``out_dir`` and return a summary dict.

    ``features``: the frozen tower's stored outputs (a store folder or :class:`FeatureStore`);
    ``None`` computes them in memory for the training and validation images; ``False`` runs the
    tower on every batch.

    ``stop_after_steps`` interrupts the run after that many optimizer steps, right after a
    checkpoint, as a kill would (nothing is saved to ``out_dir``); ``train.resume: auto`` then
    continues from the checkpoint. The summary holds ``steps``, ``total_steps``, ``seconds``,
    ``trainable_params``, ``history`` (validation per epoch), ``interrupted`` and ``selected``.
    """
    from tqdm.auto import tqdm

    tcfg, seed = params.train, params.base.seed
    accelerator = make_accelerator(tcfg, seed)
    train_ex, val_ex = load_examples(Path(labels_dir))
    base_path = resolve_checkpoint(base_dir)
    processor = load_processor(base_path, trust_remote_code=params.model.trust_remote_code)
    conv = Conversation(processor)
    model, names = build_model(base_path, params, accelerator)
    trainable = [p for p in model.parameters() if p.requires_grad]
    tower = get_module(model, names.vision)
    store = feature_store(features, model, tower, processor, conv, train_ex, val_ex, accelerator, progress)

    collate, loader = make_loader(conv, train_ex, tcfg, seed, accelerator.num_processes, store)
    optimizer, scheduler, total = make_optimizer(trainable, tcfg, len(loader), accelerator.num_processes)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    accelerator.register_save_state_pre_hook(_keep_trainable(accelerator))

    checkpoints = Checkpoints(
        accelerator,
        checkpoint_dir,
        fingerprint(params, labels_dir, base_dir, base_path, accelerator.num_processes),
        live_dir,
    )
    state = checkpoints.resume() if tcfg.resume == "auto" else TrainState()
    live = open_live(live_dir, accelerator, resume=checkpoints.live_restored)
    show = progress and accelerator.is_main_process
    bar = tqdm(total=total, initial=state.step, desc="train", unit="step", disable=not show)
    t0, interrupted = time.time(), False
    while not interrupted and not finished(state, tcfg, total):
        set_train_mode(accelerator.unwrap_model(model), names, tcfg.train_vision)
        for batch in epoch_batches(accelerator, loader, state):
            if state.step >= total:
                break
            reseed(seed, state, accelerator.process_index)
            synced, losses = train_step(accelerator, model, optimizer, scheduler, batch, trainable, conv, params, tower)
            state.add_batch(losses)
            if not synced:
                continue
            state.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses['loss']:.4f}", epoch=state.epoch)
            if state.step % tcfg.log_every == 0 or state.step == total:
                log_train(live, state, scheduler)
            if state.step % tcfg.checkpoint_every == 0 or state.step == stop_after_steps:
                checkpoints.save(state)
            if state.step == stop_after_steps:
                interrupted = True
                break
        if not interrupted:
            end_epoch(accelerator, model, processor, val_ex, state, tcfg, live, bar, collate.features)
    bar.close()
    if live is not None:
        live.end()
    summary = {
        "steps": state.step,
        "total_steps": total,
        "seconds": time.time() - t0,
        "trainable_params": sum(getattr(p, "ds_numel", p.numel()) for p in trainable),
        "history": state.history,
        "interrupted": interrupted,
        "selected": selected(state, tcfg),
    }
    if not interrupted:
        summary["rater_std"] = rater_std(train_ex, {src.name: rater_kind(src.format) for src in params.prepare.sources})
        datasets = sorted(set(train_ex.dataset.tolist()))
        save_final(accelerator, model, state, processor, conv, params, base_dir, out_dir, summary, datasets)
    return summary


def rater_std(examples: Examples, kinds: dict[str, str]) -> dict[str, dict[str, int | str]]:
    """Per training dataset: its rows, how many carry a raters' std and who the raters were
    (``{"rows", "with_std", "raters"}``, ``raters`` from :func:`deqa.schema.rater_kind`).

    A model trained without any std (BIQ2021: MOS only) learnt no spread of opinions, and one
    whose std came from simulated panels only learnt no spread of people's opinions: where that
    is so, the evaluation and report say its std correlation is not a result
    (model card ``training.rater_std``; :func:`deqa.metric_tables.std_notes`).
    """
    out: dict[str, dict[str, int | str]] = {}
    for name in sorted(set(examples.dataset.tolist())):
        s = examples.s[examples.dataset == name]
        out[name] = {"rows": len(s), "with_std": int(np.isfinite(s).sum()), "raters": kinds.get(name, "human")}
    return out


# ---------------------------------------------------------------------------------------------
# set-up
# ---------------------------------------------------------------------------------------------
def make_loader(
    conv: Conversation, train_ex, tcfg: TrainConfig, seed: int, processes: int = 1, features: FeatureStore | None = None
):
    """The collator and the pair loader of the training images (``batch_pairs`` pairs per batch).

    On N processes the batches are cut to whole rounds of N (:class:`deqa.distributed.RoundBatches`),
    so that the ranks' shares of each epoch are disjoint.
    """
    pairs, collate = PairDataset(train_ex.dataset, seed), Collator(conv, train_ex, seed, features)
    drop_last = len(pairs) >= 2 * tcfg.batch_pairs
    if processes > 1:
        batches = RoundBatches(len(pairs), tcfg.batch_pairs, drop_last, processes)
        return collate, torch.utils.data.DataLoader(pairs, batch_sampler=batches, collate_fn=collate.pairs)
    loader = torch.utils.data.DataLoader(
        pairs, batch_size=tcfg.batch_pairs, collate_fn=collate.pairs, drop_last=drop_last
    )
    return collate, loader


def make_accelerator(tcfg: TrainConfig, seed: int):
    """An ``Accelerator`` for the params (``mixed_precision: auto``: bf16 where the GPU has it); seeds all RNGs.

    Raises :class:`deqa.distributed.LaunchError` where the launcher asked for several processes
    but this one runs alone (``accelerate launch --cpu --num_processes N``, see docs/distributed.md).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    mp = tcfg.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    # cpu: a multi-process launch on a machine without CUDA gets gloo ranks (deqa.distributed)
    accelerator = Accelerator(cpu=use_cpu_ranks(), gradient_accumulation_steps=tcfg.grad_accum, mixed_precision=mp)
    check_processes(accelerator.num_processes)  # no silent one-process run where N were asked for
    if accelerator.num_processes > 1:
        log.info("training on %s", describe(accelerator.state))
    set_seed(seed)  # the LoRA initialisation draws from it
    return accelerator


def load_examples(labels_dir: Path) -> tuple[Examples, Examples | None]:
    """``train.csv`` (at least 2 rows) and ``val.csv`` (``None`` where absent or under 3 rows)."""
    train_ex = Examples.from_csv(labels_dir / "train.csv")
    if len(train_ex) < 2:
        raise ValueError(f"{labels_dir / 'train.csv'} has {len(train_ex)} rows; training needs at least 2")
    val_path = labels_dir / "val.csv"
    val_ex = Examples.from_csv(val_path) if val_path.exists() else None
    return train_ex, val_ex if val_ex is not None and len(val_ex) > 2 else None


def build_model(base_path: Path, params: Params, accelerator):
    """Load the base model, switch on activation checkpointing, wrap it for training; (model, names)."""
    model = load_model(base_path, trust_remote_code=params.model.trust_remote_code)
    if params.train.gradient_checkpointing:
        model.activation_checkpointing_enable()
        model.enable_input_require_grads()
    model, names = prepare_model(model, params)
    if accelerator.mixed_precision != "no" and accelerator.distributed_type != "DEEPSPEED":
        # A half-precision checkpoint (bf16/fp16 as stored) computes under autocast, but what trains
        # is kept in fp32: AdamW's small updates would vanish in bf16/fp16 rounding. (DeepSpeed keeps
        # its own fp32 master weights.)
        for p in model.parameters():
            if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
                p.data = p.data.float()
    return model, names


def feature_store(features, model, tower, processor, conv, train_ex, val_ex, accelerator, progress: bool):
    """The store whose tower outputs training uses (see :func:`train`'s ``features``), or ``None``."""
    if features is False:
        return None
    if isinstance(features, (str, Path)):
        features = FeatureStore.load(features)
    if features is None:
        if any(p.requires_grad for p in tower.parameters()):
            log.info("vision features not stored: the vision module holds trainable parameters")
            return None
        paths = train_ex.paths + (val_ex.paths if val_ex is not None else [])
        features = extract(
            accelerator.unwrap_model(model),
            processor,
            paths,
            progress=progress and accelerator.is_main_process,
        )
    problem = features.usable_with(tower, processor, conv.scoring_text())
    if problem:
        log.info("vision features not used: %s", problem)
        return None
    return features


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
    save = [
        n
        for n in [
            names.projector,
            names.lm_head if lcfg.train_lm_head else None,
            names.vision if tcfg.train_vision else None,
        ]
        if n
    ]
    # a module inside another saved one (Qwen2-VL's projector inside its vision module) goes with it
    save = [n for n in save if not any(n.startswith(other + ".") for other in save)]
    config = LoraConfig(
        r=lcfg.r,
        lora_alpha=lcfg.alpha,
        lora_dropout=lcfg.dropout,
        target_modules=rf"{re.escape(names.language)}\..*\.({targets})",
        modules_to_save=save or None,
    )
    with quiet_peft():
        model = get_peft_model(model, config)
    return model, resolve_modules(model)


def make_optimizer(trainable: list, tcfg: TrainConfig, batches: int, processes: int):
    """AdamW and the cosine schedule with warm-up; returns (optimizer, scheduler, total steps)."""
    from transformers import get_cosine_schedule_with_warmup

    optimizer = torch.optim.AdamW(trainable, lr=tcfg.lr, weight_decay=tcfg.weight_decay, foreach=True)
    total = math.ceil(batches / max(1, processes) / tcfg.grad_accum) * tcfg.epochs
    if tcfg.max_steps > 0:
        total = min(total, tcfg.max_steps)
    # a prepared scheduler is stepped once per process at every optimizer step (accelerate's convention)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, round(tcfg.warmup_ratio * total) * processes, total * processes
    )
    return optimizer, scheduler, total


def _keep_trainable(accelerator):
    """A save-state hook: checkpoints hold only the trainable tensors (the base is in ``models/base``)."""

    def hook(models, weights, output_dir):
        for i, m in enumerate(models):
            names = {n for n, p in accelerator.unwrap_model(m).named_parameters() if p.requires_grad}
            weights[i] = {k: v for k, v in weights[i].items() if k in names}

    return hook


def open_live(live_dir, accelerator, resume: bool):
    """The dvclive logger (main process only); ``resume`` continues the folder restored from a checkpoint."""
    if live_dir is None or not accelerator.is_main_process:
        return None
    from dvclive import Live

    return Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, resume=resume)


# ---------------------------------------------------------------------------------------------
# the steps
# ---------------------------------------------------------------------------------------------
def set_train_mode(model: nn.Module, names, train_vision: bool) -> None:
    """Training mode, except a frozen vision tower (and its batch-norm statistics)."""
    model.train()
    if not train_vision:
        vision = get_module(model, names.vision)
        vision.eval()
        freeze_batchnorm(vision)


def finished(state: TrainState, tcfg: TrainConfig, total: int) -> bool:
    """Every epoch done, or the step budget spent and its epoch validated."""
    return state.epoch >= tcfg.epochs or (state.step >= total and state.batches_done == 0)


def epoch_batches(accelerator, loader, state: TrainState):
    """The batches of ``state.epoch`` not done yet (its pairs are a function of seed and epoch)."""
    loader.set_epoch(state.epoch)  # also redraws the dataset's pairs for this epoch
    return accelerator.skip_first_batches(loader, state.batches_done) if state.batches_done else loader


def reseed(seed: int, state: TrainState, process: int) -> None:
    """Seed every RNG (Python, NumPy, torch, CUDA) from the position of the next micro-batch.

    Dropout masks then depend only on where the run is, not on what ran before in the process,
    which is what makes a resumed run (a fresh process) continue bit for bit.
    """
    from accelerate.utils import set_seed

    set_seed(int(np.random.SeedSequence([seed, state.epoch, state.batches_done, process]).generate_state(1)[0]))


def train_step(
    accelerator,
    model,
    optimizer,
    scheduler,
    batch: dict,
    trainable: list,
    conv: Conversation,
    params: Params,
    tower: nn.Module,
) -> tuple[bool, dict[str, float]]:
    """One micro-batch: forward (the tower fed the batch's stored features, if any), DeQA losses,
    backward, and on a gradient-sync boundary clipping and the optimizer/scheduler step; (synced, losses)."""
    lc = params.loss
    with accelerator.accumulate(model):
        with fed(tower, batch["features"]):
            logits = model(**batch["inputs"]).logits
        losses = deqa_loss(
            logits,
            batch["labels"],
            batch["level_pos"],
            conv.level_ids,
            batch["target"],
            batch["m"],
            batch["s"],
            lc.kl_weight,
            lc.token_weight,
            lc.fidelity_weight,
            lc.fidelity_sigma,
        )
        accelerator.backward(losses["loss"])
        if accelerator.sync_gradients and params.train.max_grad_norm > 0:
            accelerator.clip_grad_norm_(trainable, params.train.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return accelerator.sync_gradients, {k: float(v.detach()) for k, v in losses.items()}


def log_train(live, state: TrainState, scheduler) -> None:
    """One dvclive row per loss component (means since the last row) and the learning rate."""
    n = state.running.pop("n", 0)
    if live is not None and n:
        live.step = state.step  # x axis: the optimizer step
        for k, v in state.running.items():
            live.log_metric(f"train/{k}", v / n)
        live.log_metric("train/lr", scheduler.get_last_lr()[0])
        live.make_summary()
    state.running = {}


def end_epoch(
    accelerator,
    model,
    processor,
    val_ex: Examples | None,
    state: TrainState,
    tcfg: TrainConfig,
    live,
    bar,
    features: FeatureStore | None = None,
) -> None:
    """Validate, remember the best epoch (``train.select: best``) and move on to the next epoch."""
    if val_ex is not None:
        srcc, plcc = val_correlations(accelerator, model, processor, val_ex, 2 * tcfg.batch_pairs, features)
        entry = {"epoch": state.epoch, "step": state.step, "val_srcc": srcc, "val_plcc": plcc}
        state.history.append(entry)
        if live is not None:
            live.step = state.step
            live.log_metric("val/srcc", srcc)
            live.log_metric("val/plcc", plcc)
            live.make_summary()
        if accelerator.is_main_process:
            bar.write(f"epoch {state.epoch}: val SRCC {srcc:.4f} PLCC {plcc:.4f}")
        if tcfg.select == "best" and (state.best is None or srcc > state.best["val_srcc"]):
            state.best, state.best_weights = entry, trainable_state(accelerator, model)
    state.epoch, state.batches_done = state.epoch + 1, 0


def val_correlations(
    accelerator, model, processor, val_ex: Examples, batch_size: int, features: FeatureStore | None = None
) -> tuple[float, float]:
    """Val SRCC/PLCC of the model in training, from :func:`val_predictions`."""
    from scipy.stats import pearsonr, spearmanr

    pred = val_predictions(accelerator, model, processor, val_ex, batch_size, features)
    if np.ptp(pred) == 0:
        return 0.0, 0.0
    return float(spearmanr(pred, val_ex.m).statistic), float(pearsonr(pred, val_ex.m).statistic)


def val_predictions(
    accelerator, model, processor, val_ex: Examples, batch_size: int, features: FeatureStore | None = None
) -> np.ndarray:
    """The predicted scores of the validation images, scored by :class:`deqa.scoring.Scorer`.

    Each process scores an equal share of the images (:func:`deqa.distributed.strided_share`:
    padded, so every process runs the same number of forward passes, as ZeRO-3 needs); the
    predictions are gathered on every process, in the label file's order.
    """
    from accelerate.utils import gather_object

    from deqa.scoring import Scorer

    n, world, rank = len(val_ex), accelerator.num_processes, accelerator.process_index
    share = strided_share(n, rank, world)
    scorer = Scorer(accelerator.unwrap_model(model), processor, accelerator.device, batch_size, features=features)
    result = scorer.score([val_ex.paths[i] for i in share], batch_size=batch_size, progress=False)
    scored = list(zip(share, result.mean.tolist(), strict=True))
    if world > 1:
        scored = gather_object(scored)
    pred = np.full(n, np.nan)
    for i, mu in scored:
        pred[i] = mu
    return pred


def trainable_state(accelerator, model) -> dict[str, torch.Tensor]:
    """CPU copies of the trainable tensors (gathered under DeepSpeed ZeRO-3: call on every process)."""
    unwrapped = accelerator.unwrap_model(model)
    names = {n for n, p in unwrapped.named_parameters() if p.requires_grad}
    full = accelerator.get_state_dict(model) if accelerator.distributed_type == "DEEPSPEED" else unwrapped.state_dict()
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in full.items() if k in names}


def selected(state: TrainState, tcfg: TrainConfig) -> dict:
    """Which weights are saved: the best validated epoch (``select: best``) or the last one."""
    if tcfg.select == "best" and state.best is not None:
        return {"select": "best", **state.best}
    last = (
        state.history[-1]
        if state.history
        else {"epoch": max(state.epoch - 1, 0), "step": state.step, "val_srcc": None, "val_plcc": None}
    )
    return {"select": "last", **last}


# ---------------------------------------------------------------------------------------------
# saving
# ---------------------------------------------------------------------------------------------
def save_final(
    accelerator,
    model,
    state: TrainState,
    processor,
    conv: Conversation,
    params: Params,
    base_dir,
    out_dir,
    summary: dict,
    datasets: list[str] | None = None,
) -> None:
    """Save the selected weights with :func:`save_trained` (ZeRO-3 shards gathered first)."""
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    state_dict = None
    if accelerator.distributed_type == "DEEPSPEED":
        # ZeRO-3 shards the weights: gather them (a collective call, so on every rank) before saving
        state_dict = accelerator.get_state_dict(model)
    if summary["selected"]["select"] == "best" and state.best_weights is not None:
        state_dict = {**(state_dict if state_dict is not None else unwrapped.state_dict()), **state.best_weights}
    if accelerator.is_main_process:
        save_trained(
            unwrapped, processor, conv, params, base_dir, out_dir, summary, state_dict=state_dict, datasets=datasets
        )
    accelerator.wait_for_everyone()


def save_trained(
    model,
    processor,
    conv: Conversation,
    params: Params,
    base_dir,
    out_dir,
    summary: dict,
    state_dict: dict | None = None,
    datasets: list[str] | None = None,
) -> None:
    """Write the adapter (or full model), the processor and ``deqa_model.json`` to ``out_dir``.

    ``state_dict``: the weights to save where they are not the model's own (the best epoch's, or
    the gathered weights where the model's are sharded by DeepSpeed ZeRO-3). The card holds the
    params sections that shape training (:data:`CARD_SECTIONS`, the train stage's declared
    params) and ``datasets``, the dataset names of the training rows.
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
        "params": {section: to_dict(getattr(params, section)) for section in CARD_SECTIONS},
        "datasets": list(datasets) if datasets is not None else None,
        "training": {k: v for k, v in summary.items() if k != "seconds"},
    }
    (out_dir / MODEL_CARD).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
