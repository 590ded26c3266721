"""deqa gate: exact stages, measured tolerances, the quality floor, several pipelines, another kernel set."""

import argparse
import json
import subprocess
from pathlib import Path

import pytest
import yaml

import tiny_repo
from deqa.commands import gate as command
from deqa.gate import KERNEL_SETS, GateError, Rule, compare, gate, load_config, pipeline_stages

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


def test_an_upstream_difference_fails_the_stage_that_made_it_not_its_readers(repo):
    ok, lines = _changed(md5=H2)  # a's output (read by b) has other bytes
    assert not ok and lines[0].startswith("FAIL a") and "(read by b)" in lines[0], lines
    assert lines[1].startswith("ok   b"), lines  # b ran with the new bytes: checked at a, not blamed on b


def test_a_metrics_folder_and_other_committed_json_are_compared_file_by_file(repo):
    dvc = yaml.safe_load(yaml.safe_dump(DVC_YAML))
    dvc["stages"]["a"]["outs"].append({"metrics/a-summary.json": {"cache": False}})
    dvc["stages"]["b"]["metrics"] = [{"metrics/b": {"cache": False}}]
    rules = [{"keys": "test.*.srcc", "tolerance": 0.01}]
    _write(repo, "dvc.yaml", dvc)
    _write(
        repo,
        "gate.yaml",
        {**GATE, "tolerance": {"b": rules}, "quality": {"metric": "metrics/b/test.x.json:srcc", "margin": 0.02}},
    )
    (repo / "metrics/b.json").unlink()
    _write(repo, "metrics/a-summary.json", {"rows": 5})
    rows = {"test.x.json": {"srcc": 0.8, "n": 10}, "cross.y.json": {"srcc": 0.5, "n": 4}}
    for name, row in rows.items():
        _write(repo, f"metrics/b/{name}", row)
    subprocess.run(["git", "add", "-A"], check=True)
    subprocess.run(["git", "commit", "-qm", "folder"], check=True, env=ENV)
    ok, lines = gate()
    assert ok and "metrics/b/cross.y.json, metrics/b/test.x.json identical" in lines[1], lines
    _write(repo, "metrics/b/test.x.json", {"srcc": 0.805, "n": 10})
    ok, lines = gate()
    assert ok and "within tolerance" in lines[1] and "test.x.srcc" in lines[1], lines
    _write(repo, "metrics/b/cross.y.json", {"srcc": 0.505, "n": 4})  # no rule for cross.*: equal
    ok, lines = gate()
    assert not ok and "metrics/b/cross.y.json" in lines[1] and "cross.y.srcc: 0.5 -> 0.505" in lines[1], lines
    (repo / "metrics/b/cross.y.json").unlink()
    _write(repo, "metrics/b/cross.z.json", {"srcc": 0.5})
    ok, lines = gate()
    assert not ok and "cross.y.json missing" in lines[1] and "cross.z.json not committed" in lines[1], lines
    _write(repo, "metrics/a-summary.json", {"rows": 6})  # a cache: false JSON output, not a DVC metric
    ok, lines = gate()
    assert not ok and lines[0].startswith("FAIL a") and "rows: 5 -> 6" in lines[0], lines


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
# another machine's kernels on the tiny pipeline (project issues #11 and #21)
# ---------------------------------------------------------------------------------------------
OTHER_KERNELS = KERNEL_SETS["sse-machine"]  # torch's, MKL's, oneDNN's, numpy's, OpenBLAS's and libm's


def _gate(repo: Path) -> tuple[bool, str]:
    ok, lines = gate(repo / "dvc.yaml")
    return ok, "\n".join(lines)


@pytest.mark.slow
def test_other_cpu_kernels_pass_the_gate_and_a_real_regression_does_not(tmp_path_factory):
    """Every stage re-run under another machine's kernels: the deterministic ones (soft labels:
    numpy's SIMD exp, the BLAS's dot products and libm's exp each differ there) give the
    committed bytes, the trained ones stay within their tolerances."""
    base = tiny_repo.tiny_pipeline(tmp_path_factory.getbasetemp())
    clone = tiny_repo.clone(base, tmp_path_factory.mktemp("kernels") / "repo")
    tiny_repo.run([tiny_repo.DVC, "repro", "--force"], clone, **OTHER_KERNELS)
    committed, rerun = (
        yaml.safe_load(Path(p).read_text())["stages"]["train"]["outs"] for p in (base / "dvc.lock", clone / "dvc.lock")
    )
    assert rerun != committed, "the other kernels trained the same bytes: the test would prove nothing"
    ok, out = _gate(clone)
    assert ok, out
    for stage in ("prepare", "validate", "soft_labels", "sensitivity"):
        assert f"ok   {stage:12s} exact" in out, out
    assert "within tolerance" in out
    # a real regression, under the default kernels: half the learning rate
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["train"]["lr"] /= 2
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    tiny_repo.run([tiny_repo.DVC, "repro"], clone)
    ok, out = _gate(clone)
    assert not ok and "FAIL train" in out and "FAIL evaluate" in out, out


def test_inputs_made_by_other_stages_are_checked_where_they_are_made():
    """A dep that is another stage's output, a file in one or a folder of outputs (report reads
    dvclive/train, train writes dvclive/train/metrics.json and .../plots/metrics) may differ;
    any other dep, the command or a params value may not."""
    from deqa.gate import changed_inputs

    def lock(curves: str, labels: str, lr: float) -> dict:
        deps = [{"path": "dvclive/train", "md5": curves}, {"path": "data/labels.csv", "md5": labels}]
        return {"stages": {"report": {"cmd": "python r.py", "deps": deps, "params": {"params.yaml": {"lr": lr}}}}}

    made = {"dvclive/train/metrics.json", "dvclive/train/plots/metrics"}
    assert changed_inputs(lock("a", "x", 1.0), lock("b", "x", 1.0), "report", made) == []
    assert changed_inputs(lock("a", "x", 1.0), lock("b", "y", 2.0), "report", made) == ["params lr", "data/labels.csv"]
    assert changed_inputs(lock("a", "x", 1.0), lock("b", "x", 1.0), "report", set()) == ["dvclive/train"]
