#!/usr/bin/env bash
# Everything the tests need, from a fresh machine: Debian packages, the dev cluster,
# the Python environment; then the linter, the whole suite on Slurm 22.05 and, beside it, the
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

.venv/bin/ruff check mqi tests bench scripts
.venv/bin/ruff format --check mqi tests bench scripts

# Slurm 25.11 runs beside 22.05 on its own ports, state and database, so its part (build
# once from ../shared/vendor, then its cluster tests) runs in the background while the
# whole suite runs on 22.05; mostly both wait on Slurm. The build runs at low priority.
# On 25.11 the tests of what talks to Slurm run again; DICOM, the dashboard and the QA
# figures do not depend on the Slurm version. With arguments, exactly those tests run again.
slurm_tests=(tests/integration/test_{dev_cluster,chain,submit,operate,doctor,failures,failures_slurm,retention,api,backends}.py)
[ $# -gt 0 ] && slurm_tests=("$@")
flavour_log=$(mktemp /tmp/mqi-test-25.11.XXXXXX.log)
on_25_11() {
  local t1=$SECONDS rc=0
  MQI_SLURM=25.11 nice -n 15 scripts/dev-cluster.sh install || rc=$?
  if [ $rc = 3 ]; then
    echo "[test] no Slurm 25.11 source: its cluster tests will skip"
    return 0
  fi
  [ $rc = 0 ] || return $rc
  MQI_SLURM=25.11 scripts/dev-cluster.sh start
  MQI_SLURM=25.11 scripts/dev-cluster.sh remote-python
  # pyslurm links libslurm of exactly this Slurm: built against it (cached wheel after once).
  MQI_SLURM=25.11 nice -n 15 scripts/dev-cluster.sh pyslurm
  echo "[test] Slurm 25.11 cluster ready in $((SECONDS - t1))s"
  local t3=$SECONDS
  # Exit 5: the arguments selected no cluster test (e.g. a unit test file): nothing to repeat.
  MQI_SLURM=25.11 .venv/bin/python -m pytest -m cluster --durations=10 "${slurm_tests[@]}" \
    || { rc=$?; [ $rc = 5 ] || return 1; }
  echo "[test] cluster tests on Slurm 25.11: $((SECONDS - t3))s"
}
on_25_11 >"$flavour_log" 2>&1 &
flavour_pid=$!

failed=0
t2=$SECONDS
.venv/bin/python -m pytest --durations=15 "$@" || failed=1
echo "[test] whole suite on Slurm 22.05: $((SECONDS - t2))s"
wait $flavour_pid || failed=1
echo "[test] Slurm 25.11 part (beside the 22.05 suite):"
cat "$flavour_log"
rm -f "$flavour_log"
echo "[test] total $((SECONDS - t0))s"
exit $failed
