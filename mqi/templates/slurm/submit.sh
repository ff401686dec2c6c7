#!/usr/bin/env bash
# mqi: submit the job chain of case {{ case_uid }} from wherever this bundle lies.
#
#   jobs/submit.sh                    prepare -> simulate (one array task per beam) -> post
#   jobs/submit.sh --only-beams I,J   simulate array indices I,J again, then post (no prepare)
#
# Prints ONE JSON line on stdout: {"prepare": "<id>"|null, "simulate": "<id>", "post": "<id>"}.
# If any sbatch fails, the jobs already submitted are cancelled, sbatch's error is on
# stderr and the exit code is non-zero. Rendered by mqi; do not edit.
set -euo pipefail

beam_count={{ beam_count }}

usage() {
  echo "usage: jobs/submit.sh [--only-beams I,J,...]  (array indices 0-$((beam_count - 1)))" >&2
  exit 2
}

only_beams=
retry=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --only-beams)
      [[ $# -ge 2 ]] || usage
      only_beams=$2 retry=1
      shift 2
      ;;
    --only-beams=*)
      only_beams=${1#*=} retry=1
      shift
      ;;
    -h | --help) usage ;;
    *)
      echo "mqi: unknown argument: $1" >&2
      usage
      ;;
  esac
done

if [[ $retry -eq 1 ]]; then
  if [[ ! $only_beams =~ ^[0-9]+(,[0-9]+)*$ ]]; then
    echo "mqi: --only-beams takes array indices like 0,2 (got '$only_beams')" >&2
    exit 2
  fi
  indices=,
  for index in ${only_beams//,/ }; do
    index=$((10#$index))
    if [[ $index -ge $beam_count || $indices == *",$index,"* ]]; then
      echo "mqi: --only-beams: $index is not a distinct array index of this case (0-$((beam_count - 1)))" >&2
      exit 2
    fi
    indices+="$index,"
  done
  indices=${indices#,}
  only_beams=${indices%,}
fi

cd "$(dirname "$0")/.."
root=$(pwd -P)
if [[ ! -f manifest.json ]]; then
  echo "mqi: $root is not an mqi bundle root (no manifest.json)" >&2
  exit 2
fi
mkdir -p logs

submitted=()
finished=0
cancel_submitted() {
  if [[ $finished -eq 0 && ${#submitted[@]} -gt 0 ]]; then
    echo "mqi: submission failed; cancelling job(s) ${submitted[*]}" >&2
    scancel "${submitted[@]}" || echo "mqi: scancel failed: cancel job(s) ${submitted[*]} by hand" >&2
  fi
}
trap cancel_submitted EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

job_id=
submit() {  # submit STEP SBATCH-COMMAND...: runs it, sets job_id from stdout (id or id;cluster)
  local step=$1 out
  shift
  if ! out=$("$@"); then
    echo "mqi: sbatch refused the $step job (its error is above)" >&2
    exit 1
  fi
  out=${out%%$'\n'*}
  job_id=${out%%;*}
  job_id=${job_id//[[:space:]]/}
  if [[ ! $job_id =~ ^[0-9]+$ ]]; then
    echo "mqi: sbatch printed no job id for the $step job: '$out'" >&2
    exit 1
  fi
  submitted+=("$job_id")
}

if [[ $retry -eq 0 ]]; then
  submit prepare {{ sbatch.prepare }}
  prepare_id=$job_id
  submit simulate {{ sbatch.simulate }}
  simulate_id=$job_id
  prepare_json="\"$prepare_id\""
else
  submit simulate {{ sbatch.simulate_only }}
  simulate_id=$job_id
  prepare_json=null
fi
submit post {{ sbatch.post }}
post_id=$job_id
finished=1
printf '{"prepare": %s, "simulate": "%s", "post": "%s"}\n' "$prepare_json" "$simulate_id" "$post_id"
