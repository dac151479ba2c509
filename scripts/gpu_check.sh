#!/usr/bin/env bash
# GPU checks and benchmarks for one lent H100 call (see docs/benchmarks.md). Needs no install:
# the device image has torch, typer, rich, safetensors; kd runs from the checkout via PYTHONPATH.
# Usage on the device: bash scripts/gpu_check.sh [sections...]   (writes logs under $OUT)
set -uo pipefail
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/kd-gpu}"; mkdir -p "$OUT"
nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
CIFAR=/tmp/cifar10
if [ -f .device/cifar10-jpeg.tar.gz ] && [ ! -d "$CIFAR" ]; then
  mkdir -p "$CIFAR" && tar -xzf .device/cifar10-jpeg.tar.gz -C "$CIFAR" --strip-components=0
  CIFAR="$(dirname "$(find "$CIFAR" -maxdepth 3 -type d -name train | head -1)")"
fi
echo "CIFAR root: $CIFAR"
for section in "${@:-bench}"; do
  case "$section" in
    bench)
      python3 scripts/bench.py --device cuda --cases lenet5-mnist,resnet32-cifar --engine-batches 128,512 \
        --workers 8 --steps 100 --warmup 20 --json-out "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
      python3 scripts/bench.py --device cuda --cases resnet32-cifar --engine-batches 128,512 --graphs off \
        --workers 8 --steps 100 --warmup 20 --json-out "$OUT/bench_nographs.json" 2>&1 | tee "$OUT/bench_nographs.log"
      ;;
    cifar-teacher)
      python3 -m kdcli train-teacher --dataset "folder:$CIFAR" --model resnet32 --epochs "${EPOCHS:-15}" \
        --batch-size 128 --lr 0.1 --device cuda --out "$OUT/c10-resnet32" 2>&1 | tail -25 | tee "$OUT/cifar-teacher.log"
      ;;
    user-models)  # issue 13: models kd did not define, on CUDA (bf16, channels_last, CUDA graphs on auto)
      D=fake-3-32-10; M=tests.models.user_nets
      { python3 -m kdcli train-teacher --model tv:resnet18 --dataset $D --epochs 3 --device cuda --out "$OUT/tv"
        python3 -m kdcli distill --teacher "$OUT/tv" --model $M:make_staged --model-arg width=16 --epochs 3 \
          --device cuda --out "$OUT/staged-student"
        python3 -m kdcli distill-online --method dml --models $M:make_convnet,tv:mobilenet_v3_small --dataset $D \
          --epochs 3 --device cuda --out "$OUT/dml-user"
        python3 -m kdcli distill-online --method okddip --model $M:make_staged --dataset $D --epochs 3 \
          --device cuda --out "$OUT/okddip-user"
        python3 -m kdcli evaluate "$OUT/tv" "$OUT/staged-student" "$OUT/dml-user" "$OUT/okddip-user" \
          --allow-module tests.models --device cuda; } 2>&1 | tee "$OUT/user-models.log"
      ;;
    lifecycle)  # issue 9 on CUDA (graphs on): divergence → exit 3; SIGTERM mid-run → saved, resumed; kd's JSON strict
      L="$OUT/lifecycle"; rm -rf "$L"; mkdir -p "$L"
      python3 -m kdcli train-teacher --model resnet20 --epochs 2 --lr 1e6 --device cuda --out "$L/diverged" --quiet
      echo "diverged run: exit $? (want 3)"; python3 -c "import json,sys; d=json.load(open(sys.argv[1]), parse_constant=lambda c: sys.exit('NaN in run.json')); print('status', d['status'])" "$L/diverged/run.json"
      ARGS=(train-teacher --model resnet20 --epochs 8 --batch-size 32 --seed 1 --device cuda --quiet)
      python3 -m kdcli "${ARGS[@]}" --out "$L/full" --json > "$L/full.json"
      python3 -m kdcli "${ARGS[@]}" --out "$L/cut" & PID=$!
      while [ ! -f "$L/cut/state.safetensors" ] && kill -0 $PID 2>/dev/null; do sleep 0.05; done; kill -TERM $PID
      wait $PID; echo "SIGTERM: exit $? (want 143)"; grep -o '"status": "[a-z]*"' "$L/cut/run.json"
      python3 -m kdcli train-teacher --resume "$L/cut" --json > "$L/cut.json"; echo "resume: exit $?"
      python3 -c "import json,sys; a,b=(json.load(open(f)) for f in sys.argv[1:]); print('test top-1 uninterrupted', a['metrics']['test'], 'resumed', b['metrics']['test'], '(bit-identical only where CUDA kernels are deterministic)')" "$L/full.json" "$L/cut.json"
      ;;
  esac
done
