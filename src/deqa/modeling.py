"""The model layer: any Hugging Face image-text-to-text checkpoint, seen through DeQA's eyes.

- :func:`load_model` / :func:`load_processor` load a local checkpoint through
  ``AutoModelForImageTextToText`` / ``AutoProcessor`` (no remote code unless asked for).
- :class:`Conversation` renders the question/answer with the processor's own chat template,
  finds the five level-token ids (failing clearly when a level word is not one token), and finds
  the **level position** (the position whose next-token logits predict the level word) in padded
  batches, whichever side the padding is on.
- :func:`resolve_modules` finds the language model, the vision tower and the projector of a model
  by the attribute names that transformers' VLM families use, so that training never hard-codes a
  module path.

The embedded default (:mod:`deqa.tiny`) is just one more local checkpoint here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import deqa.tiny  # noqa: F401  (registers the MobileNetV2 tower with the Auto classes)
from deqa import LEVELS
from deqa.prompts import ANSWER_PREFIX, ANSWER_TEMPLATE, SCORING_QUESTION

BASE_POINTER = "deqa_base.json"
MODEL_CARD = "deqa_model.json"
"""Written beside a trained model: base checkpoint, levels, level-token ids, params."""
log = logging.getLogger(__name__)


def resolve_checkpoint(path: str | Path) -> Path:
    """The directory holding the weights: ``path`` itself, or where its ``deqa_base.json`` points.

    The ``base_model`` stage writes the embedded default into ``models/base/``; for a user's own
    checkpoint it writes only ``models/base/deqa_base.json`` with the checkpoint's ``path``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model directory {path} does not exist")
    pointer = path / BASE_POINTER
    if not (path / "config.json").exists() and pointer.exists():
        target = json.loads(pointer.read_text()).get("path")
        if not target:
            raise FileNotFoundError(f"{pointer} names no checkpoint path")
        return resolve_checkpoint(target)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a Hugging Face checkpoint (no config.json)")
    return path


def _torchvision_available() -> bool:
    from transformers.utils import is_torchvision_available

    return is_torchvision_available()


def without_video(processor_class: type) -> type:
    """``processor_class`` minus its video sub-processor, for image-only use without torchvision.

    Some families' processors (Qwen2-VL, Qwen2.5-VL, ...) hold a video processor whose class
    needs torchvision, so without it they can neither be built nor loaded, even for images. The
    returned subclass keeps the family's class name (so what it saves loads as the original
    processor where torchvision is installed) and every image/text behaviour; it just has no
    ``video_processor``. Processors without a video part are returned unchanged.
    """
    attributes = [a for a in processor_class.get_attributes() if "video" not in a]
    if attributes == list(processor_class.get_attributes()):
        return processor_class

    def save_pretrained(self, save_directory, *args, **kwargs):
        out = processor_class.save_pretrained(self, save_directory, *args, **kwargs)
        # Where a video processor has no config of its own, transformers builds it from the image
        # processor's legacy ``preprocessor_config.json`` (as in the hub's Qwen2-VL checkpoints):
        # writing that file keeps the saved folder loadable *with* its video part elsewhere.
        if hasattr(self, "image_processor"):
            self.image_processor.to_json_file(str(Path(save_directory) / "preprocessor_config.json"))
        return out

    return type(
        processor_class.__name__,
        (processor_class,),
        {
            "__module__": processor_class.__module__,
            "__doc__": f"{processor_class.__name__} without its video processor (torchvision is not installed).",
            "get_attributes": classmethod(lambda cls: list(attributes)),
            "save_pretrained": save_pretrained,
            "deqa_without_video": True,
        },
    )


def _processor_class(path: Path, trust_remote_code: bool) -> type | None:
    """The processor class a checkpoint's files name (``processor_class``), else its model type's."""
    import transformers

    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        f = path / name
        if f.exists():
            cls = json.loads(f.read_text()).get("processor_class")
            if cls and hasattr(transformers, cls):
                return getattr(transformers, cls)
    try:
        from transformers import AutoConfig
        from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

        model_type = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code).model_type
        cls = PROCESSOR_MAPPING_NAMES.get(model_type)
        return getattr(transformers, cls) if cls and hasattr(transformers, cls) else None
    except Exception:
        return None


