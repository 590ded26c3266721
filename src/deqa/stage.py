"""Shared plumbing for the thin ``stages/<name>.py`` scripts.

- :func:`parse_stage_args`: logging at INFO (so library ``log.info`` lines show in ``dvc repro``),
  ``--params`` plus the stage's path arguments (all required: ``dvc.yaml`` passes every path, so
  the same scripts serve any pipeline folder), and the checked, typed params (exit 2 on a bad file).
- :func:`require_deps`: the inputs a stage reads because params name them (``prepare.sources``
  label files and image folders, a ``model.base`` checkpoint, ``evaluate.extra`` sets) must be
  declared ``deps`` of the running stage in its ``dvc.yaml``; DVC cannot loop over a params list
  in ``deps``, so the stage checks itself and fails with a one-line message naming the dep to add.
  In a temporary or queued experiment (``dvc exp run --temp``/``--queue``, which run in a copy
  under ``.dvc/tmp/exps``) a relative path outside the repository does not reach the data;
  a declared one makes DVC fail, an optional undeclared one makes the stage fail (it is never
  silently dropped).
- With ``DEQA_TRACE=<file>`` in the environment a stage appends to that file, at exit, the params
  keys it read and the repository files it read and wrote (``tests/test_dag.py`` holds these to
  ``dvc.yaml``).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from deqa.config import ConfigError, Params, load_params, start_recording

log = logging.getLogger(__name__)

TRACE_ENV = "DEQA_TRACE"
LOG_FORMAT = "%(levelname).1s %(name)s: %(message)s"


def setup_logging() -> None:
    """INFO-level logging with a short format, on stderr (shown by ``dvc repro``)."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, force=True)
    for noisy in (
        "urllib3",
        "filelock",
        "matplotlib",
        "PIL",
        "fsspec",
        "great_expectations",
        "dvc",
        "scmrepo",
        "accelerate",
        "httpx",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def parse_stage_args(
    argv: list[str] | None, description: str | None, **paths: str
) -> tuple[argparse.Namespace, Params]:
    """Parse ``--params`` and the required path options ``paths`` (``name="help"``; ``--name``).

    Returns the arguments and the checked params; exits with status 2 and a one-line message on
    a bad params file. Also sets up logging and, under ``DEQA_TRACE``, the read/write tracer.
    """
    setup_logging()
    _check_package_location()
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    for name, help_text in paths.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, required=True, help=help_text)
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
    except ConfigError as exc:
        raise SystemExit(f"error: {args.params}: {exc}") from None
    if os.environ.get(TRACE_ENV):
        _start_trace(os.environ[TRACE_ENV], args.params)
    return args, params


def _check_package_location() -> None:
    """Refuse to run another checkout's ``deqa`` (an editable install points at one checkout)."""
    import deqa

    script = Path(sys.argv[0]).resolve()
    own = script.parents[1] / "src" / "deqa" if len(script.parents) > 1 else None
    if (
        own is not None
        and script.parent.name == "stages"
        and own.is_dir()
        and Path(deqa.__file__).resolve().parent != own.resolve()
    ):
        raise SystemExit(
            f"error: {script} imported deqa from {Path(deqa.__file__).parent}, not from its "
            f"own checkout ({own}); put `sys.path.insert(0, <checkout>/src)` before the deqa imports"
        )


