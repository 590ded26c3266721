"""Training and scoring on N processes, tested with 2 CPU ranks (gloo) on this machine.

The training runs go through the real train stage (``stages/train.py`` main) in a runner that
records, per rank, each step's pairs and a digest of the trainable weights, the validation
predictions and every write of a checkpoint state, dvclive, the metrics and the model. The three
2-process runs are started with three documented launchers (docs/distributed.md): ``deqa launch``,
``torchrun`` and ``accelerate launch --config_file configs/accelerate/ddp.yaml``. The launch check
that refuses accelerate's one-process CPU launch runs the real stage too.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from deqa.cli import main as cli
from deqa.distributed import (
    LaunchError,
    RoundBatches,
    block,
    check_processes,
    launch_info,
    parse_shard,
    strided_share,
)
from model_fixtures import build_base, build_labels, small_params, trained_model

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
BIN = Path(sys.executable).parent

RUNNER = r"""
import hashlib, json, os, sys, time
cfg = json.load(open(sys.argv[1]))
sys.path[:0] = [cfg["tests"], cfg["stages"]]
import torch
import deqa.checkpointing
import deqa.training as training
import train as stage

deqa.checkpointing.code_digest = lambda: "pinned"  # the checkout may be edited while the test runs
rank = int(os.environ.get("RANK", 0))
logs = cfg["logs"]
out = open(os.path.join(logs, f"rank{rank}.jsonl"), "a")

def note(**kw):
    out.write(json.dumps(kw) + "\n")
    out.flush()

calls = [0]
loss, step, end_epoch, preds = training.deqa_loss, training.train_step, training.end_epoch, training.val_predictions

def blocking_loss(*a, **k):
    calls[0] += 1
    if cfg.get("block_at") and calls[0] > cfg["block_at"]:
        with open(os.path.join(logs, f"ready{rank}.tmp"), "w") as fh:
            fh.write(str(os.getpid()))
        os.replace(os.path.join(logs, f"ready{rank}.tmp"), os.path.join(logs, f"ready{rank}"))
        time.sleep(600)
    return loss(*a, **k)

def recording_step(accelerator, model, optimizer, scheduler, batch, trainable, *rest):
    synced, losses = step(accelerator, model, optimizer, scheduler, batch, trainable, *rest)
    h = hashlib.sha256()
    for p in trainable:
        h.update(p.detach().cpu().numpy().tobytes())
    n = len(batch["index"]) // 2
    note(kind="step", pairs=batch["index"][:n].tolist(), weights=h.hexdigest(), synced=synced)
    return synced, losses

def recording_end_epoch(accelerator, model, processor, val_ex, state, *rest):
    note(kind="epoch_end", epoch=state.epoch, step=state.step)
    return end_epoch(accelerator, model, processor, val_ex, state, *rest)

def recording_preds(*a, **k):
    pred = preds(*a, **k)
    note(kind="val", pred=pred.tolist())
    return pred

def writer(what, fn):
    def wrapped(*a, **k):
        result = fn(*a, **k)
        if what != "live" or result is not None:
            note(kind="write", what=what)
        return result
    return wrapped

