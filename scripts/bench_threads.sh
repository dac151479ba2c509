#!/usr/bin/env bash
# CPU threads under contention (docs/benchmarks.md, "CPU threads"): `kd train-teacher` on digits for 3 epochs
#   1. alone, with kd's default threads, --threads 1 and --threads 2;
#   2. beside one other torch job (a kd run pinned to 2 threads, as kd's default was), the same three;
#   3. two default runs at once, against one alone.
# Each cell is the median wall time (run.json wall_time_s) of REPEATS runs. Usage:
#   PYTHON=.venv/bin/python REPEATS=3 bash scripts/bench_threads.sh [MODEL]   # MODEL: resnet20 (the default teacher)
set -uo pipefail
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
MODEL="${1:-resnet20}"
REPEATS="${REPEATS:-3}"
OUT="$(mktemp -d)"
trap 'kill "${OTHER:-}" 2>/dev/null; rm -rf "$OUT"' EXIT

run() {  # run NAME [flags...] -> prints wall_time_s and the threads kd chose
  local name="$1"; shift
  "$PY" -m kdcli train-teacher --dataset digits --model "$MODEL" --epochs 3 --device cpu --quiet --json --overwrite \
    --out "$OUT/$name" "$@" | "$PY" -c "import json,sys; d=json.load(sys.stdin); print(d['wall_time_s'], d.get('threads', {}).get('threads', '?'))"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

cell() {  # cell LABEL [flags...]: median of REPEATS runs
  local label="$1"; shift
  local times=() threads=""
  for i in $(seq "$REPEATS"); do read -r t n < <(run "cell$i" "$@"); times+=("$t"); threads="$n"; done
  printf '%-44s %8.2f s   (threads %s; runs %s)\n' "$label" "$(printf '%s\n' "${times[@]}" | median)" "$threads" "${times[*]}"
}

echo "machine: $(nproc) CPUs, load average $(cut -d' ' -f1 /proc/loadavg); $("$PY" -c 'import torch; print("torch", torch.__version__)'); $(date -u +%F)"
echo "== alone"
cell "default threads" ; cell "--threads 1" --threads 1 ; cell "--threads 2" --threads 2

echo "== beside one other torch job (a kd run at 2 threads)"
"$PY" -m kdcli train-teacher --dataset digits --model "$MODEL" --epochs 100000 --device cpu --threads 2 --quiet \
  --overwrite --out "$OUT/other" > /dev/null 2>&1 &
OTHER=$!
sleep 5
cell "default threads" ; cell "--threads 1" --threads 1 ; cell "--threads 2" --threads 2
kill "$OTHER"; wait "$OTHER" 2>/dev/null; OTHER=""

echo "== two default runs at once vs one alone"
alone=(); pair=()
for i in $(seq "$REPEATS"); do
  read -r t _ < <(run "alone$i"); alone+=("$t")
  run "a$i" > "$OUT/a$i.txt" & first=$!
  run "b$i" > "$OUT/b$i.txt" & second=$!
  wait "$first" "$second"
  pair+=("$(cut -d' ' -f1 "$OUT/a$i.txt")" "$(cut -d' ' -f1 "$OUT/b$i.txt")")
done
one=$(printf '%s\n' "${alone[@]}" | median); two=$(printf '%s\n' "${pair[@]}" | median)
printf '%-44s %8.2f s   (runs %s)\n' "one alone" "$one" "${alone[*]}"
printf '%-44s %8.2f s   (runs %s)\n' "each of two at once" "$two" "${pair[*]}"
"$PY" -c "print(f'each of two runs at once is {$one / $two:.2f} x as fast as one alone (target >= 0.5)')"
