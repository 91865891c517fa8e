#!/usr/bin/env bash
# The main job on an embedded default: set up, then pretrain the tiny model on the English
# documentation text that ships inside CPython, print sample continuations, export.
# Extra arguments are Hydra overrides, e.g. `bash launch/demo.sh trainer.max_steps=50`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
exec python3 -m llm.train stage=pretrain model=tiny data=demo "$@"
