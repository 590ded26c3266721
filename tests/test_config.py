"""params.yaml, dvc.yaml and the typed config classes hold together."""

import copy
from pathlib import Path

import pytest
import yaml

from deqa.config import ConfigError, Params, flat_keys, from_dict, load_params, to_dict

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
    if isinstance(v, int):
        return v + 1
    if isinstance(v, float):
        return v * 0.5 + 0.125
    if isinstance(v, list):
        return v[:-1] if v else []
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
                obj = getattr(obj, p)
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
    expected = ["prepare", "validate", "soft_labels", "base_model", "train", "evaluate", "report"]
    assert list(stages) == expected
    used = set()
    for name, stage in stages.items():
        script = f"stages/{name}.py"
        assert stage["cmd"].split() == ["python", script], name
        assert script in stage["deps"] and (ROOT / script).exists(), name
        for dep in stage["deps"]:
            assert (ROOT / dep).exists() or not dep.startswith(("src/", "stages/")), f"{name}: {dep} missing"
        for p in stage.get("params", []):
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
