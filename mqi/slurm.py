"""The only module that knows Slurm syntax: command lines, output parsers, state mapping.

Everything here is pure: a backend runs the command strings through a transport
and hands the text back. Formats are the text forms measured on Slurm 22.05
(``--json`` is unreliable there: sacct reports exit 0 for FAILED jobs and squeue
ignores filters). Names are ``mqi.<case_uid>.<step>``; comments ``mqi:<case_uid>``.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple

from mqi.errors import UsageError

if TYPE_CHECKING:
    from mqi.config import Priority, SlurmConfig

JOB_NAME_PREFIX = "mqi."
STEPS = ("prepare", "simulate", "post")

SACCT_FIELDS = (
    "JobID",
    "JobIDRaw",
    "JobName",
    "State",
    "ExitCode",
    "Submit",
    "Start",
    "End",
    "Elapsed",
    "NodeList",
    "Reason",
    "Comment",
)
# squeue -o letters for the same information; '|' never occurs in our names or comments.
SQUEUE_FORMAT = "%i|%A|%j|%T|%r|%k|%N|%E|%V|%S"
SACCT_CHUNK = 1000  # ids per sacct call: about 8 KB of command line


def job_name(case_uid: str, step: str) -> str:
    return f"{JOB_NAME_PREFIX}{case_uid}.{step}"


def job_comment(case_uid: str) -> str:
    return f"mqi:{case_uid}"


def parse_job_name(name: str) -> tuple[str, str] | None:
    """``mqi.<uid>.<step>`` -> (uid, step); None for other jobs."""
    if not name.startswith(JOB_NAME_PREFIX):
        return None
    uid, _, step = name[len(JOB_NAME_PREFIX) :].rpartition(".")
    if not uid or step not in STEPS:
        return None
    return uid, step


# -- command lines -----------------------------------------------------------------


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


def sacct_commands(job_ids: Iterable[str], since: datetime) -> list[str]:
    """One sacct per chunk of ids, bounded by ``since`` (ids are recycled; without -S, sacct
    searches from the epoch)."""
    ids = sorted({_parent_id(job_id) for job_id in job_ids}, key=_id_sort_key)
    start = _slurm_time(since - timedelta(minutes=5))
    fields = ",".join(SACCT_FIELDS)
    # Chunks of equal size: 1,002 ids make two calls of 501 (run side by side by the
    # poller), not a full call and a nearly empty one after it.
    size = -(-len(ids) // max(1, -(-len(ids) // SACCT_CHUNK))) if ids else 1
    return [
        f"{_UTC_ENV}sacct -X --parsable2 --noheader --duplicates -S {start} "
        f"--format={fields} -j {','.join(ids[i : i + size])}"
        for i in range(0, len(ids), size)
    ]


def sacct_by_names_command(case_uid: str, since: datetime) -> str:
    """Jobs of one case by name (pending jobs have no comment in sacct yet)."""
    names = ",".join(job_name(case_uid, step) for step in STEPS)
    return (
        f'{_UTC_ENV}sacct -u "$(id -un)" -X --parsable2 --noheader --duplicates '
        f"-S {_slurm_time(since - timedelta(minutes=5))} "
        f"--format={','.join(SACCT_FIELDS)} --name={shlex.quote(names)}"
    )


def squeue_command(user: str | None = None, *, all_users: bool = False) -> str:
    """Every live job of this user (default: the login user), array tasks expanded."""
    who = "" if all_users else f"-u {shlex.quote(user)}" if user else "--me"
    return f"{_UTC_ENV}squeue -h -t all -r {who} -o {shlex.quote(SQUEUE_FORMAT)}"


def scancel_command(job_ids: Iterable[str]) -> str:
    ids = sorted({_parent_id(job_id) for job_id in job_ids}, key=_id_sort_key)
    return "scancel " + " ".join(shlex.quote(job_id) for job_id in ids)


def scontrol_top_command(job_ids: Iterable[str]) -> str:
    ids = ",".join(sorted({_parent_id(job_id) for job_id in job_ids}, key=_id_sort_key))
    return f"scontrol top {shlex.quote(ids)}"


def submit_command(bundle_dir: str, only_indices: Iterable[int] | None = None) -> str:
    """Run a bundle's rendered submit.sh (all its sbatch calls in one round trip)."""
    script = shlex.quote(f"{bundle_dir}/jobs/submit.sh")
    if only_indices is None:
        return f"bash {script}"
    indices = ",".join(str(i) for i in sorted(set(only_indices)))
    return f"bash {script} --only-beams {shlex.quote(indices)}"


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
        return [*lines, "--output=logs/%x-%j.out"]
    return [
        *lines,
        directive("gres", "slurm.gpus_per_beam", f"gpu:{slurm.gpus_per_beam}"),
        f"--array=0-{beam_count - 1}%{slurm.max_parallel_beams}",
        "--output=logs/%x-%A_%a.out",
    ]