def load_processor(path: str | Path, trust_remote_code: bool = False):
    """The processor saved in ``path`` (a checkpoint or a trained adapter folder).

    Where the family's processor has a video part that needs torchvision and torchvision is not
    installed (Qwen2-VL beside a CPU-only torch, for one), the processor is loaded without its
    video processor (images and text work as usual) and a warning says so; anything else that
    stops ``AutoProcessor`` is raised, with the torchvision requirement named where it applies.
    """
    from transformers import AutoProcessor

    path = Path(path)
    has_own = any(path.glob("*processor_config.json")) or (path / "tokenizer_config.json").exists()
    src = path if has_own else resolve_checkpoint(path)
    if _torchvision_available():
        return AutoProcessor.from_pretrained(src, trust_remote_code=trust_remote_code)
    cls = _processor_class(src, trust_remote_code)
    if cls is not None and without_video(cls) is not cls:
        log.warning(
            "torchvision is not installed: loading %s from %s without its video processor "
            "(images only; install torchvision for video input)",
            cls.__name__,
            src,
        )
        try:
            return without_video(cls).from_pretrained(src, trust_remote_code=trust_remote_code)
        except Exception as exc:
            raise RuntimeError(
                f"cannot load the {cls.__name__} of {src}: its video processor needs torchvision, which is "
                f"not installed, and loading it without the video part failed too ({exc}); install "
                "torchvision matching your torch build"
            ) from exc
    try:
        return AutoProcessor.from_pretrained(src, trust_remote_code=trust_remote_code)
    except Exception as exc:
        if "torchvision" in str(exc).lower():
            raise RuntimeError(
                f"cannot load the processor of {src}: it needs torchvision, which is not installed ({exc})"
            ) from exc
        raise


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """Hide the ``FutureWarning`` peft 0.21 raises on reading transformers' deprecated
    ``is_gradient_checkpointing`` alias (nothing a user can act on)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def load_model(
    path: str | Path,
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
    device: str | torch.device | None = None,
):
    """Load an image-text-to-text model in eval mode (frozen batch-norm statistics included)."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(
        resolve_checkpoint(path),
        dtype=dtype if dtype is not None else "auto",
        trust_remote_code=trust_remote_code,
    )
    if device is not None:
        model.to(device)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# modules per family
# ---------------------------------------------------------------------------------------------
_VISION = ("vision_tower", "visual", "vision_model", "vision_encoder")
_PROJECTOR = ("multi_modal_projector", "connector", "mm_projector", "visual.merger", "multimodal_projector")
_LANGUAGE = ("language_model", "text_model", "llm")


@dataclass
class ModuleNames:
    """Dotted names (as in ``model.named_modules()``) of a VLM's parts."""

    vision: str
    projector: str | None
    language: str
    lm_head: str | None


def _find(model: nn.Module, candidates: tuple[str, ...]) -> str | None:
    modules = dict(model.named_modules())
    for prefix in ("model.", "", "base_model.model.model.", "base_model.model."):
        for name in candidates:
            if prefix + name in modules:
                return prefix + name
    return None


def resolve_modules(model: nn.Module) -> ModuleNames:
    """Find the vision tower, projector, language model and LM head of a VLM."""
    vision = _find(model, _VISION)
    language = _find(model, _LANGUAGE)
    if vision is None or language is None:
        raise ValueError(
            f"cannot find the vision tower ({' / '.join(_VISION)}) or the language model "
            f"({' / '.join(_LANGUAGE)}) in {type(model).__name__}; this model family is not supported yet"
        )
    projector = _find(model, _PROJECTOR)
    lm_head = _find(model, ("lm_head",))
    return ModuleNames(vision=vision, projector=projector, language=language, lm_head=lm_head)


