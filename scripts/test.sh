#!/usr/bin/env bash
# Everything the tests need, from a fresh machine: Debian packages, the dev cluster,
# the Python environment; then the whole suite and the linter on Slurm 22.05, and the
# cluster tests again on Slurm 25.11 (built once from ../shared/vendor, then cached).
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

t1=$SECONDS
rc=0
MQI_SLURM=25.11 scripts/dev-cluster.sh install || rc=$?
if [ $rc = 0 ]; then
  MQI_SLURM=25.11 scripts/dev-cluster.sh start
  MQI_SLURM=25.11 scripts/dev-cluster.sh remote-python
  # pyslurm (MQI_SLURM=25.11 scripts/dev-cluster.sh pyslurm, about 4 min) is built only
  # for bench/pyslurm_probe.py until a test needs it.
  echo "[test] Slurm 25.11 cluster ready in $((SECONDS - t1))s"
elif [ $rc = 3 ]; then
  echo "[test] no Slurm 25.11 source: its cluster tests will skip"
else
  exit $rc
fi

.venv/bin/ruff check mqi tests bench scripts
.venv/bin/ruff format --check mqi tests bench scripts

failed=0
t2=$SECONDS
.venv/bin/python -m pytest "$@" || failed=1
echo "[test] whole suite on Slurm 22.05: $((SECONDS - t2))s"
t3=$SECONDS
# On 25.11 the tests of what talks to Slurm run again; DICOM, the dashboard and the QA
# figures do not depend on the Slurm version. With arguments, exactly those tests run again.
# Exit 5: the arguments selected no cluster test (e.g. a unit test file): nothing to repeat.
slurm_tests=(tests/integration/test_{dev_cluster,chain,submit,operate,doctor,failures,failures_slurm,retention,api}.py)
[ $# -gt 0 ] && slurm_tests=("$@")
MQI_SLURM=25.11 .venv/bin/python -m pytest -m cluster "${slurm_tests[@]}" || { rc=$?; [ $rc = 5 ] || failed=1; }
echo "[test] cluster tests on Slurm 25.11: $((SECONDS - t3))s"
echo "[test] total $((SECONDS - t0))s"
exit $failed
