#!/usr/bin/env bash
# One workstation, N processes: `bash launch/torchrun.sh 2 stage=pretrain model=tiny strategy=ddp`.
# NPROC defaults to the GPU count (2 CPU processes without GPUs). All ranks share one Hydra run
# directory through XIULIAN_RUN_ID.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then NPROC=$1; shift; else
  NPROC=$(python3 -c "import torch; print(torch.cuda.device_count() or 2)"); fi
export XIULIAN_RUN_ID=${XIULIAN_RUN_ID:-$(date +%Y-%m-%d_%H-%M-%S)}
exec torchrun --standalone --nproc_per_node "$NPROC" -m llm.train strategy=ddp "$@"
