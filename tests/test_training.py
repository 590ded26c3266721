"""Training: the loss falls; resume, select best/last, the feature cache and fast collation are exact.

The SIGKILL-and-resume-in-a-fresh-process test is in ``test_resume.py``.
"""

import logging

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import deqa.data
import deqa.training as training
from deqa.data import Collator, Examples, PairDataset, make_pairs
from deqa.feature_cache import FeatureCache
from deqa.losses import deqa_loss
from deqa.modeling import Conversation, load_model, load_processor, quiet_peft, resolve_modules
from deqa.training import prepare_model, train
from family_fixtures import BUILDERS
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
    real = training.validate
    script = []

    def scripted(*args, **kwargs):
        _, plcc = real(*args, **kwargs)
        return script.pop(0), plcc

    monkeypatch.setattr(training, "validate", scripted)
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


# ---------------------------------------------------------------------------------------------
# feature cache
# ---------------------------------------------------------------------------------------------
def test_feature_cache_gives_the_same_model(data, tmp_path):
    """Cached features are the tower's output for each image alone, equal to the batched output up
    to float rounding (~1e-5 for this tower), so the trained weights agree to that order."""
    base, labels = data
    train(
        small_params(cache_vision_features=True),
        labels,
        base,
        tmp_path / "cached",
        tmp_path / "c1",
        None,
        progress=False,
    )
    train(
        small_params(cache_vision_features=False),
        labels,
        base,
        tmp_path / "plain",
        tmp_path / "c2",
        None,
        progress=False,
    )
    a, b = _adapter(tmp_path / "cached"), _adapter(tmp_path / "plain")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4)


def test_feature_cache_serves_per_image_outputs_and_leaves_the_model_as_it_was(data):
    base, labels = data
    model = load_model(base)
    tower = model.get_submodule(resolve_modules(model).vision).requires_grad_(False)
    conv = Conversation(load_processor(base))
    ex = Examples.from_csv(labels / "train.csv")
    batch = Collator(conv, ex, 0, fast=False).pairs([PairDataset(ex.dataset, 0)[i] for i in range(4)])
    pixels = batch["inputs"]["pixel_values"]
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    before_attrs, before_modules = dict(vars(tower)), [n for n, _ in model.named_modules()]
    with torch.no_grad():
        before = model(**batch["inputs"]).logits
        alone = torch.cat([tower(pixels[i : i + 1]).last_hidden_state for i in range(len(pixels))])
        with FeatureCache(tower) as cache:
            assert [n for n, _ in model.named_modules()] == before_modules and "forward" in vars(tower)
            first = tower(pixels)
            assert len(cache) == len({tuple(p.flatten().tolist()) for p in pixels}) and cache.misses == len(pixels)
            again = tower(pixels)  # every image from the cache now
            assert cache.hits == len(pixels)
            assert torch.equal(first.last_hidden_state, again.last_hidden_state)
            assert torch.equal(again.last_hidden_state, alone)
            logits = model(**batch["inputs"]).logits
        after = model(**batch["inputs"]).logits
    torch.testing.assert_close(logits, before, rtol=1e-4, atol=1e-4)
    assert torch.equal(after, before)
    assert vars(tower).keys() == before_attrs.keys() and "forward" not in vars(tower)
    assert all(torch.equal(v, before_state[k]) for k, v in model.state_dict().items())


class _Rows(torch.nn.Module):
    """A toy tower: ``mixed`` makes each row's output depend on the other rows (as flattened patches do)."""

    def __init__(self, mixed=False, trainable=False):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3), requires_grad=trainable)
        self.mixed = mixed

    def forward(self, x, grid=None):
        return (x * self.w - (x.mean(0) if self.mixed else 0),)


@pytest.mark.parametrize(
    "tower, call, reason",
    [
        (_Rows(), lambda t: t(torch.rand(4, 3)), None),
        (_Rows(trainable=True), lambda t: t(torch.rand(4, 3)), "trainable parameters"),
        (_Rows(mixed=True), lambda t: t(torch.rand(4, 3)), "depends on the other images"),
        (_Rows(), lambda t: t(torch.rand(8, 3), grid=torch.ones(2, 3)), "does not split"),
    ],
)
def test_feature_cache_turns_itself_off_where_it_would_not_be_exact(tower, call, reason, caplog):
    with caplog.at_level(logging.INFO, logger="deqa.training"), FeatureCache(tower) as cache:
        out = call(tower)
        again = call(tower)
    messages = [r.getMessage() for r in caplog.records if "caching disabled" in r.getMessage()]
    assert bool(messages) == (reason is not None) and cache.enabled == (reason is None)
    if reason:
        assert reason in messages[0]
    assert torch.is_tensor(out[0]) and torch.is_tensor(again[0]) and "forward" not in vars(tower)


