#!/usr/bin/env bash
# Create .venv and install selfplay into it: `source scripts/setup.sh [EXTRAS]`, e.g. `test`.
set -euo pipefail
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0  # the local CPU build; never the multi-GB CUDA one
python -m pip install -q -e ".${1:+[$1]}"
