"""Real VLM families (tiny random weights): LLaVA, Qwen2-VL, Idefics3 load, train and score.

Each family is built offline from its own config classes (:mod:`family_fixtures`), saved, and
from then on seen only through ``deqa.modeling.load_model`` / ``load_processor``. The same
generic code must then resolve its modules, chat template, level tokens and level position,
restrict LoRA to its language model, train a few steps with the DeQA losses and score images
batch-invariantly. The shipped recipes and accelerate configs are checked here too.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from deqa import LEVELS
from deqa.modeling import Conversation, load_model, load_processor, resolve_modules
from deqa.prompts import QUESTIONS
from deqa.training import prepare_model, train
from family_fixtures import BUILDERS, FAMILIES
from model_fixtures import build_labels, small_params

ROOT = Path(__file__).resolve().parents[1]

EXPECTED = {
    "llava": dict(
        model_class="LlavaForConditionalGeneration",
        processor="LlavaProcessor",
        vision="model.vision_tower",
        projector="model.multi_modal_projector",
        language="model.language_model",
        stored=True,
    ),
    "qwen2_vl": dict(
        model_class="Qwen2VLForConditionalGeneration",
        processor="Qwen2VLProcessor",
        vision="model.visual",
        projector="model.visual.merger",
        language="model.language_model",
        stored=False,
    ),
    "idefics3": dict(
        model_class="Idefics3ForConditionalGeneration",
        processor="Idefics3Processor",
        vision="model.vision_model",
        projector="model.connector",
        language="model.text_model",
        stored=True,
    ),
}


def _torchvision() -> bool:
    from transformers.utils import is_torchvision_available

    return is_torchvision_available()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Labels (48 px squares) plus scoring images of several shapes (the padding paths)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("families")
    labels = build_labels(root, n_train=8, n_val=4, size=48)
    squares = sorted((root / "images").glob("*.png"))
    shaped = root / "shaped"
    shaped.mkdir()
    for i, (w, h) in enumerate([(48, 48), (64, 40), (40, 64), (72, 56), (30, 30)]):
        with Image.open(squares[i]) as im:
            im.convert("RGB").resize((w, h)).save(shaped / f"s{i}.png")
    return {
        "root": root,
        "labels": labels,
        "images": [str(p) for p in squares[:3]] + sorted(str(p) for p in shaped.glob("*.png")),
    }


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, data):
    """Build the family's base checkpoint, train it 3 steps (bf16 not on CPU; checkpointing on)."""
    name = request.param
    root = data["root"] / name
    base = BUILDERS[name](root / "base")
    params = small_params(max_steps=3, epochs=3, gradient_checkpointing=True)
    summary = train(params, data["labels"], base, root / "model", root / "ckpt", None, progress=False)
    return {"name": name, "base": base, "model": root / "model", "summary": summary, "params": params, **EXPECTED[name]}


# ---------------------------------------------------------------------------------------------
# loading, modules, chat template and level position
# ---------------------------------------------------------------------------------------------
def test_loads_through_the_auto_classes(family):
    import transformers

    model = load_model(family["base"])
    processor = load_processor(family["base"])
    assert type(model).__name__ == family["model_class"]
    assert isinstance(processor, getattr(transformers, family["processor"]))
    names = resolve_modules(model)
    assert (names.vision, names.projector, names.language, names.lm_head) == (
        family["vision"],
        family["projector"],
        family["language"],
        "lm_head",
    )