def sbatch_directives(step: str, slurm: SlurmConfig, case_uid: str, beam_count: int) -> list[str]:
    """The options of a job script's ``#SBATCH`` lines, in order."""
    lines = [
        f"--job-name={job_name(case_uid, step)}",
        f"--comment={job_comment(case_uid)}",
        directive("partition", "slurm.partition", slurm.partition),
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
        words.append(shlex.quote(f"--qos={priority.qos}"))
    return " ".join([*words, *extra, f"jobs/{step}.sbatch"])


def sbatch_submit_lines(priority: Priority, max_parallel_beams: int) -> dict[str, str]:
    """submit.sh's sbatch lines: the chain, and the ``--only-beams`` simulate line."""
    return {
        "prepare": sbatch_command("prepare", priority),
        "simulate": sbatch_command("simulate", priority, '--dependency=afterok:"$prepare_id"'),
        "post": sbatch_command("post", priority, '--dependency=afterany:"$simulate_id"'),
        "simulate_only": sbatch_command("simulate", priority, f'--array="$only_beams"%{max_parallel_beams}'),
    }


# -- parsers -------------------------------------------------------------------


class SlurmOutputError(ValueError):
    """Slurm printed something this module cannot read."""


class JobRecord(NamedTuple):
    """One job or array task as Slurm reports it (a tuple: a poll cycle builds thousands)."""

    job_id: str  # "123" or "123_4"
    raw_id: str  # JobIDRaw / %A: the id this task really has
    name: str
    state: str  # base state: "CANCELLED" for "CANCELLED by 0"
    state_detail: str
    reason: str | None
    exit_code: int | None
    signal: int | None
    node: str | None
    submit: str | None
    start: str | None
    end: str | None
    comment: str | None
    dependency: str | None = None

    @property
    def parent_id(self) -> str:
        return _parent_id(self.job_id)

    @property
    def array_index(self) -> int | None:
        _, sep, task = self.job_id.partition("_")
        return int(task) if sep and task.isdigit() else None


def parse_submit_output(stdout: str) -> dict[str, str | None]:
    """The JSON line printed by a bundle's submit.sh: {"prepare", "simulate", "post"}."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except json.JSONDecodeError as err:
                raise SlurmOutputError(f"submit.sh printed invalid JSON: {line[:120]}") from err
            ids = {step: (str(data[step]) if data.get(step) else None) for step in STEPS}
            if not ids["simulate"] or not ids["post"]:
                raise SlurmOutputError(f"submit.sh printed no simulate/post job id: {line[:120]}")
            return ids
    raise SlurmOutputError(f"submit.sh printed no job ids: {stdout.strip()[:200]!r}")


def parse_sbatch_parsable(stdout: str) -> str:
    """``sbatch --parsable`` prints ``id`` or ``id;cluster``."""
    line = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    job_id = line.split(";")[0].strip()
    if not job_id.isdigit():
        raise SlurmOutputError(f"sbatch printed no job id: {stdout.strip()[:120]!r}")
    return job_id


@functools.lru_cache(maxsize=1024)
def parse_exit_code(text: str) -> tuple[int | None, int | None]:
    """``code:signal`` -> (code, signal); anything else (e.g. a reason) -> (None, None)."""
    code, sep, signal = text.partition(":")
    if sep and code.isdigit() and signal.isdigit():
        return int(code), int(signal)
    return None, None


_NO_VALUE = frozenset(("", "None", "None assigned", "Unknown", "N/A", "(null)"))
_TASK_RANGE = re.compile(r"(\d+)_\[([^\]]+)\]")


def _none(value: str) -> str | None:
    value = value.strip()
    return None if value in _NO_VALUE else value


def _expand_task_ids(job_id: str) -> list[str]:
    """``15_[1-4%1]`` -> 15_1 .. 15_4; other ids unchanged."""
    match = _TASK_RANGE.fullmatch(job_id) if "[" in job_id else None
    if not match:
        return [job_id]
    parent, spec = match.groups()
    return [f"{parent}_{index}" for index in parse_array_spec(spec)]


def _record(values: tuple[Any, ...]) -> JobRecord:
    # tuple.__new__ skips the named tuple's Python-level __new__: a cycle builds thousands.
    return tuple.__new__(JobRecord, values)


def parse_array_spec(spec: str) -> list[int]:
    """``--array`` indices: ``0-3,5%2`` -> [0, 1, 2, 3, 5]."""
    indices: list[int] = []
    for part in spec.split("%")[0].split(","):
        low, _, high = part.partition("-")
        indices.extend(range(int(low), int(high or low) + 1))
    return indices


@functools.lru_cache(maxsize=1024)
def array_size(spec: str) -> int:
    """How many tasks an ``--array`` spec makes."""
    return len(parse_array_spec(spec))


def array_state(task_states: Iterable[str]) -> str:
    """An array job's state as mqi records it: how many tasks are in each state,
    ``COMPLETED:3,RUNNING:1``."""
    counts: dict[str, int] = {}
    for state in task_states:
        counts[state] = counts.get(state, 0) + 1
    return ",".join(f"{state}:{n}" for state, n in sorted(counts.items()))


def parse_sacct(text: str) -> list[JobRecord]:
    """``sacct -X --parsable2 --noheader --format=<SACCT_FIELDS>`` output (a header line is skipped)."""
    records: list[JobRecord] = []
    width = len(SACCT_FIELDS)
    empty = _NO_VALUE
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < width:
            if not line.strip():
                continue
            raise SlurmOutputError(f"unexpected sacct line: {line[:160]!r}")
        if line.startswith("JobID|"):
            continue
        job_id, raw_id, name, state_detail, exit_text, submit, start, end, _elapsed, node, reason = parts[
            : width - 1
        ]
        # A comment may contain '|': everything after the 11th separator is the comment.
        comment = parts[width - 1] if len(parts) == width else "|".join(parts[width - 1 :])
        code, signal = parse_exit_code(exit_text)
        state_detail = state_detail.strip()
        fields = (
            raw_id,
            name,
            state_detail.split()[0] if state_detail else "UNKNOWN",
            state_detail,
            None if reason in empty else reason,
            code,
            signal,
            None if node in empty else node,
            None if submit in empty else submit,
            None if start in empty else start,
            None if end in empty else end,
            _none(comment),
            None,
        )
        for expanded in _expand_task_ids(job_id):
            records.append(_record((expanded, *fields)))
    return records


def parse_squeue(text: str) -> list[JobRecord]:
    """``squeue -h -t all -r -o SQUEUE_FORMAT`` output."""
    records: list[JobRecord] = []
    empty = _NO_VALUE
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) != 10:
            if not line.strip():
                continue
            raise SlurmOutputError(f"unexpected squeue line: {line[:160]!r}")
        job_id, raw_id, name, state, reason, comment, node, dependency, submit, start = parts
        fields = (
            raw_id,
            name,
            state.split()[0] if state else "UNKNOWN",
            state,
            None if reason in empty else reason,
            None,
            None,
            None if node in empty else node,
            None if submit in empty else submit,
            None if start in empty else start,
            None,
            None if comment in empty else comment,
            None if dependency in empty else dependency,
        )
        for expanded in _expand_task_ids(job_id):
            records.append(_record((expanded, *fields)))
    return records


def latest_by_job(records: Iterable[JobRecord]) -> dict[str, JobRecord]:
    """With ``--duplicates``, a requeued job appears several times: keep the last."""
    latest: dict[str, JobRecord] = {}
    for record in records:
        latest[record.job_id] = record
    return latest


def _parent_id(job_id: str) -> str:
    return job_id.split("_", 1)[0]


def _id_sort_key(job_id: str) -> tuple[int, str]:
    return (int(job_id) if job_id.isdigit() else 0, job_id)


# -- states --------------------------------------------------------------------


class Phase(StrEnum):
    """What a Slurm state means for a beam or a step."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


_PHASES: dict[str, tuple[Phase, str | None]] = {
    "PENDING": (Phase.PENDING, None),
    "CONFIGURING": (Phase.PENDING, None),
    "REQUEUED": (Phase.PENDING, "requeued by Slurm"),
    "REQUEUE_FED": (Phase.PENDING, "requeued by Slurm"),
    "REQUEUE_HOLD": (Phase.PENDING, "requeued and held by Slurm"),
    "RESV_DEL_HOLD": (Phase.PENDING, "held: reservation deleted"),
    "SUSPENDED": (Phase.RUNNING, "suspended by Slurm"),
    "RUNNING": (Phase.RUNNING, None),
    "COMPLETING": (Phase.RUNNING, None),
    "STAGE_OUT": (Phase.RUNNING, None),
    "SIGNALING": (Phase.RUNNING, None),
    "RESIZING": (Phase.RUNNING, None),
    "STOPPED": (Phase.RUNNING, "stopped by a signal"),
    "COMPLETED": (Phase.COMPLETED, None),
    "FAILED": (Phase.FAILED, "the job exited non-zero"),
    "TIMEOUT": (Phase.FAILED, "hit its time limit (raise slurm.time_limit)"),
    "OUT_OF_MEMORY": (Phase.FAILED, "ran out of memory (raise slurm.mem_per_beam)"),
    "NODE_FAIL": (Phase.FAILED, "its node failed"),
    "BOOT_FAIL": (Phase.FAILED, "its node failed to boot"),
    "DEADLINE": (Phase.FAILED, "missed its deadline"),
    "PREEMPTED": (Phase.FAILED, "preempted by a higher-priority job"),
    "REVOKED": (Phase.CANCELLED, "revoked by a federated cluster"),
    "CANCELLED": (Phase.CANCELLED, "cancelled"),
    "SPECIAL_EXIT": (Phase.FAILED, "special exit"),
}

TERMINAL = frozenset({Phase.COMPLETED, Phase.FAILED, Phase.CANCELLED})
# The base states whose phase is terminal (an unknown state never is).
TERMINAL_STATES = frozenset(state for state, (phase, _) in _PHASES.items() if phase in TERMINAL)


def phase_of(record: JobRecord) -> tuple[Phase, str | None]:
    """Map a Slurm record to a phase and a human reason (None when nothing to say).

    Unknown states are taken as still running, with the state named in the reason,
    so a new Slurm state never marks work finished by mistake.
    """
    return _phase(record.state, record.state_detail, record.exit_code, record.signal, record.reason)


@functools.lru_cache(maxsize=4096)
def _phase(
    state: str, state_detail: str, exit_code: int | None, signal: int | None, slurm_reason: str | None
) -> tuple[Phase, str | None]:
    # Cached: a poll cycle asks this for thousands of records that share a handful of states.
    phase, reason = _PHASES.get(state, (Phase.RUNNING, f"unknown Slurm state {state}"))
    if state == "CANCELLED" and state_detail != "CANCELLED":
        reason = state_detail.lower()  # "cancelled by 1000": who did it
    if phase is Phase.FAILED:
        details = []
        if exit_code:
            details.append(f"exit code {exit_code}")
        if signal:
            details.append(f"signal {signal}")
        if details:
            reason = f"{reason}, {', '.join(details)}" if state != "FAILED" else ", ".join(details)
    if phase is Phase.PENDING and slurm_reason == "DependencyNeverSatisfied":
        reason = "DependencyNeverSatisfied"
    return phase, reason


def never_satisfied(record: JobRecord) -> bool:
    """A pending job whose dependency failed: it would wait for ever."""
    return record.state == "PENDING" and record.reason == "DependencyNeverSatisfied"


def utc_now() -> datetime:
    return datetime.now(UTC)


# -- doctor --------------------------------------------------------------------


def tools_command() -> str:
    """Prints the path of each Slurm client tool, or fails."""
    return "command -v sbatch && command -v squeue && command -v sacct && command -v scancel"


def accounting_command() -> str:
    """Answers (rc 0) only when slurmdbd accounting works."""
    return "sacct -X -n --parsable2 -S now-1minutes --format=JobID"


def partition_command(partition: str) -> str:
    return f"sinfo -h -p {shlex.quote(partition)} -o '%P|%a|%G|%D'"


@dataclass(frozen=True)
class PartitionInfo:
    name: str
    available: bool
    gpus_per_node: int
    nodes: int


def parse_partition(text: str) -> PartitionInfo | None:
    """``sinfo -h -p P -o '%P|%a|%G|%D'``; None when the partition does not exist."""
    rows = [line.split("|") for line in text.splitlines() if line.count("|") == 3]
    if not rows:
        return None
    gpus = 0
    for _, _, gres, _ in rows:
        for item in gres.split(","):
            match = re.match(r"gpu(?::[\w.-]+)?:(\d+)", item)
            if match:
                gpus = max(gpus, int(match.group(1)))
    name = rows[0][0].rstrip("*")
    return PartitionInfo(
        name=name,
        available=any(row[1] == "up" for row in rows),
        gpus_per_node=gpus,
        nodes=sum(int(row[3]) for row in rows if row[3].isdigit()),
    )
