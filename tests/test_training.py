"""Training: the loss falls; resume, select best/last, LoRA targets.

The SIGKILL-and-resume-in-a-fresh-process test is in ``test_resume.py``; stored vision features
(the ``features`` stage) in ``test_features.py``.
"""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import deqa.training as training
from deqa.data import Collator, Examples, PairDataset, make_pairs
from deqa.losses import deqa_loss
from deqa.modeling import Conversation, load_model, load_processor, quiet_peft
from deqa.training import prepare_model, train
from model_fixtures import build_base, build_labels, small_params


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return build_base(root / "base"), build_labels(root)


def _adapter(path):
    return load_file(str(path / "adapter_model.safetensors"))


def test_pairs_come_from_one_dataset_and_are_seeded():
    ds = np.array(["a"] * 5 + ["b"] * 4)
    p1, p2 = make_pairs(ds, 0, 3), make_pairs(ds, 0, 3)
    assert (p1 == p2).all() and not (p1 == make_pairs(ds, 0, 4)).all()
    assert sorted(p1[:, 0].tolist()) == list(range(9))
    assert all(ds[a] == ds[b] and a != b for a, b in p1)


def test_a_few_steps_lower_the_loss(data, tmp_path):
    base, labels = data
    params = small_params(epochs=3)
    conv = Conversation(load_processor(base))
    ex = Examples.from_csv(labels / "train.csv")
    batch = Collator(conv, ex, 0).pairs([PairDataset(ex.dataset, 0)[i] for i in range(6)])

    def loss_of(model):
        with torch.no_grad():
            out = model(**batch["inputs"])
            return deqa_loss(
                out.logits, batch["labels"], batch["level_pos"], conv.level_ids, batch["target"], batch["m"], batch["s"]
            )["loss"].item()

    before = loss_of(prepare_model(load_model(base), params)[0].eval())
    train(params, labels, base, tmp_path / "model", tmp_path / "ckpt", None, progress=False)
    from peft import PeftModel

    with quiet_peft():
        after = loss_of(PeftModel.from_pretrained(load_model(base), tmp_path / "model").eval())
    assert after < before - 0.05, (before, after)


# ---------------------------------------------------------------------------------------------
# resume (in-process; the fresh-process SIGKILL test is test_resume.py)
# ---------------------------------------------------------------------------------------------
def test_resume_matches_an_uninterrupted_run_bit_for_bit(data, tmp_path):
    base, labels = data
    params = small_params(epochs=2, checkpoint_every=2, log_every=2)
    full = train(
        params, labels, base, tmp_path / "full", tmp_path / "ckpt_full", tmp_path / "live_full", progress=False
    )
    part = train(
        params,
        labels,
        base,
        tmp_path / "resumed",
        tmp_path / "ckpt",
        tmp_path / "live",
        stop_after_steps=3,
        progress=False,
    )
    assert part["interrupted"] and not (tmp_path / "resumed").exists()
    done = train(params, labels, base, tmp_path / "resumed", tmp_path / "ckpt", tmp_path / "live", progress=False)
    assert done["steps"] == full["steps"] and done["history"] == full["history"]
    a, b = _adapter(tmp_path / "full"), _adapter(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    loss = (tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text()
    assert loss == (tmp_path / "live_full" / "plots" / "metrics" / "train" / "loss.tsv").read_text()


def test_stale_checkpoint_is_not_resumed(data, tmp_path):
    base, labels = data
    train(
        small_params(epochs=2, checkpoint_every=2),
        labels,
        base,
        tmp_path / "m",
        tmp_path / "ckpt",
        None,
        stop_after_steps=2,
        progress=False,
    )
    other = train(
        small_params(epochs=1, lr=1e-3), labels, base, tmp_path / "m", tmp_path / "ckpt", None, progress=False
    )
    assert other["steps"] == other["total_steps"] and not other["interrupted"]


# ---------------------------------------------------------------------------------------------
# train.select
# ---------------------------------------------------------------------------------------------
def test_select_best_saves_the_best_epoch_and_last_the_last(data, tmp_path, monkeypatch):
    """With validation SRCC scripted to peak at epoch 0, ``best`` saves the weights as they were at
    the end of epoch 0 (read from a checkpoint of the same run stopped there); ``last`` the final ones."""
    from peft import PeftModel

    base, labels = data
    real = training.val_correlations
    script = []

    def scripted(*args, **kwargs):
        _, plcc = real(*args, **kwargs)
        return script.pop(0), plcc

    monkeypatch.setattr(training, "val_correlations", scripted)
    runs = {}
    for select in ("best", "last"):
        script[:] = [0.8, 0.3, 0.5]
        runs[select] = train(
            small_params(epochs=3, select=select),
            labels,
            base,
            tmp_path / select,
            tmp_path / f"c_{select}",
            None,
            progress=False,
        )
    best, last = runs["best"], runs["last"]
    assert [h["val_srcc"] for h in best["history"]] == [0.8, 0.3, 0.5]
    assert best["selected"] == {"select": "best", **best["history"][0]}
    assert last["selected"] == {"select": "last", **last["history"][2]}
    per_epoch = best["history"][0]["step"]

    script[:] = [0.8]
    train(
        small_params(epochs=3, select="best"),
        labels,
        base,
        tmp_path / "x",
        tmp_path / "c_stop",
        None,
        stop_after_steps=per_epoch,
        progress=False,
    )
    at_epoch_end = load_file(str(tmp_path / "c_stop" / f"step_{per_epoch:07d}" / "model.safetensors"))
    with quiet_peft():
        saved = {s: PeftModel.from_pretrained(load_model(base), tmp_path / s).state_dict() for s in ("best", "last")}
    assert at_epoch_end and all(torch.equal(saved["best"][k], v) for k, v in at_epoch_end.items())
    assert not all(torch.equal(saved["last"][k], v) for k, v in at_epoch_end.items())


def test_validation_is_what_deqa_score_gives(data, tmp_path):
    """The per-epoch val SRCC/PLCC come from the same Scorer as ``deqa score`` on the saved model."""
    from scipy.stats import pearsonr, spearmanr

    from deqa.scoring import Scorer

    base, labels = data
    summary = train(
        small_params(epochs=2, select="last"), labels, base, tmp_path / "m", tmp_path / "c", None, progress=False
    )
    val = Examples.from_csv(labels / "val.csv")
    mu = Scorer.from_pretrained(tmp_path / "m").score(val.paths, progress=False).mean
    last = summary["history"][-1]
    assert spearmanr(mu, val.m).statistic == pytest.approx(last["val_srcc"], abs=1e-9)
    assert pearsonr(mu, val.m).statistic == pytest.approx(last["val_plcc"], abs=1e-4)


def test_lora_targets_only_the_language_model(data):
    base, _ = data
    model, _ = prepare_model(load_model(base), small_params())
    lora = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert lora and all(".language_model." in n for n in lora)
    trainable = {
        n.split(".modules_to_save")[0] for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n
    }
    assert any("multi_modal_projector" in n for n in trainable) and any("lm_head" in n for n in trainable)
    assert not any("vision_tower" in n for n, p in model.named_parameters() if p.requires_grad)
