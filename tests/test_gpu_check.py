"""bench/gpu_check.sh at toy size on the CPU: the prepared GPU check builds both families, trains
with a falling loss, scores, runs its DDP part on 2 gloo ranks and writes its figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_at_toy_size_on_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = ["bash", str(ROOT / "bench" / "gpu_check.sh"), str(tmp_path), "--toy", "--ddp", "2"]
    cmd += ["--steps", "4", "--score-images", "8"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [m["model"] for m in report["models"]] == ["qwen2-vl-2b", "llava-1.5-7b"]
    for m in report["models"]:
        before, after = m["train"]["fixed_batch_loss"]
        assert m["train"]["steps"] == 4 and after < before and m["train"]["loss_fell"]
        assert m["score"]["images"] == 8 and m["score"]["images_per_s"] > 0
    assert report["ddp"]["ranks"] == 2 and report["ddp"]["steps"] == 4
    md = (tmp_path / "gpu_check.md").read_text()
    assert "qwen2-vl-2b (toy)" in md and "DDP, qwen2-vl-2b over 2 ranks" in md
    assert "torch" in (tmp_path / "environment.txt").read_text()


def test_real_sizes_have_the_published_parameter_counts():
    """The hyperparameters the GPU check builds from give the checkpoints' published sizes
    (Qwen2-VL-2B-Instruct 2,208,985,600 parameters with tied embeddings; llava-1.5-7b-hf
    7,063,427,072), counted on the meta device."""
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_check

    assert gpu_check.parameter_count("qwen2-vl-2b") == 2_208_985_600
    assert gpu_check.parameter_count("llava-1.5-7b") == 7_063_427_072