def test_level_position_and_answer_labels(family, data):
    from PIL import Image

    conv = Conversation(load_processor(family["base"]))
    assert [conv.tokenizer.decode([i]).strip() for i in conv.level_ids] == list(LEVELS)
    levels = [0, 2, 4, 1]
    texts = [conv.training_text(QUESTIONS[q], LEVELS[lv]) for q, lv in zip((0, 7, 2, 5), levels, strict=False)]
    images = [Image.open(p).convert("RGB") for p in data["images"][3:7]]  # different shapes
    enc = conv.processor(text=texts, images=images, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert (mask == 0).any(), "rows of different lengths: the batch is padded"
    pos = conv.level_positions(ids, mask)
    for row, p in enumerate(pos.tolist()):
        # the position predicts the level word and holds the token before it ("is")
        assert ids[row, p + 1].item() == conv.level_ids[levels[row]]
        assert ids[row, p].item() == conv.anchor[-1]
        assert (
            conv.tokenizer.decode(ids[row, p - conv.prefix_length + 1 : p + 1]).strip() == "The quality of the image is"
        )
    labels = conv.answer_labels(ids, mask, pos)
    for row, p in enumerate(pos.tolist()):
        kept = labels[row] != -100
        assert not kept[p + 1] and kept[p] and kept[p - conv.prefix_length + 1]
        assert not kept[: p - conv.prefix_length + 1].any()
        assert not (kept & (mask[row] == 0)).any()
    scoring = conv.processor(text=[conv.scoring_text()] * 4, images=images, padding=True, return_tensors="pt")
    sp = conv.level_positions(scoring["input_ids"], scoring["attention_mask"])
    last = scoring["attention_mask"].sum(1) - 1  # right padding: the last real token
    assert sp.tolist() == last.tolist()


def test_lora_only_in_the_language_model(family):
    model, _names = prepare_model(load_model(family["base"]), family["params"])
    language = "base_model.model." + family["language"] + "."
    lora = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert lora and all(n.startswith(language) for n in lora), lora[:3]
    assert {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n in lora if "lora_A" in n} == {"q_proj", "v_proj"}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
    projector = "base_model.model." + family["projector"] + "."
    assert any(n.startswith(projector) for n in trainable) and any(".lm_head." in n for n in trainable)
    vision = "base_model.model." + family["vision"] + "."
    # nothing of the vision tower trains, except a projector that the family keeps inside it
    assert not [n for n in trainable if n.startswith(vision) and not n.startswith(projector)]


# ---------------------------------------------------------------------------------------------
# training and scoring
# ---------------------------------------------------------------------------------------------
def test_training_updates_adapters_and_projector(family):
    from safetensors.torch import load_file

    assert family["summary"]["steps"] == 3 and not family["summary"]["interrupted"]
    adapter = load_file(str(family["model"] / "adapter_model.safetensors"))
    base = load_model(family["base"]).state_dict()
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())  # B starts at zero
    projector = {k: v for k, v in adapter.items() if "." + family["projector"].split(".", 1)[1] + "." in k}
    assert projector
    changed = 0
    for k, v in projector.items():
        ref = k.replace("base_model.model.", "", 1).replace(".modules_to_save.default", "")
        changed += not torch.equal(v, base[ref])
    assert changed, "the projector was not trained (a feature cache must not freeze it)"


def test_scores_are_distributions_and_batch_invariant(family, data):
    from deqa.scoring import Scorer

    scorer = Scorer.from_pretrained(family["model"])
    one = scorer.score(data["images"], batch_size=1)
    four = scorer.score(data["images"], batch_size=4)
    assert np.isfinite(one.mean).all() and np.isfinite(one.std).all()
    assert ((one.mean >= 1) & (one.mean <= 5)).all() and (one.std >= 0).all()
    assert np.allclose(one.probs.sum(1), 1, atol=1e-6)
    assert np.abs(one.mean - four.mean).max() <= 1e-4
    assert np.abs(one.probs - four.probs).max() <= 1e-4


def test_stored_features_are_exact_or_off(family, data, tmp_path, caplog):
    """Where the tower's outputs split per image training uses them and gets the weights of
    training with the tower running (to float rounding); elsewhere they are not stored (logged)."""
    from safetensors.torch import load_file

    out = {}
    for stored in (True, False):
        with caplog.at_level(logging.INFO, logger="deqa"):
            caplog.clear()
            train(
                small_params(max_steps=4, epochs=2),
                data["labels"],
                family["base"],
                tmp_path / f"m{stored}",
                tmp_path / f"c{stored}",
                None,
                progress=False,
                features=None if stored else False,
            )
        out[stored] = load_file(str(tmp_path / f"m{stored}" / "adapter_model.safetensors"))
        if stored:
            off = [r.getMessage() for r in caplog.records if "vision features not stored" in r.getMessage()]
            assert bool(off) == (not family["stored"]), off
            assert bool(family["stored"]) == any("vision features of" in r.getMessage() for r in caplog.records)
    for k in out[True]:
        torch.testing.assert_close(out[True][k], out[False][k], rtol=1e-4, atol=1e-5)


