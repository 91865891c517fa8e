#!/usr/bin/env bash
# The main job on an embedded default, on CPU, needing no root and no network:
#   1. pretrain the tiny model on the English documentation text that ships inside CPython;
#   2. instruction-tune it (SFT, loss on the assistant's tokens only) on question/answer pairs
#      made from the same documentation, starting from stage 1's export.
# Extra arguments are Hydra overrides for stage 1; SFT_ARGS (a string) for stage 2, e.g.
#   SFT_ARGS="stage=sft_lora" bash launch/demo.sh trainer.max_steps=100
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
run=${XIULIAN_RUN_ID:-demo-$(date +%Y-%m-%d_%H-%M-%S)}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== stage 1: pretrain =="
XIULIAN_RUN_ID=$run python3 -m llm.train stage=pretrain model=tiny data=demo "$@" | tee "$log"
base=$(sed -n 's/^export: //p' "$log" | tail -n1)
[ -n "$base" ] || { echo "stage 1 printed no export path" >&2; exit 1; }

echo "== stage 2: instruction fine-tuning from $base =="
# shellcheck disable=SC2086
XIULIAN_RUN_ID=$run python3 -m llm.train stage=sft model=hf "model.pretrained=$base" data=sft_demo \
  trainer.max_steps=150 trainer.val_every_n_steps=50 stage.optim.lr=2e-3 ${SFT_ARGS:-}
