"""Mirroring: one batched Slurm query per cycle, states into SQLite, results brought home.

A cycle asks squeue and sacct (``CliBackend.query``: side by side up to 2,000 tracked
jobs, beyond that sacct only of the jobs squeue does not list live; the ids on stdin, one
sacct for up to about 16,000 jobs, bounded by the oldest tracked submit time). squeue is
the authority on live jobs (sacct lags a few seconds and keeps stale records of jobs a
crashed controller lost), sacct knows finished ones. A job neither knows is lost only after
``poll.lost_grace_seconds``; a case whose chain was lost is resubmitted once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, TypeVar

from mqi import slurm
from mqi.bundle import (
    POST_DONE_NAME,
    RESULTS_DIR,
    SUMMARY_NAME,
    Summary,
    SummaryError,
    parse_summary,
    qa_line,
)
from mqi.chain import mark_cancelled, record_chain, submit_chain
from mqi.clock import now_iso, now_utc, parse_utc
from mqi.config import Config
from mqi.errors import OperationalError, one_line
from mqi.locks import file_lock
from mqi.results import deliver_results
from mqi.slurm import JobRecord, Phase
from mqi.slurm.backend import QueryAnswer, SlurmBackend, open_backend
from mqi.store import ACTIVE_CASE_STATUSES, TERMINAL_BEAM_STATUSES, Beam, Case, Job, Store
from mqi.transport import RemoteFiles, Transport

MAX_AUTOMATIC_RESUBMITS = 1
_T = TypeVar("_T")


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
    """Slurm or the cluster did not answer: the cycle failed (exit 1)."""
    case_errors: list[str] = field(default_factory=list)
    """One case could not be settled this cycle; recorded on the case, retried next cycle."""
    warnings: list[str] = field(default_factory=list)
    accounting_down: bool = False
    jobs_unfinished: int = 0
    """After the cycle: jobs Slurm has not reported ended (a delivered case's post job may
    still be in its epilogue when its completion marker appears)."""

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


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
        self.backend: SlurmBackend = open_backend(config.slurm.backend, transport)
        self.files = RemoteFiles(transport)
        self.log = log

    # -- one cycle ----------------------------------------------------------------------
    def poll_once(self) -> PollReport:
        """One cycle; cycles of concurrent pollers (cron, `mqi run`, a user) take turns."""
        with file_lock(self.config.state_dir / "locks" / "poll.lock", what="mqi poll"):
            return self._cycle()

    def _cycle(self) -> PollReport:
        report = PollReport()
        touched: set[str] = set()
        jobs: list[Job] = []
        tracked = self.store.active_job_ids()
        report.jobs_tracked = len(tracked)
        if tracked:
            since = parse_utc(min(submitted or now_iso() for submitted in tracked.values()))
            gpus = self._gpu_usage_due()
            arrays = self.store.active_arrays()
            asked = _Background(lambda: self.backend.query(tracked, since, gpus=gpus, arrays=arrays))
            # Read while Slurm answers; only the jobs asked about (another process may
            # have recorded more meanwhile: the next cycle asks about those).
            jobs = [job for job in self.store.active_jobs() if job.job_id in tracked]
            known = self._known(jobs)
            answer = asked.result()
            report.slurm_commands += answer.commands
            if self._usable(answer, report):
                assert answer.records is not None
                touched = self._mirror(jobs, known, answer, report)
            if answer.partitions:
                self.store.record_partitions(answer.partitions)
        waiting_on_slurm = {job.case_id for job in jobs}
        # A case changes only when one of its jobs did, or when nothing in Slurm is left
        # and its results still have to come home (a failed download is retried here).
        settle = [
            case_id
            for case_id in self.store.case_ids(sorted(ACTIVE_CASE_STATUSES))
            if case_id in touched or case_id not in waiting_on_slurm
        ]
        self._settle_cases(settle, report)
        report.active_cases = len(self.store.case_ids(sorted(ACTIVE_CASE_STATUSES)))
        report.jobs_unfinished = len(self.store.active_job_ids())
        return report

    def _gpu_usage_due(self) -> bool:
        """The GPUs per partition (for the dashboard) ride along every few minutes, not each cycle."""
        every = self.config.poll.gpu_usage_seconds
        if every <= 0:
            return False
        newest = max((row["at"] for row in self.store.partitions()), default=None)
        return newest is None or now_utc() - parse_utc(newest) > timedelta(seconds=every)

    def _usable(self, answer: QueryAnswer, report: PollReport) -> bool:
        """Whether Slurm answered; the cycle fails (states unchanged) when it did not."""
        if answer.records is None:
            report.errors.append(answer.error or "Slurm did not answer")
            self.log(f"{answer.error}; states unchanged")
            return False
        if answer.accounting_down:
            report.accounting_down = True
            report.warnings += answer.warnings
            self.log(f"{answer.warnings[0]}: mirroring squeue only; finished jobs are read once it is back")
        return True

    def _known(self, jobs: list[Job]) -> _Known:
        """What the store knows besides the jobs: each case's uid (its jobs' names and comment),
        each array's beams, and which cases are delivered."""
        uids = self.store.case_uids(job.case_id for job in jobs)
        arrays = [job.case_id for job in jobs if job.step == "simulate"]
        beams = self.store.beams_by_case(arrays)
        return _Known(
            uids=uids,
            beams={(case_id, b.job_id): b for case_id, found in beams.items() for b in found if b.job_id},
            delivered=self.store.delivered_case_ids(arrays) if arrays else set(),
        )

    def _mirror(self, jobs: list[Job], known: _Known, answer: QueryAnswer, report: PollReport) -> set[str]:
        """Slurm's answer into the store in one write transaction; the cases that changed."""
        records = answer.records
        assert records is not None
        # A job's records: its own id, and for an array its tasks (``123_4``), indexed once.
        tasks_of: dict[str, list[JobRecord]] = {}
        for job_id, record in records.items():
            if "_" in job_id:
                tasks_of.setdefault(job_id.partition("_")[0], []).append(record)
        changes = _Changes(accounting_down=answer.accounting_down)
        uids, no_tasks, is_named = known.uids, (), slurm.is_named
        for job in jobs:
            # Ids are recycled after a controller loses its state: match names too.
            uid = uids.get(job.case_id, "")
            name, comment = slurm.job_name(uid, job.step), slurm.job_comment(uid)
            plain, tasks = records.get(job.job_id), tasks_of.get(job.job_id, no_tasks)
            candidates = tasks if plain is None else [plain, *tasks]
            own = [r for r in candidates if is_named(r.name, r.comment, name, comment)]
            self._mirror_job(job, own, known, changes)
        with self.store.transaction():  # one sync instead of hundreds
            self.store.update_jobs(changes.jobs)
            self.store.update_beams(changes.beams)
        report.changes += len(changes)
        for job in changes.never_satisfied:
            self._dependency_never_satisfied(job, report)
        return changes.touched

    def _mirror_job(self, job: Job, own: list[JobRecord], known: _Known, changes: _Changes) -> None:
        if not own:
            if not changes.accounting_down:  # squeue alone cannot tell finished from lost
                self._maybe_lost(job, changes)
            return
        if job.step == "simulate":
            own = _as_tasks(own, job.array_indices)
            phased = [(record, *slurm.phase_of(record)) for record in own]
            delivered = job.case_id in known.delivered
            _mirror_tasks(job, phased, known.beams, changes, delivered=delivered)
            expected = slurm.array_size(job.array_indices) if job.array_indices else 1
            finished = len(own) >= expected and all(phase in slurm.TERMINAL for _, phase, _ in phased)
            state = slurm.array_state(r.state for r in own)
            reason = None
        else:
            record = own[0]
            phase, reason = slurm.phase_of(record)
            finished = phase in slurm.TERMINAL
            state = record.state_detail
            if slurm.never_satisfied(record):
                changes.never_satisfied.append(job)
                changes.touched.add(job.case_id)
                return
        if state != job.state or finished != job.finished:
            exit_code = None
            if job.step != "simulate" and own[0].exit_code is not None:
                exit_code = f"{own[0].exit_code}:{own[0].signal or 0}"
            fields = {"state": state, "finished": finished, "reason": reason, "exit_code": exit_code}
            changes.job(job, fields)

    def _maybe_lost(self, job: Job, changes: _Changes) -> None:
        age = now_utc() - parse_utc(job.submitted_at or now_iso())
        if age < timedelta(seconds=self.config.poll.lost_grace_seconds):
            return
        fields = {"state": "LOST", "finished": True, "reason": "unknown to squeue and sacct"}
        changes.job(job, fields)
        self.log(f"job {job.job_id} of {job.case_id} is unknown to Slurm: lost")

    def _dependency_never_satisfied(self, job: Job, report: PollReport) -> None:
        try:
            self.backend.cancel([job.job_id])
        except OperationalError as error:
            self.log(f"{job.case_id}: could not cancel job {job.job_id} ({error}); it cannot run anyway")
        report.changes += 1
        self.store.update_job(job.job_id, state="CANCELLED", finished=True, reason="DependencyNeverSatisfied")
        self.store.update_case(
            job.case_id, status="failed", reason="DependencyNeverSatisfied", error="a job's dependency failed"
        )
        report.failed.append(job.case_id)

    # -- case level ---------------------------------------------------------------------
    def _settle_cases(self, case_ids: list[str], report: PollReport) -> None:
        """Each case's next step from its jobs and beams, read in three queries.

        Plain status changes are written first, together; then the cases that need work
        (results to fetch, a lost chain to resubmit) get it, one by one. Whatever goes
        wrong with one case is recorded on that case and never stops the others.
        """
        cases = self.store.cases_by_id(case_ids)
        jobs = self.store.jobs_by_case(case_ids)
        beams = self.store.beams_by_case(case_ids)
        statuses: dict[str, str] = {}
        actions: list[tuple[str, Callable[[], None]]] = []
        for case_id in case_ids:
            case = cases.get(case_id)
            if case is None or not jobs.get(case_id):
                continue
            step = self._next_step(case, jobs[case_id], beams.get(case_id, []), report)
            if isinstance(step, str):
                if step != case.status:
                    statuses[case_id] = step
            else:
                actions.append((case_id, step))
        if statuses:
            with self.store.transaction():
                for case_id, status in statuses.items():
                    self.store.update_case(case_id, status=status)
            report.changes += len(statuses)
        for case_id, action in actions:
            try:
                action()
            except Exception as error:  # one case's trouble is that case's, never the cycle's
                self._case_trouble(case_id, error, report)

    def _case_trouble(self, case_id: str, error: Exception, report: PollReport) -> None:
        """Record on the case why it could not be settled; it is tried again next cycle."""
        what = one_line(error)
        report.case_errors.append(f"{case_id}: {what}")
        self.log(f"{case_id}: {what} (will retry next cycle)")
        try:
            case = self.store.get_case(case_id)
            if case is not None and case.error != what:
                self.store.update_case(case_id, error=what)
                self.store.add_event(case_id, "case", case_id, "delivery", None, "retrying", what)
        except Exception as store_error:  # the store itself failing is reported, not raised
            self.log(f"{case_id}: could not record the error ({store_error})")

    def _next_step(
        self, case: Case, jobs: list[Job], beams: list[Beam], report: PollReport
    ) -> str | Callable[[], None]:
        """The status a case's jobs and beams give it, or the work it needs first."""
        generation = max(job.generation for job in jobs)
        current = {job.step: job for job in jobs if job.generation == generation}
        if any(job.state == "LOST" for job in current.values()):
            return lambda: self._resubmit_lost(case.case_id, current, report)
        post = current.get("post")
        if post is not None and post.finished and post.state != "LOST":
            if post.state and post.state.startswith("CANCELLED"):
                return lambda: self._mark_cancelled(case.case_id, report)
            return lambda: self._deliver(case, post, report)
        if post is not None and post.state == "RUNNING":
            return "postprocessing"
        if any(b.status in ("running", "completed", "failed") for b in beams):
            return "running"
        return "submitted"

    def _mark_cancelled(self, case_id: str, report: PollReport) -> None:
        mark_cancelled(
            self.store, case_id, reason="the post job was cancelled", beam_reason="cancelled in Slurm"
        )
        report.changes += 1

    def _resubmit_lost(self, case_id: str, current: dict[str, Job], report: PollReport) -> None:
        case = self.store.require_case(case_id)
        live = [job.job_id for job in current.values() if not job.finished]
        if live:
            self.backend.cancel(live)
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
            only = slurm.parse_array_spec(simulate.array_indices)
        ids = submit_chain(self.backend, case.remote_dir, only_indices=only)
        record_chain(
            self.store, case_id, ids, reason="resubmitted: its jobs were lost in Slurm", indices=only
        )
        self.store.update_case(case_id, attempts=case.attempts + 1)
        report.resubmitted.append(case_id)
        report.changes += 1
        self.log(f"{case_id}: jobs lost in Slurm; resubmitted as {ids['simulate']}")

    # -- results --------------------------------------------------------------------------
    def _deliver(self, case: Case, post: Job, report: PollReport) -> None:
        """Bring a finished chain's results home and settle the case: completed when every
        beam and the plan sum were written, failed (with each beam's reason) otherwise."""
        case_id = case.case_id
        if not case.remote_dir:
            self._fail(case_id, "the case has no folder on the cluster", "submit it again", report)
            return
        remote_results = f"{case.remote_dir}/{RESULTS_DIR}"
        text = self.files.read_text(f"{remote_results}/{SUMMARY_NAME}")
        if text is None:
            if not self.files.exists(case.remote_dir):
                self._fail(
                    case_id,
                    "its folder on the cluster was removed before delivery (a scratch purge?)",
                    f"resubmit it: `mqi submit --force {case.source_dir}`",
                    report,
                )
            else:
                self._fail(
                    case_id,
                    f"post job {post.job_id} ended {post.state} without a summary",
                    f"post-processing failed: see `mqi logs {case_id} --step post`",
                    report,
                )
            return
        self._deliver_summary(case_id, remote_results, text, report)

    def _deliver_summary(self, case_id: str, remote_results: str, text: str, report: PollReport) -> None:
        try:
            summary = parse_summary(text)
        except SummaryError as error:
            self._fail(
                case_id, str(error), f"post-processing failed: see `mqi logs {case_id} --step post`", report
            )
            return
        delivery = deliver_results(self.transport, remote_results, self.config.results_dir, case_id, summary)
        self._record_delivery(case_id, summary, delivery.target, delivery.missing, report)

    def deliver_completed(self, case_ids: list[str]) -> PollReport:
        """Cases whose post job ended (its completion marker, seen on the cluster): their
        results come home now, without asking Slurm. Each chain's summary and marker are
        removed before the chain is submitted, so a marker is always the newest chain's. A
        case that is no longer active (another poller delivered it) is left alone; one
        without a summary (post-processing failed) is settled by the mirror."""
        report = PollReport()
        with file_lock(self.config.state_dir / "locks" / "poll.lock", what="mqi poll"):
            for case in self.store.cases_by_id(case_ids).values():
                if case.status not in ACTIVE_CASE_STATUSES or not case.remote_dir:
                    continue
                remote_results = f"{case.remote_dir}/{RESULTS_DIR}"
                try:
                    text = self.files.read_text(f"{remote_results}/{SUMMARY_NAME}")
                    if text is not None:
                        self._deliver_summary(case.case_id, remote_results, text, report)
                except Exception as error:  # one case's trouble is that case's
                    self._case_trouble(case.case_id, error, report)
            report.active_cases = len(self.store.case_ids(sorted(ACTIVE_CASE_STATUSES)))
            report.jobs_unfinished = len(self.store.active_job_ids())
        return report

    def completion_markers(self) -> dict[str, str]:
        """The completion marker of every active case on the cluster -> its case id."""
        cases = self.store.list_cases(sorted(ACTIVE_CASE_STATUSES))
        return {completion_marker(case.remote_dir): case.case_id for case in cases if case.remote_dir}

    def _record_delivery(
        self, case_id: str, summary: Summary, target: Any, missing: list[str], report: PollReport
    ) -> None:
        completed = summary.plan_status == "completed" and not missing
        with self.store.transaction():
            reasons: dict[int, str] = {}
            for beam in summary.beams:
                stored = self.store.get_beam(case_id, beam.number)
                if stored is None:
                    continue
                lost = beam.file in missing if beam.file else False
                why = (
                    "its dose file was missing on the cluster" if lost else _beam_reason(beam.reason, stored)
                )
                ok = beam.status == "completed" and not lost
                if not ok:
                    reasons[beam.number] = why or "failed"
                self.store.update_beam(
                    case_id,
                    beam.number,
                    status="completed" if ok else "failed",
                    reason=why,
                    exit_code=beam.exit_code,
                    dose_file=str(target / beam.file) if beam.file and not lost else None,
                )
            if completed:
                reason, error = "results delivered", None
            elif missing:
                reason = f"result file(s) missing on the cluster: {', '.join(missing)}"
                error = f"{reason}; see `mqi logs {case_id} --step post`"
            else:
                failed = [str(b.number) for b in summary.failed_beams()]
                reason = f"beam(s) {', '.join(failed)} failed" if failed else "the plan sum was not written"
                error = (
                    "; ".join(f"beam {n}: {why}" for n, why in sorted(reasons.items()))
                    or summary.failure_text()
                )
            self.store.update_case(
                case_id,
                status="completed" if completed else "failed",
                reason=reason,
                error=error,
                results_dir=str(target),
                delivered_at=now_iso(),
            )
            if summary.qa and summary.qa.get("verdict"):
                self.store.add_event(
                    case_id,
                    "case",
                    case_id,
                    "qa",
                    None,
                    summary.qa["verdict"],
                    qa_line(
                        summary.qa.get("first_criterion"),
                        summary.qa.get("first_pass_rate"),
                        summary.qa.get("reasons") or [],
                    ),
                )
        report.changes += 1
        report.delivered.append(case_id)
        if not completed:
            report.failed.append(case_id)
        self.log(f"{case_id}: results in {target}")

    def _fail(self, case_id: str, reason: str, error: str, report: PollReport) -> None:
        report.changes += 1
        report.failed.append(case_id)
        self.store.update_case(case_id, status="failed", reason=reason, error=f"{reason}: {error}")


