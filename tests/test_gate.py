"""deqa gate: exact stages, measured tolerances, the quality floor, several pipelines, another kernel set."""

import argparse
import json
import subprocess
from pathlib import Path

import pytest
import yaml

import tiny_repo
from deqa.commands import gate as command
from deqa.gate import GateError, Rule, compare, gate, load_config, pipeline_stages

ROOT = Path(__file__).resolve().parents[1]
ENV = tiny_repo.env()

GATE = {
    "exact": ["a"],
    "tolerance": {"b": [{"keys": "*.srcc", "tolerance": 0.01}, {"keys": "*.kl", "tolerance": 0.1}]},
    "quality": {"metric": "metrics/b.json:test.srcc", "margin": 0.02},
}
DVC_YAML = {
    "stages": {
        "a": {"cmd": "true", "outs": ["data/a"], "metrics": [{"metrics/a.json": {"cache": False}}]},
        "b": {"cmd": "true", "deps": ["data/a"], "metrics": [{"metrics/b.json": {"cache": False}}]},
    }
}
A = {"rows": 100, "mean_error": 0.0072}
B = {"test": {"srcc": 0.80, "kl": 0.25, "n": 1860}}


def _write(folder: Path, name: str, data) -> None:
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(
        yaml.safe_dump(data) if name.endswith(".yaml") or name.endswith(".lock") else json.dumps(data)
    )


H1, H2 = "a" * 32 + ".dir", "b" * 32 + ".dir"


def _pipeline(folder: Path, a=A, b=B, md5=H1, code="d" * 32, seed=0, model="e" * 32) -> None:
    _write(folder, "dvc.yaml", DVC_YAML)
    _write(folder, "gate.yaml", GATE)
    _write(folder, "metrics/a.json", a)
    _write(folder, "metrics/b.json", b)
    _write(
        folder,
        "dvc.lock",
        {
            "schema": "2.0",
            "stages": {
                "a": {
                    "cmd": "true",
                    "deps": [{"path": "src/a.py", "hash": "md5", "md5": code}],
                    "params": {"params.yaml": {"seed": seed}},
                    "outs": [
                        {"path": "data/a", "hash": "md5", "md5": md5},
                        {"path": "metrics/a.json", "hash": "md5", "md5": "c" * 32},
                    ],
                },
                "b": {
                    "cmd": "true",
                    "deps": [{"path": "data/a", "hash": "md5", "md5": md5}],
                    "outs": [{"path": "models/b", "hash": "md5", "md5": model + ".dir"}],
                },
            },
        },
    )


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run([tiny_repo.DVC, "init", "-q"], check=True, env=ENV)
    _pipeline(tmp_path)
    _pipeline(tmp_path / "real")
    subprocess.run(["git", "add", "-A"], check=True)
    subprocess.run(["git", "commit", "-qm", "baseline"], check=True, env=ENV)
    return tmp_path


def _changed(b_test=None, a=None, md5=H1, where=Path(".")):
    _pipeline(where, a or A, {"test": {**B["test"], **(b_test or {})}}, md5)
    return gate(where / "dvc.yaml")


def test_identical_run_passes(repo):
    ok, lines = gate()
    assert ok, lines
    assert [line.split()[:3] for line in lines] == [
        ["ok", "a", "exact"],
        ["ok", "b", "tolerance"],
        ["ok", "quality", "metrics/b.json:test.srcc"],
    ]


def test_exact_stage_fails_on_any_difference_in_metrics_or_outputs(repo):
    ok, lines = _changed(a={**A, "mean_error": 0.0072 + 1e-12})
    assert not ok and lines[0].startswith("FAIL a") and "mean_error" in lines[0]
    ok, lines = _changed(md5=H2)
    assert not ok and "outputs differ from the committed dvc.lock: data/a" in lines[0]


def test_a_stage_run_with_unrecorded_code_or_params_fails(repo):
    _pipeline(repo, code="f" * 32)
    ok, lines = gate()
    assert not ok and "ran with inputs the committed dvc.lock does not record: src/a.py" in lines[0], lines
    _pipeline(repo, seed=1)
    ok, lines = gate()
    assert not ok and "params seed" in lines[0]
    _pipeline(repo, model="0" * 32)  # a trained stage's outputs differ across CPUs: not compared
    assert gate()[0]


