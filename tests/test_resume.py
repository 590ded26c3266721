"""Exact resume: a run killed with SIGKILL and resumed in a fresh process equals an uninterrupted one.

The runs go through the public :func:`deqa.training.train` in child processes (``python runner.py
config.json``). A child that should be killed blocks inside the loss function once it has done
``block_at`` optimizer steps (so some steps, log rows and an epoch end lie after its last checkpoint,
as with a real kill) and says so in a file; the test then sends SIGKILL. Dropout is on, so any RNG
state that a resume fails to restore shows up in the weights. The children pin the code part of the
fingerprint (others may edit the package while the test runs); a test of its own checks that part.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model_fixtures import build_base, build_labels, small_params

TESTS = Path(__file__).resolve().parent

RUNNER = r"""
import json, os, sys, time
cfg = json.load(open(sys.argv[1]))
import torch
torch.set_num_threads(1)
sys.path.insert(0, cfg["tests"])
from model_fixtures import small_params
import deqa.checkpointing
import deqa.training as training

if cfg.get("code_digest"):  # the checkout may be edited while the test runs: pin the code's part
    deqa.checkpointing.code_digest = lambda: cfg["code_digest"]
params = small_params(**cfg["train"])
params.lora.dropout = cfg["dropout"]
calls = [0]
loss, validate = training.deqa_loss, training.val_correlations

def blocking_loss(*args, **kwargs):
    calls[0] += 1
    if cfg.get("block_at") and calls[0] > cfg["block_at"]:
        with open(cfg["ready"], "w") as fh:
            fh.write(str(calls[0]))
        time.sleep(600)
    return loss(*args, **kwargs)

def scripted_validate(*args, **kwargs):  # the real validation runs; its SRCC is replaced
    srcc, plcc = validate(*args, **kwargs)
    return cfg["val_srcc"].pop(0), plcc

training.deqa_loss = blocking_loss
if cfg.get("val_srcc"):
    training.val_correlations = scripted_validate
