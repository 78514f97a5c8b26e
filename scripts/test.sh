#!/usr/bin/env bash
# Set up .venv with the test extra and run the whole suite (fast + heavy); args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh test
python -m pytest "$@"
