#!/usr/bin/env bash
# Shared body of slurm/<stage>.sh: one torchrun per node (srun --ntasks-per-node=1 running
# launch/torchrun.sh with NNODES and RDZV_ENDPOINT), which starts one process per GPU and meets
# the other nodes through a c10d rendezvous on the first node. Why torchrun rather than one srun
# task per GPU: the same launcher as on a workstation, elastic restarts, and no dependence on
# Slurm's GPU binding. Every job starts with a preflight (llm/preflight.py, docs/slurm.md).
# Usage (inside an allocation): bash slurm/stage.sh <stage> [hydra overrides]
set -euo pipefail
STAGE=$1; shift
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
NODES=${SLURM_NNODES:-1}
GPUS=${XIULIAN_GPUS_PER_NODE:-$(python3 -c "import torch; print(torch.cuda.device_count() or 1)")}
# Slurm sets neither: the first node of the allocation, a port derived from the job id
FIRST=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" 2>/dev/null | head -n1 || hostname)
# where Slurm reaches it (its NodeAddr; the node name on most clusters, 127.0.0.1 for the
# simulated nodes of slurm/local-cluster.sh)
MASTER_ADDR=$(scontrol show node "$FIRST" 2>/dev/null | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2 || true)
MASTER_ADDR=${MASTER_ADDR:-$FIRST}
MASTER_PORT=$((20000 + ${SLURM_JOB_ID:-0} % 20000))
export MASTER_ADDR MASTER_PORT
# every rank writes to one run directory, named by the job id (stable across requeues)
export XIULIAN_RUN_ID=${XIULIAN_RUN_ID:-slurm-${SLURM_JOB_ID:-local}}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$HOME/.cache/torch_extensions}
echo "[slurm] stage=$STAGE nodes=$NODES gpus/node=$GPUS master=$MASTER_ADDR:$MASTER_PORT run=$XIULIAN_RUN_ID"
echo "[slurm] restart count ${SLURM_RESTART_COUNT:-0}: resuming from the newest checkpoint of the run, if any"

# Preemption and time limits: `#SBATCH --signal=B:USR1@300` makes Slurm signal this shell 300 s
# before the end; the trap creates a flag file that rank 0 sees at the end of the next step
# (llm.callbacks.Preemption), every rank stops after a checkpoint of that step, and this shell
# requeues the job (same job id: same run directory; SLURM_RESTART_COUNT counts the restarts).
mkdir -p "${SLURM_SUBMIT_DIR:-.}/.xiulian"
export XIULIAN_PREEMPT_FILE="${SLURM_SUBMIT_DIR:-$PWD}/.xiulian/preempt-${SLURM_JOB_ID:-local}"
rm -f "$XIULIAN_PREEMPT_FILE" "$XIULIAN_PREEMPT_FILE.saved"
trap 'echo "[slurm] $(date +%T) USR1: checkpoint and requeue"; touch "$XIULIAN_PREEMPT_FILE"' USR1

# the preflight of the first node (devices, versions, rendezvous, NCCL's environment); every
# job prints the whole one again from rank 0 once all ranks have met (llm/preflight.py)
python3 -m llm.preflight --ranks-per-node "$GPUS"

# setsid: srun in its own process group, so that the signal meant for this shell is not also
# delivered to srun (which would forward it to torchrun and end the step). Each node runs
# launch/torchrun.sh, which meets the others in a c10d rendezvous on the first node.
export NNODES=$NODES RDZV_ENDPOINT="$MASTER_ADDR:$MASTER_PORT" RDZV_ID="${SLURM_JOB_ID:-0}"
setsid srun --ntasks-per-node=1 --kill-on-bad-exit=1 \
  bash launch/torchrun.sh "$GPUS" "stage=$STAGE" ckpt_path=last "$@" &
pid=$!
set +e  # `wait` returns 138 when the trap interrupts it: not an error, wait again until srun ends
while :; do
  wait "$pid"; rc=$?
  kill -0 "$pid" 2>/dev/null || break
done
set -e
if [ -f "$XIULIAN_PREEMPT_FILE.saved" ]; then  # training stopped for the signal (not finished)
  echo "[slurm] $(date +%T) checkpoint of step $(cat "$XIULIAN_PREEMPT_FILE.saved") written; requeueing job ${SLURM_JOB_ID:-}"
  rm -f "$XIULIAN_PREEMPT_FILE" "$XIULIAN_PREEMPT_FILE.saved"
  [ -n "${SLURM_JOB_ID:-}" ] && scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
rm -f "$XIULIAN_PREEMPT_FILE"
exit "$rc"
