"""Typed view of ``params.yaml``, the single source of truth for every tunable.

Each top-level section of ``params.yaml`` maps to one dataclass below, named after the stage that
owns it (``prepare``, ``validate``, ``soft_labels``, ``model``, ``train``, ``lora``, ``loss``,
``sensitivity``, ``evaluate``, ``report``) plus ``base`` (seed). Code reads them as ``params.<section>.<key>``.

:func:`load_params` (and :func:`from_dict`) check a params file completely before any stage
work starts, and raise :class:`ConfigError` with a one-line message naming the key:

- **every section and key must be present**: a deleted key or section fails
  (``train.lr: missing; params files spell out every key (default: 0.001)``); only the fields
  of a data source (``prepare.sources[i]``, ``evaluate.extra[i]``) other than ``name`` and
  ``format`` may be left out;
- **no unknown key** (a typo in ``dvc exp run -S`` fails instead of being ignored);
- **types**: ``int``, finite ``float`` (``nan``/``inf`` are refused), ``bool``, ``str``, lists;
- **enums** (``Literal`` fields such as ``train.select: best | last``);
- **bounds** stated next to each field (``train.lr: must be > 0, got -1``) and a few cross-key
  rules (``prepare.val_fraction + prepare.test_fraction < 1``, ``model.tiny.hidden_size``
  divisible by ``model.tiny.heads``, at least one non-zero loss weight, unique source names).

Configs built in code (``Params()``, ``TrainConfig(epochs=1)``) keep their defaults and are not
checked: the checks guard files, the API trusts its caller. :func:`record_reads` records which
keys are read while it is active; the DAG test uses it to hold each stage's ``params:`` in
``dvc.yaml`` to the keys the stage actually reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from deqa.schema import DEFAULT_DISTORTIONS, DERIVED_FORMATS, LABEL_FORMATS, SPLITS, VISION_LAYERS, VISION_STATS

SOURCE_FORMATS = (*DERIVED_FORMATS, *LABEL_FORMATS)


class ConfigError(ValueError):
    """A params file that does not match the typed config; the message names the key."""


# --------------------------------------------------------------------------------------------
# checks attached to fields (metadata["check"]): each returns None or what the value must be
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Range:
    """Numeric bounds; ``also`` lists special values allowed outside them (``-1`` = off)."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    also: tuple = ()

    def __call__(self, value: Any) -> str | None:
        if value in self.also:
            return None
        bad = (
            (self.gt is not None and not value > self.gt)
            or (self.ge is not None and not value >= self.ge)
            or (self.lt is not None and not value < self.lt)
            or (self.le is not None and not value <= self.le)
        )
        return self.describe() if bad else None

    def describe(self) -> str:
        parts = [
            f"{op} {_num(b)}"
            for op, b in ((">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le))
            if b is not None
        ]
        text = " and ".join(parts)
        return "must be " + " or ".join([*(_num(a) for a in self.also), text])


@dataclass(frozen=True)
class Items:
    """List rules: ``options`` (allowed items), ``nonempty``, ``unique``."""

    options: tuple = ()
    nonempty: bool = False
    unique: bool = True

    def __call__(self, value: list) -> str | None:
        if self.nonempty and not value:
            return "must not be empty"
        if self.options:
            bad = [v for v in value if v not in self.options]
            if bad:
                return f"must hold only {', '.join(map(str, self.options))} (not {', '.join(map(str, bad))})"
        if self.unique and len(set(map(str, value))) != len(value):
            return "must not repeat an item"
        if any(isinstance(v, str) and not v.strip() for v in value):
            return "must not hold empty strings"
        return None


def NonEmpty(value: str) -> str | None:
    return "must not be empty" if not str(value).strip() else None


def _num(x: Any) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


def _f(default: Any, check: Any) -> Any:
    """A field with an immutable default and a check (lists use ``field(default_factory=...)``)."""
    return field(default=default, metadata={"check": check})


POSITIVE, NON_NEGATIVE, AT_LEAST_1 = Range(gt=0), Range(ge=0), Range(ge=1)
FRACTION = Range(ge=0, lt=1)


# --------------------------------------------------------------------------------------------
# read recording (see record_reads)
# --------------------------------------------------------------------------------------------
_READS: set[str] | None = None
_PATHS: dict[type, str] = {}  # section class -> dotted prefix ("train.", "model.tiny.", "" for Params)


class _Section:
    """Base of the config dataclasses: records ``section.key`` reads while :func:`record_reads` runs."""

    def __getattribute__(self, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if _READS is not None and name[0] != "_":
            cls = type(self)
            prefix = _PATHS.get(cls)
            if prefix is not None and name in cls.__dataclass_fields__ and not isinstance(value, _Section):
                _READS.add(prefix + name)
        return value

    def _check_together(self, where: str) -> None:
        """Cross-key rules of a section (overridden where there are any)."""


@contextlib.contextmanager
def record_reads() -> Iterator[set[str]]:
    """Collect the dotted keys read from any config object inside the ``with`` block.

    Leaves are recorded (lists such as ``prepare.sources`` count as one key); reading a whole
    section (``to_dict(params.train)``, ``dataclasses.asdict``) records each of its keys.
    """
    global _READS
    outer, _READS = _READS, set()
    try:
        yield _READS
    finally:
        reads, _READS = _READS, outer
        if outer is not None:
            outer |= reads


def start_recording() -> set[str]:
    """Record reads until the process ends (the stage tracer of :mod:`deqa.stage`); returns the set."""
    global _READS
    if _READS is None:
        _READS = set()
    return _READS


# --------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------
@dataclass
class BaseConfig(_Section):
    seed: int = _f(0, NON_NEGATIVE)


@dataclass
class SourceConfig(_Section):
    """One data source of ``prepare`` (and of ``evaluate.extra``).

    ``format`` picks the importer: ``synthetic`` (generated, no paths needed), ``distorted``
    (generated from the photos of the earlier source named by ``photos``, see
    :class:`DistortedConfig`), ``koniq``, ``kadid``, ``spaq``, ``livec``, ``qalign-json``,
    ``deqa-json`` or ``generic-csv`` (``image, mos[, std, n_votes, split]``; e.g. BIQ2021's
    ``labels.csv`` with ``lo: 0, hi: 1``, its published MOS range).
    ``labels`` is the label file, ``root`` the folder the image paths are relative to.
    ``lo``/``hi`` override the normalisation bounds (``null``: the observed MOS min/max).
    ``split`` forces one split for every row (``""``: the file's own split, else ``split_seed``).
    ``required: false`` skips the source, with a warning, when its label file is absent (for data
    that only some machines have). Only ``name`` and ``format`` are required in a params file.
    Label files and image folders are external inputs: a stage that reads them checks that they
    are declared ``deps`` of its stage in ``dvc.yaml`` (:func:`deqa.stage.require_deps`).
    """

    name: str = _f("synthetic", NonEmpty)
    format: Literal[SOURCE_FORMATS] = "synthetic"  # type: ignore[valid-type]
    labels: str = ""
    root: str = ""
    lo: float | None = None
    hi: float | None = None
    split: Literal["", "train", "val", "test"] = ""
    required: bool = True
    photos: str = ""

    _OPTIONAL = ("labels", "root", "lo", "hi", "split", "required", "photos")

    def _check_together(self, where: str) -> None:
        if self.format == "distorted" and not self.photos.strip():
            raise ConfigError(f"{where}.photos: must name the earlier source whose photos format 'distorted' distorts")
        if self.format != "distorted" and self.photos:
            raise ConfigError(f"{where}.photos: only a source of format 'distorted' takes photos, got {self.photos!r}")
        if self.format not in DERIVED_FORMATS and not self.labels.strip():
            raise ConfigError(f"{where}.labels: must name the label file of format {self.format!r}")
        if self.lo is not None and self.hi is not None and not self.lo < self.hi:
            raise ConfigError(f"{where}.lo: must be < hi ({_num(self.hi)}), got {_num(self.lo)}")


@dataclass
class SyntheticConfig(_Section):
    """Size and shape of the embedded synthetic rated dataset (see :mod:`deqa.synthetic`).

    ``val_photos``/``test_photos`` name whole source photos, so the splits are content-disjoint;
    every other photo (plus ``extra_train_photos``) is training content. ``distortions`` picks
    from :data:`deqa.distortions.DISTORTIONS` (names and photos are checked by ``deqa.synthetic``).
    """

    crops_per_photo: int = _f(20, AT_LEAST_1)
    image_size: int = _f(128, Range(ge=16))
    severities: int = _f(5, AT_LEAST_1)
    raters: int = _f(25, Range(ge=2))
    distortions: list[str] = field(
        default_factory=lambda: list(DEFAULT_DISTORTIONS),
        metadata={"check": Items(nonempty=True)},
    )
    val_photos: list[str] = field(default_factory=lambda: ["rocket"], metadata={"check": Items(nonempty=True)})
    test_photos: list[str] = field(
        default_factory=lambda: ["coffee", "china", "grace_hopper"], metadata={"check": Items(nonempty=True)}
    )
    extra_train_photos: list[str] = field(default_factory=list, metadata={"check": Items()})


@dataclass
class DistortedConfig(_Section):
    """Sources of format ``distorted``: distorted versions of another source's rated photos.

    Photos whose normalised MOS is at least ``min_quality`` (1-5) serve as pristine references
    (the way KADID-10k was built); ``max_photos`` > 0 keeps a seeded subset of them. Each appears
    pristine and under ``distortions_per_photo`` seeded-random picks of ``distortions`` (0: all)
    at severities 1..``severities``, its centre square resized to ``image_size``; a simulated
    panel of ``raters`` rates them (see :func:`deqa.synthetic.generate_from_photos`). The derived
    images keep their photo's split, so they never cross the real data's split.
    """

    image_size: int = _f(384, Range(ge=16))
    min_quality: float = _f(4.0, Range(ge=1, le=5))
    max_photos: int = _f(150, NON_NEGATIVE)
    distortions_per_photo: int = _f(2, NON_NEGATIVE)
    severities: int = _f(5, AT_LEAST_1)
    raters: int = _f(25, Range(ge=2))
    distortions: list[str] = field(
        default_factory=lambda: list(DEFAULT_DISTORTIONS),
        metadata={"check": Items(nonempty=True)},
    )

    def _check_together(self, where: str) -> None:
        if self.distortions_per_photo > len(self.distortions):
            raise ConfigError(
                f"{where}.distortions_per_photo: must be <= the number of distortions "
                f"({len(self.distortions)}), got {self.distortions_per_photo}"
            )


@dataclass
class PrepareConfig(_Section):
    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    distorted: DistortedConfig = field(default_factory=DistortedConfig)
    val_fraction: float = _f(0.1, FRACTION)
    test_fraction: float = _f(0.1, FRACTION)

    def _check_together(self, where: str) -> None:
        _check_sources(self.sources, f"{where}.sources", nonempty=True)
        for i, src in enumerate(self.sources):
            earlier = {s.name: s.format for s in self.sources[:i]}
            if src.format == "distorted" and earlier.get(src.photos) in (None, *DERIVED_FORMATS):
                raise ConfigError(
                    f"{where}.sources[{i}].photos: must name an earlier source read from a "
                    f"label file, got {src.photos!r}"
                )
        if not self.val_fraction + self.test_fraction < 1:
            raise ConfigError(
                f"{where}.val_fraction + {where}.test_fraction: must be < 1, got "
                f"{_num(self.val_fraction + self.test_fraction)}"
            )


def _check_sources(sources: list[SourceConfig], where: str, nonempty: bool) -> None:
    if nonempty and not sources:
        raise ConfigError(f"{where}: must name at least one data source")
    names = [s.name for s in sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{where}: source names must be unique, repeated: {', '.join(dupes)}")


@dataclass
class ValidateConfig(_Section):
    on_error: Literal["fail", "quarantine"] = "quarantine"
    min_rows: int = _f(20, AT_LEAST_1)
    min_side: int = _f(16, AT_LEAST_1)
    max_pixels: int = _f(40_000_000, AT_LEAST_1)
    vote_tolerance: float = _f(0.05, NON_NEGATIVE)
    required_splits: list[str] = field(default_factory=lambda: list(SPLITS), metadata={"check": Items(SPLITS)})


@dataclass
class SoftLabelsConfig(_Section):
    kind: Literal["soft", "onehot", "binary"] = "soft"
    density: Literal["pdf", "cdf"] = "pdf"
    std_min: float = _f(0.2, NON_NEGATIVE)
    max_mean_error: float = _f(0.1, POSITIVE)
    renormalise: bool = False


@dataclass
class TinyModelConfig(_Section):
    """Shape of the embedded default model built by ``base_model`` when ``model.base: tiny``."""

    image_size: int = _f(128, Range(ge=32))
    vision_tokens: Literal["pooled", "multistage", "spatial"] = "multistage"
    standardise: bool = True
    vision_stats: list[str] = field(
        default_factory=lambda: ["mean", "std"], metadata={"check": Items(VISION_STATS, nonempty=True)}
    )
    vision_layers: Literal[VISION_LAYERS] = "stages"  # type: ignore[valid-type]
    projector_act: Literal["gelu", "linear"] = "gelu"
    hidden_size: int = _f(128, AT_LEAST_1)
    intermediate_size: int = _f(256, AT_LEAST_1)
    layers: int = _f(2, AT_LEAST_1)
    heads: int = _f(4, AT_LEAST_1)

    def _check_together(self, where: str) -> None:
        if self.hidden_size % self.heads:
            raise ConfigError(
                f"{where}.hidden_size: must be divisible by {where}.heads ({self.heads}), got {self.hidden_size}"
            )


@dataclass
class ModelConfig(_Section):
    base: str = _f("tiny", NonEmpty)
    trust_remote_code: bool = False
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)


@dataclass
class TrainConfig(_Section):
    epochs: int = _f(3, AT_LEAST_1)
    max_steps: int = _f(-1, Range(ge=1, also=(-1,)))
    batch_pairs: int = _f(16, AT_LEAST_1)
    grad_accum: int = _f(1, AT_LEAST_1)
    lr: float = _f(1e-3, POSITIVE)
    weight_decay: float = _f(0.1, NON_NEGATIVE)
    warmup_ratio: float = _f(0.03, Range(ge=0, le=1))
    max_grad_norm: float = _f(1.0, NON_NEGATIVE)
    train_vision: bool = False
    full_finetune: bool = False
    gradient_checkpointing: bool = False
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    threads: int = _f(1, AT_LEAST_1)
    checkpoint_every: int = _f(200, AT_LEAST_1)
    resume: Literal["auto", "never"] = "auto"
    log_every: int = _f(10, AT_LEAST_1)
    select: Literal["best", "last"] = "best"


@dataclass
class LoraConfig(_Section):
    r: int = _f(16, AT_LEAST_1)
    alpha: int = _f(32, AT_LEAST_1)
    dropout: float = _f(0.05, FRACTION)
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj"], metadata={"check": Items(nonempty=True)}
    )
    train_lm_head: bool = True


@dataclass
class LossConfig(_Section):
    kl_weight: float = _f(1.0, NON_NEGATIVE)
    token_weight: float = _f(0.05, NON_NEGATIVE)
    fidelity_weight: float = _f(1.0, NON_NEGATIVE)
    fidelity_sigma: Literal["fixed", "predicted"] = "fixed"

    def _check_together(self, where: str) -> None:
        if self.token_weight == 0 and self.fidelity_weight == 0:
            raise ConfigError(
                f"{where}.token_weight, {where}.fidelity_weight: at least one must be > 0 "
                "(both 0 leaves nothing to train on)"
            )


@dataclass
class EvaluateConfig(_Section):
    batch_size: int = _f(32, AT_LEAST_1)
    splits: list[str] = field(default_factory=lambda: ["val", "test"], metadata={"check": Items(SPLITS)})
    bootstrap: int = _f(1000, NON_NEGATIVE)
    extra: list[SourceConfig] = field(default_factory=list)

    def _check_together(self, where: str) -> None:
        _check_sources(self.extra, f"{where}.extra", nonempty=False)
        for i, src in enumerate(self.extra):
            if src.format in DERIVED_FORMATS:
                raise ConfigError(f"{where}.extra[{i}].format: must name a label-file format, got {src.format!r}")
        if not self.splits and not self.extra:
            raise ConfigError(f"{where}.splits: must not be empty when {where}.extra is empty (nothing to score)")


@dataclass
class FeaturesConfig(_Section):
    """``features`` stage: store the frozen vision tower's output per image (:mod:`deqa.features`).

    ``enabled: false`` writes a store that is off, and training and evaluation run the tower on
    every batch. A trainable tower (``train.train_vision``) is never stored."""

    enabled: bool = True


@dataclass
class StudyVariant(_Section):
    """One variant of a study (:mod:`deqa.study`): which labels and which fidelity term train it."""

    labels: Literal["soft", "onehot", "binary"] = "soft"
    fidelity_weight: float = _f(1.0, NON_NEGATIVE)
    fidelity_sigma: Literal["fixed", "predicted"] = "fixed"


def _default_variants() -> dict[str, StudyVariant]:
    return {
        "deqa": StudyVariant("soft", 1.0, "fixed"),
        "qalign": StudyVariant("onehot", 0.0, "fixed"),
        "binary": StudyVariant("binary", 1.0, "fixed"),
        "soft_nofid": StudyVariant("soft", 0.0, "fixed"),
        "soft_predsigma": StudyVariant("soft", 1.0, "predicted"),
    }


@dataclass
class StudyConfig(_Section):
    """A study of label and loss variants over seeded splits of one dataset (:mod:`deqa.study`).

    ``splits`` seeded splits: ``test_fraction`` of the images held out, ``val_fraction`` of the
    rest for validation (epoch selection), the others trained on; each variant (``variants``, by
    name) trains and scores every split with the same model, training params and seeds. Only
    ``studies/`` pipelines use it.
    """

    splits: int = _f(10, AT_LEAST_1)
    test_fraction: float = _f(0.2, Range(gt=0, lt=1))
    val_fraction: float = _f(0.1, Range(gt=0, lt=1))
    variants: dict[str, StudyVariant] = field(default_factory=_default_variants)

    def _check_together(self, where: str) -> None:
        names = list(self.variants)
        if not names:
            raise ConfigError(f"{where}.variants: must name at least one variant")
        bad = [n for n in names if not re.fullmatch(r"[a-z0-9_]+", n)]
        if bad:
            raise ConfigError(
                f"{where}.variants: names are stage and file names (a-z, 0-9, _), got {', '.join(map(repr, bad))}"
            )


@dataclass
class SensitivityConfig(_Section):
    """``sensitivity`` stage: the distortion-sensitivity set (:mod:`deqa.sensitivity`).

    ``scenes_per_kind`` procedural scenes of each kind plus the package images, each pristine and
    at severities 1..``severities`` of every distortion, rendered at ``image_size``. Evaluate it
    by naming its label file in ``evaluate.extra`` (the metric is per-scene monotonicity).
    """

    image_size: int = _f(224, Range(ge=32))
    scenes_per_kind: int = _f(4, NON_NEGATIVE)
    severities: int = _f(5, AT_LEAST_1)
    distortions: list[str] = field(
        default_factory=lambda: list(DEFAULT_DISTORTIONS),
        metadata={"check": Items(nonempty=True)},
    )


@dataclass
class ReportConfig(_Section):
    """``report`` stage: ``examples`` best and worst images shown (one per distortion first).

    Experiments are compared outside the pipeline, by ``deqa report --experiments``."""

    examples: int = _f(4, NON_NEGATIVE)


@dataclass
class Params(_Section):
    base: BaseConfig = field(default_factory=BaseConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    soft_labels: SoftLabelsConfig = field(default_factory=SoftLabelsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sensitivity: SensitivityConfig = field(default_factory=SensitivityConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


def _register_paths(cls: type, prefix: str) -> None:
    _PATHS[cls] = prefix
    for name, tp in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(tp):
            _register_paths(tp, f"{prefix}{name}.")


_register_paths(Params, "")


# --------------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------------
def _show(value: Any) -> str:
    return _num(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str, require: bool) -> Any:
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
                return _convert(value, option, key, require)
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
        return [_convert(v, item_tp, f"{key}[{i}]", require) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        key_tp, item_tp = get_args(tp)
        return {
            _convert(k, key_tp, key, require): _convert(v, item_tp, f"{key}.{k}", require) for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key, require=require)
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
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number, got {value}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - programming error


def from_dict(cls: type, data: Any, prefix: str = "", require: bool = True) -> Any:
    """Build and check dataclass ``cls`` from ``data`` (see the module docstring for the rules).

    ``require=False`` fills missing keys with their defaults (for partial configs in code).
    """
    where = prefix or "params"
    if data is None and not require:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        keys = ", ".join(f"{prefix + '.' if prefix else ''}{k}" for k in unknown)
        raise ConfigError(f"unknown key(s) {keys}; known keys of {where}: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix + '.' if prefix else ''}{name}"
        if name not in data:
            if require and name not in getattr(cls, "_OPTIONAL", ()):
                raise ConfigError(_missing(key, f, hints[name]))
            continue
        value = _convert(data[name], hints[name], key, require)
        check = f.metadata.get("check")
        problem = check(value) if check is not None and value is not None else None
        if problem:
            raise ConfigError(f"{key}: {problem}, got {_show(data[name])}")
        kwargs[name] = value
    obj = cls(**kwargs)
    obj._check_together(where)
    return obj


def _missing(key: str, f: dataclasses.Field, tp: Any) -> str:
    if dataclasses.is_dataclass(tp):
        return f"{key}: missing section; params files spell out every section and key"
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    return f"{key}: missing; params files spell out every key (default: {_show(default)})"


def to_dict(obj: Any) -> Any:
    """Plain-data (YAML/JSON-ready) view of a config object."""
    return dataclasses.asdict(obj)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and check ``params.yaml``; raises :class:`ConfigError` naming any bad key."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such params file")
    with open(path) as fh:
        try:
            data = yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            raise ConfigError(f"not valid YAML: {exc}".replace("\n", " ")) from None
    return from_dict(Params, data if data is not None else {})


def flat_keys(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested mapping (lists are leaves): ``{"train.lr": 0.001, ...}``."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flat_keys(v, f"{prefix}{k}."))
        return out
    out[prefix[:-1]] = obj
    return out