summary = training.train(params, cfg["labels"], cfg["base"], cfg["out"], cfg["ckpt"], cfg["live"], progress=False)
json.dump(summary, open(cfg["summary"], "w"))
"""

# 12 train images, 2 pairs per step: 6 steps per epoch, 18 in all; checkpoints at 4, 8, 12, 16;
# a log row every 3 steps (so the checkpoint at 8 holds unlogged loss sums); killed after step 10.
TRAIN = dict(epochs=3, batch_pairs=2, checkpoint_every=4, log_every=3, select="best")
VAL_SRCC = [0.9, 0.5, 0.7]  # epoch 0 is the best: its weights come back from the checkpoint at step 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    base, labels = build_base(root / "base"), build_labels(root)
    runner = root / "runner.py"
    runner.write_text(RUNNER)
    return {"root": root, "base": base, "labels": labels, "runner": runner}


def _start(setup, name: str, run_dir: Path, **extra) -> tuple[subprocess.Popen, dict]:
    cfg = {
        "tests": str(TESTS),
        "train": TRAIN,
        "dropout": 0.1,
        "labels": str(setup["labels"]),
        "base": str(setup["base"]),
        "out": str(run_dir / "model"),
        "ckpt": str(run_dir / "ckpt"),
        "live": str(run_dir / "live"),
        "summary": str(run_dir / f"{name}.json"),
        "ready": str(run_dir / "ready"),
        "val_srcc": list(VAL_SRCC),
        "code_digest": "pinned",
        **extra,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / f"{name}.cfg.json").write_text(json.dumps(cfg))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        [sys.executable, str(setup["runner"]), str(run_dir / f"{name}.cfg.json")],
        cwd=run_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    return proc, cfg


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def _rows(live: Path) -> dict[str, list[tuple[int, str]]]:
    """Every dvclive metric file as (step, value) rows."""
    rows = {}
    for f in sorted((live / "plots" / "metrics").rglob("*.tsv")):
        lines = f.read_text().splitlines()
        header = lines[0].split("\t")
        rows[str(f.relative_to(live))] = [(int(r.split("\t")[header.index("step")]), r) for r in lines[1:]]
    return rows


def test_sigkill_then_resume_in_a_fresh_process_is_bit_exact(setup):
    root = setup["root"]
    full, full_cfg = _start(setup, "full", root / "full")
    killed, cfg = _start(setup, "killed", root / "killed", block_at=10)
    ready = Path(cfg["ready"])
    deadline = time.time() + 300
    while not ready.exists():
        assert killed.poll() is None, killed.communicate()[0][-3000:]
        assert time.time() < deadline, "the run never reached step 10"
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    ckpt = Path(cfg["ckpt"])
    assert sorted(p.name for p in ckpt.iterdir()) == ["step_0000004", "step_0000008"]
    # the killed run logged past its last checkpoint (rows at step 9 exist)
    assert max(s for s, _ in _rows(Path(cfg["live"]))["plots/metrics/train/loss.tsv"]) == 9

    # the resumed process validates epochs 1 and 2 (epoch 0's entry comes back from the checkpoint)
    resumed, res_cfg = _start(setup, "resumed", root / "killed", val_srcc=VAL_SRCC[1:])
    out = _finish(resumed)
    assert "resuming from" in out and "step 8" in out, out[-2000:]
    _finish(full)

    a, b = (
        load_file(str(Path(full_cfg["out"]) / "adapter_model.safetensors")),
        load_file(str(Path(cfg["out"]) / "adapter_model.safetensors")),
    )
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k

    s_full, s_res = (json.loads(Path(c["summary"]).read_text()) for c in (full_cfg, res_cfg))
    assert s_res["steps"] == s_full["steps"] == 18 and not s_res["interrupted"]
    assert s_res["history"] == s_full["history"] and len(s_full["history"]) == 3
    assert s_res["selected"] == s_full["selected"]
    assert s_full["selected"]["epoch"] == 0 and s_full["selected"]["select"] == "best"

    # logs: one row per step, equal to the uninterrupted run's, summary included
    full_rows, res_rows = _rows(Path(full_cfg["live"])), _rows(Path(cfg["live"]))
    assert full_rows == res_rows
    steps = [s for s, _ in res_rows["plots/metrics/train/loss.tsv"]]
    assert steps == [3, 6, 9, 12, 15, 18]
    assert [s for s, _ in res_rows["plots/metrics/val/srcc.tsv"]] == [6, 12, 18]
    assert json.loads((Path(cfg["live"]) / "metrics.json").read_text()) == json.loads(
        (Path(full_cfg["live"]) / "metrics.json").read_text()
    )


def test_a_checkpoint_of_other_code_is_not_resumed(setup, tmp_path, monkeypatch, caplog):
    import logging

    import deqa.checkpointing
    import deqa.training as training

    params = small_params(**TRAIN)
    args = (setup["labels"], setup["base"])
    part = training.train(params, *args, tmp_path / "m", tmp_path / "ckpt", None, stop_after_steps=8, progress=False)
    assert part["interrupted"] and (tmp_path / "ckpt" / "step_0000008").exists()

    monkeypatch.setattr(deqa.checkpointing, "code_digest", lambda: "0" * 64)  # the package's code changed
    calls = []
    loss = training.deqa_loss
    monkeypatch.setattr(training, "deqa_loss", lambda *a, **k: calls.append(1) or loss(*a, **k))
    with caplog.at_level(logging.INFO, logger="deqa.training"):
        done = training.train(params, *args, tmp_path / "m", tmp_path / "ckpt", None, progress=False)
    assert len(calls) == done["steps"] == done["total_steps"] == 18  # every step trained again
    assert any("not resuming" in r.getMessage() and "code differs" in r.getMessage() for r in caplog.records)
    # the stale checkpoint is gone once the new run saves its own
    assert not any(
        json.loads((p / "deqa_state.json").read_text())["parts"]["code"] != "0" * 64
        for p in (tmp_path / "ckpt").glob("step_*")
    )