def completion_marker(remote_dir: str) -> str:
    """What a case's post job writes last: ``results/post.done`` (by rename, after the
    summary and any clean-up)."""
    return f"{remote_dir}/{RESULTS_DIR}/{POST_DONE_NAME}"


class _Background(Generic[_T]):
    """A call on a daemon thread: an interrupted poll does not wait for its remote command."""

    def __init__(self, call: Callable[[], _T]) -> None:
        self._call = call
        self._outcome: tuple[_T | None, BaseException | None] = (None, None)
        self._thread = threading.Thread(target=self._run, name="mqi-poll-query", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._outcome = (self._call(), None)
        except BaseException as error:  # handed to the caller by result()
            self._outcome = (None, error)

    def result(self) -> _T:
        self._thread.join()
        value, error = self._outcome
        if error is not None:
            raise error
        return value  # type: ignore[return-value]


@dataclass
class _Known:
    uids: dict[str, str]  # case id -> case uid (a job's records carry its name and comment)
    beams: dict[tuple[str, str], Beam]  # (case id, array task id) -> the beam it computes
    delivered: set[str]  # cases whose results came home: their beams' outcomes are the post job's


@dataclass
class _Changes:
    """What one cycle found changed, written to the store together."""

    jobs: list[tuple[Job, dict[str, Any]]] = field(default_factory=list)
    beams: list[tuple[Beam, dict[str, Any]]] = field(default_factory=list)
    never_satisfied: list[Job] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)
    accounting_down: bool = False

    def __len__(self) -> int:
        # never_satisfied jobs are counted when they are cancelled
        return len(self.jobs) + len(self.beams)

    def job(self, job: Job, fields: dict[str, Any]) -> None:
        self.jobs.append((job, fields))
        self.touched.add(job.case_id)

    def beam(self, beam: Beam, fields: dict[str, Any]) -> None:
        self.beams.append((beam, fields))
        self.touched.add(beam.case_id)


