#!/usr/bin/env bash
# Set up .venv and run the embedded quickstart (SQLite, CPU, nothing else needed).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
selfplay run configs/quickstart.yaml
selfplay status --db sqlite:///runs/quickstart/selfplay.db
