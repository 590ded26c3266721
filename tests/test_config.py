"""params.yaml, dvc.yaml and the typed config classes hold together."""

import copy
import re
from pathlib import Path

import pytest
import yaml

from deqa.config import ConfigError, Params, flat_keys, from_dict, load_params, record_reads, to_dict

ROOT = Path(__file__).resolve().parents[1]


def _yaml(name):
    return yaml.safe_load((ROOT / name).read_text())


def _set(d, dotted, value):
    *path, last = dotted.split(".")
    for p in path:
        d = d[p]
    d[last] = value


def _other_value(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):  # another valid value: doubled (keeps divisibility), or -1/0 -> 1/2
        return v * 2 if v > 0 else v + 2
    if isinstance(v, float):
        return v * 0.5 + 0.125
    if isinstance(v, list):
        if len(v) > 1:
            return v[:-1]
        if v and isinstance(v[0], dict):  # a data source: another name
            return [{**v[0], "name": v[0]["name"] + "2"}]
        return [v[0] + "2"] if v else []
    return None  # strings: only their Literal alternatives are valid, handled below


def test_params_yaml_parses_and_spells_out_every_key():
    raw = _yaml("params.yaml")
    load_params(ROOT / "params.yaml")
    yaml_keys = set(flat_keys(raw))
    config_keys = set(flat_keys(to_dict(Params())))
    # list-valued keys of dataclasses (prepare.sources) are leaves in both views
    assert yaml_keys == config_keys, (
        f"in params.yaml only: {sorted(yaml_keys - config_keys)}; in config only: {sorted(config_keys - yaml_keys)}"
    )


def test_every_key_can_be_overridden_like_dvc_exp_run_S():
    import typing
    from typing import Literal, get_args, get_origin

    raw = _yaml("params.yaml")
    parsed = load_params(ROOT / "params.yaml")
    for key, value in flat_keys(raw).items():
        new = _other_value(value)
        if new is None:  # a string: find its type and pick another valid value
            obj = parsed
            *path, last = key.split(".")
            for p in path:
                obj = obj[p] if isinstance(obj, dict) else getattr(obj, p)  # mappings: study.variants.<name>
            tp = typing.get_type_hints(type(obj))[last]
            options = [a for a in get_args(tp) if a != value] if get_origin(tp) is Literal else []
            new = options[0] if options else value + "x"
        data = copy.deepcopy(raw)
        _set(data, key, new)
        p = from_dict(Params, data)
        assert flat_keys(to_dict(p))[key] == new, key


def test_unknown_and_mistyped_keys_are_named():
    raw = _yaml("params.yaml")
    bad = copy.deepcopy(raw)
    bad["train"]["learning_rate"] = 0.1
    with pytest.raises(ConfigError, match=r"train\.learning_rate"):
        from_dict(Params, bad)
    bad = copy.deepcopy(raw)
    bad["loss"]["kl_weight"] = "heavy"
    with pytest.raises(ConfigError, match=r"loss\.kl_weight"):
        from_dict(Params, bad)
    bad = copy.deepcopy(raw)
    bad["soft_labels"]["kind"] = "gaussian"
    with pytest.raises(ConfigError, match=r"soft_labels\.kind"):
        from_dict(Params, bad)
    bad = copy.deepcopy(raw)
    bad["nonsense"] = {}
    with pytest.raises(ConfigError, match="nonsense"):
        from_dict(Params, bad)


def test_dvc_yaml_stages_match_scripts_params_and_outputs():
    dvc = _yaml("dvc.yaml")
    stages = dvc["stages"]
    sections = set(to_dict(Params()))
    expected = [
        "prepare",
        "validate",
        "soft_labels",
        "base_model",
        "features",
        "train",
        "sensitivity",
        "evaluate",
        "report",
    ]
    assert list(stages) == expected
    used = set()
    for name, stage in stages.items():
        script = f"stages/{name}.py"
        assert stage["cmd"].split()[:2] == ["python", script], name
        assert script in stage["deps"] and (ROOT / script).exists(), name
        for dep in stage["deps"]:
            assert (ROOT / dep).exists() or not dep.startswith(("src/", "stages/")), f"{name}: {dep} missing"
        for p in stage.get("params", []):
            if isinstance(p, dict):  # `- params.yaml:` (no keys): the whole file
                used |= sections
                continue
            section = p.split(".")[0]
            assert section in sections, f"{name} uses unknown params section {p}"
            used.add(section)
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", [])]
        assert outs, name
    # one name per concept: a stage with a params section of its own uses it, and every section is used
    for name in stages:
        if name in sections:
            assert name in used
    assert used | {"base"} >= sections - {"base"}, f"unused params sections: {sections - used}"
    assert (ROOT / ".dvc" / "config").read_text().count("analytics = false") == 1


