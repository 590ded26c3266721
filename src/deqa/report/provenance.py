"""Where a report's numbers come from: git revision, params digest, package versions, date.

Nothing here calls DVC: the report stage runs inside ``dvc repro``, which holds the repository
lock. ``git`` is only asked for the checked-out revision and whether tracked files differ from it
(``dvc.lock`` and ``metrics/``, which a running pipeline rewrites, are not counted).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("deqa", "torch", "transformers", "peft", "accelerate", "dvc", "dvclive", "numpy", "pandas", "scipy")
"""Distributions whose versions the report records."""


@dataclass
class Provenance:
    revision: str | None
    dirty: bool | None
    git_note: str
    params_digest: str | None
    packages: dict[str, str] = field(default_factory=dict)
    python: str = ""
    platform: str = ""
    date: str = ""


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_state(repo_dir: Path) -> tuple[str | None, bool | None, str]:
    """``(revision, dirty, note)``; ``dirty`` ignores ``dvc.lock`` and ``metrics/``."""
    revision = _git(["rev-parse", "HEAD"], repo_dir)
    if revision is None:
        return None, None, f"{repo_dir} is not a git checkout (or git is missing)"
    status = _git(["status", "--porcelain", "--untracked-files=no", "--", ".", ":!dvc.lock", ":!metrics"], repo_dir)
    dirty = None if status is None else bool(status)
    note = "uncommitted changes to tracked files" if dirty else "clean"
    return revision, dirty, note


def params_digest(params: dict[str, Any] | None) -> str | None:
    """SHA-256 (first 16 hex digits) of the params as canonical JSON: comments and key order do
    not change it, any value does."""
    if params is None:
        return None
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def report_date() -> str:
    """Now in UTC, or ``SOURCE_DATE_EPOCH`` when set (reproducible builds)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.fromtimestamp(int(epoch), UTC) if epoch and epoch.isdigit() else datetime.now(UTC)
    return when.strftime("%Y-%m-%d %H:%M UTC")


def collect_provenance(repo_dir: Path, params: dict[str, Any] | None) -> Provenance:
    revision, dirty, note = git_state(repo_dir)
    return Provenance(
        revision=revision,
        dirty=dirty,
        git_note=note,
        params_digest=params_digest(params),
        packages=package_versions(),
        python=platform.python_version(),
        platform=f"{platform.system()} {platform.machine()}",
        date=report_date(),
    )
