# Sourced by scripts/demo and scripts/test: create .venv once, install kd into it (editable).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for candidate in python3.11 python3.12 python3.10 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PY="$candidate"; break; fi
  done
fi
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $PY" >&2
  "$PY" -m venv .venv
fi
EXTRAS="${1:-}"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${EXTRAS}" 2>&1 | grep -v "^WARNING: Location" >&2 || true
.venv/bin/python -c "import kdcli, torch" || { echo "installing kd into .venv failed" >&2; exit 1; }
if [ -z "${KD_DATA_DIR:-}" ] && [ -d "$ROOT/../shared/data" ]; then
  KD_DATA_DIR="$(cd "$ROOT/../shared/data" && pwd)"
  export KD_DATA_DIR
fi
