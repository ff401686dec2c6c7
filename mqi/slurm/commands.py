"""Slurm command lines (pure): queries, submit, cancel, top, job-script directives, doctor probes.

A backend runs these strings through a transport. Formats are the text forms measured
on Slurm 22.05 (``--json`` is unreliable there: sacct reports exit 0 for FAILED jobs and
squeue ignores filters). Every query runs under ``TZ=UTC``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from mqi.errors import UsageError
from mqi.shell import quote
from mqi.slurm.names import (
    ARGUMENT_MAX_BYTES,
    OUTPUT_PATTERNS,
    SACCT_FIELDS,
    SECTION,
    SQUEUE_FORMAT,
    STEPS,
    id_sort_key,
    job_comment,
    job_name,
    parent_id,
)

if TYPE_CHECKING:
    from mqi.config import Priority, SlurmConfig


# Slurm prints and reads naive local times; every query runs with TZ=UTC so that the
# login node's time zone never leaks into stored times or -S bounds.
_UTC_ENV = "TZ=UTC "


def _slurm_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def slurm_time_to_utc_iso(text: str | None) -> str | None:
    """A time printed by sacct/squeue under TZ=UTC, as ``...Z``; None for Unknown/N/A."""
    if not text or not text[:4].isdigit():
        return None
    return text + "Z"


def _sacct_ids_command(since: datetime, ids: str) -> str:
    """sacct of the tracked jobs, bounded by ``since`` (ids are recycled; without -S, sacct
    searches from the epoch); ``ids`` is its ``-j`` word (a list, or a shell expansion)."""
    start = _slurm_time(since - timedelta(minutes=5))
    return (
        f"{_UTC_ENV}sacct -X --parsable2 --noheader --duplicates -S {start} "
        f"--format={','.join(SACCT_FIELDS)} -j {ids}"
    )


def sacct_id_lists(job_ids: Iterable[str], room: int = ARGUMENT_MAX_BYTES) -> list[str]:
    """The parent ids, sorted, as comma-separated lists of at most ``room`` bytes each: one
    list is one sacct call. Only the kernel's cap on one argument splits them (about 16,000
    ids of 7 digits per list), never a count of ids."""
    ids = sorted({parent_id(job_id) for job_id in job_ids}, key=id_sort_key)
    lists: list[str] = []
    start, size = 0, -1
    for end, job_id in enumerate(ids):
        if end > start and size + 1 + len(job_id) > room:
            lists.append(",".join(ids[start:end]))
            start, size = end, -1
        size += 1 + len(job_id)
    if ids:
        lists.append(",".join(ids[start:]))
    return lists


def sacct_commands(job_ids: Iterable[str], since: datetime) -> list[str]:
    """sacct with the ids in the command line, for a few ids (tests, probes): one command
    per id list that keeps the whole command under the one-argument cap (``bash -c`` and
    sshd get a command as one argument). The poll sends its ids on stdin instead."""
    room = ARGUMENT_MAX_BYTES - len(_sacct_ids_command(since, ""))
    return [_sacct_ids_command(since, ids) for ids in sacct_id_lists(job_ids, room)]


def sacct_by_names_command(case_uid: str, since: datetime) -> str:
    """Jobs of one case by name (pending jobs have no comment in sacct yet)."""
    names = ",".join(job_name(case_uid, step) for step in STEPS)
    return (
        f'{_UTC_ENV}sacct -u "$(id -un)" -X --parsable2 --noheader --duplicates '
        f"-S {_slurm_time(since - timedelta(minutes=5))} "
        f"--format={','.join(SACCT_FIELDS)} --name={quote(names)}"
    )


def squeue_command(user: str | None = None, *, all_users: bool = False) -> str:
    """Every live job of this user (default: the login user), array tasks expanded."""
    who = "" if all_users else f"-u {quote(user)}" if user else "--me"
    return f"{_UTC_ENV}squeue -h -t all -r {who} -o {quote(SQUEUE_FORMAT)}"


def scancel_command(job_ids: Iterable[str]) -> str:
    ids = sorted({parent_id(job_id) for job_id in job_ids}, key=id_sort_key)
    return "scancel " + " ".join(quote(job_id) for job_id in ids)


def scontrol_top_command(job_ids: Iterable[str]) -> str:
    ids = ",".join(sorted({parent_id(job_id) for job_id in job_ids}, key=id_sort_key))
    return f"scontrol top {quote(ids)}"


def submit_command(bundle_dir: str, only_indices: Iterable[int] | None = None) -> str:
    """Run a bundle's rendered submit.sh (all its sbatch calls in one round trip)."""
    script = quote(f"{bundle_dir}/jobs/submit.sh")
    if only_indices is None:
        return f"bash {script}"
    indices = ",".join(str(i) for i in sorted(set(only_indices)))
    return f"bash {script} --only-beams {quote(indices)}"


