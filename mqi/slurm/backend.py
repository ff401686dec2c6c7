"""The backends that run Slurm for mqi. The command-line backend runs the strings of
:mod:`mqi.slurm.commands` through a transport (local or SSH) and parses the answers.

Every method is one round trip. A backend never writes the store: it answers with
records, and the orchestration decides what they mean.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from mqi.errors import OperationalError, TransportError
from mqi.slurm import commands
from mqi.slurm.parse import (
    JobRecord,
    SlurmOutputError,
    live_job_ids,
    merge_records,
    parse_gpu_usage,
    parse_sacct,
    parse_squeue,
    parse_submit_output,
    split_sections,
)
from mqi.slurm.states import is_transient
from mqi.transport import CommandResult, Transport


@dataclass
class QueryAnswer:
    """Slurm's view of the tracked jobs, by job id (``123`` or ``123_4``).

    ``records`` is None when Slurm did not answer (nothing may be concluded then).
    ``accounting_down``: slurmdbd did not answer but slurmctld did: the records are
    squeue's only, and a job missing from them may simply have finished.
    """

    records: dict[str, JobRecord] | None
    commands: int
    error: str | None = None
    accounting_down: bool = False
    warnings: list[str] = field(default_factory=list)
    partitions: list[dict[str, Any]] | None = None  # GPUs per partition, when asked for


class SlurmBackend(Protocol):
    """What mqi asks of Slurm."""

    def submit_chain(
        self, bundle_dir: str, *, only_indices: Iterable[int] | None = None, before: str = ""
    ) -> dict[str, str | None]: ...

    def query(self, job_ids: Iterable[str], since: datetime, *, gpus: bool = False) -> QueryAnswer: ...

    def case_jobs(self, case_uid: str, since: datetime, *, also: str = "") -> tuple[list[JobRecord], str]: ...

    def live_jobs(self) -> list[JobRecord]: ...

    def cancel(self, job_ids: Iterable[str]) -> None: ...

    def top(self, job_ids: Iterable[str]) -> None: ...


class CliBackend:
    """Slurm's command-line tools, run through a transport."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def submit_chain(
        self, bundle_dir: str, *, only_indices: Iterable[int] | None = None, before: str = ""
    ) -> dict[str, str | None]:
        """Run the bundle's submit.sh (after ``before``, in the same round trip); its job ids."""
        command = f"{before}{commands.submit_command(bundle_dir, only_indices)}"
        result = self.transport.run(command, timeout=300)
        if not result.ok:
            lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
            said = "; ".join(lines[-4:]) or result.first_error_line()
            if is_transient(result.stderr + result.stdout):
                raise TransportError(f"Slurm is not answering ({said})", transient=True)
            raise OperationalError(f"Slurm refused the case: {said}")
        try:
            return parse_submit_output(result.stdout)
        except SlurmOutputError as error:
            raise OperationalError(str(error)) from None

    def query(self, job_ids: Iterable[str], since: datetime, *, gpus: bool = False) -> QueryAnswer:
        """sacct and squeue for these jobs in one round trip (the ids on stdin), merged by
        job id (``gpus``: and the GPUs per partition, in the same round trip)."""
        query = commands.poll_query_command(job_ids, since)
        command, count = query.command, query.slurm_commands
        if gpus:
            command, count = commands.with_gpu_usage(command), count + 1
        try:
            result = self.transport.run(command, timeout=120, stdin=query.stdin)
        except TransportError as error:
            return QueryAnswer(None, count, error=f"cluster unreachable: {error}")
        partitions = None
        if gpus:
            stdout, _, usage = result.stdout.rpartition(commands.SECTION + "\n")
            result = CommandResult(result.command, result.returncode, stdout, result.stderr)
            partitions = parse_gpu_usage(usage) or None
        answer = read_query_answer(result, count)
        answer.partitions = partitions
        return answer

    def case_jobs(self, case_uid: str, since: datetime, *, also: str = "") -> tuple[list[JobRecord], str]:
        """A case's jobs by name (squeue and sacct), and the output of ``also`` run in the
        same round trip (e.g. a listing of the case's remote folder)."""
        command = commands.case_jobs_command(case_uid, since)
        if also:
            command += f"; echo {commands.SECTION}; {also}"
        result = self.transport.run(command, timeout=120)
        parts = split_sections(result.stdout, 3 if also else 2)
        if parts is None:
            if is_transient(result.stderr):
                raise TransportError(f"Slurm is not answering ({result.first_error_line()})", transient=True)
            raise OperationalError(f"cannot query the cluster: {result.first_error_line()}")
        if "squeue:" in result.stderr and is_transient(result.stderr):
            raise TransportError(f"Slurm is not answering ({result.first_error_line()})", transient=True)
        records = parse_squeue(parts[0]) + parse_sacct(parts[1])
        return records, parts[2] if also else ""

    def live_jobs(self) -> list[JobRecord]:
        result = self.transport.run(commands.squeue_command(), timeout=60)
        if not result.ok:
            raise OperationalError(f"squeue failed: {result.first_error_line()}")
        return parse_squeue(result.stdout)

    def cancel(self, job_ids: Iterable[str]) -> None:
        ids = list(job_ids)
        if not ids:
            return
        result = self.transport.run(commands.scancel_command(ids), timeout=60)
        if not result.ok:
            if is_transient(result.stderr):
                raise TransportError(f"Slurm is not answering ({result.first_error_line()})", transient=True)
            raise OperationalError(f"scancel refused: {result.first_error_line()}")

    def top(self, job_ids: Iterable[str]) -> None:
        result = self.transport.run(commands.scontrol_top_command(job_ids), timeout=60)
        if not result.ok:
            raise OperationalError(f"scontrol top refused: {result.first_error_line()}")


def read_query_answer(result: CommandResult, count: int) -> QueryAnswer:
    """The poll query's output (see ``poll_query_command``) as a QueryAnswer."""
    parts = split_sections(result.stdout, 3)
    if parts is None:
        return QueryAnswer(None, count, error=f"Slurm did not answer: {result.first_error_line()}")
    sacct_text, squeue_text, codes = parts
    sacct_rc, _, squeue_rc = codes.strip().partition(" ")
    if squeue_rc != "0":
        # While slurmctld is down nothing is known: never take that as "lost" or "failed".
        return QueryAnswer(None, count, error=f"Slurm did not answer: {result.first_error_line()}")
    try:
        squeue = parse_squeue(squeue_text)
        if sacct_rc != "0":
            return QueryAnswer(
                merge_records([], squeue),
                count,
                accounting_down=True,
                warnings=[f"accounting unavailable: {result.first_error_line()}"],
            )
        # In a steady cycle most jobs are live: their sacct lines are not even split.
        sacct = parse_sacct(sacct_text, skip=live_job_ids(squeue))
        return QueryAnswer(merge_records(sacct, squeue), count)
    except SlurmOutputError as error:
        return QueryAnswer(None, count, error=str(error))
