#!/usr/bin/env bash
# Set up, install the test fixtures, then run the whole test suite (slow multi-process tests included).
# Extra arguments go to pytest, e.g. `bash launch/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
bash launch/fixtures.sh  # real model + instruction pairs; never fails (their tests skip)
exec python3 -m pytest "$@"
