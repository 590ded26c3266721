#!/usr/bin/env bash
# Prepared GPU check (<= 8 minutes on one H200-class GPU): real-size random-init Qwen2-VL-2B and
# LLaVA-1.5-7B through deqa's train code in bf16 (peak memory, step time, LoRA steps that lower the
# loss of a batch), scoring throughput, and DDP over the GPUs when there are several. Details and
# figures: bench/gpu_check.py, docs/real-checkpoints.md, BENCHMARKS.md.
#
#   bench/gpu_check.sh [OUT_DIR] [gpu_check.py options]     figures -> OUT_DIR (default: $OUT, else
#                                                            bench/out/gpu_check)
#   bench/gpu_check.sh /tmp/gc --toy --ddp 2                the same code at toy size on the CPU
#                                                            (what tests/test_gpu_check.py runs)
#
# Needs a CUDA build of torch and deqa's dependencies in the active Python (pip install -e . after
# the CUDA torch); nothing is downloaded (HF_HUB_OFFLINE=1). Disk: ~20 GB of checkpoints in a
# temporary folder (removed at the end; --work DIR keeps them). Each phase's figures are printed as
# they come, and DEQA_GPU_CHECK_TIMEOUT (default 480 s) bounds the whole run.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/out/gpu_check}"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then out="$1"; shift; fi
mkdir -p "$out"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
py="${PYTHON:-python}"
{
  echo "== $(date -u +%FT%TZ) $(uname -n), $(nproc) CPU cores"
  "$py" -c 'import torch; print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| GPUs", torch.cuda.device_count())'
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
} | tee "$out/environment.txt"
timeout "${DEQA_GPU_CHECK_TIMEOUT:-480}" "$py" bench/gpu_check.py --out "$out" "$@" 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
