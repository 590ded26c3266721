"""Stored vision features (the ``features`` stage, :mod:`deqa.features`): exact, image-free, or off.

The store must change nothing but speed: training from it gives the weights of training with the
tower running (to the float rounding of a different batching), scores from it equal scores
without it, batches assembled from it equal the processor's own, and where it would not be exact
(a trainable tower, rows that depend on each other, flattened patches, another tower) it is off
or unused with the reason logged.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils import _pytree as pytree

import deqa.features
import deqa.images
from deqa.data import Collator, Examples, PairDataset
from deqa.feature_extract import extract
from deqa.feature_stage import build_store
from deqa.features import FeatureStore, fed, file_key
from deqa.modeling import Conversation, get_module, load_model, load_processor, resolve_modules
from deqa.scoring import Scorer
from deqa.training import train
from family_fixtures import BUILDERS
from model_fixtures import build_base, build_labels, small_params


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    base, labels = build_base(root / "base"), build_labels(root)
    paths = Examples.from_csv(labels / "train.csv").paths + Examples.from_csv(labels / "val.csv").paths
    store = build_store(small_params(), paths, base, progress=False)
    store.save(root / "store")
    return {"root": root, "base": base, "labels": labels, "paths": paths, "store": root / "store"}


def _frozen(base):
    return load_model(base).requires_grad_(False), load_processor(base)


def _adapter(path):
    return load_file(str(path / "adapter_model.safetensors"))


def test_a_store_holds_each_image_alone_and_reloads_bit_for_bit(data):
    store = FeatureStore.load(data["store"])
    assert store.enabled and len(store) == len(set(data["paths"]))
    model, processor = _frozen(data["base"])
    tower = get_module(model, resolve_modules(model).vision)
    assert store.usable_with(tower, processor, Conversation(processor).scoring_text()) is None
    enc = processor(text=["<image>"], images=[deqa.images.load_image(data["paths"][3])], return_tensors="pt")
    with torch.no_grad():
        alone = tower(enc["pixel_values"]).last_hidden_state
    stored = store.outputs([file_key(data["paths"][3])])
    # LLaVA reads the last hidden state; the unread fields are broadcast zeros, not stored
    assert torch.equal(stored.hidden_states[-1], alone)
    assert not stored.pooler_output.any() and stored.pooler_output.stride() == (0, 0)
    fresh = extract(model, processor, data["paths"], progress=False)
    keys = sorted(fresh.entries)
    assert keys == sorted(store.entries)
    for a, b in zip(pytree.tree_leaves(fresh.outputs(keys)), pytree.tree_leaves(store.outputs(keys)), strict=True):
        assert torch.equal(a, b)


def test_training_from_the_store_gives_the_weights_of_training_with_the_tower(data, tmp_path, monkeypatch):
    """Stored outputs are per image, the tower in training runs on batches: they agree to float
    rounding (~1e-5 here), so the weights do to that order. A store on disk and one computed in
    memory train the same weights bit for bit, and with either the tower never runs."""
    calls = []
    tower_cls = type(get_module(load_model(data["base"]), "model.vision_tower"))
    real_forward = tower_cls.forward

    def counting(self, *args, **kwargs):
        calls.append(1)
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(tower_cls, "forward", counting)
    runs = {}
    for name, features in [("disk", data["store"]), ("memory", None), ("live", False)]:
        calls.clear()
        runs[name] = train(
            small_params(),
            data["labels"],
            data["base"],
            tmp_path / name,
            tmp_path / f"c{name}",
            None,
            progress=False,
            features=features,
        )
        runs[name]["calls"] = len(calls)
    n_images = len(set(data["paths"]))
    assert runs["disk"]["calls"] == 0  # neither training nor validation ran the tower
    assert runs["memory"]["calls"] == n_images + 1  # one pass per image, one batch of two (the check)
    assert runs["live"]["calls"] >= runs["live"]["steps"]  # every step ran it
    a, b, c = (_adapter(tmp_path / n) for n in ("disk", "memory", "live"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    for k in a:
        torch.testing.assert_close(a[k], c[k], rtol=1e-4, atol=1e-4)
    for h_store, h_live in zip(runs["disk"]["history"], runs["live"]["history"], strict=True):
        assert h_store["val_srcc"] == pytest.approx(h_live["val_srcc"], abs=1e-6)
        assert h_store["val_plcc"] == pytest.approx(h_live["val_plcc"], abs=1e-4)


def test_scores_from_the_store_equal_scores_from_the_images(data, tmp_path, monkeypatch):
    train(small_params(max_steps=4), data["labels"], data["base"], tmp_path / "m", tmp_path / "c", None, progress=False)
    plain = Scorer.from_pretrained(tmp_path / "m").score(data["paths"], batch_size=5, progress=False)
    stored = Scorer.from_pretrained(tmp_path / "m", features=data["store"])
    assert stored.features is not None
    first = stored.score(data["paths"][:5], batch_size=5, progress=False)  # the checked batch loads its images
    monkeypatch.setattr(deqa.images, "load_image", lambda p: pytest.fail(f"{p} was decoded"))
    fast = stored.score(data["paths"], batch_size=5, progress=False)
    np.testing.assert_allclose(fast.mean, plain.mean, atol=1e-5)
    np.testing.assert_allclose(fast.probs, plain.probs, atol=1e-5)
    np.testing.assert_array_equal(first.mean, fast.mean[:5])


@pytest.mark.parametrize("family, stored", [("tiny", True), ("llava", True), ("idefics3", True), ("qwen2_vl", False)])
def test_batches_from_the_store_equal_the_processor_and_decode_no_image(
    family, stored, data, tmp_path, monkeypatch, caplog
):
    base = data["base"] if family == "tiny" else BUILDERS[family](tmp_path / family)
    model, processor = _frozen(base)
    ex = Examples.from_csv(data["labels"] / "train.csv")
    with caplog.at_level(logging.INFO, logger="deqa.features"):
        store = extract(model, processor, ex.paths, progress=False)
    assert store.enabled == stored, store.reason
    if not stored:  # Qwen2-VL's tower takes flattened patches: several rows per image
        assert "rows for one image" in store.reason and "vision features not stored" in caplog.text
        return
    conv = Conversation(processor)
    fast, slow = Collator(conv, ex, 0, features=store), Collator(conv, ex, 0)
    pairs = PairDataset(ex.dataset, 0)
    batches = [[pairs[i] for i in range(s, s + 3)] for s in range(0, len(pairs) - 2, 3)]
    wanted = [slow.pairs(b) for b in batches]
    fast.pairs(batches[0])  # the first assembled batch is checked against the processor
    monkeypatch.setattr(deqa.data, "load_image", lambda p: pytest.fail(f"{p} was decoded"))
    tower = get_module(model, resolve_modules(model).vision)
    for b, want in zip(batches, wanted, strict=True):
        got = fast.pairs(b)
        assert got["features"] is not None and want["features"] is None
        assert got["inputs"].keys() == want["inputs"].keys()
        for k, v in want["inputs"].items():
            w = got["inputs"][k]
            assert w.dtype == v.dtype and w.shape == v.shape, k
            if not v.is_floating_point():
                assert torch.equal(w, v), k
        assert torch.equal(got["labels"], want["labels"]) and torch.equal(got["level_pos"], want["level_pos"])
        with torch.no_grad():
            live = model(**want["inputs"]).logits
            with fed(tower, got["features"]):
                from_store = model(**got["inputs"]).logits
        torch.testing.assert_close(from_store, live, rtol=1e-4, atol=1e-4)


def test_the_store_is_off_where_it_would_not_be_exact(data, monkeypatch, caplog):
    model, processor = _frozen(data["base"])
    tower = get_module(model, resolve_modules(model).vision)
    trainable = load_model(data["base"])  # nothing frozen: the tower would train
    assert "trainable parameters" in extract(trainable, processor, data["paths"][:3], progress=False).reason
    params = small_params(train_vision=True)
    assert "train_vision" in build_store(params, data["paths"], data["base"], progress=False).reason
    params = small_params()
    params.features.enabled = False
    assert "features.enabled" in build_store(params, data["paths"], data["base"], progress=False).reason

    tokens = type(tower)._tokens

    def mixed(self, x):  # each image's output depends on the others in its batch (batch statistics)
        out = tokens(self, x)
        return out - out.mean(0, keepdim=True) + out

    monkeypatch.setattr(type(tower), "_tokens", mixed)
    with caplog.at_level(logging.INFO, logger="deqa.features"):
        store = extract(model, processor, data["paths"][:4], progress=False)
    assert not store.enabled and "depends on the other images" in store.reason
    assert "vision features not stored: the tower's output for an image depends" in caplog.text


def test_a_store_of_another_tower_is_not_used(data, tmp_path, caplog):
    other = build_base(tmp_path / "other", image_size=64, tokens="multistage")
    with caplog.at_level(logging.INFO, logger="deqa"):
        summary = train(
            small_params(max_steps=2),
            data["labels"],
            other,
            tmp_path / "m",
            tmp_path / "c",
            None,
            progress=False,
            features=data["store"],
        )
    assert summary["steps"] == 2
    assert "vision features not used: the store was computed by another vision tower" in caplog.text
    model, processor = _frozen(other)
    scorer = Scorer(model, processor, torch.device("cpu"), features=FeatureStore.load(data["store"]))
    assert scorer.features is None


def test_the_tower_is_fed_once_with_matching_rows_and_left_as_it_was():
    tower = torch.nn.Linear(3, 2).requires_grad_(False)
    stored = (torch.ones(2, 2),)
    with fed(tower, stored):
        assert tower(torch.zeros(2, 3)) is stored
    assert "forward" not in vars(tower) and tower(torch.zeros(2, 3)).shape == (2, 2)
    with pytest.raises(RuntimeError, match="3 rows for 2 stored images"), fed(tower, stored):
        tower(torch.zeros(3, 3))
    with pytest.raises(RuntimeError, match="called 0 times"), fed(tower, stored):
        pass
    with fed(tower, None):  # no stored features: the tower runs
        assert tower(torch.zeros(4, 3)).shape == (4, 2)


def test_an_image_changed_on_disk_is_not_served_from_the_store(data, tmp_path):
    import shutil

    from PIL import Image

    store = FeatureStore.load(data["store"])
    copy = tmp_path / "img.png"
    shutil.copy(data["paths"][0], copy)
    assert store.holds([copy]) == [file_key(data["paths"][0])]
    Image.new("RGB", (64, 64), (9, 9, 9)).save(copy)
    store.paths.clear()
    assert store.holds([copy]) is None and store.holds([tmp_path / "missing.png"]) is None


def test_a_store_loads_in_a_fresh_process(data):
    """The output structure is recorded as pytree JSON naming transformers' output class, which a
    new process has not imported yet: loading imports it (only from known packages)."""
    import subprocess
    import sys

    code = (
        "import sys; from deqa.features import FeatureStore; s = FeatureStore.load(sys.argv[1]);"
        "print(s.enabled, len(s), type(s.outputs(sorted(s.entries)[:2])).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(data["store"])], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", str(len(set(data["paths"]))), "BaseModelOutputWithPooling"]


def test_a_store_naming_an_unknown_type_is_refused(data, tmp_path):
    import json
    import shutil

    shutil.copytree(data["store"], tmp_path / "s")
    index = json.loads((tmp_path / "s" / "index.json").read_text())
    index["meta"]["spec"] = index["meta"]["spec"].replace("transformers.modeling_outputs", "evil.module")
    (tmp_path / "s" / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"evil\.module"):
        FeatureStore.load(tmp_path / "s")


def test_the_entry_cache_serves_a_rebuilt_base_with_the_same_tower_the_same_bytes(data, tmp_path, monkeypatch):
    """A head change rebuilds the base model but keeps its tower: the stage reads every entry but
    the probe image from the cache and writes the store it would have computed, byte for byte."""
    cache = tmp_path / "cache"
    model, processor = _frozen(data["base"])
    first = extract(model, processor, data["paths"], progress=False, cache_dir=cache)
    first.save(tmp_path / "a")
    from deqa.tiny import build_tiny_llava

    # another head (a wider language model), the same tower (weights, calibration)
    other = build_tiny_llava(
        tmp_path / "other",
        image_size=64,
        vision_tokens="pooled",
        hidden_size=48,
        intermediate_size=64,
        layers=1,
        heads=2,
        seed=0,
    )
    calls = []
    tower_cls = type(get_module(model, "model.vision_tower"))
    real_forward = tower_cls.forward
    monkeypatch.setattr(tower_cls, "forward", lambda self, *a, **k: calls.append(1) or real_forward(self, *a, **k))
    model2, processor2 = _frozen(other)
    second = extract(model2, processor2, data["paths"], progress=False, cache_dir=cache)
    second.save(tmp_path / "b")
    assert len(calls) == 2  # the first image (it fixes the cache folder) and the batching check
    for name in ("features.safetensors", "index.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    (next(cache.rglob("*.safetensors"))).write_bytes(b"truncated")  # a broken entry is computed again
    calls.clear()
    third = extract(model2, processor2, data["paths"], progress=False, cache_dir=cache)
    assert len(calls) == 3 and sorted(third.entries) == sorted(second.entries)