training.deqa_loss, training.train_step = blocking_loss, recording_step
training.end_epoch, training.val_predictions = recording_end_epoch, recording_preds
training.save_trained = writer("model", training.save_trained)
training.open_live = writer("live", training.open_live)
deqa.checkpointing.TrainState.to_json = writer("checkpoint", deqa.checkpointing.TrainState.to_json)
stage.write_json = writer("metrics", stage.write_json)
code = stage.main(cfg["argv"])
note(kind="exit", code=code)
sys.exit(code)
"""

# 14 train images, 2 pairs per batch: 7 batches per epoch, cut to 6 (whole rounds of 2 ranks), 3 per
# rank = 3 steps; 3 epochs = 9 steps.
# Checkpoints at steps 4 and 8, a log row every 3 steps; the killed run stops after step 7, so steps
# 5-7, a log row and an epoch end lie after its last checkpoint (step 4, in the middle of epoch 1).
TRAIN = dict(epochs=3, batch_pairs=2, checkpoint_every=4, log_every=3, select="best")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_CPU"):
        env.pop(name, None)
    return env


LAUNCHERS = {
    "deqa launch": lambda: [str(BIN / "deqa"), "launch", "-n", "2", "--cpu"],
    "torchrun": lambda: [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"],
    "accelerate ddp.yaml": lambda: [
        str(BIN / "accelerate"),
        "launch",
        "--config_file",
        str(ROOT / "configs" / "accelerate" / "ddp.yaml"),
        "--num_processes",
        "2",
        "--main_process_port",
        str(_free_port()),
    ],
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    base, labels = build_base(root / "base"), build_labels(root, n_train=14)
    params = small_params(**TRAIN)
    params.lora.dropout = 0.1  # any RNG state a resume fails to restore shows in the weights
    from deqa.config import to_dict

    (root / "params.yaml").write_text(yaml.safe_dump(to_dict(params), sort_keys=False))
    (root / "runner.py").write_text(RUNNER)
    from deqa.data import Examples
    from deqa.feature_stage import build_store

    paths = Examples.from_csv(labels / "train.csv").paths + Examples.from_csv(labels / "val.csv").paths
    build_store(params, paths, base, progress=False).save(root / "features")  # the features stage's output
    return {"root": root, "base": base, "labels": labels, "features": root / "features"}


def _start(setup, launcher: str, run: Path, **extra) -> tuple[subprocess.Popen, dict]:
    run.mkdir(parents=True, exist_ok=True)
    (run / "logs").mkdir(exist_ok=True)
    cfg = {
        "tests": str(TESTS),
        "stages": str(ROOT / "stages"),
        "logs": str(run / "logs"),
        "argv": [
            "--params",
            str(setup["root"] / "params.yaml"),
            "--labels",
            str(setup["labels"]),
            "--base",
            str(setup["base"]),
            "--features",
            str(setup["features"]),
            "--out",
            str(run / "model"),
            "--checkpoints",
            str(run / "ckpt"),
            "--live",
            str(run / "live"),
            "--metrics",
            str(run / "metrics.json"),
        ],
        **extra,
    }
    cfg_file = run / f"cfg-{len(list(run.glob('cfg-*')))}.json"
    cfg_file.write_text(json.dumps(cfg))
    cmd = [*LAUNCHERS[launcher](), str(setup["root"] / "runner.py"), str(cfg_file)]
    proc = subprocess.Popen(
        cmd, cwd=run, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    return proc, cfg


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def _records(run: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (run / "logs" / f"rank{rank}.jsonl").read_text().splitlines()]


def _rows(live: Path) -> dict[str, list[str]]:
    return {
        str(f.relative_to(live)): f.read_text().splitlines()
        for f in sorted((live / "plots" / "metrics").rglob("*.tsv"))
    }


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "model" / "adapter_model.safetensors"))


def _epochs(records: list[dict]) -> list[list[dict]]:
    """The step records of each epoch (split at the epoch-end records)."""
    epochs, current = [], []
    for r in records:
        if r["kind"] == "step":
            current.append(r)
        elif r["kind"] == "epoch_end":
            epochs.append(current)
            current = []
    return epochs


@pytest.fixture(scope="module")
def runs(setup):
    """A full 2-rank run (deqa launch) and, beside it, one killed with SIGKILL after step 7
    (torchrun), then resumed in fresh processes (accelerate launch with ddp.yaml)."""
    root = setup["root"]
    full, _ = _start(setup, "deqa launch", root / "full")
    killed, _ = _start(setup, "torchrun", root / "killed", block_at=7)
    deadline = time.time() + 600
    while not all((root / "killed" / "logs" / f"ready{r}").exists() for r in (0, 1)):
        assert killed.poll() is None, killed.communicate()[0][-4000:]
        assert time.time() < deadline, "the killed run never reached step 7"
        time.sleep(0.1)
    # the launcher and both ranks at once, as a dead machine (torchrun puts each rank in a session of its own)
    os.killpg(killed.pid, signal.SIGKILL)
    for r in (0, 1):
        os.kill(int((root / "killed" / "logs" / f"ready{r}").read_text()), signal.SIGKILL)
    killed.communicate(timeout=60)
    ckpt = sorted(p.name for p in (root / "killed" / "ckpt").iterdir())
    resumed, _ = _start(setup, "accelerate ddp.yaml", root / "killed")
    return {
        "full": _finish(full),
        "resumed": _finish(resumed),
        "killed_ckpt": ckpt,
        "full_dir": root / "full",
        "killed_dir": root / "killed",
    }


def test_each_launcher_started_two_gloo_ranks(runs):
    for name in ("full", "resumed"):
        for rank in (0, 1):
            assert f"training on rank {rank} of 2 (MULTI_CPU, gloo, cpu" in runs[name], runs[name][-3000:]


def test_each_rank_trains_a_disjoint_share_of_every_epoch(runs):
    r0, r1 = (_epochs(_records(runs["full_dir"], r)) for r in (0, 1))
    assert len(r0) == len(r1) == 3
    for e0, e1 in zip(r0, r1, strict=True):
        a = [i for r in e0 for i in r["pairs"]]
        b = [i for r in e1 for i in r["pairs"]]
        assert len(e0) == len(e1) == 3 and len(a) == len(b) == 6
        assert not set(a) & set(b) and len(set(a + b)) == 12 and set(a + b) <= set(range(14))


def test_weights_are_identical_on_every_rank_after_each_step(runs):
    w0, w1 = ([r["weights"] for r in _records(runs["full_dir"], k) if r["kind"] == "step"] for k in (0, 1))
    assert len(w0) == len(w1) == 9
    assert w0 == w1
    assert len(set(w0)) == 9  # every step changed them


def test_one_writer_for_checkpoints_live_metrics_and_model(runs):
    writes = {k: [r["what"] for r in _records(runs["full_dir"], k) if r["kind"] == "write"] for k in (0, 1)}
    assert writes[1] == []
    assert writes[0].count("model") == writes[0].count("metrics") == writes[0].count("live") == 1
    assert writes[0].count("checkpoint") == 2  # steps 4 and 8
    for ckpt in (runs["full_dir"] / "ckpt").iterdir():  # accelerate's own files: RNG states per rank
        assert sorted(f.name for f in ckpt.glob("random_states_*")) == ["random_states_0.pkl", "random_states_1.pkl"]


def test_sharded_validation_equals_one_process_on_the_same_weights(runs, setup):
    """The selected epoch's gathered predictions and val SRCC against one process scoring the saved weights."""
    from accelerate import Accelerator
    from peft import PeftModel
    from scipy.stats import spearmanr

    from deqa.data import Examples
    from deqa.modeling import load_model, load_processor, quiet_peft
    from deqa.training import val_predictions

    summary = json.loads((runs["full_dir"] / "model" / "deqa_model.json").read_text())["training"]
    selected = summary["selected"]
    vals = [r["pred"] for r in _records(runs["full_dir"], 0) if r["kind"] == "val"]
    assert vals == [r["pred"] for r in _records(runs["full_dir"], 1) if r["kind"] == "val"]  # gathered on both
    sharded = np.array(vals[selected["epoch"]])
    val_ex = Examples.from_csv(setup["labels"] / "val.csv")
    with quiet_peft():
        model = PeftModel.from_pretrained(load_model(setup["base"]), runs["full_dir"] / "model").eval()
    one = val_predictions(Accelerator(cpu=True), model, load_processor(setup["base"]), val_ex, 4)
    assert np.abs(one - sharded).max() < 1e-5
    assert float(spearmanr(one, val_ex.m).statistic) == pytest.approx(selected["val_srcc"], abs=1e-9)


