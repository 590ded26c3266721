"""Tiny random-weight checkpoints of real VLM families, built offline from their config classes.

Each builder writes an ordinary Hugging Face checkpoint directory (model + processor with a chat
template in the family's own style) that the code under test then loads only through
``deqa.modeling.load_model`` / ``load_processor`` (``AutoModelForImageTextToText`` /
``AutoProcessor``), exactly as it would load a downloaded checkpoint:

- ``llava``: ``LlavaForConditionalGeneration`` (CLIP vision + Llama text), ``LlavaProcessor`` with
  ``CLIPImageProcessorPil``, a SentencePiece-style (Metaspace) BPE tokenizer and llava-1.5's
  ``USER: <image>\\n... ASSISTANT:`` template;
- ``qwen2_vl``: ``Qwen2VLForConditionalGeneration`` (flattened-patch vision tower with its merger,
  M-RoPE text model), ``Qwen2VLProcessor`` with ``Qwen2VLImageProcessorPil`` and **no video
  processor** (the Qwen2-VL video processor imports torchvision), a byte-level BPE tokenizer and
  the ``<|im_start|>`` template;
- ``idefics3``: ``Idefics3ForConditionalGeneration`` (SigLIP-style vision, pixel-shuffle connector,
  Llama text), ``Idefics3Processor`` with ``Idefics3ImageProcessorPil`` (no image splitting), a
  byte-level BPE tokenizer and the ``User:<image>...<end_of_utterance>\\nAssistant:`` template.

Tokenizers are tiny BPEs trained with ``tokenizers`` on the prompts and answers, so every level
word is one token as in the real vocabularies (``Ġgood`` / ``▁good``).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

torch.set_num_threads(1)

from deqa import LEVELS  # noqa: E402
from deqa.modeling import without_video  # noqa: E402
from deqa.prompts import ANSWER_TEMPLATE, QUESTIONS  # noqa: E402

FAMILIES = ("llava", "qwen2_vl", "idefics3")

LLAVA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% if message['role'] == 'assistant' %}{{ '</s>' }}{% else %}{{ ' ' }}{% endif %}"
    "{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
QWEN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IDEFICS3_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def _corpus() -> list[str]:
    answers = [ANSWER_TEMPLATE.format(level=lv) for lv in LEVELS]
    extra = ["You are a helpful assistant.", "USER: ASSISTANT: User: Assistant: system user assistant"]
    replies = [f"{role}: {a}" for role in ("ASSISTANT", "Assistant") for a in answers]
    return (QUESTIONS + answers + replies + extra) * 20


def build_bpe_tokenizer(
    style: str,
    specials: list[str],
    *,
    pad: str,
    eos: str,
    bos: str | None = None,
    unk: str | None = None,
    vocab_size: int = 600,
    chat_template: str | None = None,
    extra: dict | None = None,
):
    """A small BPE in the style of a real family: ``bytelevel`` (GPT-2/Qwen/Llama-3) or ``metaspace`` (Llama)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if style == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    elif style == "metaspace":
        tok = Tokenizer(models.BPE(unk_token=unk))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
                pre_tokenizers.Punctuation(behavior="isolated"),
            ]
        )
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = []
    else:  # pragma: no cover
        raise ValueError(style)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    kwargs = dict(pad_token=pad, eos_token=eos)
    if bos:
        kwargs["bos_token"] = bos
    if unk:
        kwargs["unk_token"] = unk
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs, **(extra or {}))
    tokenizer.add_special_tokens({"additional_special_tokens": [s for s in specials if s not in (pad, eos, bos, unk)]})
    tokenizer.padding_side = "right"
    if chat_template:
        tokenizer.chat_template = chat_template
    return tokenizer


def _save(model, processor, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out


def build_llava(out: Path, image_size: int = 32) -> Path:
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        set_seed,
    )

    set_seed(0)
    tokenizer = build_bpe_tokenizer(
        "metaspace",
        ["<unk>", "<s>", "</s>", "<pad>", "<image>"],
        pad="<pad>",
        eos="</s>",
        bos="<s>",
        unk="<unk>",
        chat_template=LLAVA_TEMPLATE,
        extra={"extra_special_tokens": {"image_token": "<image>"}},
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=8,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    model = LlavaForConditionalGeneration(config)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    )
    return _save(model, processor, Path(out))


def build_qwen2_vl(out: Path, image_size: int = 56) -> Path:
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
        Qwen2VLProcessor,
        set_seed,
    )

    set_seed(0)
    specials = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ]
    tokenizer = build_bpe_tokenizer(
        "bytelevel", specials, pad="<|endoftext|>", eos="<|im_end|>", chat_template=QWEN_TEMPLATE
    )
    ids = {s: tokenizer.convert_tokens_to_ids(s) for s in specials}
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=1,
        embed_dim=32,
        hidden_size=64,
        num_heads=2,
        mlp_ratio=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    model = Qwen2VLForConditionalGeneration(config)
    # 2x2 to 3x3 merged tokens per image: the token count follows the image's shape, as in Qwen2-VL
    image_processor = Qwen2VLImageProcessorPil(size={"shortest_edge": image_size**2, "longest_edge": 84 * 84})
    # the real processor class; without torchvision it cannot hold its video processor
    processor = without_video(Qwen2VLProcessor)(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_TEMPLATE
    )
    return _save(model, processor, Path(out))


def build_idefics3(out: Path, image_size: int = 32) -> Path:
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        set_seed,
    )

    set_seed(0)
    specials = [
        "<|end_of_text|>",
        "<|begin_of_text|>",
        "<fake_token_around_image>",
        "<image>",
        "<end_of_utterance>",
        "<global-img>",
    ]
    tokenizer = build_bpe_tokenizer(
        "bytelevel",
        specials,
        pad="<|end_of_text|>",
        eos="<|end_of_text|>",
        bos="<|begin_of_text|>",
        chat_template=IDEFICS3_TEMPLATE,
    )
    patch, scale = 8, 2
    text = dict(
        model_type="llama",
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
    )
    config = Idefics3Config(
        text_config=text,
        vision_config=vision,
        scale_factor=scale,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=False,
    )
    model = Idefics3ForConditionalGeneration(config)
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": image_size}, max_image_size={"longest_edge": image_size}, do_image_splitting=False
    )
    seq_len = (image_size // patch) ** 2 // scale**2
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=seq_len, chat_template=IDEFICS3_TEMPLATE
    )
    return _save(model, processor, Path(out))


BUILDERS = {"llava": build_llava, "qwen2_vl": build_qwen2_vl, "idefics3": build_idefics3}
