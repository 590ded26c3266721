"""Every ``dvc.yaml`` of the repository declares what its stages really use, so results never go stale.

Computed independently of ``dvc.yaml`` and compared with it, for every stage of every pipeline:

- **code deps** = the stage script plus the transitive closure of the ``deqa`` modules it imports,
  read from the AST of the script and of each module (imports inside functions included, as a
  conservative over-approximation; ``importlib.import_module("deqa...")`` with a literal too);
- **paths**: every path option on the command line is a declared dep or output (or a DVC-ignored
  private cache); no stage script holds a pipeline path as a constant; ``--params`` names the file
  the declared params come from; a script runs its own checkout's ``deqa``;
- **params and files** (slow: the default pipeline is run at a tiny size with the tracer of
  :mod:`deqa.stage`): the declared params are exactly the keys the stage read (a whole section
  where it read every key of it; the whole file where it read the file raw), the files it read
  are declared deps or its own outputs, and the files it wrote are declared outputs. Other
  pipelines (e.g. a real-data one in a subfolder) are held to the keys their scripts read in
  that run, since they run the same scripts.
"""

from __future__ import annotations

import ast
import os
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from dvc.repo import Repo

import tiny_repo
from deqa.config import Params, flat_keys, to_dict

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src"
SKIP_DIRS = {".venv", ".git", ".dvc", "__pycache__", "node_modules"}

# Stage options that name something other than a path.
NOT_PATHS = {"variant"}  # stages/study.py: a study.variants name

# Keys a script reads only under params other than the default's; declared all the same.
CONDITIONAL = {
    "stages/base_model.py": {"model.trust_remote_code"},  # read when model.base is a checkpoint
    "stages/evaluate.py": {"validate"},  # the extra sets are validated: read when evaluate.extra is set
    "stages/prepare.py": {"prepare.distorted"},  # read when a source has format distorted (real/)
}


# ---------------------------------------------------------------------------------------------
# what dvc.yaml says
# ---------------------------------------------------------------------------------------------
@cache
def _repo(root: Path) -> Repo:
    return Repo(str(root))


@cache
def _stages(root: Path = ROOT) -> tuple:
    repo = _repo(root)
    out = []
    for s in repo.index.stages:
        if not getattr(s, "cmd", None):
            continue
        params = {Path(d.fs_path).resolve(): list(d.params) for d in s.deps if type(d).__name__ == "ParamsDependency"}
        out.append(
            {
                "id": f"{os.path.relpath(s.path, root)}:{s.name}",
                "name": s.name,
                "wdir": Path(s.wdir),
                "cmd": s.cmd if isinstance(s.cmd, str) else " && ".join(s.cmd),
                "deps": [Path(os.path.abspath(d.fs_path)) for d in s.deps if type(d).__name__ != "ParamsDependency"],
                "outs": [Path(os.path.abspath(o.fs_path)) for o in s.outs],
                "params": params,
                "ignored": _ignore_checker(repo),
            }
        )
    return tuple(out)


def _ignore_checker(repo):
    def ignored(path: Path) -> bool:
        return repo.dvcignore.is_ignored(repo.fs, str(path)) or repo.dvcignore.is_ignored(repo.fs, str(path) + "/")

    return ignored


def _ids() -> list[str]:
    return [s["id"] for s in _stages()]


def _stage(stage_id: str) -> dict:
    return next(s for s in _stages() if s["id"] == stage_id)


def _command(stage: dict) -> tuple[Path, dict[str, str]]:
    """The script a stage runs and its ``--option value`` pairs."""
    words = shlex.split(stage["cmd"])
    assert len(words) >= 2 and Path(words[0]).name.startswith("python"), (
        f"{stage['id']}: cmd is not `python SCRIPT ...`"
    )
    script = (stage["wdir"] / words[1]).resolve()
    options, rest = {}, words[2:]
    assert len(rest) % 2 == 0, f"{stage['id']}: expected --option value pairs, got {rest}"
    for flag, value in zip(rest[::2], rest[1::2], strict=True):
        assert flag.startswith("--"), f"{stage['id']}: unexpected argument {flag}"
        options[flag[2:]] = value
    return script, options


