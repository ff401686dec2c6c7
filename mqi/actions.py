"""Day-to-day operations on recorded cases: status, cancel, retry failed beams, logs, queue, top."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from mqi import slurm
from mqi.chain import mark_cancelled, record_chain, submit_chain
from mqi.clock import parse_utc
from mqi.config import Config
from mqi.errors import OperationalError, UsageError
from mqi.slurm.backend import SlurmBackend
from mqi.store import IN_PROGRESS_CASE_STATUSES, Beam, Case, Job, Store
from mqi.textsafe import shell_quote_path as quote_path
from mqi.transport import RemoteFiles

RETRYABLE_CASE_STATUSES = frozenset({"failed", "cancelled"})


def all_case_statuses(store: Store) -> list[dict[str, Any]]:
    """Every case's status document, oldest first, in four queries."""
    cases = store.list_cases()
    ids = [case.case_id for case in cases]
    beams, jobs, verdicts = store.beams_by_case(ids), store.jobs_by_case(ids), qa_verdicts(store, ids)
    return [
        case_status(store, case, beams.get(case.case_id, []), jobs.get(case.case_id, []), verdicts)
        for case in cases
    ]


def qa_verdicts(store: Store, case_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The newest QA verdict of each case (from the post job, or a later `mqi report`)."""
    found: dict[str, dict[str, Any]] = {}
    for event in store.events_of_field("qa", case_ids):
        rate = event.reason.split(";")[0] if event.reason else ""
        found[event.case_id] = {"verdict": event.new, "summary": event.reason or "", "first": rate}
    return found


def qa_details(results_dir: str | None) -> dict[str, Any] | None:
    """Every figure of a delivered case's qa.json (None when there is none)."""
    if not results_dir:
        return None
    path = Path(results_dir) / "qa.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def case_status(
    store: Store,
    case: Case,
    beams: list[Beam] | None = None,
    jobs: list[Job] | None = None,
    verdicts: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The `mqi status --json` shape of one case (keys may be added, never renamed). One case
    alone (no ``verdicts`` given) also carries every QA figure, from its qa.json."""
    alone = verdicts is None
    if beams is None:
        beams = store.list_beams(case.case_id)
    if jobs is None:
        jobs = store.list_jobs(case.case_id)
    if verdicts is None:
        verdicts = qa_verdicts(store, [case.case_id])
    return {
        "schema": "mqi.status/1",
        "qa": verdicts.get(case.case_id),
        **({"qa_details": qa_details(case.results_dir)} if alone else {}),
        "case_id": case.case_id,
        "case_uid": case.case_uid,
        "status": case.status,
        "error": case.error,
        "errors": case.errors,
        "results_dir": case.results_dir,
        "priority": case.priority,
        "created_at": case.created_at,
        "submitted_at": case.submitted_at,
        "finished_at": case.finished_at,
        "beams": [
            {
                "number": beam.number,
                "name": beam.name,
                "status": beam.status,
                "slurm_state": beam.slurm_state,
                "job_id": beam.job_id,
                "exit_code": beam.exit_code,
                "reason": beam.reason,
                "node": beam.node,
                "dose_file": beam.dose_file,
                "started_at": beam.started_at,
                "ended_at": beam.ended_at,
            }
            for beam in beams
        ],
        "jobs": [job.to_dict() for job in jobs],
    }


def cancel_case(store: Store, backend: SlurmBackend, case_id: str) -> list[str]:
    """scancel every unfinished job of the case; the case and its open beams become cancelled.

    A case still ``submitting`` may have jobs that an interrupted submit queued before it
    recorded them: those are found by name in Slurm and cancelled too.
    """
    case = store.require_case(case_id)
    if case.status in ("completed", "rejected"):
        raise UsageError(f"case {case_id} is {case.status}; there is nothing to cancel")
    live = [job.job_id for job in store.list_jobs(case_id) if not job.finished]
    unrecorded: list[str] = []
    if case.status in IN_PROGRESS_CASE_STATUSES:
        since = parse_utc(case.created_at) - timedelta(hours=1)
        records, _ = backend.case_jobs(case.case_uid, since)
        unrecorded = sorted(
            {r.parent_id for r in records if slurm.phase_of(r)[0] not in slurm.TERMINAL} - set(live)
        )
    if live or unrecorded:
        try:
            backend.cancel(live + unrecorded)
        except OperationalError as error:
            raise OperationalError(f"scancel failed for {case_id}: {error}") from None
    mark_cancelled(store, case_id, reason="mqi cancel", beam_reason="mqi cancel", job_ids=live)
    return live + unrecorded


def retry_case(
    config: Config,
    store: Store,
    backend: SlurmBackend,
    files: RemoteFiles,
    case_id: str,
    beams: list[int] | None = None,
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
    if not files.exists(f"{case.remote_dir}/jobs/submit.sh"):
        raise UsageError(
            f"case {case_id} cannot be retried: its folder on the cluster was removed (retention or a "
            f"scratch purge); submit it again with `mqi submit --force {quote_path(case.source_dir)}`"
        )
    ids = submit_chain(backend, case.remote_dir, only_indices=indices)
    reason = f"mqi retry of beam(s) {', '.join(str(b.number) for b in chosen)}"
    record_chain(store, case_id, ids, reason=reason, indices=indices)
    return ids


def top_case(store: Store, backend: SlurmBackend, case_id: str) -> list[str]:
    """Move a queued case ahead of this user's other pending jobs (scontrol top)."""
    live = [
        job.job_id
        for job in store.list_jobs(case_id)
        if not job.finished and (job.state or "PENDING").startswith("PENDING")
    ]
    if not live:
        raise UsageError(f"case {case_id} has no pending job to move up (`mqi poll` refreshes states)")
    backend.top(live)
    return live


def read_log(
    store: Store, files: RemoteFiles, case_id: str, *, beam: int | None = None, step: str | None = None
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
    if step == "simulate":
        if beam is None:
            raise UsageError("give --beam N for the simulation log")
        record = store.get_beam(case_id, beam)
        if record is None or not record.job_id:
            raise UsageError(f"case {case_id} has no beam {beam}")
        engine = f"{case.remote_dir}/beams/{beam}"
        folder, _, pattern = slurm.task_log_glob(case.case_uid, record.array_index).rpartition("/")
        text = files.newest_and_tails(
            f"{case.remote_dir}/{folder}", pattern, [f"{engine}/engine.out", f"{engine}/engine.err"]
        )
    else:
        text = (
            files.read_text(f"{case.remote_dir}/{slurm.log_file(step, case.case_uid, jobs[-1].job_id)}") or ""
        )
    if not text.strip():
        raise OperationalError(f"no {step} log for {case_id} yet (the job may not have started)")
    return text


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


def live_queue(store: Store, backend: SlurmBackend) -> list[QueueRow]:
    """This tool's jobs in squeue (one query), with the local case ids."""
    by_uid = {case.case_uid: case.case_id for case in store.list_cases()}
    rows = []
    for record in backend.live_jobs():
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