_TASK_STATUS = {
    Phase.PENDING: "pending",
    Phase.RUNNING: "running",
    Phase.FAILED: "failed",
    Phase.CANCELLED: "cancelled",
}
"""A beam's status from its task's phase (COMPLETED keeps the beam's: the post job decides)."""


def _mirror_tasks(
    job: Job,
    tasks: list[tuple[JobRecord, Phase, str | None]],
    beams: dict[tuple[str, str], Beam],
    changes: _Changes,
    *,
    delivered: bool = False,
) -> None:
    """Array tasks (each with its phase and reason) onto the beams that point at them.

    ``delivered``: the case's results came home, and its beams' outcomes are the post job's
    (the exit code from the beam's own file: Slurm before 25.11 shows one of 128 or more
    minus 128). Slurm's state, node and times are still recorded, and its reason where it
    ended the task itself."""
    for record, phase, reason in tasks:
        beam = beams.get((job.case_id, record.job_id))
        if beam is None or (beam.status in TERMINAL_BEAM_STATUSES and beam.slurm_state == record.state):
            continue
        if phase is Phase.PENDING and record.reason and not reason:
            reason = f"waiting: {record.reason}"  # Priority, Resources, Dependency, ...
        fields: dict[str, Any] = {"slurm_state": record.state_detail, "node": record.node}
        if record.start:
            fields["started_at"] = slurm.slurm_time_to_utc_iso(record.start)
        if record.end:
            fields["ended_at"] = slurm.slurm_time_to_utc_iso(record.end)
        if delivered:
            if record.state in _SLURM_ENDED and reason:
                fields["reason"] = reason
            if any(getattr(beam, name) != value for name, value in fields.items()):
                changes.beam(beam, fields)
            continue
        status = _TASK_STATUS.get(phase, beam.status)
        # COMPLETED in Slurm is not yet a dose: the post job's check decides.
        if status == beam.status and record.state_detail == beam.slurm_state and reason == beam.reason:
            continue
        fields |= {"status": status, "reason": reason}
        if record.exit_code is not None:
            fields["exit_code"] = record.exit_code
        changes.beam(beam, fields)


