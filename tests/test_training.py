"""Training: the loss falls, resume equals an uninterrupted run, the feature cache changes nothing."""

import pytest
import torch
from model_fixtures import build_base, build_labels, small_params
from safetensors.torch import load_file

from deqa.losses import deqa_loss
from deqa.modeling import Conversation, load_model, load_processor
from deqa.training import Collator, Examples, PairDataset, make_pairs, prepare_model, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return build_base(root / "base"), build_labels(root)


def _adapter(path):
    return load_file(str(path / "adapter_model.safetensors"))


def test_pairs_come_from_one_dataset_and_are_seeded():
    import numpy as np

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
            return deqa_loss(out.logits, batch["labels"], batch["level_pos"], conv.level_ids, batch["target"],
                             batch["m"], batch["s"])["loss"].item()

    before = loss_of(prepare_model(load_model(base), params)[0].eval())
    train(params, labels, base, tmp_path / "model", tmp_path / "ckpt", None, progress=False)
    from peft import PeftModel

    after = loss_of(PeftModel.from_pretrained(load_model(base), tmp_path / "model").eval())
    assert after < before - 0.05, (before, after)


def test_resume_matches_an_uninterrupted_run(data, tmp_path):
    base, labels = data
    params = small_params(epochs=2, checkpoint_every=2)
    full = train(params, labels, base, tmp_path / "full", tmp_path / "ckpt_full", None, progress=False)
    part = train(params, labels, base, tmp_path / "resumed", tmp_path / "ckpt", None, stop_after_steps=3,
                 progress=False)
    assert part["interrupted"] and not (tmp_path / "resumed").exists()
    done = train(params, labels, base, tmp_path / "resumed", tmp_path / "ckpt", None, progress=False)
    assert done["steps"] == full["steps"]
    a, b = _adapter(tmp_path / "full"), _adapter(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_stale_checkpoint_is_not_resumed(data, tmp_path):
    base, labels = data
    train(small_params(epochs=2, checkpoint_every=2), labels, base, tmp_path / "m", tmp_path / "ckpt", None,
          stop_after_steps=2, progress=False)
    other = train(small_params(epochs=1, lr=1e-3), labels, base, tmp_path / "m", tmp_path / "ckpt", None,
                  progress=False)
    assert other["steps"] == other["total_steps"] and not other["interrupted"]


def test_feature_cache_gives_the_same_model(data, tmp_path):
    base, labels = data
    train(small_params(cache_vision_features=True), labels, base, tmp_path / "cached", tmp_path / "c1", None,
          progress=False)
    train(small_params(cache_vision_features=False), labels, base, tmp_path / "plain", tmp_path / "c2", None,
          progress=False)
    a, b = _adapter(tmp_path / "cached"), _adapter(tmp_path / "plain")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_lora_targets_only_the_language_model(data):
    base, _ = data
    model, names = prepare_model(load_model(base), small_params())
    lora = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert lora and all(".language_model." in n for n in lora)
    trainable = {n.split(".modules_to_save")[0] for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}
    assert any("multi_modal_projector" in n for n in trainable) and any("lm_head" in n for n in trainable)
    assert not any("vision_tower" in n for n, p in model.named_parameters() if p.requires_grad)