def _tower_weights(model_dir: Path, projector: str) -> dict[str, torch.Tensor]:
    """The vision tower's weights as deqa score loads the model (adapter merged), projector left out."""
    from deqa.modeling import get_module
    from deqa.scoring import Scorer

    model = Scorer.from_pretrained(model_dir).model
    model = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    vision = resolve_modules(model).vision
    inner = projector[len(vision) + 1 :] + "." if projector.startswith(vision + ".") else None
    state = get_module(model, vision).state_dict()
    return {k: v.clone() for k, v in state.items() if not (inner and k.startswith(inner))}


def test_training_the_vision_tower_too(family, data, tmp_path):
    """``train.train_vision`` trains the tower, saves it whole (a projector inside it goes with it)
    and the scorer reloads the trained tower; without it the tower stays the base's."""
    from deqa.scoring import Scorer

    train(
        small_params(max_steps=1, epochs=1, train_vision=True),
        data["labels"],
        family["base"],
        tmp_path / "m",
        tmp_path / "c",
        None,
        progress=False,
    )
    base = {k: v for k, v in load_model(family["base"]).state_dict().items()}
    names = resolve_modules(load_model(family["base"]))
    prefix = names.vision + "."
    base_tower = {k[len(prefix) :]: v for k, v in base.items() if k.startswith(prefix)}
    trained = _tower_weights(tmp_path / "m", names.projector)
    frozen = _tower_weights(family["model"], names.projector)
    assert trained.keys() == frozen.keys() and trained.keys() <= base_tower.keys()
    assert any(not torch.equal(trained[k], base_tower[k]) for k in trained)  # trained, saved and reloaded
    assert all(torch.equal(frozen[k], base_tower[k]) for k in frozen)  # the fixture trained without it
    res = Scorer.from_pretrained(tmp_path / "m").score(data["images"][:2])
    assert np.isfinite(res.mean).all()


@pytest.mark.parametrize("name", ["llava", "qwen2_vl"])
def test_half_precision_checkpoint_trains_in_fp32(name, data, tmp_path):
    """A bf16 checkpoint under bf16 autocast (the recipes): what trains is kept and saved in fp32."""
    from accelerate.state import AcceleratorState
    from safetensors.torch import load_file

    from deqa.scoring import Scorer

    base = BUILDERS[name](tmp_path / "base")
    load_model(base).to(torch.bfloat16).save_pretrained(base)
    assert load_model(base).dtype == torch.bfloat16
    AcceleratorState._reset_state(True)  # one mixed-precision mode per process, otherwise
    try:
        train(
            small_params(max_steps=2, epochs=1, mixed_precision="bf16"),
            data["labels"],
            base,
            tmp_path / "m",
            tmp_path / "c",
            None,
            progress=False,
        )
    finally:
        AcceleratorState._reset_state(True)
    adapter = load_file(str(tmp_path / "m" / "adapter_model.safetensors"))
    assert {v.dtype for v in adapter.values()} == {torch.float32}
    res = Scorer.from_pretrained(tmp_path / "m", dtype="bfloat16").score(data["images"][:2])
    assert np.isfinite(res.mean).all() and np.allclose(res.probs.sum(1), 1, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Qwen2-VL's processor without torchvision
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qwen_base(data):
    return BUILDERS["qwen2_vl"](data["root"] / "qwen_processor" / "base")


@pytest.mark.skipif(_torchvision(), reason="torchvision is installed: the full processor loads")
def test_qwen2_vl_processor_loads_without_its_video_part(qwen_base, caplog):
    from transformers import AutoProcessor, Qwen2VLProcessor

    # the stock loader cannot build the video processor here, so not the processor either
    with pytest.raises((ImportError, OSError)):
        AutoProcessor.from_pretrained(qwen_base)
    with caplog.at_level(logging.WARNING, logger="deqa.modeling"):
        processor = load_processor(qwen_base)
    assert any("torchvision" in r.getMessage() and "video" in r.getMessage() for r in caplog.records)
    assert isinstance(processor, Qwen2VLProcessor) and type(processor).__name__ == "Qwen2VLProcessor"
    assert not hasattr(processor, "video_processor")
    assert "image_grid_thw" in processor(
        text=["<|vision_start|><|image_pad|><|vision_end|>hi"],
        images=[np.zeros((56, 56, 3), np.uint8)],
        return_tensors="pt",
    )


def test_qwen2_vl_processor_saves_a_loadable_folder(qwen_base, tmp_path):
    import json

    processor = load_processor(qwen_base)
    processor.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "processor_config.json").read_text())["processor_class"] == "Qwen2VLProcessor"
    # where torchvision is installed, the video processor is built from this file (as on the hub)
    legacy = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert legacy["image_processor_type"].startswith("Qwen2VLImageProcessor")
    again = load_processor(tmp_path)
    assert type(again).__name__ == "Qwen2VLProcessor" and again.chat_template == processor.chat_template


