"""The tiny model's MobileNetV2 tower: the multistage read-out options and micro-batched inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deqa.tiny import (
    LAYER_SETS,
    STAGE_ENDS,
    STATS,
    MobileNetV2VisionConfig,
    MobileNetV2VisionModel,
    build_tiny_llava,
    load_imagenet_weights,
)


def _tower(**kwargs) -> MobileNetV2VisionModel:
    tower = MobileNetV2VisionModel(MobileNetV2VisionConfig(image_size=64, **kwargs))
    load_imagenet_weights(tower)
    return tower.eval()


def _block_outputs(tower, x) -> list[np.ndarray]:
    """Every block output, caught by forward hooks (independent of the token code)."""
    outs = []
    hooks = [
        layer.register_forward_hook(lambda m, i, o: outs.append(o.detach().double().numpy()))
        for layer in tower.features
    ]
    with torch.no_grad():
        tower.features(x)
    for h in hooks:
        h.remove()
    return outs


def _reference(outs: list[np.ndarray], stats, layers) -> np.ndarray:
    cols = {name: [] for name in stats}
    for i in layers:
        o = outs[i]
        b, c, h, w = o.shape
        flat = o.reshape(b, c, -1)
        mean, std = flat.mean(-1), flat.std(-1)
        cells = o.reshape(b, c, 4, h // 4, 4, w // 4).mean(axis=(3, 5)).reshape(b, c, 16)
        value = {
            "mean": mean,
            "std": std,
            "max": flat.max(-1),
            "gstd": cells.std(-1),
            "skew": ((flat - mean[..., None]) ** 3).mean(-1) / np.maximum(std, 1e-6) ** 3,
        }
        for name in stats:
            cols[name].append(value[name])
    return np.concatenate([v for name in stats for v in cols[name]], axis=1)


@pytest.fixture(scope="module")
def images():
    return torch.randn(6, 3, 128, 128, generator=torch.Generator().manual_seed(0))


def test_default_token_is_stage_mean_and_std(images):
    tower = _tower()
    assert tower.config.hidden_size == 3984
    token = tower(images).last_hidden_state
    assert token.shape == (6, 1, 3984)
    ref = _reference(_block_outputs(tower, images), ("mean", "std"), STAGE_ENDS)
    np.testing.assert_allclose(token[:, 0].detach().numpy(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stats,layers", [(STATS, "all"), (("mean", "gstd"), "stages"), (("std",), "all")])
def test_richer_tokens_hold_the_named_statistics(images, stats, layers):
    tower = _tower(stats=stats, layers=layers)
    channels = [
        tower.features[i].conv[-1].num_features if i not in (0, 18) else tower.features[i][1].num_features
        for i in LAYER_SETS[layers]
    ]
    assert tower.config.hidden_size == len(stats) * sum(channels)
    token = tower(images).last_hidden_state[:, 0].detach().numpy()
    ref = _reference(_block_outputs(tower, images), stats, LAYER_SETS[layers])
    assert token.shape == ref.shape
    np.testing.assert_allclose(token, ref, rtol=1e-3, atol=1e-3)


def test_micro_batches_give_the_scores_of_single_images(images):
    tower = _tower(stats=("mean", "std", "skew"), micro_batch=4)
    with torch.no_grad():
        whole = tower(images).last_hidden_state
        single = torch.cat([tower(images[i : i + 1]).last_hidden_state for i in range(len(images))])
        tower.config.micro_batch = 0
        unsplit = tower(images).last_hidden_state
    torch.testing.assert_close(whole, single, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(whole, unsplit, rtol=1e-4, atol=1e-4)


def test_bad_read_out_options_fail_clearly():
    with pytest.raises(ValueError, match="stats"):
        MobileNetV2VisionConfig(stats=("mean", "median"))
    with pytest.raises(ValueError, match="stats"):
        MobileNetV2VisionConfig(stats=("mean", "mean"))
    with pytest.raises(ValueError, match="layers"):
        MobileNetV2VisionConfig(layers="last")
    with pytest.raises(ValueError, match="micro_batch"):
        MobileNetV2VisionConfig(micro_batch=-1)


def test_built_model_keeps_the_read_out_through_save_and_reload(tmp_path):
    from transformers import AutoModelForImageTextToText

    path = build_tiny_llava(
        tmp_path / "m",
        image_size=64,
        vision_tokens="multistage",
        hidden_size=32,
        intermediate_size=64,
        layers=1,
        heads=2,
        seed=0,
        standardise=True,
        vision_stats=("mean", "std", "gstd"),
        vision_layers="all",
    )
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    vision = model.model.vision_tower
    assert vision.config.stats == ["mean", "std", "gstd"] and vision.config.layers == "all"
    assert vision.config.hidden_size == 3 * 2816 == model.model.multi_modal_projector.linear_1.in_features
    assert float(vision.feature_std.std()) > 0  # the standardisation was calibrated for this token