@dataclass(frozen=True)
class RemoteQuery:
    """A remote command, what goes on its stdin, and how many Slurm commands it runs."""

    command: str
    stdin: str
    slurm_commands: int


def sacct_stdin_command(job_ids: Iterable[str], since: datetime) -> RemoteQuery:
    """sacct of these jobs with the ids on stdin, one comma-separated list per line (see
    ``sacct_id_lists``), so that no number of ids meets the cap on a command line: one
    sacct per line, that is one sacct for up to about 16,000 jobs.

    Exits 0 only when every sacct did and every line of ids arrived: a line that did not
    arrive counts as a sacct failure (accounting unavailable), never as jobs gone.
    """
    lists = sacct_id_lists(job_ids)
    sacct = _sacct_ids_command(since, '"$ids"')
    lines = len(lists)
    command = "; ".join(
        [
            "ra=0; n=0",
            f"while IFS= read -r ids; do n=$((n + 1)); {sacct} < /dev/null || ra=1; done",
            f'[ "$n" = {lines} ] || {{ echo "mqi: $n of {lines} lines of job ids arrived" >&2; ra=1; }}',
            'exit "$ra"',
        ]
    )
    stdin = "".join(f"{ids}\n" for ids in lists)
    return RemoteQuery(command, stdin, lines)


def sacct_beside_squeue_command(job_ids: Iterable[str], since: datetime) -> RemoteQuery:
    """One remote command: ``sacct_stdin_command`` of these ids with squeue running beside
    it (in the background, into a temporary folder), and both exit codes.

    Outputs come back in order, separated by SECTION lines: sacct's, squeue's, then
    ``<sacct rc> <squeue rc>``, so that accounting being down (sacct fails, squeue answers)
    is told apart from Slurm not answering. Error messages go to stderr; a missing or
    empty status file (a killed subshell, a full disk) counts as a failure.
    """
    sacct = sacct_stdin_command(job_ids, since)
    command = "; ".join(
        [
            "t=$(mktemp -d) || exit 1",
            f'{{ {squeue_command()} > "$t/q"; echo $? > "$t/rq"; }} < /dev/null & ( {sacct.command} )',
            "ra=$?",
            "wait",
            f"echo {SECTION}",
            'cat "$t/q"; rq=1; read rq < "$t/rq"',
            f"echo {SECTION}",
            'echo "$ra $rq"',
            'rm -rf "$t"',
            '[ "$ra$rq" = 00 ]',
        ]
    )
    return RemoteQuery(command, sacct.stdin, 1 + sacct.slurm_commands)


def gpu_usage_command() -> str:
    """GPUs of each node in each partition, configured and in use (for the dashboard's queue)."""
    return f"{_UTC_ENV}sinfo -h -N -O NodeHost:80,Partition:80,Gres:200,GresUsed:200"


def with_gpu_usage(command: str) -> str:
    """``command`` (its exit code kept), then a SECTION line and the GPU usage, in one round trip."""
    return f"{{ {command}; }}; rc=$?; echo {SECTION}; {gpu_usage_command()} 2>/dev/null; exit $rc"


