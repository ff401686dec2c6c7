"""Parsers (pure) for what Slurm prints: sacct, squeue, sbatch, submit.sh, sinfo."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, NamedTuple

from mqi.slurm.names import SACCT_FIELDS, SECTION, STEPS, parent_id
from mqi.slurm.states import TERMINAL_STATES


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
        return parent_id(self.job_id)

    @property
    def array_index(self) -> int | None:
        _, sep, task = self.job_id.partition("_")
        return int(task) if sep and task.isdigit() else None


def live_job_ids(squeue: list[JobRecord]) -> set[str]:
    """The ids squeue lists as not ended: merge_records takes these from squeue whatever
    sacct says, so their sacct lines need not be read (``parse_sacct(skip=...)``)."""
    return {record.job_id for record in squeue if record.state not in TERMINAL_STATES}


def needs_sacct(
    job_ids: Iterable[str], live: AbstractSet[str], arrays: Mapping[str, str] | None = None
) -> list[str]:
    """The tracked jobs sacct must be asked about, given the ids squeue lists as not ended
    (``live_job_ids``): a job squeue lists live, or an array (``arrays``: id -> its
    ``--array`` spec) whose every task it lists live, is squeue's alone in
    ``merge_records`` whatever sacct says. Everything else (finished, lost, an array
    whose finished tasks left squeue, an array of unknown spec) is asked about."""
    arrays = arrays or {}
    asked = []
    for job_id in job_ids:
        spec = arrays.get(job_id)
        if spec:
            covered = all(f"{job_id}_{index}" in live for index in parse_array_spec(spec))
        else:
            covered = job_id in live
        if not covered:
            asked.append(job_id)
    return asked


def merge_records(sacct: list[JobRecord], squeue: list[JobRecord]) -> dict[str, JobRecord]:
    """By job id (``123`` or ``123_4``): squeue for live jobs, else sacct's latest.

    squeue is the authority on what is alive: a job sacct still calls pending or running
    but squeue does not know is a stale accounting record (slurmctld lost it) and is
    left out, so that it can be found lost.
    """
    live_parents = {parent_id(record.job_id) for record in squeue}
    merged = {
        job_id: record
        for job_id, record in latest_by_job(sacct).items()
        if record.state in TERMINAL_STATES or parent_id(job_id) in live_parents
    }
    for record in squeue:
        if record.state not in TERMINAL_STATES or record.job_id not in merged:
            merged[record.job_id] = record
    return merged


def split_sections(stdout: str, count: int) -> list[str] | None:
    """The outputs of ``count`` commands run in one round trip; None when one is missing."""
    parts = stdout.split(SECTION + "\n")
    return parts if len(parts) == count else None


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


def parse_sacct(text: str, skip: AbstractSet[str] = frozenset()) -> list[JobRecord]:
    """``sacct -X --parsable2 --noheader --format=<SACCT_FIELDS>`` output (a header line is
    skipped, and so are the lines of the job ids in ``skip``)."""
    records: list[JobRecord] = []
    width = len(SACCT_FIELDS)
    empty = _NO_VALUE
    for line in text.splitlines():
        if skip:
            job_id = line[: line.find("|")]
            if job_id in skip or ("[" in job_id and skip.issuperset(_expand_task_ids(job_id))):
                continue
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
    append = records.append
    empty = _NO_VALUE
    new = tuple.__new__  # as _record, without the call: a poll cycle reads thousands of lines
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) != 10:
            if not line.strip():
                continue
            raise SlurmOutputError(f"unexpected squeue line: {line[:160]!r}")
        job_id, raw_id, name, state, reason, comment, node, dependency, submit, start = parts
        base = (state.split()[0] if " " in state else state) if state else "UNKNOWN"
        if "[" in job_id:  # -r expands arrays; kept for a squeue that does not
            fields = (raw_id, name, base, state, None if reason in empty else reason, None, None)
            fields += (None if node in empty else node, None if submit in empty else submit)
            fields += (None if start in empty else start, None, None if comment in empty else comment)
            fields += (None if dependency in empty else dependency,)
            for expanded in _expand_task_ids(job_id):
                append(new(JobRecord, (expanded, *fields)))
            continue
        append(
            new(
                JobRecord,
                (
                    job_id,
                    raw_id,
                    name,
                    base,
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
                ),
            )
        )
    return records


def latest_by_job(records: Iterable[JobRecord]) -> dict[str, JobRecord]:
    """With ``--duplicates``, a requeued job appears several times: keep the last."""
    latest: dict[str, JobRecord] = {}
    for record in records:
        latest[record.job_id] = record
    return latest


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


_GPU_ITEM = re.compile(r"^gpu(?::[^:(]+)*:(\d+)")


def _gpus(gres: str) -> int:
    """``gpu:4``, ``gpu:a100:2(S:0-1)``, ``gpu:2(IDX:0-1),shard:0`` -> the number of GPUs."""
    total = 0
    for item in re.split(r",(?![^(]*\))", gres):
        match = _GPU_ITEM.match(item.strip())
        if match:
            total += int(match.group(1))
    return total


def parse_gpu_usage(text: str) -> list[dict[str, Any]]:
    """``sinfo -h -N -O NodeHost,Partition,Gres,GresUsed`` -> ``{partition, gpus_total,
    gpus_used}`` per partition (each node counted once per partition)."""
    seen: set[tuple[str, str]] = set()
    totals: dict[str, list[int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        node, partition, gres, used = parts[0], parts[1].rstrip("*"), parts[2], parts[3]
        if (node, partition) in seen:
            continue
        seen.add((node, partition))
        entry = totals.setdefault(partition, [0, 0])
        entry[0] += _gpus(gres)
        entry[1] += _gpus(used)
    return [{"partition": name, "gpus_total": t, "gpus_used": u} for name, (t, u) in sorted(totals.items())]
