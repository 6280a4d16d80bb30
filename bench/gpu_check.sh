#!/usr/bin/env bash
# The first-GPU check: one command, about 8 minutes on one H200, no network. Prints one table.
#
#   WHEELS=/path/to/wheels bench/gpu_check.sh      # installs torch + vllm + rlvr from that folder
#   bench/gpu_check.sh                             # uses the current python (vllm already installed)
#
# Steps (each with its own time limit; a step that cannot run on this machine prints "skipped" and
# why, so a CPU dry run walks the whole script):
#   install   venv $VENV from $WHEELS (pip --no-index --find-links; no network)
#   models    Qwen2.5-0.5B- and 1.5B-shaped random models (rlvr.distributed.shapes), bf16
#   vllm      tests/vllm on the 0.5B shape (RLVR_VLLM_TEST_SHAPE): protocol, fp32 log-prob parity
#             (< 1e-5), bf16 bound, seeded reproducibility, weight push, stop ids, sleep mode
#   rollout   bench/bench_gpu_rollout.py on 1.5B: vLLM vs TorchEngine tokens/s, weight-push seconds
#   learner   tests/gpu/test_learner_gpu.py (CUDA learner, FSDP2) and bench/bench_gpu_learner.py
#             on 0.5B: a few optimizer steps, tokens/s and MFU
# Logs go to $OUT/<step>.log; the table's last column quotes each step's headline lines.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out/gpu_check}
VENV=${VENV:-.venv-gpu}
WHEELS=${WHEELS:-}
PY=${PY:-python3}
mkdir -p "$OUT"
ROWS=()
GPU=""
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
fi

row() { ROWS+=("| $1 | $2 | $3 | $4 |"); }

# run NAME LIMIT_S PATTERN COMMAND...: runs COMMAND under a time limit, logs it, records a row
# whose detail is the log lines matching PATTERN (grep -E), joined with "; ".
run() {
    local name=$1 limit=$2 pattern=$3; shift 3
    local start=$SECONDS status detail
    if [ -z "$GPU" ]; then
        row "$name" skipped 0 "no NVIDIA GPU (nvidia-smi finds none)"; return
    fi
    if timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then status=ok; else status="FAILED (rc $?)"; fi
    detail=$(grep -E "$pattern" "$OUT/$name.log" | grep -v WARNING | tail -6 | tr '\n' ';' | sed 's/;$//; s/|/\//g')
    row "$name" "$status" $((SECONDS - start)) "${detail:-see $OUT/$name.log}"
}

# ---------------------------------------------------------------- install
if [ -z "$GPU" ]; then
    row install skipped 0 "no NVIDIA GPU (nvidia-smi finds none)"
elif [ -n "$WHEELS" ]; then
    run install 90 "Successfully installed|vllm [0-9]" bash -c "
        $PY -m venv $VENV && $VENV/bin/pip install -q --no-index --find-links '$WHEELS' torch vllm &&
        $VENV/bin/pip install -q --no-index --find-links '$WHEELS' -e '.[dev]' &&
        $VENV/bin/python -c 'import torch, vllm; print(\"torch\", torch.__version__, \"vllm\", vllm.__version__)'"
    PY=$VENV/bin/python
else
    row install skipped 0 "WHEELS not set: using $PY as it is"
fi

# ---------------------------------------------------------------- models
run models 45 "wrote" "$PY" -c "
from rlvr.distributed.shapes import random_model_dir
import torch
for shape in ('0.5B', '1.5B'):
    print('wrote', random_model_dir(shape, '$OUT/models/' + shape, dtype=torch.bfloat16, device='cuda', logit_scale=8.0))
"

# ---------------------------------------------------------------- vLLM engine tests and parity
run vllm 120 "passed|failed|fp32 T=|bf16:" env RLVR_VLLM_TEST_SHAPE=0.5B "$PY" -m pytest -q -s -p no:cacheprovider \
    tests/vllm/test_vllm_engine.py

# ---------------------------------------------------------------- vLLM tokens/s and weight push
run rollout 90 "tok|load_weights|ratio" "$PY" bench/bench_gpu_rollout.py --shape 1.5B --num-prompts 64 --n 8 \
    --prompt-tokens 256 --max-new 256 --repeats 1

# ---------------------------------------------------------------- CUDA learner (FSDP2) and MFU
run learner_tests 60 "passed|failed|skipped" "$PY" -m pytest -q -p no:cacheprovider tests/gpu/test_learner_gpu.py
run learner_mfu 75 "MFU|tok/s|tokens/s" "$PY" bench/bench_gpu_learner.py --shape 0.5B --groups 8 --group-size 8 \
    --max-new 1024 --repeats 2

echo
echo "gpu_check on ${GPU:-no GPU} ($(date -u +%Y-%m-%dT%H:%MZ)), logs in $OUT"
echo "| step | status | seconds | figures |"
echo "|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