def set_threads(n: int) -> None:
    """Pin torch (and BLAS) to ``n`` threads; on a busy 2-core machine 1 is much faster."""
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    import torch

    torch.set_num_threads(n)


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as stable, indented JSON (a ``dvc metrics`` file, a report...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


# --------------------------------------------------------------------------------------------
# external inputs named by params
# --------------------------------------------------------------------------------------------
def repo_root(start: str | Path | None = None) -> Path | None:
    """The nearest folder at or above ``start`` (default: the working directory) holding ``.dvc/``."""
    here = Path(start or Path.cwd()).absolute()
    return next((p for p in (here, *here.parents) if (p / ".dvc").is_dir()), None)


def source_inputs(sources: list, key: str) -> dict[str, str]:
    """The files and folders that data sources (``prepare.sources``/``evaluate.extra``) will read.

    Returns ``{"<key>[i].labels": path, "<key>[i].root": path}`` for each source that will be
    read; an optional (``required: false``) source whose label file is absent is left out, as the
    importer skips it, except in a temporary experiment copy where the file exists at the
    original location: then the stage fails (the set would otherwise be silently dropped).
    """
    out: dict[str, str] = {}
    for i, src in enumerate(sources):
        where = f"{key}[{i}]"
        if src.format == "distorted":  # generated from another source's photos, already listed
            continue
        if src.format != "synthetic":
            if not Path(src.labels).is_file() and not src.required:
                _refuse_silent_skip(f"{where}.labels", src.labels)
                continue
            out[f"{where}.labels"] = src.labels
        root = src.root or (str(Path(src.labels).parent) if src.format != "synthetic" else "")
        if root:
            out[f"{where}.root"] = root
    return out


def image_roots(*files: str | Path) -> dict[str, str]:
    """The image folders (``root`` column) that manifest or label CSV files send a stage to read."""
    import pandas as pd

    out: dict[str, str] = {}
    for f in files:
        if Path(f).is_file():
            for root in sorted(set(pd.read_csv(f, usecols=["root"], dtype=str, keep_default_na=False)["root"])):
                out.setdefault(f"images of {f} (root {root})", root or ".")
    return out


def checkpoint_inputs(base_dir: str | Path) -> dict[str, str]:
    """The local checkpoint that ``base_model`` recorded in ``<base_dir>/deqa_base.json`` (if any)."""
    pointer = Path(base_dir) / "deqa_base.json"
    if not pointer.is_file():
        return {}
    record = json.loads(pointer.read_text())
    return {f"model.base (recorded in {pointer})": record["path"]} if record.get("path") else {}


def _refuse_silent_skip(key: str, path: str) -> None:
    original = _original_wdir()
    if original is not None and not Path(path).is_absolute() and (original / path).exists():
        raise SystemExit(
            f"error: {key}: {path} is not reachable from this temporary experiment copy ({Path.cwd()}), "
            f"but exists from the original repository ({original / path}); relative paths outside the "
            "repository do not travel with `dvc exp run --temp/--queue`: use an absolute path, "
            "`dvc import-url`, or run the experiment in the workspace"
        )


def _original_wdir() -> Path | None:
    """In a temp/queued experiment copy: the working directory's counterpart in the original repo."""
    root, original = repo_root(), os.environ.get("DVC_ROOT")
    if root is None or not original or Path(original).resolve() == root.resolve():
        return None
    return Path(original) / Path.cwd().resolve().relative_to(root.resolve())


def require_deps(inputs: dict[str, str]) -> None:
    """Exit with a one-line message unless each input path is covered by a declared stage dep.

    ``inputs`` maps the params key that names an input to its path (relative to the working
    directory, which DVC sets to the stage's ``wdir``). Outside ``dvc repro``/``dvc exp run``
    (no ``DVC_STAGE`` in the environment) nothing is checked.
    """
    if not inputs or not os.environ.get("DVC_STAGE"):
        return
    name, dvcfile, deps = declared_deps()
    for key, path in inputs.items():
        target = Path(os.path.realpath(path))
        if not any(target == d or d in target.parents for d in deps):
            raise SystemExit(
                f"error: {key}: {path} is read by stage '{name}' but is not among its deps in "
                f"{dvcfile}; add `- {path}` to its deps"
            )


def declared_deps() -> tuple[str, str, list[Path]]:
    """The running DVC stage's name, its ``dvc.yaml`` and its deps as absolute paths.

    The stage is found by name (``DVC_STAGE``, set by DVC for every command) and working
    directory among the stages of the repository that holds the working directory, so it is the
    copy's own ``dvc.yaml`` in a temporary experiment. Templated deps come back resolved.
    """
    from dvc.repo import Repo

    name = os.environ["DVC_STAGE"].rpartition(":")[2]
    root = repo_root()
    if root is None:
        raise SystemExit(f"error: stage '{name}' runs outside a DVC repository ({Path.cwd()})")
    cwd = Path.cwd().resolve()
    with _untraced(), Repo(str(root)) as repo:  # DVC reading dvc.yaml/params.yaml is not the stage's input
        found = [s for s in repo.index.stages if getattr(s, "name", None) == name and Path(s.wdir).resolve() == cwd]
        if len(found) != 1:
            raise SystemExit(f"error: cannot find DVC stage '{name}' with working directory {cwd} in {root}")
        stage = found[0]
        deps = [Path(os.path.realpath(d.fs_path)) for d in stage.deps]
        return name, os.path.relpath(stage.path, cwd), deps


# --------------------------------------------------------------------------------------------
# tracing (DEQA_TRACE)
# --------------------------------------------------------------------------------------------
_TRACE = {"paused": False}


@contextlib.contextmanager
def _untraced():
    paused, _TRACE["paused"] = _TRACE["paused"], True
    try:
        yield
    finally:
        _TRACE["paused"] = paused


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_SKIP_PARTS = {".dvc", ".git", "__pycache__"}
_SKIP_NAMES = {"dvc.yaml", "dvc.lock", ".gitignore", ".dvcignore"}


def _start_trace(trace_file: str, params_file: str) -> None:
    """Record params keys and repository file reads/writes; append them to ``trace_file`` at exit."""
    root = (repo_root() or Path.cwd()).resolve()
    params_path = os.path.abspath(params_file)
    reads, files = start_recording(), {"read": set(), "write": set()}

    def note(kind: str, path: Any) -> None:
        try:
            p = os.path.abspath(os.fsdecode(path))
        except TypeError:
            return
        if p == params_path and kind == "read":
            reads.add("*")  # the whole params file, read raw
            return
        rel = os.path.relpath(p, root)
        if rel.startswith("..") or _SKIP_PARTS & set(Path(rel).parts) or rel in _SKIP_NAMES:
            return
        files[kind].add(Path(rel).as_posix())

    def hook(event: str, args: tuple) -> None:
        if _TRACE["paused"]:
            return
        if event == "open" and args and not isinstance(args[0], int):
            mode, flags = args[1], args[2] if len(args) > 2 else 0
            write = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _WRITE_FLAGS)
            note("write" if write else "read", args[0])
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree"):
            note("write", args[0])
        elif event in ("os.rename", "os.replace", "shutil.move"):
            note("write", args[0])
            note("write", args[1])
        elif event in ("os.listdir", "os.scandir") and args and args[0] is not None:
            note("read", args[0])

    def dump() -> None:
        record = {
            "stage": os.environ.get("DVC_STAGE"),
            "root": str(root),
            "wdir": Path(os.path.relpath(Path.cwd(), root)).as_posix(),
            "script": Path(os.path.relpath(os.path.abspath(sys.argv[0]), root)).as_posix(),
            "params_file": Path(os.path.relpath(params_path, root)).as_posix(),
            "params": sorted(reads),
            "read": sorted(files["read"]),
            "write": sorted(files["write"]),
        }
        with open(trace_file, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    sys.addaudithook(hook)
    atexit.register(dump)
