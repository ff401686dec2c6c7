"""The backends that run Slurm for mqi. The command-line backend runs the strings of
:mod:`mqi.slurm.commands` through a transport (local or SSH) and parses the answers; the
pyslurm backend (:mod:`mqi.slurm.pyslurm_backend`, in-cluster) calls slurmctld and
slurmdbd directly. ``open_backend`` builds the one ``slurm.backend`` names.

Every method is one round trip. A backend never writes the store: it answers with
records, and the orchestration decides what they mean.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
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
    needs_sacct,
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


@dataclass
class FirstSubmit:
    """A guarded first submission: the chain's job ids when it was submitted; else
    (``ids`` None) what the cluster holds of the case, as ``case_jobs`` answers."""

    ids: dict[str, str | None] | None
    records: list[JobRecord] = field(default_factory=list)
    also: str = ""


class SlurmBackend(Protocol):
    """What mqi asks of Slurm."""

    def submit_chain(
        self, bundle_dir: str, *, only_indices: Iterable[int] | None = None, before: str = ""
    ) -> dict[str, str | None]: ...

    def query(
        self,
        job_ids: Iterable[str],
        since: datetime,
        *,
        gpus: bool = False,
        arrays: Mapping[str, str] | None = None,
    ) -> QueryAnswer: ...

    def case_jobs(
        self, case_uid: str, since: datetime, *, also: str = "", live_only: bool = False
    ) -> tuple[list[JobRecord], str]: ...

    def submit_unless_found(
        self, case_uid: str, since: datetime, bundle_dir: str, *, before: str, also: str
    ) -> FirstSubmit: ...

    def live_jobs(self) -> list[JobRecord]: ...

    def cancel(self, job_ids: Iterable[str]) -> None: ...

    def top(self, job_ids: Iterable[str]) -> None: ...


class CliBackend:
    """Slurm's command-line tools, run through a transport."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.description = f"cli (Slurm's commands, {getattr(transport, 'description', 'local')})"

    def submit_chain(
        self, bundle_dir: str, *, only_indices: Iterable[int] | None = None, before: str = ""
    ) -> dict[str, str | None]:
        """Run the bundle's submit.sh (after ``before``, in the same round trip); its job ids."""
        command = f"{before}{commands.submit_command(bundle_dir, only_indices)}"
        return _submitted(self.transport.run(command, timeout=300))

    def submit_unless_found(
        self, case_uid: str, since: datetime, bundle_dir: str, *, before: str, also: str
    ) -> FirstSubmit:
        """Submit a case's chain (after ``before``) unless squeue lists a job of the case
        or ``bundle_dir`` exists; then submit nothing and answer as ``case_jobs`` with
        ``live_only`` and ``also``. One round trip: the check is the submission's guard."""
        submit = f"{before}{commands.submit_command(bundle_dir)}"
        command = commands.submit_unless_found_command(case_uid, since, bundle_dir, submit, also)
        result = self.transport.run(command, timeout=300)
        _, marker, rest = f"\n{result.stdout}".partition(f"\n{commands.SUBMITTING}\n")
        if marker:  # (a login script may print before it)
            return FirstSubmit(_submitted(CommandResult(command, result.returncode, rest, result.stderr)))
        records, listing = _case_jobs_answer(result, also=True)
        return FirstSubmit(None, records, listing)

    def query(
        self,
        job_ids: Iterable[str],
        since: datetime,
        *,
        gpus: bool = False,
        arrays: Mapping[str, str] | None = None,
    ) -> QueryAnswer:
        """Slurm's view of these jobs, merged by job id (``gpus``: and the GPUs per
        partition, in squeue's round trip). Two Slurm commands whatever the number of
        jobs (up to about 16,000), the sacct ids on stdin.

        Up to SIDE_BY_SIDE_JOBS jobs, sacct of every job runs beside squeue, in one
        round trip. Beyond, sacct's time grows with the ids while a job squeue lists live
        is squeue's alone (``merge_records`` drops sacct's line for it): squeue runs first
        and sacct is asked only about the jobs it does not list live (``arrays``: each
        array job's ``--array`` spec, so that an array whose every task squeue lists is
        not asked about); when squeue lists them all, sacct is asked about one, so that
        accounting being down is still told every cycle. The answer is the same.
        """
        ids = list(job_ids)
        if len(ids) <= SIDE_BY_SIDE_JOBS:
            return self._query_side_by_side(ids, since, gpus)
        command, count = commands.squeue_command(), 1
        if gpus:
            command, count = commands.with_gpu_usage(command), count + 1
        try:
            listed, partitions = _with_partitions(self.transport.run(command, timeout=120), gpus)
        except TransportError as error:
            return QueryAnswer(None, count, error=f"cluster unreachable: {error}")
        if not listed.ok:
            # While slurmctld is down nothing is known: never take that as "lost" or "failed".
            return QueryAnswer(None, count, error=f"Slurm did not answer: {listed.first_error_line()}")
        try:
            squeue = parse_squeue(listed.stdout)
        except SlurmOutputError as error:
            return QueryAnswer(None, count, error=str(error))
        live = live_job_ids(squeue)
        sacct = commands.sacct_stdin_command(needs_sacct(ids, live, arrays) or ids[:1], since)
        count += sacct.slurm_commands
        try:
            accounted = self.transport.run(sacct.command, timeout=120, stdin=sacct.stdin)
        except TransportError as error:
            return QueryAnswer(None, count, error=f"cluster unreachable: {error}")
        answer = read_query_answer(squeue, live, accounted, count)
        answer.partitions = partitions
        return answer

    def _query_side_by_side(self, ids: list[str], since: datetime, gpus: bool) -> QueryAnswer:
        query = commands.sacct_beside_squeue_command(ids, since)
        command, count = query.command, query.slurm_commands
        if gpus:
            command, count = commands.with_gpu_usage(command), count + 1
        try:
            result, partitions = _with_partitions(
                self.transport.run(command, timeout=120, stdin=query.stdin), gpus
            )
        except TransportError as error:
            return QueryAnswer(None, count, error=f"cluster unreachable: {error}")
        parts = split_sections(result.stdout, 3)
        codes = parts[2].split() if parts else []
        if parts is None or codes[1:] != ["0"]:
            # While slurmctld is down nothing is known: never take that as "lost" or "failed".
            return QueryAnswer(None, count, error=f"Slurm did not answer: {result.first_error_line()}")
        try:
            squeue = parse_squeue(parts[1])
        except SlurmOutputError as error:
            return QueryAnswer(None, count, error=str(error))
        accounted = CommandResult(result.command, 0 if codes[0] == "0" else 1, parts[0], result.stderr)
        answer = read_query_answer(squeue, live_job_ids(squeue), accounted, count)
        answer.partitions = partitions
        return answer

    def case_jobs(
        self, case_uid: str, since: datetime, *, also: str = "", live_only: bool = False
    ) -> tuple[list[JobRecord], str]:
        """A case's jobs by name (squeue and sacct), and the output of ``also`` run in the
        same round trip (e.g. a listing of the case's remote folder). ``live_only``: the
        caller looks only for a live chain; sacct then runs only when squeue shows a job
        of the case (finished jobs of a live chain still come back)."""
        command = commands.case_jobs_command(case_uid, since, live_only=live_only)
        if also:
            command += f"; echo {commands.SECTION}; {also}"
        return _case_jobs_answer(self.transport.run(command, timeout=120), also=bool(also))

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


