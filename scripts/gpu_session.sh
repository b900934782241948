#!/usr/bin/env bash
# The one prepared device run (issues 7 and 9), about 9 minutes on an H100/H200:
#   1. bench/bench_scale.py gpu: full-size SD1.5 512 px and SDXL 1024 px (random weights),
#      fp32/fp16/bf16, per memory mode: peak VRAM, time, <R> gradient cosine to fp32 and
#      zero share; SD1.5 whole updates (memory=auto) and the paper's procedure: the ratio.
#   2. the toy model trained from scratch on the GPU (`make toy-model`'s recipe), then its
#      gate (`make toy-gate`'s evaluation) on the weights it reached.
#
# Here, once:  make gpu-wheels        (torchsde, trampoline: the host deps the device image lacks)
# Then the device tool's run:
#   command: bash scripts/gpu_session.sh     carry: [".hosts/comfyui-old", ".whl"]   timeout_s: 600
# Results come back in $OUT (the weights stay there: over the 16 MiB a returned file may have).
# Locally (no GPU) the same steps on tiny sizes: DEVICE=cpu TINY=1 TOY_MINUTES=0.5 OUT=/tmp/gpu_out bash scripts/gpu_session.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export COMFYUI_PATH=${COMFYUI_PATH:-.hosts/comfyui-old} PYTHONUNBUFFERED=1
{ nvidia-smi || true; $PY -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"; } > "$OUT/machine.txt" 2>&1

timeout "${BENCH_SECONDS:-330}" $PY bench/bench_scale.py gpu ${TINY:+--tiny} --out "$OUT/scale_gpu.json" \
  > "$OUT/scale_gpu.log" 2>&1
echo "bench_scale gpu: exit $?" >> "$OUT/machine.txt"

$PY scripts/train_toy_model.py --device "$DEVICE" --fresh --run-dir /tmp/toy_run --out /tmp/toy_run/toyworld.safetensors \
  --max-minutes "${TOY_MINUTES:-2.5}" --export-partial > "$OUT/toy_train.log" 2>&1
echo "train_toy_model: exit $?" >> "$OUT/machine.txt"
timeout "${GATE_SECONDS:-90}" $PY scripts/eval_toy_model.py --weights /tmp/toy_run/toyworld.safetensors --device "$DEVICE" \
  --per-prompt 2 ${TINY:+--per-relation 1} --json "$OUT/toy_gate.json" > "$OUT/toy_gate.log" 2>&1
echo "eval_toy_model: exit $?" >> "$OUT/machine.txt"
tail -n 3 "$OUT/machine.txt"
