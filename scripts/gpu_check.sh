#!/usr/bin/env bash
# The checks to run when an NVIDIA GPU is available, in at most BUDGET seconds (default 570):
#   1. scripts/bench.py, resnet50 batch 256 at 224x224 in bf16, and resnet18 with the CIFAR stem,
#      batch 512 at 32x32 in bf16 and fp32: Flax against torch eager, torch channels_last (AMP
#      with bf16) and torch.compile (channels_last);
#   2. the training loop around a no-op step on the GPU (host work per step, against the targets);
#   3. eval parity (Flax on the GPU against torch) for a few variants, TF32 off.
# Writes OUT_DIR/table.md (the results as a table), OUT_DIR/*.log and OUT_DIR/*.json.
#
#     scripts/gpu_check.sh [OUT_DIR]        # default runs/gpu_check; PYTHON=... to pick the interpreter
set -uo pipefail
cd "$(dirname "$0")/.."

OUT_DIR=${1:-runs/gpu_check}
BUDGET=${BUDGET:-570}
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
deadline=$((SECONDS + BUDGET))

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    echo "gpu_check: no NVIDIA GPU here (nvidia-smi lists none); nothing to check" >&2
    exit 2
fi
if ! "$PYTHON" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
    echo "gpu_check: $PYTHON's JAX sees no GPU; install its CUDA wheels first (make install, which finds the GPU)" >&2
    exit 2
fi
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT_DIR/gpu.txt"
echo "gpu_check: $(head -n 1 "$OUT_DIR/gpu.txt"); budget ${BUDGET} s; writing to $OUT_DIR"

# step NAME MAX_SECONDS COMMAND...: run COMMAND under the smaller of MAX_SECONDS and the time left.
step() {
    local name=$1 cap=$2
    shift 2
    local left=$((deadline - SECONDS))
    if ((left < 20)); then
        echo "gpu_check: $name skipped, out of time" | tee -a "$OUT_DIR/skipped.txt"
        return
    fi
    ((cap > left)) && cap=$left
    echo "gpu_check: $name (at most ${cap} s)"
    timeout --kill-after=10 "$cap" "$@" > "$OUT_DIR/$name.log" 2>&1
    local status=$?
    ((status == 124)) && echo "gpu_check: $name stopped after ${cap} s" | tee -a "$OUT_DIR/skipped.txt"
    ((status != 0 && status != 124)) && echo "gpu_check: $name failed (exit $status), see $OUT_DIR/$name.log"
    tail -n 1 "$OUT_DIR/$name.log" | grep '^{' > "$OUT_DIR/$name.json" || rm -f "$OUT_DIR/$name.json"
}

BENCH=(scripts/bench.py --no-loop --torch-channels-last --steps 10 --warmup 3)
step resnet50_b256_bf16 200 "$PYTHON" "${BENCH[@]}" --model resnet50 --batch-size 256 --image-size 224 --precision bf16
step resnet18_cifar_b512_bf16 120 "$PYTHON" "${BENCH[@]}" --model resnet18 --stem cifar --batch-size 512 --image-size 32 --precision bf16
step resnet18_cifar_b512_fp32 100 "$PYTHON" "${BENCH[@]}" --model resnet18 --stem cifar --batch-size 512 --image-size 32 --precision fp32
step loop_cost 60 "$PYTHON" -c "import json; from flax_resnet.studies.benchmark import measure_loop_costs; print(json.dumps(measure_loop_costs(progress=False)))"
PARITY=parity_tests/test_eval_parity.py::test_every_stage_and_the_logits_match
step eval_parity 120 "$PYTHON" -m pytest -q -p no:cacheprovider -n 0 "$PARITY[resnet20]" "$PARITY[resnet18]" \
    "$PARITY[resnet50]" "$PARITY[preact_resnet18]" "$PARITY[resnext50_32x4d]"
tail -n 1 "$OUT_DIR/eval_parity.log" > "$OUT_DIR/eval_parity.txt" 2>/dev/null

"$PYTHON" -c "import sys; from flax_resnet.core.timing import gpu_check_table; print(gpu_check_table(sys.argv[1]))" \
    "$OUT_DIR" > "$OUT_DIR/table.md"
cat "$OUT_DIR/table.md"
