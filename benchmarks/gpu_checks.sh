#!/usr/bin/env bash
# The GPU checks in one run, for a session that has a GPU machine (BENCHMARKS.md records them):
#   1-2. trainer MFU on the random-init Qwen2-0.5B-shaped model: the single-device path
#        (compiled layers, bf16 weights with float32 masters) against one FSDP2 rank (issue 18);
#   3.   one round of configs/chat-dpo-rm.yaml's shape, hf backend in bf16, per-stage wall time
#        and peak GPU memory (issue 17);
#   4.   the CUDA-only tests.
# Each part writes one log under OUT_DIR (default $OUT, else /tmp/gpu-checks) and has its own
# time limit, so a part that fails or hangs leaves the others' figures.
#
# A machine without the store's packages (sqlalchemy, alembic, pydantic) takes them as wheels
# in .whl (the device README's `pip download` line), installed first when the folder exists:
#   bash benchmarks/gpu_checks.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/gpu-checks}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
    git log -1 --format='commit %H' 2>/dev/null || true
    nproc
} >"$out/machine.txt" 2>&1

part() {  # part NAME SECONDS COMMAND...: run it, its output to NAME.log, its time at the end
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    echo "[$name: exit $?, $((SECONDS - start)) s]" | tee -a "$out/$name.log"
}

part mfu_single 150 python3 benchmarks/trainer_throughput.py --gpu --compile --bf16-weights --steps 15
part mfu_fsdp 150 python3 benchmarks/trainer_throughput.py --gpu --compile --fsdp --steps 15
part chat_round 300 python3 benchmarks/chat_round.py --out /tmp/chat-round --json "$out/chat_round.json" \
    --prompts 256 --max-new-tokens 256
part tests 150 python3 -m pytest -q -p no:cacheprovider tests/selfplay/training/test_gpu.py \
    tests/selfplay/test_precision.py