@pytest.mark.skipif(_torchvision(), reason="torchvision is installed")
def test_qwen2_vl_processor_failure_names_torchvision(qwen_base, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(qwen_base, broken)
    for name in ("processor_config.json", "preprocessor_config.json"):  # no image processor left
        (broken / name).unlink()
    with pytest.raises(RuntimeError, match="torchvision"):
        load_processor(broken)


def test_other_families_load_without_notes(data, caplog):
    base = BUILDERS["idefics3"](data["root"] / "quiet" / "idefics3")
    with caplog.at_level(logging.WARNING, logger="deqa.modeling"):
        load_processor(base)
    assert not caplog.records


# ---------------------------------------------------------------------------------------------
# shipped configs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", ["qwen2-vl-2b.yaml", "llava-1.5-7b.yaml"])
def test_recipes_are_valid_params(recipe):
    from deqa.config import flat_keys, load_params, to_dict

    path = ROOT / "configs" / "recipes" / recipe
    params = load_params(path)
    assert params.model.base != "tiny" and not params.model.trust_remote_code
    assert params.train.mixed_precision == "bf16" and params.train.gradient_checkpointing
    assert params.lora.train_lm_head is False
    # Qwen2-VL's projector sits inside its vision module: nothing to store; LLaVA's CLIP tower is frozen
    assert params.features.enabled == (recipe == "llava-1.5-7b.yaml")
    assert set(params.lora.target_modules) >= {"q_proj", "v_proj"}
    # a full params.yaml variant: every key spelled out, as in the committed params.yaml
    full = flat_keys(yaml.safe_load(path.read_text()))
    assert set(full) == set(flat_keys(yaml.safe_load((ROOT / "params.yaml").read_text())))
    assert to_dict(params)["loss"] == to_dict(load_params(ROOT / "params.yaml"))["loss"]


@pytest.mark.parametrize(
    "name, kind, stage", [("ddp", "MULTI_GPU", None), ("zero2", "DEEPSPEED", 2), ("zero3", "DEEPSPEED", 3)]
)
def test_accelerate_configs(name, kind, stage):
    cfg = yaml.safe_load((ROOT / "configs" / "accelerate" / f"{name}.yaml").read_text())
    assert cfg["distributed_type"] == kind and cfg["mixed_precision"] == "bf16"
    assert cfg["compute_environment"] == "LOCAL_MACHINE" and cfg["num_processes"] >= 1
    if stage is not None:
        ds = cfg["deepspeed_config"]
        assert ds["zero_stage"] == stage
        # left out on purpose: accelerate then takes deqa's train.grad_accum ("auto")
        assert "gradient_accumulation_steps" not in ds
        assert ds["gradient_clipping"] == 1.0  # DeepSpeed clips; train.max_grad_norm does not apply
        if stage == 3:
            assert ds["zero3_save_16bit_model"] is True
