#!/usr/bin/env bash
# Set up .venv with the test extra and run the whole suite (fast + heavy); args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh test
# The tests validate docker-compose.yml with `docker-compose config -q` (no Docker engine needed).
if ! command -v docker-compose >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get install -y -qq docker-compose || { apt-get update -qq && apt-get install -y -qq docker-compose; }) >/dev/null ||
        echo "warning: could not install docker-compose; its test will be skipped" >&2
fi
python -m pytest "$@"