# Slurm ended these tasks itself: its reason (time limit, memory, node) says more than the
# post job's "no exit code".
_SLURM_ENDED = frozenset({"TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED"})


def _beam_reason(post_reason: str | None, stored: Beam) -> str | None:
    state = (stored.slurm_state or "").split()[0]
    if state in _SLURM_ENDED and stored.reason:
        return stored.reason
    return post_reason


def _as_tasks(records: list[JobRecord], indices: str | None) -> list[JobRecord]:
    """sacct may list a one-task array as plain ``39`` before ``39_1``: name the task."""
    if not indices or slurm.array_size(indices) != 1:
        return [r for r in records if "_" in r.job_id]
    only = slurm.parse_array_spec(indices)
    named = [r for r in records if r.array_index is not None]
    if named:
        return named
    return [r._replace(job_id=f"{r.parent_id}_{only[0]}") for r in records[:1]]


class Follower:
    """`mqi run` and `mqi poll --wait`: results home as soon as a post job's summary appears
    on the cluster, and the Slurm mirror on its own interval.

    The completion watch (:class:`mqi.transport.watch.FileWatch`) runs on a channel of the
    one open connection and only stats files: it asks Slurm nothing. Each completion it
    sees is delivered at once, then one mirror follows (the other jobs' states). Otherwise
    the mirror (sacct + squeue) runs every ``interval`` s while cases are active, backing off
    up to ``longest`` while none is. When the watch cannot run or its connection drops,
    the mirror alone brings results home (plain polling) and the watch is started again
    with back-off (1 s, doubling, at most a minute).
    """

    SYNC_SECONDS = 2.0  # how often the watched cases are matched with the store
    RETRY_LONGEST = 60.0
    SETTLE_FIRST = 1.0  # no case active, jobs still ending: the next mirror after 1, 2, 4 ... s

    def __init__(
        self,
        poller: Poller,
        *,
        interval: float,
        longest: float,
        mirror: Callable[[], PollReport] | None = None,
        deliver: Callable[[list[str]], PollReport] | None = None,
        log: Callable[[str], None] = lambda _msg: None,
    ) -> None:
        from mqi.transport.watch import FileWatch

        self.poller = poller
        self.interval = interval
        self.longest = max(interval, longest)
        self.mirror = mirror or poller.poll_once
        self.deliver = deliver or poller.deliver_completed
        self.log = log
        tick = poller.config.poll.watch_seconds
        self.watch = (
            FileWatch(poller.transport, poller.config.cluster.python, tick=tick) if tick > 0 else None
        )
        self.mirrors = 0
        self._markers: dict[str, str] = {}
        self._next_mirror = 0.0
        self._delay = interval
        self._synced = float("-inf")
        self._retry_at = 0.0
        self._retry_delay = 1.0
        self._was_up = False
        self._settle = self.SETTLE_FIRST

    def step(self, until: float) -> list[PollReport]:
        """Run what is due, then wait until ``until`` (``time.monotonic()``), the next mirror
        or a completion, whichever comes first. The reports of what ran, in order."""
        reports: list[PollReport] = []
        if time.monotonic() >= self._next_mirror:
            reports.append(self._mirror())
        end = min(until, self._next_mirror)
        while (left := end - time.monotonic()) > 0:
            self._tend_watch()
            if self.watch is None or not self.watch.up:
                wake = self._retry_at if self.watch is not None else end
                time.sleep(max(0.0, min(left, wake - time.monotonic(), self.SYNC_SECONDS)))
                continue
            try:
                appeared = self.watch.wait(min(left, self.SYNC_SECONDS))
            except OperationalError as error:
                self._watch_down(error)
                continue
            case_ids = [self._markers[path] for path in appeared if path in self._markers]
            if case_ids:
                reports.append(self.deliver(case_ids))
                reports.append(self._mirror())
                break
        return reports

    def cases_changed(self) -> None:
        """Cases were submitted (or settled) elsewhere: watch the store's set at once."""
        self._synced = float("-inf")

    def close(self) -> None:
        if self.watch is not None:
            self.watch.stop()

    def _mirror(self) -> PollReport:
        self._synced = float("-inf")  # cases came and went: watch the store's set again
        self.mirrors += 1
        self._next_mirror = time.monotonic() + self._delay  # even when the cycle fails
        report = self.mirror()
        # Slurm is asked every interval while cases are active, less and less often while not;
        # jobs of delivered cases still ending (the post job's epilogue) get their final
        # state within seconds, not an interval later.
        if report.active_cases:
            self._delay, self._settle = self.interval, self.SETTLE_FIRST
        elif report.jobs_unfinished and self._settle < self.interval:
            self._delay, self._settle = self._settle, self._settle * 2
        else:
            self._delay = min(self._delay * 1.5, self.longest)
        self._next_mirror = time.monotonic() + self._delay
        return report

    def _tend_watch(self) -> None:
        """Start the watch when it is down and due; keep its paths those of the active cases."""
        watch = self.watch
        if watch is None:
            return
        now = time.monotonic()
        if not watch.up and now < self._retry_at:
            return
        try:
            if now - self._synced >= self.SYNC_SECONDS or not watch.up:
                self._markers = self.poller.completion_markers()
                self._synced = now
                watch.want(set(self._markers))
            if not watch.up:
                mode = watch.start()
                self._retry_delay = 1.0
                what = "back" if self._was_up else "on"
                self.log(f"completion watch {what} ({mode}): results come home as each post job ends")
                self._was_up = True
        except OperationalError as error:
            self._watch_down(error)

    def _watch_down(self, error: Exception) -> None:
        assert self.watch is not None
        self.watch.stop()
        if self._retry_delay == 1.0:  # once per outage, not at every attempt
            self.log(
                f"completion watch down ({one_line(error)}): Slurm is polled every "
                f"{self.interval:.0f}s until it is back"
            )
            # The mirror brings results home meanwhile: on its interval, not its back-off.
            self._delay = self.interval
            self._next_mirror = min(self._next_mirror, time.monotonic() + self.interval)
        self._retry_at = time.monotonic() + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, self.RETRY_LONGEST)


SETTLE_LONGEST = 30.0
"""`poll --wait` waits this long at most, once every case is done, for their last jobs' end."""


def follow_until_done(
    follower: Follower, *, timeout: float | None, on_cycle: Callable[[PollReport], None] = lambda _r: None
) -> PollReport:
    """Follow until no case is active (or ``timeout`` s): results home as each post job
    ends, Slurm on the follower's interval."""
    deadline = None if timeout is None else time.monotonic() + timeout
    active = None
    settled_by = None  # no case active: how long the last jobs may take to end
    try:
        while True:
            until = time.monotonic() + 3600 if deadline is None else deadline
            for report in follower.step(until):
                on_cycle(report)
                if report.active_cases:
                    active, settled_by = report.active_cases, None
                    continue
                settled_by = settled_by or time.monotonic() + SETTLE_LONGEST
                if not report.jobs_unfinished or time.monotonic() >= settled_by:
                    return report
            if deadline is not None and time.monotonic() >= deadline:
                if settled_by is not None:
                    return report  # every case done; a job's end is the next mirror's
                raise OperationalError(
                    f"{active or 'some'} case(s) still active after {timeout:.0f}s; `mqi status` shows them"
                )
    finally:
        follower.close()
