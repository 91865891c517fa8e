#!/usr/bin/env bash
# Shared body of slurm/<stage>.sh: one torchrun per node (srun --ntasks-per-node=1), which
# starts one process per GPU and meets the other nodes through a c10d rendezvous on the first
# node. Why torchrun rather than one srun task per GPU: the same launcher as on a workstation
# (launch/torchrun.sh), elastic restarts, and no dependence on Slurm's GPU binding.
# Usage (inside an allocation): bash slurm/stage.sh <stage> [hydra overrides]
set -euo pipefail
STAGE=$1; shift
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
NODES=${SLURM_NNODES:-1}
GPUS=${XIULIAN_GPUS_PER_NODE:-$(python3 -c "import torch; print(torch.cuda.device_count() or 1)")}
# Slurm sets neither: the first node of the allocation, a port derived from the job id
MASTER_ADDR=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" 2>/dev/null | head -n1 || hostname)
MASTER_PORT=$((20000 + ${SLURM_JOB_ID:-0} % 20000))
export MASTER_ADDR MASTER_PORT
# every rank writes to one run directory, named by the job id (stable across requeues)
export XIULIAN_RUN_ID=${XIULIAN_RUN_ID:-slurm-${SLURM_JOB_ID:-local}}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$HOME/.cache/torch_extensions}
echo "[slurm] stage=$STAGE nodes=$NODES gpus/node=$GPUS master=$MASTER_ADDR:$MASTER_PORT run=$XIULIAN_RUN_ID"
srun --ntasks-per-node=1 --kill-on-bad-exit=1 \
  torchrun --nnodes "$NODES" --nproc_per_node "$GPUS" \
  --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv_id "${SLURM_JOB_ID:-0}" \
  -m llm.train "stage=$STAGE" strategy=ddp ckpt_path=last "$@"