def open_backend(kind: str, transport: Transport) -> SlurmBackend:
    """The backend ``slurm.backend`` names: ``cli`` (the commands through ``transport``) or
    ``pyslurm`` (in-cluster, local transport only; refuses with one line when it cannot run)."""
    if kind == "pyslurm":
        from mqi.slurm.pyslurm_backend import PyslurmBackend  # imports pyslurm: only when chosen

        return PyslurmBackend(transport)
    return CliBackend(transport)


def backend_description(backend: SlurmBackend) -> str:
    """Which backend, and its version where it has one (for `mqi doctor`)."""
    return str(getattr(backend, "description", "cli (Slurm's commands)"))


SIDE_BY_SIDE_JOBS = 2000
"""Up to this many tracked jobs, sacct of them all runs beside squeue (one round trip);
beyond, squeue first and sacct of the jobs it does not list live (measured on the dev
cluster: side by side is faster at 1,000 jobs, squeue first at 5,000)."""


def _submitted(result: CommandResult) -> dict[str, str | None]:
    """The job ids submit.sh printed, or why there are none."""
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


def _case_jobs_answer(result: CommandResult, *, also: bool) -> tuple[list[JobRecord], str]:
    """squeue's and sacct's records of a case, and the output of ``also`` when it ran."""
    parts = split_sections(result.stdout, 3 if also else 2)
    if parts is None:
        if is_transient(result.stderr):
            raise TransportError(f"Slurm is not answering ({result.first_error_line()})", transient=True)
        raise OperationalError(f"cannot query the cluster: {result.first_error_line()}")
    if "squeue:" in result.stderr and is_transient(result.stderr):
        raise TransportError(f"Slurm is not answering ({result.first_error_line()})", transient=True)
    records = parse_squeue(parts[0]) + parse_sacct(parts[1])
    return records, parts[2] if also else ""


def _with_partitions(result: CommandResult, gpus: bool) -> tuple[CommandResult, list[dict[str, Any]] | None]:
    """A result of ``with_gpu_usage``: the command's own output, and the GPUs per partition."""
    if not gpus:
        return result, None
    stdout, _, usage = result.stdout.rpartition(commands.SECTION + "\n")
    return CommandResult(result.command, result.returncode, stdout, result.stderr), parse_gpu_usage(
        usage
    ) or None


def read_query_answer(
    squeue: list[JobRecord], live: AbstractSet[str], accounted: CommandResult, count: int
) -> QueryAnswer:
    """squeue's records (``live``: the ids it lists as not ended) and sacct's answer
    (``sacct_stdin_command``) as a QueryAnswer: sacct failing is accounting down."""
    if not accounted.ok:
        return QueryAnswer(
            merge_records([], squeue),
            count,
            accounting_down=True,
            warnings=[f"accounting unavailable: {accounted.first_error_line()}"],
        )
    try:
        # Lines of jobs squeue lists live (an array with a task gone, the accounting probe)
        # would be dropped by the merge: they are not even split.
        sacct = parse_sacct(accounted.stdout, skip=live)
    except SlurmOutputError as error:
        return QueryAnswer(None, count, error=str(error))
    return QueryAnswer(merge_records(sacct, squeue), count)