# ---------------------------------------------------------------------------------------------
# values checked at load time
# ---------------------------------------------------------------------------------------------
BAD_VALUES = [
    ("train.lr", -1, "train.lr: must be > 0, got -1"),
    ("train.lr", float("nan"), "train.lr: must be a finite number, got nan"),
    ("train.lr", "nan", "train.lr: must be a finite number, got nan"),
    ("train.lr", float("inf"), "train.lr: must be a finite number"),
    ("lora.r", 0, "lora.r: must be >= 1, got 0"),
    ("train.batch_pairs", 0, "train.batch_pairs: must be >= 1, got 0"),
    ("train.grad_accum", 0, "train.grad_accum: must be >= 1, got 0"),
    ("train.checkpoint_every", 0, "train.checkpoint_every: must be >= 1, got 0"),
    ("train.log_every", 0, "train.log_every: must be >= 1, got 0"),
    ("train.threads", 0, "train.threads: must be >= 1, got 0"),
    ("lora.target_modules", [], "lora.target_modules: must not be empty"),
    ("loss.kl_weight", -1, "loss.kl_weight: must be >= 0, got -1"),
    ("train.epochs", 0, "train.epochs: must be >= 1, got 0"),
    ("soft_labels.std_min", -1, "soft_labels.std_min: must be >= 0, got -1"),
    ("evaluate.bootstrap", -1, "evaluate.bootstrap: must be >= 0, got -1"),
    ("train.max_steps", 0, "train.max_steps: must be -1 or >= 1, got 0"),
    ("train.warmup_ratio", 1.5, "train.warmup_ratio: must be >= 0 and <= 1, got 1.5"),
    ("lora.dropout", 1.0, "lora.dropout: must be >= 0 and < 1, got 1"),
    ("evaluate.splits", ["val", "dev"], "evaluate.splits: must hold only train, val, test (not dev)"),
    ("validate.required_splits", ["train", "train"], "validate.required_splits: must not repeat an item"),
    ("prepare.synthetic.raters", 1, "prepare.synthetic.raters: must be >= 2, got 1"),
    ("model.tiny.hidden_size", 130, "model.tiny.hidden_size: must be divisible by model.tiny.heads (4), got 130"),
    ("model.base", "", "model.base: must not be empty"),
    ("train.select", "first", "train.select: expected one of 'best' | 'last', got 'first'"),
]


@pytest.mark.parametrize("key, value, message", BAD_VALUES, ids=[f"{k}={v!r}" for k, v, _ in BAD_VALUES])
def test_bad_values_fail_at_load_time_naming_key_and_range(tmp_path, key, value, message):
    data = _yaml("params.yaml")
    _set(data, key, value)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as exc:
        load_params(path)
    assert str(exc.value).startswith(message), str(exc.value)


def test_cross_key_rules():
    data = _yaml("params.yaml")
    data["prepare"]["val_fraction"], data["prepare"]["test_fraction"] = 0.5, 0.5
    with pytest.raises(ConfigError, match=r"prepare\.val_fraction \+ prepare\.test_fraction: must be < 1, got 1"):
        from_dict(Params, data)
    data = _yaml("params.yaml")
    data["loss"].update(token_weight=0.0, fidelity_weight=0.0)
    with pytest.raises(ConfigError, match=r"loss\.token_weight, loss\.fidelity_weight: at least one must be > 0"):
        from_dict(Params, data)
    data = _yaml("params.yaml")
    data["prepare"]["sources"].append(dict(data["prepare"]["sources"][0]))
    with pytest.raises(ConfigError, match=r"prepare\.sources: source names must be unique, repeated: synthetic"):
        from_dict(Params, data)
    data = _yaml("params.yaml")
    data["evaluate"]["extra"] = [{"name": "livec", "format": "livec"}]
    with pytest.raises(ConfigError, match=r"evaluate\.extra\[0\]\.labels: must name the label file"):
        from_dict(Params, data)
    data["evaluate"]["extra"] = [{"name": "livec", "format": "livec", "labels": "l.csv", "lo": 5, "hi": 1}]
    with pytest.raises(ConfigError, match=r"evaluate\.extra\[0\]\.lo: must be < hi \(1\), got 5"):
        from_dict(Params, data)
    # a source may leave out everything but name and format
    data["evaluate"]["extra"] = [{"name": "livec", "format": "livec", "labels": "l.csv"}]
    assert from_dict(Params, data).evaluate.extra[0].root == ""


@pytest.mark.parametrize("dotted", ["train.lr", "lora.target_modules", "model.tiny.heads", "train", "report"])
def test_a_deleted_key_or_section_fails(tmp_path, dotted):
    data = _yaml("params.yaml")
    *path, last = dotted.split(".")
    node = data
    for p in path:
        node = node[p]
    del node[last]
    file = tmp_path / "params.yaml"
    file.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="^" + re.escape(dotted) + ": missing"):
        load_params(file)
    assert isinstance(from_dict(Params, data, require=False), Params)  # the API may fill in defaults


def test_an_empty_params_file_fails_naming_the_first_section(tmp_path):
    (tmp_path / "params.yaml").write_text("")
    with pytest.raises(ConfigError, match=r"^base: missing section"):
        load_params(tmp_path / "params.yaml")


def test_the_stages_reject_bad_params_before_any_work(tmp_path):
    import subprocess
    import sys

    data = _yaml("params.yaml")
    data["train"]["lr"] = -1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "stages" / "train.py"),
            "--params",
            "params.yaml",
            "--labels",
            "l",
            "--base",
            "b",
            "--features",
            "f",
            "--out",
            "o",
            "--checkpoints",
            "c",
            "--live",
            "d",
            "--metrics",
            "m.json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode != 0 and res.stderr.strip().splitlines()[-1] == (
        "error: params.yaml: train.lr: must be > 0, got -1"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_record_reads_names_the_keys_read():
    params = load_params(ROOT / "params.yaml")
    with record_reads() as reads:
        _ = params.train.lr, params.model.tiny.heads, params.prepare.sources[0].name
        to_dict(params.loss)
    assert reads == {
        "train.lr",
        "model.tiny.heads",
        "prepare.sources",
        "loss.kl_weight",
        "loss.token_weight",
        "loss.fidelity_weight",
        "loss.fidelity_sigma",
    }
    _ = params.train.epochs  # outside the block: not recorded
    assert "train.epochs" not in reads
