#!/usr/bin/env bash
# Stage 1 on a cluster: `sbatch slurm/pretrain.sh model=llama_1b data=shards data.shards=/data/shards`
# #SBATCH lines are defaults: override them on the command line (`sbatch -N 4 ...`).
#SBATCH --job-name=xiulian-pretrain
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=logs/%x-%j.out
#SBATCH --requeue
# a requeued job adds to its log; 5 min before the time limit (or at preemption) Slurm signals
# the batch shell: slurm/stage.sh checkpoints and requeues the job
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@300
set -euo pipefail
mkdir -p logs
exec bash slurm/stage.sh pretrain "$@"
