#!/usr/bin/env bash
# One workstation, N processes: `bash launch/torchrun.sh 2 stage=pretrain model=tiny strategy=ddp`.
# NPROC defaults to the GPU count (2 CPU processes without GPUs). All ranks share one Hydra run
# directory through XIULIAN_RUN_ID.
#
# Several nodes (slurm/stage.sh runs this on each node under srun): start it once per node with
#   NNODES=2 RDZV_ENDPOINT=<first node>:29400 RDZV_ID=<job name> bash launch/torchrun.sh 8 ...
# torchrun's c10d rendezvous on RDZV_ENDPOINT assigns the node ranks (NODE_RANK=k pins them);
# every node writes to the run directory named by XIULIAN_RUN_ID (default: RDZV_ID), which must
# be on a file system all nodes share.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then NPROC=$1; shift; else
  NPROC=$(python3 -c "import torch; print(torch.cuda.device_count() or 2)"); fi
NNODES=${NNODES:-1}
if [ "$NNODES" = 1 ] && [ -z "${RDZV_ENDPOINT:-}" ]; then
  export XIULIAN_RUN_ID=${XIULIAN_RUN_ID:-$(date +%Y-%m-%d_%H-%M-%S)}
  exec torchrun --standalone --nproc_per_node "$NPROC" -m llm.train strategy=ddp "$@"
fi
: "${RDZV_ENDPOINT:?NNODES=$NNODES: set RDZV_ENDPOINT=<host of the first node>:<port>, the same on every node}"
RDZV_ID=${RDZV_ID:-xiulian}
export XIULIAN_RUN_ID=${XIULIAN_RUN_ID:-$RDZV_ID}
export XIULIAN_RDZV_ENDPOINT=$RDZV_ENDPOINT  # reported by the preflight (torchrun does not pass it to the ranks)
exec torchrun --nnodes "$NNODES" --nproc_per_node "$NPROC" ${NODE_RANK:+--node_rank "$NODE_RANK"} \
  --rdzv_backend c10d --rdzv_endpoint "$RDZV_ENDPOINT" --rdzv_id "$RDZV_ID" \
  -m llm.train strategy=ddp "$@"
