#!/usr/bin/env bash
# Set up, then run the whole test suite (slow multi-process tests included).
# Extra arguments go to pytest, e.g. `bash launch/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
exec python3 -m pytest "$@"
