"""Typed view of ``params.yaml``, the single source of truth for every tunable.

Each top-level section of ``params.yaml`` maps to one dataclass below, named after the stage that
owns it (``prepare``, ``validate``, ``soft_labels``, ``model``, ``train``, ``lora``, ``loss``,
``evaluate``, ``report``) plus ``base`` (seed). :func:`load_params` parses the YAML into
:class:`Params`; an unknown key, a missing key or a value of the wrong type raises
:class:`ConfigError` with the dotted name of the offending key (``train.lr: expected float, got
'fast'``), so a typo in ``dvc exp run -S`` fails loudly instead of being ignored.

Every field has a default so that tests and the Python API can build configs in code, but the
committed ``params.yaml`` spells out every key (a test holds the two together), which is what makes
``dvc exp run -S section.key=value`` work for all of them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A params file that does not match the typed config; the message names the key."""


# --------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------
@dataclass
class BaseConfig:
    seed: int = 0


@dataclass
class SourceConfig:
    """One data source of ``prepare`` (and of ``evaluate.extra``).

    ``format`` picks the importer: ``synthetic`` (generated, no paths needed), ``koniq``,
    ``kadid``, ``spaq``, ``livec``, ``qalign-json``, ``deqa-json`` or ``generic-csv``.
    ``labels`` is the label file, ``root`` the folder the image paths are relative to.
    ``lo``/``hi`` override the normalisation bounds (``null``: the observed MOS min/max).
    ``split`` forces one split for every row (``""``: the file's own split, else ``split_seed``).
    ``required: false`` skips the source, with a warning, when its label file is absent (for data
    that only some machines have, such as a cross-dataset test set).
    """

    name: str = "synthetic"
    format: str = "synthetic"
    labels: str = ""
    root: str = ""
    lo: float | None = None
    hi: float | None = None
    split: str = ""
    required: bool = True


@dataclass
class SyntheticConfig:
    """Size and shape of the embedded synthetic rated dataset (see :mod:`deqa.synthetic`).

    ``val_photos``/``test_photos`` name whole source photos, so the splits are content-disjoint;
    every other photo (plus ``extra_train_photos``) is training content. ``distortions`` picks
    from :data:`deqa.synthetic.DISTORTIONS`.
    """

    crops_per_photo: int = 20
    image_size: int = 128
    severities: int = 5
    raters: int = 25
    distortions: list[str] = field(
        default_factory=lambda: [
            "gaussian_blur", "gaussian_noise", "jpeg", "contrast", "pixelation", "motion_blur",
        ]
    )
    val_photos: list[str] = field(default_factory=lambda: ["rocket"])
    test_photos: list[str] = field(default_factory=lambda: ["coffee", "china", "grace_hopper"])
    extra_train_photos: list[str] = field(default_factory=list)


@dataclass
class PrepareConfig:
    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    val_fraction: float = 0.1
    test_fraction: float = 0.1


@dataclass
class ValidateConfig:
    on_error: Literal["fail", "quarantine"] = "quarantine"
    min_rows: int = 20
    min_side: int = 16
    max_pixels: int = 40_000_000
    vote_tolerance: float = 0.05
    required_splits: list[str] = field(default_factory=lambda: ["train", "val", "test"])


@dataclass
class SoftLabelsConfig:
    kind: Literal["soft", "onehot", "binary"] = "soft"
    density: Literal["pdf", "cdf"] = "pdf"
    std_min: float = 0.2
    max_mean_error: float = 0.1
    renormalise: bool = False


@dataclass
class TinyModelConfig:
    """Shape of the embedded default model built by ``base_model`` when ``model.base: tiny``."""

    image_size: int = 128
    vision_tokens: Literal["pooled", "multistage", "spatial"] = "multistage"
    standardise: bool = True
    projector_act: Literal["gelu", "linear"] = "gelu"
    hidden_size: int = 128
    intermediate_size: int = 256
    layers: int = 2
    heads: int = 4


@dataclass
class ModelConfig:
    base: str = "tiny"
    trust_remote_code: bool = False
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)


@dataclass
class TrainConfig:
    epochs: int = 3
    max_steps: int = -1
    batch_pairs: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    train_vision: bool = False
    full_finetune: bool = False
    cache_vision_features: bool = True
    gradient_checkpointing: bool = False
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    threads: int = 1
    checkpoint_every: int = 200
    resume: Literal["auto", "never"] = "auto"
    log_every: int = 10
    select: Literal["best", "last"] = "best"


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    train_lm_head: bool = True


@dataclass
class LossConfig:
    kl_weight: float = 1.0
    token_weight: float = 0.05
    fidelity_weight: float = 1.0
    fidelity_sigma: Literal["fixed", "predicted"] = "fixed"


@dataclass
class EvaluateConfig:
    batch_size: int = 32
    splits: list[str] = field(default_factory=lambda: ["val", "test"])
    bootstrap: int = 1000
    extra: list[SourceConfig] = field(default_factory=list)


@dataclass
class ReportConfig:
    """``report`` stage: ``examples`` best and worst images shown; ``experiments``: compare
    ``dvc exp show --json`` runs (false skips the call, e.g. without git)."""

    examples: int = 4
    experiments: bool = True


@dataclass
class Params:
    base: BaseConfig = field(default_factory=BaseConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    soft_labels: SoftLabelsConfig = field(default_factory=SoftLabelsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


# --------------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: expected {tp}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: expected one of {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = get_args(tp)
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - programming error


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    where = prefix or "params"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        keys = ", ".join(f"{prefix + '.' if prefix else ''}{k}" for k in unknown)
        raise ConfigError(f"unknown key(s) {keys}; known keys of {where}: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], f"{prefix + '.' if prefix else ''}{name}")
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Plain-data (YAML/JSON-ready) view of a config object."""
    return dataclasses.asdict(obj)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and check ``params.yaml``; raises :class:`ConfigError` naming any bad key."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such params file (run from the repository root)")
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    return from_dict(Params, data)


def flat_keys(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested mapping (lists are leaves): ``{"train.lr": 0.001, ...}``."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flat_keys(v, f"{prefix}{k}."))
        return out
    out[prefix[:-1]] = obj
    return out
