#!/usr/bin/env bash
# What only a GPU shows, in one run of at most 8 minutes on one H100: bf16 pretraining of the 1B
# preset (tokens/s, MFU), the SDPA kernels, compile on/off, FSDP and ZeRO-2/3 on one GPU, LoRA SFT
# and one PPO iteration of SmolLM2, peak CUDA memory beside the planner's prediction.
#   bash launch/gpu-check.sh [--out gpu-check] [--smollm2 /path/to/SmolLM2-hf-dir] [--dry-run]
# Without CUDA (or with --dry-run) the same steps run at tiny sizes on CPU. Writes
# <out>/gpu-check.md and <out>/gpu-check.json (llm/bench/gpu_check.py).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m llm.bench.gpu_check "$@"
