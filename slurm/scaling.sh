#!/usr/bin/env bash
# A scaling-law sweep as a Slurm array: one pretraining run per grid point (size x token budget).
#   sbatch --array=0-8 slurm/scaling.sh --widths 256,512,1024 --steps 2000,4000,8000 --out /scratch/scaling \
#       data=shards data.shards=/data/shards
#   # when all tasks are done (or: sbatch --dependency=afterok:<array job id> ...):
#   python -m llm.eval.scaling fit /scratch/scaling --budget 1e21
# The grid is numbered in Hydra multirun order (layers x widths x steps); `--task K --print` shows
# point K. Each task is a single-GPU run; a point that needs more GPUs uses slurm/pretrain.sh.
#SBATCH --job-name=xiulian-scaling
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --output=logs/%x-%A_%a.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
mkdir -p logs
exec python3 -m llm.eval.scaling sweep --task "${SLURM_ARRAY_TASK_ID:?submit with sbatch --array=0-N}" "$@"
