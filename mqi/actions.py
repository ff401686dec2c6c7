"""Day-to-day operations on submitted cases: cancel, retry failed beams, logs, queue, top."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from mqi import slurm
from mqi.config import Config
from mqi.errors import OperationalError, UsageError
from mqi.poll import Poller
from mqi.store import TERMINAL_BEAM_STATUSES, Store
from mqi.submit import run_submit_script
from mqi.transport import Transport

RETRYABLE_CASE_STATUSES = frozenset({"failed", "cancelled"})


def cancel_case(store: Store, transport: Transport, case_id: str) -> list[str]:
    """scancel every unfinished job of the case; the case and its open beams become cancelled."""
    case = store.require_case(case_id)
    if case.status in ("completed", "rejected"):
        raise UsageError(f"case {case_id} is {case.status}; there is nothing to cancel")
    live = [job.job_id for job in store.list_jobs(case_id) if not job.finished]
    if live:
        result = transport.run(slurm.scancel_command(live), timeout=60)
        if not result.ok:
            raise OperationalError(f"scancel failed for {case_id}: {result.first_error_line()}")
    with store.transaction():
        for job_id in live:
            store.update_job(job_id, state="CANCELLED", finished=True, reason="mqi cancel")
        for beam in store.list_beams(case_id):
            if beam.status not in TERMINAL_BEAM_STATUSES:
                store.update_beam(case_id, beam.number, status="cancelled", reason="mqi cancel")
        store.update_case(case_id, status="cancelled", reason="mqi cancel")
    return live


def retry_case(
    config: Config, store: Store, transport: Transport, case_id: str, beams: list[int] | None = None
) -> dict[str, str | None]:
    """Resubmit only the failed (or the named) beams and a new post job; results merge."""
    case = store.require_case(case_id)
    if case.status not in RETRYABLE_CASE_STATUSES:
        raise UsageError(f"case {case_id} is {case.status}; only failed or cancelled cases can be retried")
    if not case.remote_dir:
        raise UsageError(f"case {case_id} was never uploaded; use `mqi submit`")
    known = {beam.number: beam for beam in store.list_beams(case_id)}
    if beams:
        unknown = sorted(set(beams) - set(known))
        if unknown:
            raise UsageError(f"case {case_id} has no beam {unknown[0]}; its beams are {sorted(known)}")
        chosen = [known[number] for number in beams]
    else:
        chosen = [beam for beam in known.values() if beam.status in ("failed", "cancelled")]
    if not chosen:
        raise UsageError(f"case {case_id} has no failed beam to retry; name one with --beam")
    indices = sorted(beam.array_index for beam in chosen)
    ids = run_submit_script(transport, case.remote_dir, only_indices=indices)
    Poller(config, store, transport)._record_generation(
        case_id, ids, indices, reason=f"mqi retry of beam(s) {', '.join(str(b.number) for b in chosen)}"
    )
    return ids


def top_case(store: Store, transport: Transport, case_id: str) -> list[str]:
    """Move a queued case ahead of this user's other pending jobs (scontrol top)."""
    live = [
        job.job_id
        for job in store.list_jobs(case_id)
        if not job.finished and (job.state or "PENDING").startswith("PENDING")
    ]
    if not live:
        raise UsageError(f"case {case_id} has no pending job to move up (`mqi poll` refreshes states)")
    result = transport.run(slurm.scontrol_top_command(live), timeout=60)
    if not result.ok:
        raise OperationalError(f"scontrol top refused: {result.first_error_line()}")
    return live


def read_log(
    store: Store, transport: Transport, case_id: str, *, beam: int | None = None, step: str | None = None
) -> str:
    """The Slurm output of a case's step (simulate: one beam's task) from the cluster."""
    case = store.require_case(case_id)
    if not case.remote_dir:
        raise UsageError(f"case {case_id} was never uploaded; it has no logs")
    step = step or ("simulate" if beam is not None else "post")
    if step not in slurm.STEPS:
        raise UsageError(f"--step must be one of {', '.join(slurm.STEPS)}")
    jobs = [job for job in store.list_jobs(case_id) if job.step == step]
    if not jobs:
        raise UsageError(f"case {case_id} has no {step} job")
    job = jobs[-1]
    name = slurm.job_name(case.case_uid, step)
    logs = f"{case.remote_dir}/logs"
    if step == "simulate":
        if beam is None:
            raise UsageError("give --beam N for the simulation log")
        record = store.get_beam(case_id, beam)
        if record is None or not record.job_id:
            raise UsageError(f"case {case_id} has no beam {beam}")
        index = record.job_id.rpartition("_")[2]
        pattern = f"{logs}/{name}-*_{index}.out"
        engine = f"{case.remote_dir}/beams/{beam}"
        command = (
            f"ls -t {pattern} 2>/dev/null | head -n1 | xargs -r cat; "
            f"for f in {shlex.quote(engine)}/engine.out {shlex.quote(engine)}/engine.err; do "
            '[ -f "$f" ] && { echo "== $f (last 50 lines)"; tail -n 50 "$f"; }; done'
        )
    else:
        command = f"cat {shlex.quote(f'{logs}/{name}-{job.job_id}.out')}"
    result = transport.run(command, timeout=60)
    if not result.ok or not result.stdout.strip():
        raise OperationalError(f"no {step} log for {case_id} yet (the job may not have started)")
    return result.stdout


@dataclass(frozen=True)
class QueueRow:
    case_id: str | None
    step: str
    job_id: str
    state: str
    reason: str | None
    node: str | None
    submitted: str | None
    started: str | None

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def live_queue(store: Store, transport: Transport) -> list[QueueRow]:
    """This tool's jobs in squeue (one query), with the local case ids."""
    result = transport.run(slurm.squeue_command(), timeout=60)
    if not result.ok:
        raise OperationalError(f"squeue failed: {result.first_error_line()}")
    by_uid = {case.case_uid: case.case_id for case in store.list_cases()}
    rows = []
    for record in slurm.parse_squeue(result.stdout):
        parsed = slurm.parse_job_name(record.name)
        if parsed is None:
            continue
        uid, step = parsed
        rows.append(
            QueueRow(
                case_id=by_uid.get(uid),
                step=step,
                job_id=record.job_id,
                state=record.state,
                reason=record.reason,
                node=record.node,
                submitted=record.submit,
                started=record.start,
            )
        )
    return rows