def get_module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def freeze_batchnorm(module: nn.Module) -> None:
    """Keep batch-norm layers of a frozen module in eval mode (running stats untouched)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


# ---------------------------------------------------------------------------------------------
# conversation, level tokens and the level position
# ---------------------------------------------------------------------------------------------
class Conversation:
    """Prompts, level-token ids and level positions for one processor (any VLM family)."""

    def __init__(self, processor, levels: tuple[str, ...] = LEVELS):
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.levels = tuple(levels)
        self.prompt_text = self.prompt(SCORING_QUESTION)
        probes = [
            self.tokenizer(self.prompt_text + self.answer(lv), add_special_tokens=False).input_ids for lv in self.levels
        ]
        lengths = {len(p) for p in probes}
        diff = [i for i in range(min(lengths)) if len({p[i] for p in probes}) > 1]
        if len(lengths) != 1 or len(diff) != 1:
            bad = [lv for lv, p in zip(self.levels, probes, strict=False) if len(p) != len(probes[2])] or list(
                self.levels
            )
            raise ValueError(
                f"the level word(s) {', '.join(repr(b) for b in bad)} are not single tokens for this "
                f"tokenizer ({type(self.tokenizer).__name__}); DeQA-Score reads one token per level"
            )
        pos = diff[0]
        self.level_ids = [p[pos] for p in probes]
        for lv, tid in zip(self.levels, self.level_ids, strict=False):
            if self.tokenizer.decode([tid]).strip().lower() != lv:
                raise ValueError(f"the level word {lv!r} is not a single token for this tokenizer")
        # the tokens right before the level word, as they appear in context
        self.anchor = list(probes[0][max(0, pos - 3) : pos])
        prompt_len = len(self.tokenizer(self.prompt_text, add_special_tokens=False).input_ids)
        self.prefix_length = pos - prompt_len  # answer tokens before the level word
        if self.prefix_length < 0:
            raise ValueError("the chat template does not put the answer after the prompt")

    def prompt(self, question: str) -> str:
        """The rendered user turn plus the generation prompt for the assistant."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def answer(self, level: str) -> str:
        """The rendered assistant turn (answer and end-of-turn markers) that follows :meth:`prompt`."""
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": SCORING_QUESTION}]},
            {"role": "assistant", "content": [{"type": "text", "text": ANSWER_TEMPLATE.format(level=level)}]},
        ]
        full = self.processor.apply_chat_template(messages, tokenize=False)
        if not full.startswith(self.prompt_text):
            raise ValueError("the chat template's full conversation does not start with its prompt")
        return full[len(self.prompt_text) :]

    def training_text(self, question: str, level: str) -> str:
        return self.prompt(question) + self.answer(level)

    def scoring_text(self) -> str:
        return self.prompt_text + ANSWER_PREFIX

    def level_positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Index, per row, of the position whose logits predict the level word.

        Searches each row for the last occurrence of the tokens that precede the level word, so it
        works with left or right padding and with any prompt length.
        """
        ids = input_ids.tolist()
        mask = attention_mask.tolist() if attention_mask is not None else None
        anchor, k = self.anchor, len(self.anchor)
        out = []
        for r, row in enumerate(ids):
            found = -1
            for i in range(len(row) - k, -1, -1):
                if row[i : i + k] == anchor and (mask is None or mask[r][i + k - 1]):
                    found = i + k - 1
                    break
            if found < 0:
                raise ValueError(f"row {r}: the answer prefix {ANSWER_PREFIX!r} was not found in the input")
            out.append(found)
        return torch.tensor(out, dtype=torch.long, device=input_ids.device)

    def answer_labels(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        level_pos: torch.Tensor,
        include_level: bool = False,
    ) -> torch.Tensor:
        """CE labels: the answer tokens (level token excluded unless asked), ``-100`` elsewhere."""
        labels = torch.full_like(input_ids, -100)
        n = input_ids.shape[1]
        idx = torch.arange(n, device=input_ids.device)
        # the answer runs from the answer prefix to the last attended token (end-of-turn included)
        last = n - 1 - torch.flip(attention_mask, dims=[1]).argmax(dim=1)
        start = level_pos + 1 - self.prefix_length
        keep = (idx[None, :] >= start[:, None]) & (idx[None, :] <= last[:, None])
        if not include_level:
            keep &= idx[None, :] != (level_pos + 1)[:, None]
        labels[keep] = input_ids[keep]
        return labels