def case_jobs_command(case_uid: str, since: datetime, *, live_only: bool = False) -> str:
    """A case's jobs by name: squeue, a separator, sacct (one round trip, for adoption).

    ``live_only``: the caller needs the case's jobs only when one of them is still live,
    and every live job is in squeue; sacct (a slurmdbd query, the slow part) then runs only
    when squeue lists a job of the case, or squeue itself failed.
    """
    if not live_only:
        sacct = f"{sacct_by_names_command(case_uid, since)} 2>/dev/null"
        return f"{squeue_command()}; echo {SECTION}; {sacct}"
    return f"q=$({squeue_command()}); rc=$?; {_live_case_jobs_answer(case_uid, since)}"


def _live_case_jobs_answer(case_uid: str, since: datetime) -> str:
    """After ``q=$(squeue ...); rc=$?``: prints squeue's lines, a separator, and sacct's
    lines of the case when squeue lists a job of it (or failed)."""
    sacct = f"{sacct_by_names_command(case_uid, since)} 2>/dev/null"
    return (
        f'if [ -n "$q" ]; then printf \'%s\\n\' "$q"; fi; echo {SECTION}; '
        f"if [ $rc -ne 0 ] || {_lists_case_job(case_uid)}; then {sacct}; fi"
    )


def _lists_case_job(case_uid: str) -> str:
    """True when squeue's output in ``$q`` has a job of the case."""
    return f"printf '%s\\n' \"$q\" | grep -qF -e {quote('|' + job_name(case_uid, ''))}"


SUBMITTING = "@@mqi-submitting@@"


def submit_unless_found_command(
    case_uid: str, since: datetime, bundle_dir: str, submit: str, also: str
) -> str:
    """A first submission, guarded in the same round trip: when squeue answers and lists
    no job of the case and ``bundle_dir`` does not exist, prints SUBMITTING and runs
    ``submit`` (publish + submit.sh), its exit code the command's. Otherwise submits
    nothing and prints what ``case_jobs_command(live_only=True)`` and then ``also`` print,
    separated by SECTION lines."""
    return (
        f"q=$({squeue_command()}); rc=$?; "
        f"if [ $rc -eq 0 ] && ! {_lists_case_job(case_uid)} && [ ! -e {quote(bundle_dir)} ]; then "
        f"echo {SUBMITTING}; {submit}; exit $?; fi; "
        f"{_live_case_jobs_answer(case_uid, since)}; echo {SECTION}; {also}"
    )


# -- job script directives and submit.sh lines (rendered into the bundle) ---------------

_DIRECTIVE_VALUE = re.compile(r"^[^\s'\"\\`$#;&|<>()]+$")


class DirectiveError(UsageError):
    """A config value that cannot go into an #SBATCH line."""


def directive(option: str, key: str, value: object) -> str:
    text = str(value)
    if not _DIRECTIVE_VALUE.match(text):
        raise DirectiveError(f"{key}: {text!r} cannot go into an #SBATCH line (spaces or shell characters)")
    return f"--{option}={text}"


def _step_resources(step: str, slurm: SlurmConfig, beam_count: int) -> list[str]:
    if step == "simulate":
        time_key, mem_key, cpus = "slurm.time_limit", "slurm.mem_per_beam", slurm.cpus_per_beam
        time_limit, mem = slurm.time_limit, slurm.mem_per_beam
    else:
        time_key, mem_key, cpus = f"slurm.{step}_time_limit", "slurm.post_mem", 1
        time_limit = slurm.prepare_time_limit if step == "prepare" else slurm.post_time_limit
        mem = slurm.post_mem
    lines = [
        directive("time", time_key, time_limit),
        directive("cpus-per-task", "slurm.cpus_per_beam", cpus),
    ]
    if mem:
        lines.append(directive("mem", mem_key, mem))
    if step != "simulate":
        return [*lines, f"--output={OUTPUT_PATTERNS['job']}"]
    return [
        *lines,
        directive("gres", "slurm.gpus_per_beam", f"gpu:{slurm.gpus_per_beam}"),
        f"--array=0-{beam_count - 1}%{slurm.max_parallel_beams}",
        f"--output={OUTPUT_PATTERNS['task']}",
    ]


