"""GPU check: real-size random-init Qwen2-VL-2B and LLaVA-1.5-7B through deqa's train and score code.

Run by ``bench/gpu_check.sh`` (<= 8 minutes on one H200-class GPU). Offline: each checkpoint is
built in code from the family's known architecture hyperparameters (:data:`SIZES`: the published
``config.json`` values of ``Qwen/Qwen2-VL-2B-Instruct`` and ``llava-hf/llava-1.5-7b-hf``) with
random weights, a small BPE tokenizer in the family's style (``tests/family_fixtures.py``: every
level word one token) and the family's real processor class, and saved as an ordinary checkpoint
folder in bf16. Then, per model:

1. **train**: :func:`deqa.training.train` with the model's recipe (``configs/recipes/*.yaml``:
   LoRA r 128 on q/v, projector trained, gradient checkpointing, bf16 autocast; LR 5e-4 without
   warm-up), ``--steps`` epochs of one batch of ``--batch-pairs`` pairs (the same photos every
   step); per optimizer step the loss and the step time (CUDA-synchronised)
   are recorded by wrapping :func:`deqa.training.train_step`; peak GPU memory
   (``torch.cuda.max_memory_allocated``); whether the loss fell: the loss of the first batch in eval
   mode (no dropout) before the first step and after the last;
2. **score**: :class:`deqa.scoring.Scorer` on the trained adapter, images/s at batch 16 (after a
   warm-up batch), decoding included;
3. **DDP** (more than one GPU visible, or ``--ddp N``): the Qwen2-VL-2B training again on every
   GPU through ``deqa launch -n G`` (one rank per GPU, ``--batch-pairs`` pairs each), step time
   and images/s against one GPU.

``--toy`` runs the same code at toy sizes on the CPU (fp32, a few seconds per model; with
``--ddp 2`` the DDP check on 2 gloo ranks), so ``tests/test_gpu_check.py`` keeps it from rotting.
Exit 0 when every model trained with a falling loss and scored; 1 otherwise (the figures are
written either way); 2 without a GPU and without ``--toy``. Figures go to ``OUT/gpu_check.json`` and
``OUT/gpu_check.md``; the built checkpoints to ``--work`` (default: a temporary folder, removed).

    python bench/gpu_check.py --out "$OUT"            # GPU, real sizes
    python bench/gpu_check.py --toy --out /tmp/gc      # CPU, toy sizes
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODELS = ("qwen2-vl-2b", "llava-1.5-7b")
RECIPES = {"qwen2-vl-2b": "configs/recipes/qwen2-vl-2b.yaml", "llava-1.5-7b": "configs/recipes/llava-1.5-7b.yaml"}
SIZES = {
    ("qwen2-vl-2b", "real"): {
        "text": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                     num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rms_norm_eps=1e-6,
                     rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6}),
        "vision": dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, patch_size=14,
                       spatial_merge_size=2, temporal_patch_size=2),
        "tie": True, "image": 448,
    },
    ("qwen2-vl-2b", "toy"): {
        "text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=1024, max_position_embeddings=512, rms_norm_eps=1e-6,
                     rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4}),
        "vision": dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                       spatial_merge_size=2, temporal_patch_size=2),
        "tie": True, "image": 56,
    },
    ("llava-1.5-7b", "real"): {
        "vision": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                       image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu"),
        "text": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5),
        "tie": False, "image": 336,
    },
    ("llava-1.5-7b", "toy"): {
        "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       image_size=32, patch_size=8, projection_dim=32, hidden_act="quick_gelu"),
        "text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=4, vocab_size=1024, max_position_embeddings=256, rms_norm_eps=1e-5),
        "tie": False, "image": 32,
    },
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# building the checkpoints
# ---------------------------------------------------------------------------------------------
def _init(cls, config, dtype, device):
    """``cls(config)`` with its weights created in ``dtype`` directly on ``device`` (fast on a GPU)."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(config)
    finally:
        torch.set_default_dtype(old)
    return model


