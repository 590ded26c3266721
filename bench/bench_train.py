"""Benchmark: training throughput of the embedded default, side by side in one run.

Measures on the default model (params.yaml's ``model.tiny``) and real label rows
(``data/soft_labels/train.csv``, so run ``dvc repro soft_labels`` first):

1. images/s of optimizer steps **without** the vision-feature cache (the tower runs every step);
2. images/s **with** the cache filled (what every epoch after the first costs);
3. the pair layout: both images of every pair in **one** forward pass of 2B sequences (deqa)
   against **two** forward passes of B (the authors' code), same batches, same loss;
4. ``--rss``: peak RSS of one epoch of the real ``train`` loop with the default params, measured
   in a child process (``resource.getrusage``).

    .venv/bin/python bench/bench_train.py [--steps 20] [--rss]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

from deqa.config import load_params  # noqa: E402
from deqa.losses import deqa_loss  # noqa: E402
from deqa.modeling import Conversation, get_module, load_model, load_processor, set_module  # noqa: E402
from deqa.training import CachedTower, Collator, Examples, PairDataset, prepare_model  # noqa: E402

LABELS = Path("data/soft_labels/train.csv")


def build(tmp: Path, params):
    from deqa.tiny import build_tiny_llava

    t = params.model.tiny
    return build_tiny_llava(tmp / "base", image_size=t.image_size, vision_tokens=t.vision_tokens,
                            hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                            layers=t.layers, heads=t.heads, seed=params.base.seed)


def step(model, opt, batch, conv, loss_cfg, split: bool) -> None:
    if not split:
        out = model(**batch["inputs"])
        logits = out.logits
    else:  # two forward passes of B, as in the authors' code
        n = batch["inputs"]["input_ids"].shape[0] // 2
        halves = [{k: v[:n] if i == 0 else v[n:] for k, v in batch["inputs"].items()} for i in range(2)]
        la, lb = (model(**h).logits for h in halves)
        width = max(la.shape[1], lb.shape[1])
        assert la.shape[1] == width == lb.shape[1], "pair halves must have equal lengths here"
        logits = torch.cat([la, lb])
    loss = deqa_loss(logits, batch["labels"], batch["level_pos"], conv.level_ids, batch["target"], batch["m"],
                     batch["s"], loss_cfg.kl_weight, loss_cfg.token_weight, loss_cfg.fidelity_weight)["loss"]
    loss.backward()
    opt.step()
    opt.zero_grad()


def throughput(params, base: Path, steps: int) -> dict:
    conv = Conversation(load_processor(base))
    ex = Examples.from_csv(LABELS)
    pairs = PairDataset(ex.dataset, params.base.seed)
    bp = params.train.batch_pairs
    collate = Collator(conv, ex, params.base.seed)
    batches = [collate.pairs([pairs[i] for i in range(s * bp, (s + 1) * bp)]) for s in range(steps)]
    model, names = prepare_model(load_model(base), params)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=params.train.lr)
    model.train()
    get_module(model, names.vision).eval()
    images = steps * 2 * bp
    res = {}

    def timed(label, fn):
        fn(batches[0])  # warm-up
        t0 = time.perf_counter()
        for b in batches:
            fn(b)
        res[label] = max(res.get(label, 0.0), images / (time.perf_counter() - t0))

    for _ in range(2):  # alternate, best of two each: neither layout profits from running second
        timed("uncached, one forward of 2B", lambda b: step(model, opt, b, conv, params.loss, split=False))
        timed("uncached, two forwards of B", lambda b: step(model, opt, b, conv, params.loss, split=True))
    cached = CachedTower(get_module(model, names.vision))
    set_module(model, names.vision, cached)

    def with_cache(b, split=False):
        n = len(b["keys"]) // 2
        if split:  # each half's forward sees its own keys
            halves = [b["keys"][:n], b["keys"][n:]]
            original = model.forward

            def forward(**inputs):
                cached.keys = halves.pop(0)
                return original(**inputs)

            model.forward = forward
            try:
                step(model, opt, b, conv, params.loss, split=True)
            finally:
                del model.forward
            return
        cached.keys = b["keys"]
        step(model, opt, b, conv, params.loss, split=False)

    for b in batches:  # fill the cache, as the first epoch does
        cached.keys = b["keys"]
        with torch.no_grad():
            model(**b["inputs"])
    for _ in range(2):
        timed("cached, one forward of 2B", with_cache)
        timed("cached, two forwards of B", lambda b: with_cache(b, split=True))
    # collate cost, included above in neither: per batch
    t0 = time.perf_counter()
    for s in range(steps):
        collate.pairs([pairs[i] for i in range(s * bp, (s + 1) * bp)])
    res["collate only (load + process images)"] = images / (time.perf_counter() - t0)
    return res


def peak_rss_one_epoch() -> float:
    code = (
        "import resource, sys, tempfile, torch; torch.set_num_threads(1)\n"
        "from deqa.config import load_params\n"
        "from deqa.training import train\n"
        "p = load_params(); p.train.epochs = 1\n"
        "d = tempfile.mkdtemp()\n"
        "train(p, 'data/soft_labels', 'models/base', d + '/m', d + '/c', None, progress=False)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rss", action="store_true", help="also measure peak RSS of one default epoch (needs models/base)")
    args = ap.parse_args(argv)
    if not LABELS.exists():
        raise SystemExit(f"{LABELS} not found: run `dvc repro soft_labels` first")
    params = load_params()
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread, "
          f"batch {params.train.batch_pairs} pairs, model.tiny {params.model.tiny}")
    with tempfile.TemporaryDirectory() as tmp:
        base = build(Path(tmp), params)
        res = throughput(params, base, args.steps)
    for k, v in res.items():
        print(f"{k:40s} {v:8.1f} images/s")
    print(f"{'cache speed-up (training step only)':40s} {res['cached, one forward of 2B'] / res['uncached, one forward of 2B']:8.2f}x")
    print(f"{'one forward vs two (uncached)':40s} {res['uncached, one forward of 2B'] / res['uncached, two forwards of B']:8.2f}x")
    print(f"{'one forward vs two (cached)':40s} {res['cached, one forward of 2B'] / res['cached, two forwards of B']:8.2f}x")
    if args.rss:
        print(f"{'peak RSS, one default epoch':40s} {peak_rss_one_epoch():8.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
