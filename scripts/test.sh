#!/usr/bin/env bash
# Set up a virtual environment with the test extra and run the whole suite (fast + heavy).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0  # the local CPU build; never the multi-GB CUDA one
python -m pip install -q -e ".[test]"
python -m pytest "$@"
