#!/usr/bin/env bash
# The one prepared device run (GPU speed and memory, emulated small cards; the toy model on a GPU),
# within the 600 s of one call on an H200
# (profile <= PROFILE_SECONDS 150, bench <= BENCH_SECONDS 330, toy TOY_MINUTES 2.5 + ~0.5,
# gates <= GATE_SECONDS 60: all of them do not fit one call, so with no SKIP_ flag the toy
# part is skipped; profile + toy and bench + toy fit):
#   0. bench.bench_scale profile: where a whole update's time goes (SD1.5 512 px, then SDXL
#      1024 px, bf16): device busy vs wall time, kernel launches, syncs, top ops, the in-place
#      guard's hook time, cudnn.benchmark on/off (issue 7's gap to the FLOP floor).
#   1. bench.bench_scale gpu: full-size SD1.5 512 px and SDXL 1024 px (random weights),
#      fp32/fp16/bf16, per memory mode: peak VRAM, time, <R> gradient cosine to fp32 and
#      zero share; whole updates (memory=auto) and the paper's procedure (fp32): the ratio.
#      Its JSON is rewritten after every row, so a run stopped at BENCH_SECONDS keeps the rows.
#   1b. bench/bench_cards.py: memory=auto on emulated cards (the process and ComfyUI's free memory capped
#      to 4-24 GB; CARDS="4 6 8 12 24"), SD1.5 512 and SDXL 1024 in bf16 and SDXL with fp8 weights, 3 updates
#      of 2 x 4 each: the choice, peak VRAM, s/update, trained / refused / OOM (cards.json; <= CARDS_SECONDS 250).
#      For the cards-and-models measurements run: SKIP_PROFILE=1 SKIP_TOY=1 (bench + cards, ~9.5 min).
#   2. the toy model trained from scratch on the GPU (`make toy-model`'s recipe) with three
#      training mixes side by side (the GPU is far from busy with one: each run is bound by
#      its own CPU thread), then each one's gate (`make toy-gate`'s evaluation).
#
# Here, once:  make gpu-wheels        (torchsde, trampoline: the host deps the device image lacks)
# Then the device tool's run:
#   command: bash bench/gpu_session.sh     carry: [".hosts/comfyui-old", ".whl"]   timeout_s: 600
# Results come back in $OUT: machine.txt, profile_{sd1,sdxl}.json, profile.log, scale_gpu.json, scale_gpu.log,
# toy_reports.tar.gz (logs and gate JSONs) and the three models' weights as toy_weights.tar.*
# pieces of 15 MiB (a returned file may have 16 MiB): `cat toy_weights.tar.* | tar x` rejoins them.
# No flag (or SKIP_TOY=1): profile + benchmark (~8 min on an H200); SKIP_PROFILE=1 SKIP_TOY=1: the
# benchmark alone (~5.5 min); SKIP_PROFILE=1 SKIP_BENCH=1: the toy models alone (the longest
# TOY_MINUTES then: 9 for one call).
# TOY_MIXES: which of the mixes below (default: all three, side by side: 0.083 s/step each on
# an H200, so 3 minutes reach ~2,150 steps; the committed recipe is 6,000).
# PROFILE_SECONDS, BENCH_SECONDS, TOY_MINUTES, GATE_SECONDS: the parts' time limits.
# Locally (no GPU) the same steps on tiny sizes:
#   DEVICE=cpu TINY=1 TOY_MINUTES=0.3 PY=.venv/bin/python OUT=/tmp/gpu_out bash bench/gpu_session.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
TOY=${TOY_DIR:-/tmp/toy}
mkdir -p "$OUT" "$TOY"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export COMFYUI_PATH=${COMFYUI_PATH:-.hosts/comfyui-old} PYTHONUNBUFFERED=1
{ nvidia-smi || true; nproc; $PY -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"; } \
  > "$OUT/machine.txt" 2>&1
stamp() { echo "$(date +%T) $*" >> "$OUT/machine.txt"; }

if [ -z "${SKIP_PROFILE:-}" ]; then
  stamp "bench_scale profile: start"
  if [ -n "${TINY:-}" ]; then PROFILES="sd1:64"; else PROFILES="sd1:512 sdxl:1024"; fi
  timeout "${PROFILE_SECONDS:-150}" bash -c "for p in $PROFILES; do $PY -m bench.bench_scale profile \
    --family \${p%:*} --size \${p#*:} --dtype bfloat16 ${TINY:+--tiny} --out $OUT/profile_\${p%:*}.json; done" \
    > "$OUT/profile.log" 2>&1
  stamp "bench_scale profile: exit $?"
fi

if [ -z "${SKIP_BENCH:-}" ]; then
  stamp "bench_scale gpu: start"
  timeout "${BENCH_SECONDS:-330}" $PY -m bench.bench_scale gpu ${TINY:+--tiny} --out "$OUT/scale_gpu.json" \
    > "$OUT/scale_gpu.log" 2>&1
  stamp "bench_scale gpu: exit $?"
fi

if [ -z "${SKIP_CARDS:-}" ]; then
  # emulated cards (memory=auto under 4-24 GB caps, 3 updates each; bench/bench_cards.py)
  stamp "bench_cards: start"
  timeout "${CARDS_SECONDS:-250}" $PY -m bench.bench_cards ${TINY:+--tiny} --caps ${CARDS:-4 6 8 12 24} \
    --out "$OUT/cards.json" > "$OUT/cards.log" 2>&1
  stamp "bench_cards: exit $?"
fi

if [ -z "${SKIP_PROFILE:-}" ] && [ -z "${SKIP_BENCH:-}" ] && [ -z "${SKIP_TOY:-}" ]; then
  stamp "toy part skipped: profile + bench + toy do not fit one 600 s call (set SKIP_PROFILE=1 or SKIP_BENCH=1)"
  SKIP_TOY=1
fi
if [ -n "${SKIP_TOY:-}" ]; then tail -n 4 "$OUT/machine.txt"; exit 0; fi

# name: extra training flags. default = the committed recipe's mix; the others give "inside"
# (whose inner shape the committed model misses) 2x and 4x its default share of scenes.
declare -A MIX=([default]="" [inside3]="--relation-weight inside=3" [inside6]="--relation-weight inside=6")
NAMES=${TOY_MIXES:-default inside3 inside6}
stamp "toy training: start ($NAMES)"
for name in $NAMES; do
  $PY -m lab.toy_model.train --device "$DEVICE" --fresh --threads 2 --run-dir "$TOY/$name" --steps 30000 \
    --checkpoint-every 100000 --out "$TOY/$name/toyworld.safetensors" --max-minutes "${TOY_MINUTES:-2.5}" \
    --export-partial ${MIX[$name]} > "$TOY/train_$name.log" 2>&1 &
done
wait
stamp "toy training: done"
for name in $NAMES; do
  timeout "${GATE_SECONDS:-60}" $PY -m lab.toy_model.gate --weights "$TOY/$name/toyworld.safetensors" \
    --device "$DEVICE" --threads 2 --per-prompt 2 ${TINY:+--per-relation 1} --json "$TOY/gate_$name.json" \
    > "$TOY/gate_$name.log" 2>&1 &
done
wait
stamp "toy gates: done"
tar czf "$OUT/toy_reports.tar.gz" -C "$TOY" $(cd "$TOY" && ls *.log *.json 2>/dev/null)
(cd "$TOY" && tar cf - */toyworld.safetensors 2>/dev/null) | split -b 15M - "$OUT/toy_weights.tar."
stamp "packed: $(ls "$OUT" | tr '\n' ' ')"
tail -n 8 "$OUT/machine.txt"
