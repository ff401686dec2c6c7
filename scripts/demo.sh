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
rm -rf "$demo"
mkdir -p "$demo/incoming"
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
YAML
export MQI_CONFIG=$demo/mqi.yaml
mqi=.venv/bin/mqi

step "mqi doctor"
$mqi doctor

step "A synthetic case: water phantom CT, structure set, 2-beam proton plan"
.venv/bin/python -m mqi.testing.synthetic "$demo/incoming/Demo Phantom"
$mqi check "$demo/incoming/Demo Phantom"

step "mqi scan (what cron runs): submits the ready case"
$mqi scan

step "mqi queue"
$mqi queue

step "mqi poll --wait: follow Slurm until the case is done"
$mqi poll --wait --timeout 600

step "mqi status"
$mqi status
case_id=$($mqi status --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)[0]["case_id"])')
$mqi status "$case_id"

step "RT Dose files"
ls -l "$demo/results/$case_id"
