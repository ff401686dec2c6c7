#!/usr/bin/env bash
# Everything the tests need, from a fresh machine: Debian packages, the dev cluster,
# the Python environment; then the whole suite and the linter.
#   scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

t0=$SECONDS
scripts/dev-cluster.sh install
scripts/bootstrap-venv.sh
scripts/dev-cluster.sh start
scripts/dev-cluster.sh remote-python
eval "$(scripts/dev-cluster.sh env)"
echo "[test] environment ready in $((SECONDS - t0))s"

.venv/bin/ruff check mqi tests bench scripts
.venv/bin/ruff format --check mqi tests bench scripts
.venv/bin/python -m pytest "$@"