def test_sigkill_of_a_two_rank_run_resumes_bit_for_bit(runs):
    assert runs["killed_ckpt"] == ["step_0000004"]
    assert "resuming from" in runs["resumed"] and "step 4" in runs["resumed"]
    a, b = _adapter(runs["full_dir"]), _adapter(runs["killed_dir"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _rows(runs["full_dir"] / "live") == _rows(runs["killed_dir"] / "live")
    full, res = (
        json.loads((d / "model" / "deqa_model.json").read_text())["training"]
        for d in (runs["full_dir"], runs["killed_dir"])
    )
    assert full["history"] == res["history"] and full["selected"] == res["selected"]
    assert full["steps"] == full["total_steps"] == 9  # the schedule counts the steps each rank runs
    assert json.loads((runs["full_dir"] / "metrics.json").read_text()) == json.loads(
        (runs["killed_dir"] / "metrics.json").read_text()
    )


def test_accelerate_cpu_launch_of_two_processes_is_refused(setup, tmp_path):
    """accelerate's --cpu launcher starts one process whatever --num_processes says: the stage says so."""
    cmd = [str(BIN / "accelerate"), "launch", "--cpu", "--num_processes", "2", str(ROOT / "stages" / "train.py")]
    argv = ["--params", str(setup["root"] / "params.yaml"), "--labels", str(setup["labels"])]
    argv += ["--base", str(setup["base"]), "--features", str(setup["features"]), "--out", "m"]
    argv += ["--checkpoints", "c", "--live", "l", "--metrics", "x.json"]
    res = subprocess.run(cmd + argv, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "started one" in res.stderr and "deqa launch -n N" in res.stderr, res.stderr[-2000:]
    assert not (tmp_path / "m").exists() and not (tmp_path / "c").exists()


# ---------------------------------------------------------------------------------------------
# the pieces, in this process
# ---------------------------------------------------------------------------------------------
def test_round_batches_give_ranks_disjoint_shares_that_the_schedule_counts():
    """accelerate drops a short last round (drop_last) or tops it up with pairs from the epoch's start;
    whole rounds give each rank the batches that ``make_optimizer`` counts, each pair once."""
    from accelerate.data_loader import BatchSamplerShard

    def shares(sampler):
        return [[i for b in BatchSamplerShard(sampler, 2, r) for i in b] for r in (0, 1)]

    def plain(n, drop_last):
        return torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(range(n)), 2, drop_last)

    # 7 batches: each rank runs 3, but 7 / 2 processes make 4 steps per epoch in the schedule
    assert math.ceil(len(plain(14, True)) / 2) != len(BatchSamplerShard(plain(14, True), 2, 0))
    a, b = shares(plain(5, False))  # a short last batch: topped up with pairs already trained
    assert set(a) & set(b)
    for n, drop_last in ((14, True), (5, False)):
        rounds = RoundBatches(n, 2, drop_last, 2)
        a, b = shares(rounds)
        assert len(rounds) / 2 == len(BatchSamplerShard(rounds, 2, 0)) == len(BatchSamplerShard(rounds, 2, 1))
        assert not set(a) & set(b) and len(a) == len(b)
    with pytest.raises(ValueError, match="2 processes need at least 2"):
        RoundBatches(3, 2, True, 2)


def test_launch_check_names_the_one_process_launches():
    simple = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    with pytest.raises(LaunchError, match="simple launcher"):
        check_processes(1, simple)
    with pytest.raises(LaunchError, match="WORLD_SIZE=2"):
        check_processes(1, {"WORLD_SIZE": "2", "RANK": "0"})
    check_processes(2, {"WORLD_SIZE": "2", "RANK": "1"})
    check_processes(1, {"ACCELERATE_USE_CPU": "True"})  # accelerate launch of one process
    check_processes(1, {})
    check_processes(1, {**simple, "DEQA_ALLOW_ONE_PROCESS": "1"})
    assert launch_info({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}).local_rank == 1


def test_a_checkpoint_of_another_number_of_processes_is_not_resumed():
    from dataclasses import asdict

    from deqa.checkpointing import Fingerprint

    two, one = Fingerprint("p", "d", "b", "c", "2"), Fingerprint("p", "d", "b", "c", "1")
    assert two.value != one.value and two.differences(asdict(one)) == ["processes"]


def test_shares_and_shards_cover_every_index_once():
    assert [strided_share(5, r, 2) for r in (0, 1)] == [[0, 2, 4], [1, 3, 3]]
    blocks = [list(block(10, i, 3)) for i in range(3)]
    assert [i for b in blocks for i in b] == list(range(10)) and [len(b) for b in blocks] == [3, 3, 4]
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="I/N"):
            parse_shard(bad)


def test_deqa_launch_builds_torchrun_commands(capsys):
    assert cli(["launch", "-n", "2", "--cpu", "--dry-run", "score", "photos", "-o", "s.csv"]) == 0
    out = capsys.readouterr().out
    assert "-m torch.distributed.run --nproc_per_node=2 --standalone -m deqa.cli score photos -o s.csv" in out
    assert (
        cli(
            [
                "launch",
                "-n",
                "2",
                "--nnodes",
                "2",
                "--node-rank",
                "1",
                "--master-addr",
                "10.0.0.1",
                "--dry-run",
                "--cpu",
                "x.py",
            ]
        )
        == 0
    )
    assert "--nnodes=2 --node_rank=1 --master_addr=10.0.0.1 --master_port=29500 x.py" in capsys.readouterr().out
    if not torch.cuda.is_available():
        assert cli(["launch", "--dry-run", "score", "x"]) == 2
        assert "-n N" in capsys.readouterr().err
    assert cli(["launch", "-n", "2", "--dry-run", "--cpu", "frobnicate"]) == 2


# ---------------------------------------------------------------------------------------------
# scoring: shards, merge, N processes
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_model(tmp_path_factory.mktemp("dist_scoring"))


def _read(path: Path) -> dict[str, dict]:
    text = path.read_text()
    rows = (
        list(csv.DictReader(io.StringIO(text)))
        if path.suffix == ".csv"
        else [json.loads(x) for x in text.splitlines() if x.strip()]
    )
    return {r["path"]: r for r in rows}


def _same_scores(a: dict, b: dict) -> None:
    """Equal to 1e-6. The files hold 6 decimals, so two scores a few 1e-8 apart (other batches,
    other float kernels) can print one unit of the last decimal apart: 1e-6 plus float slack."""
    assert a.keys() == b.keys()
    for k in a:
        for f in ("score", "std", "p_bad", "p_poor", "p_fair", "p_good", "p_excellent"):
            assert abs(float(a[k][f]) - float(b[k][f])) <= 1e-6 + 1e-9, (k, f)


def _score(trained, *args) -> int:
    return cli(["score", "--model", str(trained["model"]), "--no-progress", *map(str, args)])


def test_shards_merged_equal_one_process(trained, tmp_path, capsys):
    images = trained["images"]
    assert _score(trained, images, "-o", tmp_path / "single.csv") == 0
    outs = [tmp_path / "s0.csv", tmp_path / "s1.jsonl", tmp_path / "s2.csv"]  # formats may differ
    for i, out in enumerate(outs):
        assert _score(trained, images, "--shard", f"{i}/3", "-o", out) == 0
    sizes = [len(_read(o)) for o in outs]
    assert sizes == [6, 6, 6]
    # the merge refuses an incomplete set of shards, then joins them, sorted by path
    assert cli(["score", "--merge", *map(str, outs[:2]), "-o", str(tmp_path / "m.csv")]) == 2
    assert "shard(s) 2/3 missing" in capsys.readouterr().err
    assert cli(["score", "--merge", *map(str, outs), "-o", str(tmp_path / "m.csv")]) == 0
    merged = _read(tmp_path / "m.csv")
    _same_scores(merged, _read(tmp_path / "single.csv"))
    assert list(merged) == sorted(merged)


def test_a_shard_resumes_and_an_unfinished_shard_is_not_merged(trained, tmp_path, capsys, monkeypatch):
    from deqa.scoring import Scorer

    images, out = trained["images"], tmp_path / "s1.csv"
    real = Scorer.forward
    calls = []

    def interrupted(self, enc, pos, features=None):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(self, enc, pos, features)

    monkeypatch.setattr(Scorer, "forward", interrupted)
    assert _score(trained, images, "--shard", "1/2", "--batch-size", "4", "-o", out) == 130
    monkeypatch.setattr(Scorer, "forward", real)
    assert len(_read(out)) == 4 and not Path(str(out) + ".shard.json").exists()
    assert _score(trained, images, "--shard", "0/2", "-o", tmp_path / "s0.csv") == 0
    assert cli(["score", "--merge", str(tmp_path / "s0.csv"), str(out), "-o", str(tmp_path / "m.csv")]) == 2
    assert "did not finish" in capsys.readouterr().err
    assert _score(trained, images, "--shard", "1/2", "--resume", "-o", out) == 0
    assert "4 image(s) already scored, 5 to go" in capsys.readouterr().err
    assert cli(["score", "--merge", str(tmp_path / "s0.csv"), str(out), "-o", str(tmp_path / "m.jsonl")]) == 0
    assert len(_read(tmp_path / "m.jsonl")) == 18


def test_score_on_two_processes_equals_one_and_keeps_exit_codes(trained, tmp_path):
    """``deqa launch -n 2 score``: each rank a shard, rank 0 merges; an unreadable file gives exit 1."""
    images = tmp_path / "images"
    images.mkdir()
    for p in trained["images"].glob("*.png"):
        (images / p.name).symlink_to(p)
    (images / "broken.png").write_bytes(b"not a png")
    assert _score(trained, images, "-o", tmp_path / "single.csv") == 1
    cmd = [str(BIN / "deqa"), "launch", "-n", "2", "--cpu", "score", "--model", str(trained["model"])]
    res = subprocess.run(
        [*cmd, str(images), "-o", str(tmp_path / "ranks.csv")], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 1, res.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank} of 2: shard {rank}/2" in res.stderr
    merged = _read(tmp_path / "ranks.csv")
    single = _read(tmp_path / "single.csv")
    broken = str(images / "broken.png")
    assert merged.pop(broken)["error"] and single.pop(broken)["error"]
    _same_scores(merged, single)
    assert not (tmp_path / "ranks.csv.parts").exists()


def test_shard_and_processes_need_an_output(trained, capsys):
    assert _score(trained, trained["images"], "--shard", "0/2") == 2
    assert "need --output" in capsys.readouterr().err
    assert _score(trained, trained["images"], "--shard", "2/2", "-o", "x.csv") == 2
