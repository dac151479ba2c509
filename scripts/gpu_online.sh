#!/usr/bin/env bash
# The online papers' protocols on one GPU, in ONE device call (≤ 10 minutes on one H200; see docs/results.md):
#   1. the K = 1..4 peer bench rows (scripts/bench.py --online);
#   2. one epoch of every run of the plan below, one at a time: the epoch times, and what each full paper
#      protocol (200 or 300 epochs) would take on this card;
#   3. every method under its --preset paper protocol, scaled to as many epochs as the time left allows,
#      next to its matched baseline (scripts/reproduce_online.py), CIFAR-10 (JPEG q75), ResNet-32, seed 0.
# Needs no install: the device image has torch, typer, rich, safetensors; kd runs from the checkout.
# The data: $KD_DATA_DIR/cifar10-jpeg.tar.gz (default .device/data/, a folder carried to the device).
# Usage on the device:  OUT=$OUT bash scripts/gpu_online.sh      (BUDGET_S, JOBS, MAX_EPOCHS to change the fit)
set -uo pipefail
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/kd-gpu-online}"; mkdir -p "$OUT"
BUDGET_S="${BUDGET_S:-540}"      # the whole script, so that one 600 s device call holds it
JOBS="${JOBS:-4}"                # runs at a time in step 3: small ResNet-32 runs share the GPU
MAX_EPOCHS="${MAX_EPOCHS:-60}"
START=$(date +%s)
DATA="${KD_DATA_DIR:-$PWD/.device/data}"
CIFAR=/tmp/cifar10-jpeg
if [ ! -d "$CIFAR/train" ]; then
  mkdir -p "$CIFAR" && tar -xzf "$DATA/cifar10-jpeg.tar.gz" -C "$CIFAR" || { echo "no $DATA/cifar10-jpeg.tar.gz"; exit 2; }
fi
nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

echo "== 1. K peers in one step (ResNet-32, batch 128, random 32x32 data)"
timeout 120 python3 scripts/bench.py --device cuda --cases resnet32-cifar --online 1,2,3,4 --online-only \
  2>&1 | tee "$OUT/bench_online.log"

PLAN=(--dataset "folder:$CIFAR" --label "CIFAR-10 (JPEG q75)" --model resnet32 --device cuda --seeds 0
      --runs /tmp/kd-online)
echo "== 2. one epoch of every run (the full paper protocols' epochs in the 'epochs' column)"
python3 scripts/reproduce_online.py "${PLAN[@]}" --estimate --estimate-json "$OUT/estimate.json" \
  2>&1 | tee "$OUT/estimate.log" || exit 1

EPOCHS=$(python3 - "$OUT/estimate.json" "$START" "$BUDGET_S" "$JOBS" "$MAX_EPOCHS" <<'PY'
import json, sys, time
rows = json.load(open(sys.argv[1]))["rows"]
left = float(sys.argv[3]) - (time.time() - float(sys.argv[2])) - 20  # 20 s for the table and the copies
jobs, most = int(sys.argv[4]), int(sys.argv[5])
# With J runs at a time, assume only J/2 of the speed-up (they share one GPU); the slowest run bounds it too.
def wall(e):
    runs = [r["epoch_s"] * e + r["overhead_s"] for r in rows]
    return max(max(runs), sum(runs) / max(1.0, jobs / 2))
print(max([e for e in range(1, most + 1) if wall(e) <= left] or [0]))  # 0: not even one epoch fits
PY
)
if [ "$EPOCHS" -lt 1 ]; then
  echo "== 3. skipped: no time left for one epoch of every run (see estimate.log)" | tee "$OUT/epochs.txt"
else
  echo "== 3. the paper protocols scaled to $EPOCHS epochs, $JOBS runs at a time" | tee "$OUT/epochs.txt"
  python3 scripts/reproduce_online.py "${PLAN[@]}" --epochs "$EPOCHS" --jobs "$JOBS" --no-doc \
    --body-out "$OUT/online_gpu.md" 2>&1 | tee "$OUT/reproduce.log"
fi
echo "total $(( $(date +%s) - START )) s" | tee -a "$OUT/epochs.txt"
