#!/usr/bin/env bash
# Submit the whole chain as Slurm jobs with dependencies: pretrain -> SFT -> reward model -> PPO.
# Each stage starts only when the one before succeeded (--dependency=afterok) and reads its export:
# the run directory of a job is outputs/<stage>/slurm-<job id>, known as soon as sbatch answers.
#   bash slurm/chain.sh                                   # the demo's data and settings, tiny model
#   PRETRAIN_ARGS="model=llama_1b data=shards data.shards=/data/shards" SFT_ARGS="data.sources=[chat.jsonl] data.datasets=[]" \
#   RM_ARGS="data.sources=[prefs.jsonl] data.datasets=[]" PPO_ARGS="data.sources=[prompts.jsonl] data.datasets=[]" \
#   SBATCH_ARGS="--time=24:00:00" bash slurm/chain.sh
# STAGES="pretrain sft" submits a shorter chain. Prints one line per job: "<stage> <job id> <export>".
# A requeued job (preemption, time limit) keeps its id, so the chain waits for it and goes on.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/hydra-quote.sh  # export paths go to Hydra quoted (commas, quotes, '=' in the checkout path)
stages=${STAGES:-pretrain sft rm ppo}
want() { [[ " $stages " == *" $1 "* ]]; }
export_of() { echo "$PWD/outputs/$1/slurm-$2/export"; }
submit() {  # submit DEPENDENCY SCRIPT ARGS...
  local dep=$1; shift
  # shellcheck disable=SC2086
  sbatch --parsable ${dep:+--dependency=afterok:$dep --kill-on-invalid-dep=yes} ${SBATCH_ARGS:-} "$@" | cut -d';' -f1
}
dep=""
if want pretrain; then
  # shellcheck disable=SC2086
  pre=$(submit "" slurm/pretrain.sh model=tiny data=demo ${PRETRAIN_ARGS:-})
  echo "pretrain $pre $(export_of pretrain "$pre")"; dep=$pre
  base=$(export_of pretrain "$pre")
else
  base=${BASE:?without the pretrain stage, set BASE=<a stage-1 export or HF model directory>}
fi
want sft || exit 0
# shellcheck disable=SC2086
sft=$(submit "$dep" slurm/sft.sh model=hf "model.pretrained=$(hydra_quote "$base")" data=sft_demo ${SFT_ARGS:-})
echo "sft $sft $(export_of sft "$sft")"
want rm || exit 0
# shellcheck disable=SC2086
rmj=$(submit "$sft" slurm/rm.sh model=hf "model.pretrained=$(hydra_quote "$(export_of sft "$sft")")" data=pref_demo data.seq_len=128 ${RM_ARGS:-})
echo "rm $rmj $(export_of rm "$rmj")"
want ppo || exit 0
# shellcheck disable=SC2086
ppo=$(submit "$rmj" slurm/ppo.sh model=hf "model.pretrained=$(hydra_quote "$(export_of sft "$sft")")" "stage.reward.model=$(hydra_quote "$(export_of rm "$rmj")")" \
  data=prompts_demo ${PPO_ARGS:-})
echo "ppo $ppo $(export_of ppo "$ppo")"