def _covered(path: Path, roots: list[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


# ---------------------------------------------------------------------------------------------
# what the code says
# ---------------------------------------------------------------------------------------------
def _module_file(name: str) -> Path | None:
    base = PKG.joinpath(*name.split("."))
    return next((c for c in (base.with_suffix(".py"), base / "__init__.py") if c.is_file()), None)


def _imported_names(file: Path, module: str) -> set[str]:
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            names |= {mod, *(f"{mod}.{a.name}" for a in node.names)}  # `from pkg import submodule`
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def import_closure(script: Path) -> set[Path]:
    """The ``src/deqa`` files a script imports, transitively (packages' ``__init__`` included)."""
    seen: set[Path] = set()
    todo = [(script, "__main__")]
    while todo:
        file, module = todo.pop()
        for name in _imported_names(file, module):
            if name.split(".")[0] != "deqa":
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                sub = ".".join(parts[:i])
                found = _module_file(sub)
                if found is not None and found not in seen:
                    seen.add(found)
                    todo.append((found, sub))
    return seen


def _code_deps(stage: dict) -> set[Path]:
    """Declared deps under src/ and stages/, directories expanded to their Python files."""
    out = set()
    for dep in stage["deps"]:
        if _covered(dep, [ROOT / "src", ROOT / "stages"]):
            out |= set(dep.rglob("*.py")) if dep.is_dir() else {dep}
    return out


# ---------------------------------------------------------------------------------------------
# fast checks, every pipeline
# ---------------------------------------------------------------------------------------------
def test_every_pipeline_is_checked():
    files = {p.relative_to(ROOT).as_posix() for p in ROOT.rglob("dvc.yaml") if not SKIP_DIRS & set(p.parts)}
    checked = {s["id"].split(":")[0] for s in _stages()}
    assert "dvc.yaml" in checked and files <= checked, f"not loaded by DVC: {files - checked}"


@pytest.mark.parametrize("stage_id", _ids())
def test_code_deps_are_the_script_and_its_import_closure(stage_id):
    stage = _stage(stage_id)
    script, _ = _command(stage)
    assert script.is_file() and script.parent == ROOT / "stages", f"{stage_id}: runs {script}, not a stages/ script"
    expected = {script} | import_closure(script)
    declared = _code_deps(stage)
    rel = lambda paths: sorted(os.path.relpath(p, stage["wdir"]) for p in paths)  # noqa: E731
    assert declared == expected, (
        f"{stage_id}: add deps {rel(expected - declared)}; remove deps {rel(declared - expected)}"
    )


@pytest.mark.parametrize("stage_id", _ids())
def test_paths_come_from_the_command_line_and_are_declared(stage_id):
    stage = _stage(stage_id)
    _, options = _command(stage)
    params_file = (stage["wdir"] / options.pop("params", "params.yaml")).resolve()
    assert set(stage["params"]) <= {params_file}, (
        f"{stage_id}: declared params come from {sorted(map(str, stage['params']))}, the script reads {params_file}"
    )
    for name, value in options.items():
        if name in NOT_PATHS:
            continue
        path = Path(os.path.abspath(stage["wdir"] / value))
        # a folder whose declared outputs are parts of it (dvclive's folder: its plots and metrics)
        parent_of_outs = any(path in o.parents for o in stage["outs"])
        assert _covered(path, stage["deps"] + stage["outs"]) or parent_of_outs or stage["ignored"](path), (
            f"{stage_id}: --{name} {value} is neither a declared dep or output nor a DVC-ignored cache"
        )


def test_stage_scripts_hold_no_pipeline_paths():
    paths = {
        os.path.relpath(p, s["wdir"])
        for s in _stages()
        for p in s["deps"] + s["outs"]
        if not _covered(p, [ROOT / "src", ROOT / "stages"])
    }
    for script in sorted((ROOT / "stages").glob("*.py")):
        tree = ast.parse(script.read_text())
        docstrings = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef))
            and n.body
            and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                hits = [p for p in paths if node.value == p or node.value.startswith(p + "/")]
                assert not hits, f"{script.name}: path constant {node.value!r}; pass it from dvc.yaml's cmd"


