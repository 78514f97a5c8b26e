#!/usr/bin/env bash
# Set up a virtual environment and run the embedded quickstart (SQLite, CPU, nothing else needed).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0  # the local CPU build; never the multi-GB CUDA one
python -m pip install -q -e .
selfplay run configs/quickstart.yaml
selfplay status --db sqlite:///runs/quickstart/selfplay.db
