#!/usr/bin/env bash
# Re-record the Slurm output the parser unit tests read, on a running dev cluster, as root:
#   tests/unit/recorded/record.sh OUTDIR              (Debian's 22.05)
#   MQI_SLURM=25.11 tests/unit/recorded/record.sh OUTDIR
# The scenario (ids are the cluster's next ones; the tests look jobs up by their role):
#   array  mqi.rec1.simulate --array=0-5%2: task 0 exits 0, 1 exits 3, 2 dies of SIGSEGV,
#          3 and 4 run until cancelled, 5 never starts (cancelled while pending)
#   posts  mqi.rec1.post afterok:array (plain), the same with --kill-on-invalid-dep=yes, and a held one
#   array2 mqi.rec2.simulate --array=0-4%1: task 0 runs, 1-4 pending (one collapsed record)
# Command lines and formats are mqi.slurm's (squeue -r -o SQUEUE_FORMAT, sacct -X --parsable2).
set -euo pipefail
out=${1:?usage: $0 OUTDIR}
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
eval "$(scripts/dev-cluster.sh env)"
export PATH=${MQI_TEST_SLURM_BIN:+$MQI_TEST_SLURM_BIN:}$PATH TZ=UTC
mkdir -p "$out"
work=$(mktemp -d); chmod 755 "$work"
trap 'rm -rf "$work"' EXIT
fmt=$(.venv/bin/python -c 'from mqi import slurm; print(slurm.SQUEUE_FORMAT)')
fields=$(.venv/bin/python -c 'from mqi import slurm; print(",".join(slurm.SACCT_FIELDS))')
part=$MQI_TEST_PARTITION

cat > "$work/simulate.sh" <<'SH'
#!/bin/bash
case $SLURM_ARRAY_TASK_ID in 0) exit 0 ;; 1) exit 3 ;; 2) kill -SEGV $$ ;; *) sleep 300 ;; esac
SH
cat > "$work/post.sh" <<'SH'
#!/bin/bash
true
SH
common=(--parsable -p "$part" -o /dev/null --comment=mqi:rec1 --chdir="$work")
array=$(sbatch "${common[@]}" -J mqi.rec1.simulate --gres=gpu:1 --array=0-5%2 "$work/simulate.sh")
plain=$(sbatch "${common[@]}" -J mqi.rec1.post --dependency=afterok:"$array" "$work/post.sh")
kill=$(sbatch "${common[@]}" -J mqi.rec1.post --dependency=afterok:"$array" --kill-on-invalid-dep=yes "$work/post.sh")
held=$(sbatch "${common[@]}" -J mqi.rec1.post -H "$work/post.sh")
echo "ids: array=$array plain=$plain kill=$kill held=$held" >&2
q() { squeue -h -t all -r --name=mqi.rec1.simulate,mqi.rec1.post,mqi.rec2.simulate -o "$fmt"; }
until [ "$(q | grep -c "^${array}_[34]|.*|RUNNING|")" = 2 ]; do sleep 0.5; done
q > "$out/squeue_running.txt"
scancel "$array"
sleep 2
q > "$out/squeue_after_cancel.txt"
sleep 6  # sacct lags a few seconds behind the end of a job
sacct -X --parsable2 --duplicates -S now-1hours --format="$fields" -j "$array,$plain,$kill,$held" \
  > "$out/sacct_mixed.txt"
scancel "$plain" "$held"

array2=$(sbatch --parsable -p "$part" -o /dev/null --chdir="$work" -J mqi.rec2.simulate --gres=gpu:1 \
  --array=0-4%1 --wrap='sleep 300')
until q | grep -q "^${array2}_0|.*|RUNNING|"; do sleep 0.5; done
sleep 1
sacct -X --parsable2 --duplicates -S now-1hours --format="$fields" -j "$array2" > "$out/sacct_pending_array.txt"
scancel "$array2"
sinfo -h -p "$part" -o '%P|%a|%G|%D' > "$out/sinfo_partition.txt"
echo "recorded into $out: $(ls "$out" | tr '\n' ' ')" >&2