def test_a_placeholder_image_never_reaches_the_tower():
    tower = torch.nn.Conv2d(3, 4, 3).requires_grad_(False)
    cache = FeatureCache(tower)
    with cache:
        real = torch.rand(2, 3, 8, 8)
        with cache.keyed(["a", "b"]):
            tower(real)
        assert cache.holds("a") and cache.holds("b") and not cache.holds("c")
        with cache.keyed(["a", "b"]):  # all cached: a zero-filled stand-in is never read
            out = tower(torch.full((), float("nan")).expand(2, 3, 8, 8))
        torch.testing.assert_close(out, tower.__class__.forward(tower, real))  # each image's own features
        with cache.keyed(["a", "c"]), pytest.raises(RuntimeError, match="image-free batch"):
            tower(torch.full((), float("nan")).expand(2, 3, 8, 8))
    cache.disable("test")
    assert not cache.holds("a")


def test_feature_cache_keys_must_match_the_rows():
    tower = _Rows()
    with FeatureCache(tower) as cache, cache.keyed(["a", "b"]):
        tower(torch.rand(4, 3))
    assert not cache.enabled


# ---------------------------------------------------------------------------------------------
# fast collation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["tiny", "llava", "qwen2_vl", "idefics3"])
def test_fast_collation_equals_the_processor_and_skips_the_images(family, data, tmp_path, monkeypatch):
    base, labels = data
    if family != "tiny":
        base = BUILDERS[family](tmp_path / family)
    conv = Conversation(load_processor(base))
    ex = Examples.from_csv(labels / "train.csv")
    fast, slow = Collator(conv, ex, 0), Collator(conv, ex, 0, fast=False)
    pairs = PairDataset(ex.dataset, 0)
    batches = [[pairs[i] for i in range(s, s + 3)] for s in range(0, len(pairs) - 2, 3)]
    for b in batches:  # epoch 0 fills the per-image entries
        fast.pairs(b)
    assert fast.encoder.state == "on" and len(fast.encoder.entries) == len(ex)

    pairs.set_epoch(1)
    wanted = [slow.pairs(b) for b in batches]

    def no_images(path):
        raise AssertionError(f"{path} was loaded again")

    monkeypatch.setattr(deqa.data, "load_image", no_images)
    for b, want in zip(batches, wanted, strict=True):
        got = fast.pairs(b)
        assert got["keys"] is not None and want["keys"] is None
        for part in ("inputs", "level_pos", "labels"):
            a, w = (got[part], want[part]) if part == "inputs" else ({0: got[part]}, {0: want[part]})
            assert a.keys() == w.keys()
            for k in a:
                assert a[k].dtype == w[k].dtype and torch.equal(a[k], w[k]), (part, k)


def test_fast_collation_entries_stop_at_their_memory_budget(data):
    base, labels = data
    conv = Conversation(load_processor(base))
    ex = Examples.from_csv(labels / "train.csv")
    fast, slow = Collator(conv, ex, 0), Collator(conv, ex, 0, fast=False)
    per_image = 3 * 64 * 64 * 4  # one 64 px float32 image
    fast.encoder.max_bytes = 5 * per_image
    fast.encoder.images = 0  # the number of images unknown: only the growth cap applies
    pairs = PairDataset(ex.dataset, 0)
    for i in range(0, len(pairs) - 2, 3):
        b = [pairs[j] for j in range(i, i + 3)]
        got, want = fast.pairs(b), slow.pairs(b)
        assert all(torch.equal(got["inputs"][k], want["inputs"][k]) for k in want["inputs"])
    assert len(fast.encoder.entries) == 6 and fast.encoder.state == "on"


def test_fast_collation_is_off_when_the_entries_of_every_image_would_not_fit(data, caplog):
    # a batch is assembled only from entries of all its images: a cache for part of them would
    # cost its memory (1.7 MiB per image at 384 px) and save nothing, so it is not kept at all
    base, labels = data
    conv = Conversation(load_processor(base))
    ex = Examples.from_csv(labels / "train.csv")
    per_image = 3 * 64 * 64 * 4
    fits = Collator(conv, ex, 0)
    fits.encoder.max_bytes = len(ex) * per_image
    fits.pairs([PairDataset(ex.dataset, 0)[j] for j in range(4)])
    assert fits.encoder.state == "on"
    tight, slow = Collator(conv, ex, 0), Collator(conv, ex, 0, fast=False)
    tight.encoder.max_bytes = len(ex) * per_image - 1
    b = [PairDataset(ex.dataset, 0)[j] for j in range(4)]
    with caplog.at_level(logging.INFO, logger="deqa.data"):
        got, want = tight.pairs(b), slow.pairs(b)
    assert tight.encoder.state == "off" and not tight.encoder.entries and got["keys"] is None
    assert all(torch.equal(got["inputs"][k], want["inputs"][k]) for k in want["inputs"])
    assert f"entries for the {len(ex):,} images would take" in caplog.text


