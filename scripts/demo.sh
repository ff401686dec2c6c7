#!/usr/bin/env bash
# The whole flow on this machine: a real local Slurm cluster, a generated case, the MOQUI
# stand-in, RT Dose files out. Run as root on a fresh Debian 12 machine:
#   ./scripts/demo.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Installing and starting the dev cluster (Slurm with 4 fake GPUs, slurmdbd, sshd)"
scripts/dev-cluster.sh install
scripts/bootstrap-venv.sh
scripts/dev-cluster.sh start
scripts/dev-cluster.sh remote-python
eval "$(scripts/dev-cluster.sh env)"

demo=$MQI_DEV_DIR/demo
rm -rf "$demo" "$MQI_TEST_REMOTE_DIR/demo"  # a fresh start, here and on the "cluster"
mkdir -p "$demo/incoming" "$demo/results"
cat > "$demo/mqi.yaml" <<YAML
# Demo config: the dev cluster over SSH, the MOQUI stand-in as the engine.
watch_dir: $demo/incoming
results_dir: $demo/results
state_dir: $demo/state
readiness: {quiet_seconds: 0}
cluster:
  transport: ssh
  host: $MQI_TEST_SSH_HOST
  port: $MQI_TEST_SSH_PORT
  user: $MQI_TEST_SSH_USER
  key_file: $MQI_TEST_SSH_KEY
  known_hosts: $MQI_TEST_KNOWN_HOSTS
  remote_dir: $MQI_TEST_REMOTE_DIR/demo
  python: $MQI_TEST_REMOTE_PYTHON
slurm:
  partition: $MQI_TEST_PARTITION
  time_limit: "00:10:00"
moqui:
  command: $MQI_TEST_STANDIN --seconds 2
  parameters: {ParticlesPerHistory: 1, Scorer: Dose, OutputFormat: raw}
poll: {interval_seconds: 2}
YAML
export MQI_CONFIG=$demo/mqi.yaml
mqi=.venv/bin/mqi

step "mqi doctor"
$mqi doctor

step "Two synthetic cases: water phantom CT, structure set, 2-beam proton plan, TPS dose"
.venv/bin/python -m mqi.testing.synthetic "$demo/incoming/Demo Phantom"
# The second one's TPS dose is shifted 3 mm: the Monte Carlo QA must catch it.
.venv/bin/python -m mqi.testing.synthetic "$demo/incoming/Shifted Phantom" --tps-shift-mm 3,0,0
$mqi check "$demo/incoming/Demo Phantom"

step "mqi scan (what cron runs): submits the ready cases"
$mqi scan

step "mqi queue"
$mqi queue

step "mqi poll --wait: follow Slurm until the cases are done"
$mqi poll --wait --timeout 600

step "mqi status: the QA verdict and the first criterion's pass rate"
$mqi status
case_id=$($mqi status --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)[0]["case_id"])')
$mqi status "$case_id"

step "RT Dose files, qa.json and the report to sign"
ls -l "$demo/results/$case_id"
echo "report: $demo/results/$case_id/report.pdf"
