#!/usr/bin/env bash
# Stage 3 without RL: `sbatch slurm/dpo.sh model=hf model.pretrained=<SFT export> data.sources=[prefs.jsonl] data.datasets=[]`
# #SBATCH lines are defaults: override them on the command line (`sbatch -N 2 --time 4:00:00 ...`).
#SBATCH --job-name=xiulian-dpo
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=08:00:00
#SBATCH --output=logs/%x-%j.out
#SBATCH --requeue
# a requeued job adds to its log; 5 min before the time limit (or at preemption) Slurm signals
# the batch shell: slurm/stage.sh checkpoints and requeues the job
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@300
set -euo pipefail
mkdir -p logs
exec bash slurm/stage.sh dpo "$@"