def test_batches_of_images_with_cached_features_hold_no_images(data, monkeypatch):
    base, labels = data
    conv = Conversation(load_processor(base))
    ex = Examples.from_csv(labels / "train.csv")
    fast, slow = Collator(conv, ex, 0), Collator(conv, ex, 0, fast=False)

    class Features:  # what the encoder asks of a FeatureCache
        enabled, entries = True, {}

        @classmethod
        def holds(cls, key):
            return cls.enabled and key in cls.entries

    fast.encoder.features = Features()
    b = [PairDataset(ex.dataset, 0)[j] for j in range(4)]
    first, want = fast.pairs(b), slow.pairs(b)
    assert torch.equal(first["inputs"]["pixel_values"], want["inputs"]["pixel_values"])
    held = fast.encoder.bytes
    assert held > 0 and fast.encoder.state == "on"
    Features.entries = {k: None for k in first["keys"][:-1]}  # all but one image's features cached
    again = fast.pairs(b)  # that image's tensors are still held: the batch is exact
    assert torch.equal(again["inputs"]["pixel_values"], want["inputs"]["pixel_values"])
    Features.entries = {k: None for k in first["keys"]}
    monkeypatch.setattr(deqa.data, "load_image", lambda path: pytest.fail(f"{path} was loaded again"))
    free = fast.pairs(b)
    assert fast.encoder.bytes == 0
    for k, v in want["inputs"].items():
        if k == "pixel_values":  # NaN stand-ins of the right shape: the feature cache answers by key
            assert v.shape == free["inputs"][k].shape and v.dtype == free["inputs"][k].dtype
            assert free["inputs"][k].isnan().all()
        else:
            assert torch.equal(v, free["inputs"][k]), k
    assert free["keys"] == first["keys"]
    Features.enabled = False  # the feature cache turned itself off: never placeholders
    monkeypatch.undo()
    assert torch.equal(fast.pairs(b)["inputs"]["pixel_values"], want["inputs"]["pixel_values"])


def test_image_free_batches_train_the_same_weights_bit_for_bit(data, tmp_path, monkeypatch):
    base, labels = data
    params = small_params(cache_vision_features=True)
    free = []
    assemble = deqa.data.EncodingCache._assemble

    def spy(self, entries, texts):
        out = assemble(self, entries, texts)
        free.append(out is not None and any(n not in e.tensors for e in entries for n in e.shapes))
        return out

    monkeypatch.setattr(deqa.data.EncodingCache, "_assemble", spy)
    train(params, labels, base, tmp_path / "free", tmp_path / "c1", None, progress=False)
    assert sum(free) >= len(free) // 2  # after the warm-up every training batch is image-free
    monkeypatch.setattr(deqa.data.EncodingCache, "_image_free", lambda self: False)
    train(params, labels, base, tmp_path / "held", tmp_path / "c2", None, progress=False)
    a, b = _adapter(tmp_path / "free"), _adapter(tmp_path / "held")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fast_collation_turns_off_when_it_cannot_match(data, monkeypatch, caplog):
    base, labels = data
    conv = Conversation(load_processor(base))
    ex = Examples.from_csv(labels / "train.csv")
    collate = Collator(conv, ex, 0)
    processor = collate.encoder.processor

    class Shifted:  # a processor whose batches are not its per-image encodings put together
        def __getattr__(self, name):
            return getattr(processor, name)

        def __call__(self, *args, images=None, **kwargs):
            out = processor(*args, images=images, **kwargs)
            if images is not None and len(images) > 1:
                out["pixel_values"] = out["pixel_values"] + 1
            return out

    collate.encoder.processor = Shifted()
    with caplog.at_level(logging.INFO, logger="deqa.data"):
        batch = collate.pairs([PairDataset(ex.dataset, 0)[i] for i in range(4)])
    assert collate.encoder.state == "off" and batch["keys"] is None
    assert any("fast collation off" in r.getMessage() for r in caplog.records)


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
