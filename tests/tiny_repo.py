"""The default pipeline at a tiny size in a temporary git + DVC repository, for the slow tests.

:func:`tiny_pipeline` builds it once per test session (``dvc repro`` with the stage tracer of
:mod:`deqa.stage` on, then a commit of ``dvc.lock`` and the metrics as the baseline) and hands
the same folder to every test module that asks; tests that change it work on a :func:`clone`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
TRACE = "stage-trace.jsonl"  # beside the repository, not in it
COPIED = ("dvc.yaml", "params.yaml", "gate.yaml", ".gitignore", ".dvcignore")
TINY = {
    "prepare.synthetic": {"crops_per_photo": 1, "image_size": 64},
    "model.tiny": {"image_size": 64, "hidden_size": 32, "intermediate_size": 64, "layers": 1, "heads": 2},
    "train": {"epochs": 1, "batch_pairs": 8, "checkpoint_every": 10},
    "sensitivity": {"image_size": 64, "scenes_per_kind": 1, "severities": 3},
    "evaluate": {"bootstrap": 20},
}
_BUILT: dict[Path, Path] = {}


def env(**extra: str) -> dict[str, str]:
    out = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "deqa-test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "deqa-test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
        **extra,
    }
    for name in ("CI", "DVC_STAGE", "DVC_ROOT", "DEQA_TRACE"):
        if name not in extra:
            out.pop(name, None)
    return out


def run(cmd: list[str], cwd: Path, timeout: int = 900, check: bool = True, **extra_env: str):
    """Run ``cmd`` in ``cwd``; with ``check`` fail the test with the tail of its output."""
    res = subprocess.run(cmd, cwd=cwd, env=env(**extra_env), capture_output=True, text=True, timeout=timeout)
    if check:
        assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def tiny_params(path: Path) -> None:
    """Shrink the default params in ``path`` to the tiny size (seconds per stage)."""
    params = yaml.safe_load(path.read_text())
    for dotted, values in TINY.items():
        section = params
        for part in dotted.split("."):
            section = section[part]
        section.update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def make_repo(repo: Path) -> Path:
    """A git + DVC repository holding this checkout's default pipeline at the tiny size."""
    repo.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, repo / name)
    for folder in ("stages", "src"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    tiny_params(repo / "params.yaml")
    run(["git", "init", "-q"], repo)
    run([DVC, "init", "-q"], repo)
    run([DVC, "config", "core.analytics", "false"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny pipeline"], repo)
    return repo


def tiny_pipeline(base: Path) -> Path:
    """The session's tiny pipeline, reproduced and committed (built on the first call)."""
    if base not in _BUILT:
        repo = make_repo(base / "tiny-pipeline")
        trace = base / TRACE
        trace.unlink(missing_ok=True)
        run([DVC, "repro"], repo, DEQA_TRACE=str(trace))
        run(["git", "add", "-A"], repo)
        run(["git", "commit", "-qm", "baseline: dvc.lock and metrics"], repo)
        _BUILT[base] = repo
    return _BUILT[base]


def clone(repo: Path, dest: Path) -> Path:
    """A git clone of ``repo`` sharing its DVC cache, with the committed outputs checked out."""
    run(["git", "clone", "-q", str(repo), str(dest)], repo.parent)
    run([DVC, "cache", "dir", "--local", str(repo / ".dvc" / "cache")], dest)
    run([DVC, "config", "--local", "core.analytics", "false"], dest)
    run([DVC, "checkout", "-q"], dest)
    return dest


def blurred_photos(folder: Path, n: int, seed: int, size: int, prefix: str, photos: int = 4) -> list[tuple[str, float]]:
    """``n`` stand-in rated photos under ``folder/images``: ``size``-px crops of scikit-image's
    photos, each blurred by a random radius in [0, 3); ``(file relative to folder, radius)`` each
    (the larger the radius, the worse the photo)."""
    import numpy as np
    from PIL import Image, ImageFilter
    from skimage import data

    rng = np.random.default_rng(seed)
    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()][:photos]
    (folder / "images").mkdir(parents=True)
    out = []
    for i in range(n):
        photo = sources[i % len(sources)]
        y, x = rng.integers(0, photo.shape[0] - 160), rng.integers(0, photo.shape[1] - 160)
        radius = float(rng.uniform(0, 3))
        img = (
            Image.fromarray(photo[y : y + 160, x : x + 160])
            .resize((size, size))
            .filter(ImageFilter.GaussianBlur(radius))
        )
        img.save(folder / "images" / f"{prefix}{i:03d}.png")
        out.append((f"images/{prefix}{i:03d}.png", radius))
    return out