def build_qwen2_vl(size: dict, dtype, device):
    """A random-init Qwen2-VL of ``size`` and its processor: (model, processor)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil, Qwen2VLProcessor

    from deqa.modeling import without_video
    from family_fixtures import QWEN_TEMPLATE, build_bpe_tokenizer

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]
    specials += ["<|image_pad|>", "<|video_pad|>"]
    tok = build_bpe_tokenizer("bytelevel", specials, pad="<|endoftext|>", eos="<|im_end|>", chat_template=QWEN_TEMPLATE)
    ids = {s: tok.convert_tokens_to_ids(s) for s in specials}
    text = {**size["text"], "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"]}
    text["pad_token_id"] = ids["<|endoftext|>"]
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=size["vision"],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=size["tie"],
    )
    model = _init(Qwen2VLForConditionalGeneration, config, dtype, device)
    px = size["image"]  # max_pixels = px * px (the authors' 448 px: 256 merged tokens per image)
    images = Qwen2VLImageProcessorPil(size={"shortest_edge": 56 * 56, "longest_edge": px * px})
    processor = without_video(Qwen2VLProcessor)(image_processor=images, tokenizer=tok, chat_template=QWEN_TEMPLATE)
    return model, processor


def build_llava(size: dict, dtype, device):
    """A random-init LLaVA-1.5 of ``size`` and its processor: (model, processor)."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from family_fixtures import LLAVA_TEMPLATE, build_bpe_tokenizer

    tok = build_bpe_tokenizer(
        "metaspace",
        ["<unk>", "<s>", "</s>", "<pad>", "<image>"],
        pad="<pad>",
        eos="</s>",
        bos="<s>",
        unk="<unk>",
        chat_template=LLAVA_TEMPLATE,
        extra={"extra_special_tokens": {"image_token": "<image>"}},
    )
    text = LlamaConfig(
        **size["text"],
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    vision = CLIPVisionConfig(**size["vision"])
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    model = _init(LlavaForConditionalGeneration, config, dtype, device)
    px = size["image"]
    images = CLIPImageProcessorPil(size={"shortest_edge": px}, crop_size={"height": px, "width": px})
    processor = LlavaProcessor(
        image_processor=images,
        tokenizer=tok,
        patch_size=size["vision"]["patch_size"],
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    )
    return model, processor


def _save(model, processor, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out


BUILDERS = {"qwen2-vl-2b": build_qwen2_vl, "llava-1.5-7b": build_llava}


def parameter_count(name: str, size: str = "real") -> int:
    """The model's parameters, counted on the meta device (no memory; checks the hyperparameters)."""
    import torch

    model, _ = BUILDERS[name](SIZES[(name, size)], torch.float32, "meta")
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# train and score
# ---------------------------------------------------------------------------------------------
def check_params(name: str, toy: bool, gpu: bool, steps: int, batch_pairs: int):
    """The model's recipe, cut to ``steps`` steps over one batch of ``batch_pairs`` pairs per epoch."""
    from deqa.config import load_params

    p = load_params(REPO / RECIPES[name])
    t = p.train
    t.batch_pairs, t.grad_accum, t.epochs, t.max_steps = batch_pairs, 1, steps, steps
    t.lr, t.warmup_ratio, t.select, t.resume = 5e-4, 0.0, "last", "never"
    t.log_every, t.checkpoint_every, t.threads = 1, 10**6, max(1, min(8, os.cpu_count() or 1))
    t.mixed_precision = "bf16" if gpu else "no"
    if toy:
        p.lora.r, p.lora.alpha = 8, 16
    return p


def fixed_batch_loss(args: tuple, params) -> float:
    """The DeQA loss of a ``train_step`` call's batch under the model as it is (eval mode, no grad)."""
    import torch

    from deqa.losses import deqa_loss
    from deqa.modeling import Conversation

    accelerator = args[0]
    model = accelerator.unwrap_model(args[1])
    batch = next(a for a in args if isinstance(a, dict) and "inputs" in a)
    conv = next(a for a in args if isinstance(a, Conversation))
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad(), accelerator.autocast():
            logits = model(**batch["inputs"]).logits
        lc = params.loss
        out = deqa_loss(
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
        return float(out["loss"])
    finally:
        for m, mode in modes.items():
            m.train(mode)


def timed_train(params, labels: Path, base: Path, out: Path, work: Path) -> dict:
    """Run :func:`deqa.training.train`, recording each optimizer step's loss and time, and the loss
    of the first batch before the first step and after the last (the same batch, eval mode)."""
    import torch

    import deqa.training as training

    steps, fixed, real = [], {}, training.train_step

    def step(*args, **kwargs):
        if not fixed:
            fixed["args"], fixed["before"] = args, fixed_batch_loss(args, params)
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        sync()
        t0 = time.perf_counter()
        synced, losses = real(*args, **kwargs)
        sync()
        if synced:
            steps.append({"loss": losses["loss"], "seconds": time.perf_counter() - t0})
            if len(steps) == params.train.max_steps:
                fixed["after"] = fixed_batch_loss(fixed["args"], params)
        return synced, losses

    training.train_step = step
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        summary = training.train(params, labels, base, out, work / "ckpt", None, progress=False, features=False)
    finally:
        training.train_step = real
    times = [s["seconds"] for s in steps[2:]] or [s["seconds"] for s in steps]
    return {
        "steps": len(steps),
        "trainable_params": summary["trainable_params"],
        "losses": [s["loss"] for s in steps],
        "fixed_batch_loss": [fixed.get("before"), fixed.get("after")],
        "loss_fell": fixed.get("after") is not None and fixed["after"] < fixed["before"],
        "step_seconds_median": statistics.median(times) if times else None,
        "images_per_step": 2 * params.train.batch_pairs,
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "train_seconds": summary["seconds"],
    }


def score_throughput(model_dir: Path, images: list[str], n: int, batch: int) -> dict:
    from deqa.scoring import Scorer

    scorer = Scorer.from_pretrained(model_dir, batch_size=batch)
    scorer.score(images[:batch], progress=False)  # warm-up
    items = (images * (n // len(images) + 1))[:n]
    t0 = time.perf_counter()
    res = scorer.score(items, progress=False)
    sec = time.perf_counter() - t0
    return {
        "images": n,
        "batch": batch,
        "images_per_s": n / sec,
        "dtype": str(scorer.model.dtype),
        "mean": float(res.mean.mean()),
    }


def check_model(name: str, args, work: Path) -> dict:
    import torch

    from model_fixtures import build_labels

    gpu = torch.cuda.is_available() and not args.toy
    size = SIZES[(name, "toy" if args.toy else "real")]
    dtype, device = (torch.bfloat16, "cuda") if gpu else (torch.float32, "cpu")
    root = work / name
    t0 = time.perf_counter()
    model, processor = BUILDERS[name](size, dtype, device)
    n_params = sum(p.numel() for p in model.parameters())
    base = _save(model, processor, root / "base")
    del model
    torch.cuda.empty_cache() if gpu else None
    built = time.perf_counter() - t0
    labels = build_labels(root, n_train=args.batch_pairs, n_val=3, size=size["image"])  # one batch per epoch
    params = check_params(name, args.toy, gpu, args.steps, args.batch_pairs)
    result = {"model": name, "size": "toy" if args.toy else "real", "device": device, "build_seconds": built}
    result["params"] = n_params
    result["train"] = timed_train(params, labels, base, root / "model", root)
    paths = sorted(str(p) for p in (root / "images").glob("*.png"))
    result["score"] = score_throughput(root / "model", paths, args.score_images, 16)
    return result


def ddp_check(args, work: Path, ranks: int) -> dict:
    """Qwen2-VL-2B training (built by :func:`check_model`) on ``ranks`` ranks through ``deqa
    launch`` (one per GPU; CPU gloo ranks with ``--toy``), step time on rank 0."""
    from model_fixtures import build_labels

    name = MODELS[0]
    out = work / "ddp.json"
    size = SIZES[(name, "toy" if args.toy else "real")]
    # every rank trains batch_pairs pairs per step: one batch per rank and epoch
    build_labels(work / name / "ddp", n_train=args.batch_pairs * ranks, n_val=3, size=size["image"])
    cmd = [sys.executable, "-m", "deqa.cli", "launch", "-n", str(ranks), *(["--cpu"] if args.toy else [])]
    cmd += [__file__, "--ddp-worker", name, "--work", str(work), "--out", str(out), "--steps", str(args.steps)]
    cmd += ["--batch-pairs", str(args.batch_pairs), *(["--toy"] if args.toy else [])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        return {"ranks": ranks, "error": res.stderr[-2000:]}
    return {**json.loads(out.read_text()), "wall_seconds": time.perf_counter() - t0}


def ddp_worker(args) -> None:
    from accelerate import PartialState

    name, root = args.ddp_worker, Path(args.work) / args.ddp_worker
    params = check_params(name, args.toy, not args.toy, args.steps, args.batch_pairs)
    result = timed_train(params, root / "ddp" / "labels", root / "base", root / "ddp" / "model", root / "ddp")
    state = PartialState()
    if state.is_main_process:
        per_step = 2 * args.batch_pairs * state.num_processes
        result.update(ranks=state.num_processes, images_per_s=per_step / result["step_seconds_median"])
        Path(args.out).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def markdown(report: dict) -> str:
    lines = [f"# GPU check ({report['device']}, torch {report['torch']}, {report['gpus']} GPU(s))", ""]
    lines += [
        "| model | params | peak GPU GiB | s/step (images/step) | batch loss before -> after | loss fell | score img/s |"
    ]
    lines += ["|---|---|---|---|---|---|---|"]
    for r in report["models"]:
        if "error" in r:
            lines.append(f"| {r['model']} | error: {r['error'][:200]} |")
            continue
        t, s = r["train"], r["score"]
        mem = f"{t['peak_gpu_memory_gib']:.1f}" if t["peak_gpu_memory_gib"] is not None else "-"
        n = r["params"]
        lines.append(
            f"| {r['model']} ({r['size']}) | {f'{n / 1e9:.2f} B' if n > 1e8 else f'{n / 1e6:.2f} M'} | {mem} | "
            f"{t['step_seconds_median']:.3f} ({t['images_per_step']}) | "
            f"{t['fixed_batch_loss'][0]:.3f} -> {t['fixed_batch_loss'][1]:.3f} | "
            f"{t['loss_fell']} | {s['images_per_s']:.1f} |"
        )
    d = report.get("ddp")
    if d and "error" in d:
        lines += ["", f"DDP over {d['ranks']} ranks: error: {d['error'][-600:]}"]
    elif d:
        one = next((r["train"] for r in report["models"] if r["model"] == MODELS[0] and "train" in r), None)
        alone = one["images_per_step"] / one["step_seconds_median"] if one else float("nan")
        lines += [
            "",
            f"DDP, {MODELS[0]} over {d['ranks']} ranks: {d['step_seconds_median']:.3f} s/step, "
            f"{d['images_per_step'] * d['ranks']} images/step, {d['images_per_s']:.1f} images/s against "
            f"{alone:.1f} on one ({d['images_per_s'] / alone:.2f}x); loss fell: {d['loss_fell']}",
        ]
    lines += ["", f"wall time: {report['seconds']:.0f} s"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "bench" / "out" / "gpu_check"))
    ap.add_argument("--work", default=None, help="folder for the built checkpoints (default: a temporary one)")
    ap.add_argument("--toy", action="store_true", help="toy sizes on the CPU (what CI runs)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-pairs", type=int, default=4)
    ap.add_argument("--score-images", type=int, default=64)
    ap.add_argument("--ddp", type=int, default=None, help="ranks of the DDP check (default: the GPUs if > 1; 0: none)")
    ap.add_argument("--ddp-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.ddp_worker:
        ddp_worker(args)
        return 0
    import torch

    if not args.toy and not torch.cuda.is_available():
        print("error: no CUDA device visible; run with --toy for the CPU check", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="deqa-gpu-check-"))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    report = {"device": torch.cuda.get_device_name(0) if gpus else "cpu", "torch": torch.__version__, "gpus": gpus}
    report["models"], t0 = [], time.perf_counter()
    try:
        for name in args.models.split(","):
            print(f"== {name}", flush=True)
            try:
                report["models"].append(check_model(name, args, work))
            except Exception as exc:  # one model's failure is a figure too; the other still runs
                report["models"].append({"model": name, "error": f"{type(exc).__name__}: {exc}"})
            shutil.rmtree(work / name / "ckpt", ignore_errors=True)
            if gpus:
                torch.cuda.empty_cache()
            print(json.dumps(report["models"][-1])[:800], flush=True)
        ranks = args.ddp if args.ddp is not None else (gpus if gpus > 1 else 0)
        if ranks > 1 and MODELS[0] in args.models.split(","):
            print(f"== DDP over {ranks} ranks", flush=True)
            report["ddp"] = ddp_check(args, work, ranks)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    report["seconds"] = time.perf_counter() - t0
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    failed = [r["model"] for r in report["models"] if "error" in r or not r["train"]["loss_fell"]]
    failed += ["ddp"] if "error" in report.get("ddp", {}) else []
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
