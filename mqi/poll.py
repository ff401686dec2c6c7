"""Mirroring: one batched Slurm query per cycle, states into SQLite, results brought home.

A cycle asks sacct (ids in chunks, bounded by the oldest tracked submit time) and
squeue in ONE remote command. squeue is fresher for live jobs (sacct lags a few
seconds), sacct knows finished ones. A job neither knows is lost only after
``poll.lost_grace_seconds``; a case whose chain was lost is resubmitted once.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from mqi import slurm
from mqi.bundle import RESULTS_DIR, SUMMARY_NAME, sha256_file
from mqi.config import Config
from mqi.errors import MqiError, OperationalError, TransportError
from mqi.locks import file_lock
from mqi.slurm import JobRecord, Phase
from mqi.store import ACTIVE_CASE_STATUSES, TERMINAL_BEAM_STATUSES, Job, Store, parse_utc, utc_now
from mqi.submit import is_transient_slurm_error, run_submit_script
from mqi.transport import Transport

_SECTION = "@@mqi-section@@"
MAX_AUTOMATIC_RESUBMITS = 1


@dataclass
class PollReport:
    slurm_commands: int = 0
    jobs_tracked: int = 0
    changes: int = 0
    delivered: list[str] = field(default_factory=list)
    resubmitted: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    active_cases: int = 0
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def query_command(job_ids: Iterable[str], since_iso: str) -> tuple[str, int]:
    """One remote command: sacct chunks, a separator, squeue. Returns it and its Slurm command count."""
    sacct = slurm.sacct_commands(job_ids, parse_utc(since_iso))
    # sacct and squeue run side by side on the login node; their outputs come back in order.
    # The exit code is non-zero when either failed, so that a silent failure is never read
    # as "these jobs are gone".
    sacct_all = " && ".join(sacct)
    command = (
        f't=$(mktemp -d) && {{ {{ {sacct_all}; echo $? > "$t/ra"; }} > "$t/a" 2>&1 & '
        f'{{ {slurm.squeue_command()} > "$t/q" 2> "$t/e"; echo $? > "$t/rq"; }} & wait; }}; '
        f'cat "$t/a"; echo {_SECTION}; cat "$t/q"; cat "$t/e" >&2; '
        'rc=$(( $(cat "$t/ra") + $(cat "$t/rq") )); rm -rf "$t"; exit $rc'
    )
    return command, len(sacct) + 1


def merge_records(sacct: list[JobRecord], squeue: list[JobRecord]) -> dict[str, JobRecord]:
    """By job id (``123`` or ``123_4``): squeue for live jobs, else sacct's latest.

    squeue is the authority on what is alive: a job sacct still calls pending or running
    but squeue does not know is a stale accounting record (slurmctld lost it) and is
    left out, so that it can be found lost.
    """
    live_parents = {record.parent_id for record in squeue}
    merged = {
        job_id: record
        for job_id, record in slurm.latest_by_job(sacct).items()
        if slurm.phase_of(record)[0] in slurm.TERMINAL or record.parent_id in live_parents
    }
    for record in squeue:
        if slurm.phase_of(record)[0] not in slurm.TERMINAL or record.job_id not in merged:
            merged[record.job_id] = record
    return merged


class Poller:
    def __init__(
        self,
        config: Config,
        store: Store,
        transport: Transport,
        *,
        log: Callable[[str], None] = lambda _msg: None,
    ) -> None:
        self.config = config
        self.store = store
        self.transport = transport
        self.log = log

    # -- one cycle ----------------------------------------------------------------------
    def poll_once(self) -> PollReport:
        """One cycle; cycles of concurrent pollers (cron, `mqi run`, a user) take turns."""
        with file_lock(self.config.state_dir / "locks" / "poll.lock", what="mqi poll"):
            return self._cycle()

    def _cycle(self) -> PollReport:
        report = PollReport()
        touched: set[str] = set()
        jobs = self.store.active_jobs()
        report.jobs_tracked = len(jobs)
        if jobs:
            records = self._query(jobs, report)
            if records is not None:
                uids = self.store.case_uids(job.case_id for job in jobs)
                by_parent: dict[str, list[JobRecord]] = {}
                for record in records.values():
                    by_parent.setdefault(record.parent_id, []).append(record)
                # One write transaction for the whole mirror: short, and one sync instead of hundreds.
                with self.store.transaction():
                    for job in jobs:
                        # Ids are recycled after a controller loses its state: match names too.
                        name = slurm.job_name(uids.get(job.case_id, ""), job.step)
                        own = [r for r in by_parent.get(job.job_id, []) if r.name == name]
                        before = report.changes
                        self._mirror_job(job, own, report)
                        if report.changes != before:
                            touched.add(job.case_id)
        waiting_on_slurm = {job.case_id for job in jobs}
        for case_id in self.store.case_ids(sorted(ACTIVE_CASE_STATUSES)):
            # A case changes only when one of its jobs did, or when nothing in Slurm is left
            # and its results still have to come home (a failed download is retried here).
            if case_id not in touched and case_id in waiting_on_slurm:
                continue
            try:
                self._settle_case(case_id, report)
            except MqiError as error:
                report.errors.append(f"{case_id}: {error}")
                self.log(f"{case_id}: {error} (will retry next cycle)")
        report.active_cases = len(self.store.case_ids(sorted(ACTIVE_CASE_STATUSES)))
        return report

    def _query(self, jobs: list[Job], report: PollReport) -> dict[str, JobRecord] | None:
        since = min(job.submitted_at or utc_now() for job in jobs)
        command, count = query_command([job.job_id for job in jobs], since)
        report.slurm_commands += count
        try:
            result = self.transport.run(command, timeout=120)
        except TransportError as error:
            report.errors.append(str(error))
            self.log(f"cluster unreachable, states unchanged: {error}")
            return None
        sacct_text, _, squeue_text = result.stdout.partition(_SECTION + "\n")
        if is_transient_slurm_error(result.stdout + result.stderr) or not result.ok:
            # While slurmctld is down nothing is known: never take that as "lost" or "failed".
            report.errors.append(f"Slurm did not answer: {result.first_error_line()}")
            self.log(f"Slurm did not answer, states unchanged: {result.first_error_line()}")
            return None
        try:
            return merge_records(slurm.parse_sacct(sacct_text), slurm.parse_squeue(squeue_text))
        except slurm.SlurmOutputError as error:
            report.errors.append(str(error))
            return None

    def _mirror_job(self, job: Job, own: list[JobRecord], report: PollReport) -> None:
        if not own:
            self._maybe_lost(job, report)
            return
        if job.step == "simulate":
            own = _as_tasks(own, job.array_indices)
            self._mirror_tasks(job, own, report)
            phases = [slurm.phase_of(r)[0] for r in own]
            expected = _count_indices(job.array_indices)
            finished = len(own) >= expected and all(p in slurm.TERMINAL for p in phases)
            state = _summary_state(own)
            reason = None
        else:
            record = own[0]
            phase, reason = slurm.phase_of(record)
            finished = phase in slurm.TERMINAL
            state = record.state_detail
            if slurm.never_satisfied(record):
                self._dependency_never_satisfied(job, report)
                return
        if state != job.state or finished != job.finished:
            report.changes += 1
            exit_code = None
            if job.step != "simulate" and own[0].exit_code is not None:
                exit_code = f"{own[0].exit_code}:{own[0].signal or 0}"
            self.store.update_job(
                job.job_id, state=state, finished=finished, reason=reason, exit_code=exit_code
            )

    def _mirror_tasks(self, job: Job, tasks: list[JobRecord], report: PollReport) -> None:
        beams = {b.job_id: b for b in self.store.list_beams(job.case_id)}
        for record in tasks:
            beam = beams.get(record.job_id)
            if beam is None or (beam.status in TERMINAL_BEAM_STATUSES and beam.slurm_state == record.state):
                continue
            phase, reason = slurm.phase_of(record)
            if phase is Phase.PENDING and record.reason and not reason:
                reason = f"waiting: {record.reason}"  # Priority, Resources, Dependency, ...
            status = {Phase.PENDING: "pending", Phase.RUNNING: "running"}.get(phase, beam.status)
            if phase is Phase.FAILED:
                status = "failed"
            elif phase is Phase.CANCELLED:
                status = "cancelled"
            # COMPLETED in Slurm is not yet a dose: the post job's check decides.
            fields: dict[str, Any] = {"slurm_state": record.state_detail, "node": record.node}
            if record.start:
                fields["started_at"] = slurm.slurm_time_to_utc_iso(record.start)
            if record.end:
                fields["ended_at"] = slurm.slurm_time_to_utc_iso(record.end)
            if record.exit_code is not None:
                fields["exit_code"] = record.exit_code
            if status != beam.status or record.state_detail != beam.slurm_state or reason != beam.reason:
                report.changes += 1
                self.store.update_beam(job.case_id, beam.number, status=status, reason=reason, **fields)

    def _maybe_lost(self, job: Job, report: PollReport) -> None:
        age = slurm.utc_now() - parse_utc(job.submitted_at or utc_now())
        if age < timedelta(seconds=self.config.poll.lost_grace_seconds):
            return
        report.changes += 1
        self.store.update_job(job.job_id, state="LOST", finished=True, reason="unknown to squeue and sacct")
        self.log(f"job {job.job_id} of {job.case_id} is unknown to Slurm: lost")

    def _dependency_never_satisfied(self, job: Job, report: PollReport) -> None:
        self.transport.run(slurm.scancel_command([job.job_id]), timeout=60)
        report.changes += 1
        self.store.update_job(job.job_id, state="CANCELLED", finished=True, reason="DependencyNeverSatisfied")
        self.store.update_case(
            job.case_id, status="failed", reason="DependencyNeverSatisfied", error="a job's dependency failed"
        )
        report.failed.append(job.case_id)

    # -- case level ---------------------------------------------------------------------
    def _settle_case(self, case_id: str, report: PollReport) -> None:
        case = self.store.require_case(case_id)
        jobs = self.store.list_jobs(case_id)
        if not jobs:
            return
        generation = max(job.generation for job in jobs)
        current = {job.step: job for job in jobs if job.generation == generation}
        if any(job.state == "LOST" for job in current.values()):
            self._resubmit_lost(case_id, current, report)
            return
        post = current.get("post")
        if post is not None and post.finished and post.state != "LOST":
            if post.state.startswith("CANCELLED"):
                self._mark_cancelled(case_id, report)
            else:
                self._deliver(case_id, post, report)
            return
        beams = self.store.list_beams(case_id)
        if post is not None and post.state == "RUNNING":
            status = "postprocessing"
        elif any(b.status in ("running", "completed", "failed") for b in beams):
            status = "running"
        else:
            status = "submitted"
        if status != case.status:
            report.changes += 1
            self.store.update_case(case_id, status=status)

    def _mark_cancelled(self, case_id: str, report: PollReport) -> None:
        for beam in self.store.list_beams(case_id):
            if beam.status not in TERMINAL_BEAM_STATUSES:
                self.store.update_beam(case_id, beam.number, status="cancelled", reason="cancelled in Slurm")
        report.changes += 1
        self.store.update_case(case_id, status="cancelled", reason="the post job was cancelled")

    def _resubmit_lost(self, case_id: str, current: dict[str, Job], report: PollReport) -> None:
        case = self.store.require_case(case_id)
        live = [job.job_id for job in current.values() if not job.finished]
        if live:
            self.transport.run(slurm.scancel_command(live), timeout=60)
            for job_id in live:
                self.store.update_job(job_id, state="CANCELLED", finished=True, reason="rest of a lost chain")
        if case.attempts >= MAX_AUTOMATIC_RESUBMITS or not case.remote_dir:
            report.failed.append(case_id)
            self.store.update_case(
                case_id,
                status="failed",
                reason="jobs lost in Slurm again",
                error="its jobs vanished from Slurm twice; check the cluster, then `mqi submit --force`",
            )
            return
        simulate = current.get("simulate")
        only = None
        if "prepare" not in current and simulate is not None and simulate.array_indices:
            only = _parse_indices(simulate.array_indices)
        ids = run_submit_script(self.transport, case.remote_dir, only_indices=only)
        self._record_generation(case_id, ids, only, reason="resubmitted: its jobs were lost in Slurm")
        self.store.update_case(case_id, attempts=case.attempts + 1)
        report.resubmitted.append(case_id)
        report.changes += 1
        self.log(f"{case_id}: jobs lost in Slurm; resubmitted as {ids['simulate']}")

    def _record_generation(
        self, case_id: str, ids: dict[str, str | None], only: list[int] | None, reason: str
    ) -> None:
        """Store a new chain (after a loss or a retry) and point the affected beams at it."""
        with self.store.transaction():
            jobs = self.store.list_jobs(case_id)
            generation = 1 + max((job.generation for job in jobs), default=0)
            beams = self.store.list_beams(case_id)
            indices = only if only is not None else [b.array_index for b in beams]
            spec = ",".join(str(i) for i in indices)
            new = [
                {"job_id": job_id, "step": step, "generation": generation}
                | ({"array_indices": spec} if step == "simulate" else {})
                for step, job_id in ids.items()
                if job_id
            ]
            self.store.add_jobs(case_id, new)
            for beam in beams:
                if beam.array_index in indices:
                    self.store.update_beam(
                        case_id,
                        beam.number,
                        status="pending",
                        reason=reason,
                        job_id=f"{ids['simulate']}_{beam.array_index}",
                        slurm_state="PENDING",
                        exit_code=None,
                        node=None,
                    )
            self.store.update_case(case_id, status="submitted", reason=reason, error=None)

    # -- results --------------------------------------------------------------------------
    def _deliver(self, case_id: str, post: Job, report: PollReport) -> None:
        case = self.store.require_case(case_id)
        if not case.remote_dir:
            return
        remote_results = f"{case.remote_dir}/{RESULTS_DIR}"
        summary_text = self.transport.run(
            f"cat {shlex.quote(remote_results + '/' + SUMMARY_NAME)}", timeout=60
        )
        if not summary_text.ok:
            report.changes += 1
            report.failed.append(case_id)
            self.store.update_case(
                case_id,
                status="failed",
                reason=f"post job {post.job_id} ended {post.state} without a summary",
                error=f"post-processing failed: see `mqi logs {case_id} --step post`",
            )
            return
        summary = json.loads(summary_text.stdout)
        target = deliver_results(self.transport, remote_results, self.config.results_dir, case_id, summary)
        with self.store.transaction():
            for beam in summary.get("beams", []):
                if self.store.get_beam(case_id, int(beam["number"])) is None:
                    continue
                self.store.update_beam(
                    case_id,
                    int(beam["number"]),
                    status="completed" if beam["status"] == "completed" else "failed",
                    reason=beam.get("reason"),
                    exit_code=beam.get("exit_code"),
                    dose_file=str(target / beam["file"]) if beam.get("file") else None,
                )
            completed = summary.get("plan_status") == "completed"
            failed = [str(b["number"]) for b in summary.get("beams", []) if b["status"] != "completed"]
            self.store.update_case(
                case_id,
                status="completed" if completed else "failed",
                reason="results delivered" if completed else f"beam(s) {', '.join(failed)} failed",
                error=None if completed else _beam_errors(summary),
                results_dir=str(target),
                delivered_at=utc_now(),
            )
        report.changes += 1
        report.delivered.append(case_id)
        if not completed:
            report.failed.append(case_id)
        self.log(f"{case_id}: results in {target}")


def deliver_results(
    transport: Transport, remote_results: str, results_root: Path, case_id: str, summary: dict[str, Any]
) -> Path:
    """Download a case's results through a temporary folder, verify every sha256, rename into place."""
    results_root.mkdir(parents=True, exist_ok=True)
    target = results_root / case_id
    staging = results_root / f".{case_id}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    files: dict[str, str] = summary.get("files", {})
    transport.get_files(remote_results, staging, sorted(files))
    for name, digest in files.items():
        if sha256_file(staging / name) != digest:
            shutil.rmtree(staging, ignore_errors=True)
            raise OperationalError(
                f"{name} of {case_id} arrived damaged (sha256 mismatch); retrying next cycle"
            )
    (staging / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    if target.exists():
        old = results_root / f".{case_id}.old-{os.getpid()}"
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(target)
    return target


def _beam_errors(summary: dict[str, Any]) -> str:
    parts = [
        f"beam {b['number']}: {b.get('reason') or 'failed'}"
        for b in summary.get("beams", [])
        if b["status"] != "completed"
    ]
    return "; ".join(parts) or "the plan sum was not written"


def _as_tasks(records: list[JobRecord], indices: str | None) -> list[JobRecord]:
    """sacct may list a one-task array as plain ``39`` before ``39_1``: name the task."""
    only = _parse_indices(indices) if indices else []
    if len(only) != 1:
        return [r for r in records if r.array_index is not None]
    named = [r for r in records if r.array_index is not None]
    if named:
        return named
    return [replace(r, job_id=f"{r.parent_id}_{only[0]}") for r in records[:1]]


def _summary_state(tasks: list[JobRecord]) -> str:
    counts: dict[str, int] = {}
    for record in tasks:
        counts[record.state] = counts.get(record.state, 0) + 1
    return ",".join(f"{state}:{n}" for state, n in sorted(counts.items()))


def _parse_indices(spec: str) -> list[int]:
    indices: list[int] = []
    for part in spec.split(","):
        low, _, high = part.partition("-")
        indices.extend(range(int(low), int(high or low) + 1))
    return indices


def _count_indices(spec: str | None) -> int:
    return len(_parse_indices(spec)) if spec else 1


def poll_until_done(
    poller: Poller,
    *,
    timeout: float | None,
    interval: float,
    on_cycle: Callable[[PollReport], None] = lambda _r: None,
) -> PollReport:
    """Poll until no case is active (or timeout); back off while nothing changes."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = interval
    while True:
        report = poller.poll_once()
        on_cycle(report)
        if report.active_cases == 0:
            return report
        if deadline is not None and time.monotonic() >= deadline:
            raise OperationalError(
                f"{report.active_cases} case(s) still active after {timeout:.0f}s; `mqi status` shows them"
            )
        delay = interval if report.changes else min(delay * 1.5, interval * 4)
        time.sleep(delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic())))
