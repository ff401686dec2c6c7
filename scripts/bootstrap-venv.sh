#!/usr/bin/env bash
# Create .venv with mqi (editable) and its development tools; quiet when up to date.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
log=.venv-install.log
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --upgrade pip >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
fi
stamp=.venv/.mqi-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[venv] installing mqi and its development tools into .venv"
  .venv/bin/pip install -q -e '.[dev]' >"$log" 2>&1 || { grep -v '^WARNING: Location' "$log" >&2; exit 1; }
  touch "$stamp"
fi