def test_stage_scripts_run_their_own_checkout_of_deqa(tmp_path):
    """An editable install points at one checkout; a clone's stages must still run the clone's code."""
    for folder in ("stages", "src"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    init = tmp_path / "src" / "deqa" / "__init__.py"
    init.write_text(init.read_text() + "\nprint('deqa from the copy')\n")
    for script in sorted((tmp_path / "stages").glob("*.py")):
        res = subprocess.run(
            [sys.executable, str(script), "--help"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": ""},
            timeout=120,
        )
        assert res.returncode == 0 and "deqa from the copy" in res.stdout, (script.name, res.stderr[-500:])


# ---------------------------------------------------------------------------------------------
# slow checks: what the stages read and wrote in a run of the tiny default pipeline
# ---------------------------------------------------------------------------------------------
ALL_KEYS = set(flat_keys(to_dict(Params())))


def leaves(entries: set[str]) -> set[str]:
    """The leaf keys that declared params entries (keys or whole sections) stand for."""
    if "*" in entries:
        return {"*"}
    return {k for k in ALL_KEYS for e in entries if k == e or k.startswith(e + ".")}


def minimal_cover(keys: set[str]) -> set[str]:
    """Declared-params form of a set of leaf keys: a section wherever every key of it is read."""
    if "*" in keys:
        return {"*"}
    sections = {".".join(k.split(".")[:i]) for k in ALL_KEYS for i in range(1, k.count(".") + 1)}
    full = {s for s in sections if {k for k in ALL_KEYS if k.startswith(s + ".")} <= keys}
    top = {s for s in full if not any(s.startswith(f + ".") for f in full)}
    return top | {k for k in keys if not any(k.startswith(t + ".") for t in top)}


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    import json

    base = tmp_path_factory.getbasetemp()
    repo = tiny_repo.tiny_pipeline(base)
    _trace_study(repo, tmp_path_factory.mktemp("study-trace"), base / tiny_repo.TRACE)
    records = [json.loads(line) for line in (base / tiny_repo.TRACE).read_text().splitlines()]
    return repo, records


def _trace_study(repo: Path, work: Path, trace: Path) -> None:
    """The study's scripts are in no stage of the default pipeline: run them, traced, on the tiny
    pipeline's data (two splits, every variant), as ``studies/livec/dvc.yaml`` calls them."""
    import json

    import yaml

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["study"]["splits"] = 2
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for key in params["study"]["variants"]:
        cmd = [sys.executable, str(repo / "stages" / "study.py"), "--params", str(work / "params.yaml")]
        cmd += ["--variant", key, "--manifest", "data/validate/manifest.csv", "--base", "models/base"]
        cmd += ["--features", "data/features", "--out", str(work / "study" / key)]
        own = work / f"trace-{key}.jsonl"  # its records, named after the stage that runs them
        tiny_repo.run(cmd, repo, DEQA_TRACE=str(own))
        with trace.open("a") as fh:
            for line in own.read_text().splitlines():
                fh.write(json.dumps({**json.loads(line), "stage": f"study@{key}"}) + "\n")
    cmd = [sys.executable, str(repo / "stages" / "study_report.py"), "--params", str(work / "params.yaml")]
    cmd += ["--runs", str(work / "study"), "--metrics", str(work / "summary"), "--detail", str(work / "study.json")]
    tiny_repo.run([*cmd, "--out", str(work / "reports")], repo, DEQA_TRACE=str(trace))


def _trace_for(records: list[dict], script: str, stage: str | None = None) -> dict:
    found = [r for r in records if r["script"] == script and (stage is None or r["stage"] == stage)]
    assert found, f"no traced run of {script} (stage {stage})"
    merged = dict(found[0])
    for key in ("params", "read", "write"):
        merged[key] = sorted(set().union(*(r[key] for r in found)))
    return merged


def _declared_params(stage: dict) -> set[str]:
    (keys,) = stage["params"].values() if stage["params"] else ([None],)
    return set() if keys is None else (set(keys) or {"*"})


@pytest.mark.slow
@pytest.mark.parametrize("stage_id", _ids())
def test_declared_params_are_the_keys_the_stage_reads(stage_id, traces):
    _, records = traces
    stage = _stage(stage_id)
    script, _ = _command(stage)
    rel = script.relative_to(ROOT).as_posix()
    same_run = stage["id"].split(":")[0] == "dvc.yaml" or stage["name"].startswith("study@")  # _trace_study
    read = leaves(set(_trace_for(records, rel, stage["name"] if same_run else None)["params"]))
    read |= leaves(CONDITIONAL.get(rel, set()))
    if stage["name"].startswith("study@"):  # the tracer sees study.variants read whole (a mapping);
        own = f"study.variants.{stage['name'].split('@', 1)[1]}."  # stages/study.py indexes it by --variant
        read = {k for k in read if not k.startswith("study.variants.") or k.startswith(own)}
    declared = _declared_params(stage)
    missing, unread = leaves(read) - leaves(declared), leaves(declared) - leaves(read)
    assert not missing and not unread, (
        f"{stage_id}: params should be {sorted(minimal_cover(read))}; "
        f"read but not declared: {sorted(missing)}; declared but not read: {sorted(unread)}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("stage_id", [i for i in _ids() if i.startswith("dvc.yaml:")])
def test_files_read_are_deps_and_files_written_are_outputs(stage_id, traces):
    repo, records = traces
    stage = _stage(stage_id)
    trace = _trace_for(records, _command(stage)[0].relative_to(ROOT).as_posix(), stage["name"])
    local = lambda p: repo / Path(p).relative_to(ROOT) if Path(p).is_absolute() else repo / p  # noqa: E731
    deps, outs = [local(p) for p in stage["deps"]], [local(p) for p in stage["outs"]]
    ignored = _ignore_checker_for(repo)
    params_file = local(next(iter(stage["params"]), ROOT / "params.yaml"))
    for rel in trace["read"]:
        path = repo / rel
        if path.suffix == ".py" or (path.is_dir() and _covered(path, [repo / "src", repo / "stages"])):
            continue  # code: held to the import closure above
        assert (
            _covered(path, deps + outs)
            or path == params_file
            or ignored(path)
            or (path.is_dir() and any(_covered(d, [path]) for d in deps + outs))  # a folder above them
        ), f"{stage_id} read {rel}, which is not among its deps"
    for rel in trace["write"]:
        path = repo / rel
        # a path left absent was only cleared (dvclive empties plots/custom, plots/images...): no output
        assert not path.exists() or _covered(path, outs) or ignored(path) or any(_covered(o, [path]) for o in outs), (
            f"{stage_id} wrote {rel}, which is not among its outputs"
        )


def _ignore_checker_for(repo: Path):
    return _ignore_checker(_repo(repo))


# ---------------------------------------------------------------------------------------------
# `python tests/test_dag.py --fix`: rewrite the code deps of every dvc.yaml (comments kept)
# ---------------------------------------------------------------------------------------------
def fix_code_deps() -> list[str]:
    """Set each stage's code deps to its script and import closure; returns the files changed."""
    from ruamel.yaml import YAML

    yaml_rt = YAML()
    yaml_rt.preserve_quotes = True
    yaml_rt.width = 120
    yaml_rt.indent(mapping=2, sequence=4, offset=2)
    changed = []
    for dvcfile in sorted({Path(s["id"].split(":")[0]) for s in _stages()}):
        path = ROOT / dvcfile
        doc = yaml_rt.load(path.read_text())
        for name, body in doc["stages"].items():
            if "foreach" in body or "matrix" in body:  # generated stages share one body: the first stands for all
                stage_id = next(i for i in _ids() if i.startswith(f"{dvcfile.as_posix()}:{name}@"))
                stage, body = _stage(stage_id), body["do"]
            else:
                stage = _stage(f"{dvcfile.as_posix()}:{name}")
            script, _ = _command(stage)
            wdir = stage["wdir"]
            code = [os.path.relpath(p, wdir) for p in [script, *sorted(import_closure(script))]]
            keep = [d for d in body["deps"] if not _is_code(wdir / str(d))]
            new = code + keep
            if list(map(str, body["deps"])) != new:
                body["deps"].clear()
                body["deps"].extend(new)
                changed.append(f"{dvcfile}:{name}")
        with open(path, "w") as fh:
            yaml_rt.dump(doc, fh)
    return changed


def _is_code(path: Path) -> bool:
    path = Path(os.path.abspath(path))
    return _covered(path, [ROOT / "src", ROOT / "stages"]) and (
        path.suffix == ".py" or (path.is_dir() and any(path.rglob("*.py")))
    )


if __name__ == "__main__":
    if sys.argv[1:] != ["--fix"]:
        raise SystemExit("usage: python tests/test_dag.py --fix   (rewrites the code deps of every dvc.yaml)")
    print("\n".join(f"updated {c}" for c in fix_code_deps()) or "every dvc.yaml is up to date")
