"""The model layer: level tokens, level positions under padding, module names, batch-norm."""

import pytest
import torch

from deqa import LEVELS
from deqa.modeling import Conversation, freeze_batchnorm, load_model, load_processor, resolve_modules
from deqa.prompts import QUESTIONS
from model_fixtures import build_base


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_base(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def conv(base):
    return Conversation(load_processor(base))


def test_level_ids_are_the_level_words(conv):
    words = [conv.tokenizer.decode([i]).strip() for i in conv.level_ids]
    assert words == list(LEVELS)
    assert len(set(conv.level_ids)) == 5


def test_multi_token_level_word_fails_clearly(base):
    with pytest.raises(ValueError, match=r"not (a )?single token"):
        Conversation(load_processor(base), levels=("bad", "poor", "fair", "good", "superlative"))


@pytest.mark.parametrize("side", ["right", "left"])
def test_level_position_in_padded_batches(conv, side):
    from PIL import Image

    levels = [0, 2, 4]
    texts = [
        conv.training_text(QUESTIONS[q], LEVELS[lv]) for q, lv in zip((0, 7, 2), levels, strict=False)
    ]  # lengths differ
    images = [Image.new("RGB", (64, 64), (i * 40, 90, 30)) for i in range(3)]
    conv.tokenizer.padding_side = side
    try:
        enc = conv.processor(text=texts, images=images, padding=True, return_tensors="pt")
    finally:
        conv.tokenizer.padding_side = "right"
    assert len({len(conv.tokenizer(t).input_ids) for t in texts}) > 1, "the texts must differ in length"
    pos = conv.level_positions(enc["input_ids"], enc["attention_mask"])
    for row, p in enumerate(pos.tolist()):
        assert enc["input_ids"][row, p + 1].item() == conv.level_ids[levels[row]]
    labels = conv.answer_labels(enc["input_ids"], enc["attention_mask"], pos)
    for row, p in enumerate(pos.tolist()):
        kept = labels[row] != -100
        assert not kept[p + 1], "the level token is not in CE"
        # the answer prefix and the end of turn are
        assert kept[p] and kept[p - conv.prefix_length + 1]
        assert not kept[: p - conv.prefix_length + 1].any()
    scoring = conv.processor(text=[conv.scoring_text()] * 2, images=images[:2], return_tensors="pt")
    sp = conv.level_positions(scoring["input_ids"], scoring["attention_mask"])
    assert sp.tolist() == [scoring["input_ids"].shape[1] - 1] * 2


def test_resolve_modules_on_llava(base):
    names = resolve_modules(load_model(base))
    assert names.vision == "model.vision_tower"
    assert names.projector == "model.multi_modal_projector"
    assert names.language == "model.language_model"
    assert names.lm_head == "lm_head"


def test_batchnorm_statistics_survive_reload_and_train_mode(base, tmp_path):
    from deqa.tiny import MobileNetV2VisionConfig, MobileNetV2VisionModel, load_imagenet_weights

    ref = MobileNetV2VisionModel(MobileNetV2VisionConfig(image_size=64, tokens="pooled"))
    load_imagenet_weights(ref)
    model = load_model(base)
    tower = model.model.vision_tower
    for (name, buf), (_, ref_buf) in zip(tower.named_buffers(), ref.named_buffers(), strict=False):
        assert torch.equal(buf, ref_buf), f"{name} changed by save/reload"
    model.save_pretrained(tmp_path / "again")
    from deqa.modeling import load_processor as lp

    lp(base).save_pretrained(tmp_path / "again")
    again = load_model(tmp_path / "again")
    x = torch.rand(2, 3, 64, 64)
    model.train()
    freeze_batchnorm(tower)
    before = tower.features[0][1].running_mean.clone()
    tower(x)
    assert torch.equal(tower.features[0][1].running_mean, before), "frozen batch-norm stats moved"
    with torch.no_grad():
        a = tower(x).last_hidden_state
        b = again.model.vision_tower(x).last_hidden_state
    assert torch.equal(a, b)
    # and the features depend on the image (a reset tower maps everything alike)
    assert (a[0] - a[1]).abs().max() > 1e-3


def test_standardisation_is_calibrated_saved_and_reloaded(tmp_path):
    from deqa.tiny import build_tiny_llava, calibration_crops

    path = build_tiny_llava(
        tmp_path / "std",
        image_size=64,
        vision_tokens="pooled",
        hidden_size=32,
        intermediate_size=64,
        layers=1,
        heads=2,
        seed=0,
        standardise=True,
    )
    tower = load_model(path).model.vision_tower
    assert tower.config.standardise
    assert not torch.equal(tower.feature_std, torch.ones_like(tower.feature_std)), "calibration was lost on reload"
    with torch.no_grad():
        tokens = tower(calibration_crops(64)).last_hidden_state[:, 0]
    # on its own calibration photos the standardised token has zero mean and unit std per feature
    assert tokens.mean(0).abs().max() < 1e-3
    assert (tokens.std(0) - 1).abs().max() < 1e-2