def _partition(step: str, slurm: SlurmConfig) -> str:
    """prepare and post need no GPU: they go to ``cpu_partition`` when one is set."""
    if step != "simulate" and slurm.cpu_partition:
        return directive("partition", "slurm.cpu_partition", slurm.cpu_partition)
    return directive("partition", "slurm.partition", slurm.partition)


def sbatch_directives(step: str, slurm: SlurmConfig, case_uid: str, beam_count: int) -> list[str]:
    """The options of a job script's ``#SBATCH`` lines, in order."""
    lines = [
        f"--job-name={job_name(case_uid, step)}",
        f"--comment={job_comment(case_uid)}",
        _partition(step, slurm),
    ]
    if slurm.account:
        lines.append(directive("account", "slurm.account", slurm.account))
    if slurm.qos:
        lines.append(directive("qos", "slurm.qos", slurm.qos))
    lines += _step_resources(step, slurm, beam_count)
    for extra in slurm.extra_directives:
        if any(ord(char) < 32 for char in extra):
            raise DirectiveError(f"slurm.extra_directives: {extra!r} holds a control character")
        lines.append(extra)
    return lines


def sbatch_command(step: str, priority: Priority, *extra: str) -> str:
    """One ``sbatch`` line of submit.sh; ``extra`` are shell words (may use its variables)."""
    words = ["sbatch", "--parsable", '--chdir="$root"', "--kill-on-invalid-dep=yes"]
    words.append(f"--nice={priority.nice}")
    if priority.qos:
        words.append(quote(f"--qos={priority.qos}"))
    return " ".join([*words, *extra, f"jobs/{step}.sbatch"])


def sbatch_submit_lines(priority: Priority, max_parallel_beams: int) -> dict[str, str]:
    """submit.sh's sbatch lines: the chain, and the ``--only-beams`` simulate line."""
    return {
        "prepare": sbatch_command("prepare", priority),
        "simulate": sbatch_command("simulate", priority, '--dependency=afterok:"$prepare_id"'),
        "post": sbatch_command("post", priority, '--dependency=afterany:"$simulate_id"'),
        "simulate_only": sbatch_command("simulate", priority, f'--array="$only_beams"%{max_parallel_beams}'),
    }


# -- doctor probes


def tools_command() -> str:
    """Prints the path of each Slurm client tool, or fails."""
    return "command -v sbatch && command -v squeue && command -v sacct && command -v scancel"


def accounting_command() -> str:
    """Answers (rc 0) only when slurmdbd accounting works."""
    return "sacct -X -n --parsable2 -S now-1minutes --format=JobID"


def test_job_command(slurm: SlurmConfig, workspace: str) -> str:
    """`mqi doctor --job`: a one-minute GPU job through the configured prologue, waited for;
    prints its output (``CUDA_VISIBLE_DEVICES``, the GPUs it sees) and fails when the job did."""
    script = "; ".join(
        [
            *slurm.prologue,
            'echo "mqi doctor job on $(hostname): CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-}"',
        ]
    )
    out = f"{workspace}/.mqi-doctor-%j.out"
    options = [
        "--parsable",
        "--wait",
        "--job-name=mqi.doctor",
        directive("partition", "slurm.partition", slurm.partition),
        directive("gres", "slurm.gpus_per_beam", f"gpu:{slurm.gpus_per_beam}"),
        "--time=1",
        f"--output={quote(out)}",
    ]
    if slurm.account:
        options.append(directive("account", "slurm.account", slurm.account))
    if slurm.qos:
        options.append(directive("qos", "slurm.qos", slurm.qos))
    return (
        f"id=$(sbatch {' '.join(options)} --wrap={quote(script)}); rc=$?; "
        f'f={quote(workspace)}/.mqi-doctor-"${{id%%;*}}".out; cat "$f" 2>/dev/null; rm -f "$f"; exit $rc'
    )


def partition_command(partition: str) -> str:
    return f"sinfo -h -p {quote(partition)} -o '%P|%a|%G|%D'"