def test_trained_stage_passes_within_tolerance_and_fails_beyond(repo):
    ok, lines = _changed({"srcc": 0.805, "kl": 0.3})
    assert ok and "2 value(s) within tolerance" in lines[1], lines
    ok, lines = _changed({"srcc": 0.789})
    assert not ok and "test.srcc: 0.8 -> 0.789" in lines[1] and lines[2].startswith("ok"), lines  # above the floor
    ok, lines = _changed({"n": 1861})  # no rule: must be equal
    assert not ok and "test.n: 1860 -> 1861" in lines[1]


def test_quality_floor(repo):
    ok, lines = gate(repro=False)
    assert ok and len(lines) == 1
    _pipeline(repo, A, {"test": {**B["test"], "srcc": 0.70}})
    ok, lines = gate(repro=False)
    assert not ok and lines[0].startswith("FAIL quality") and "floor 0.7800" in lines[0]
    assert gate(repro=False, margin=0.2)[0]


def test_another_pipeline_is_gated_on_its_own_files(repo, capsys):
    _pipeline(repo / "real", A, {"test": {**B["test"], "srcc": 0.5}})
    assert gate()[0]
    assert not gate("real/dvc.yaml")[0]
    p = argparse.ArgumentParser()
    command.add_arguments(p)
    assert command.run(p.parse_args(["--pipeline", "real"])) == 1
    assert "FAIL b" in capsys.readouterr().out


def test_a_stage_without_a_rule_is_an_error(repo):
    cfg = dict(GATE, exact=[])
    _write(repo, "gate.yaml", cfg)
    with pytest.raises(GateError, match=r"stage\(s\) a of dvc.yaml have no rule"):
        gate()


def test_compare_paths_and_rules():
    rules = [Rule("*.confusion.*", 2), Rule("*.srcc", 0.01)]
    diffs = compare(
        {"t": {"confusion": [[5, 1]], "srcc": 0.5, "x": "a"}},
        {"t": {"confusion": [[4, 1]], "srcc": 0.52, "x": "b", "new": 1}},
        rules,
    )
    found = {d.key: d.allowed for d in diffs}
    assert found == {"t.confusion.0.0": True, "t.srcc": False, "t.x": False, "t.new": False}


def test_the_repository_gate_configs_cover_every_stage():
    for dvcfile in ROOT.rglob("dvc.yaml"):
        if {".venv", ".dvc", ".git"} & set(dvcfile.parts):
            continue
        cfg = load_config(dvcfile.parent / "gate.yaml")
        stages = set(pipeline_stages(dvcfile))
        assert stages == set(cfg.exact) | set(cfg.tolerance), (dvcfile, stages ^ (set(cfg.exact) | set(cfg.tolerance)))
        assert {"prepare", "validate", "soft_labels"} & stages <= set(cfg.exact)


# ---------------------------------------------------------------------------------------------
# a second kernel set on the tiny pipeline (project issue #11, failure 4)
# ---------------------------------------------------------------------------------------------
OTHER_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def _gate(repo: Path) -> tuple[bool, str]:
    ok, lines = gate(repo / "dvc.yaml")
    return ok, "\n".join(lines)


@pytest.mark.slow
def test_other_cpu_kernels_pass_the_gate_and_a_real_regression_does_not(tmp_path_factory):
    base = tiny_repo.tiny_pipeline(tmp_path_factory.getbasetemp())
    clone = tiny_repo.clone(base, tmp_path_factory.mktemp("kernels") / "repo")
    tiny_repo.run(
        [tiny_repo.DVC, "repro", "--force", "--single-item", "base_model", "train", "evaluate"], clone, **OTHER_KERNELS
    )
    committed, rerun = (
        yaml.safe_load(Path(p).read_text())["stages"]["train"]["outs"] for p in (base / "dvc.lock", clone / "dvc.lock")
    )
    assert rerun != committed, "the other kernels trained the same bytes: the test would prove nothing"
    ok, out = _gate(clone)
    assert ok, out
    assert "ok   prepare      exact" in out and "within tolerance" in out
    # a real regression, under the default kernels: half the learning rate
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["train"]["lr"] /= 2
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    tiny_repo.run([tiny_repo.DVC, "repro"], clone)
    ok, out = _gate(clone)
    assert not ok and "FAIL train" in out and "FAIL evaluate" in out, out
