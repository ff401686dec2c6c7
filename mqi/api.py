"""The public Python API: what the CLI, the dashboard and your own scripts call.

>>> import mqi
>>> with mqi.open("mqi.yaml") as session:          # doctest: +SKIP
...     outcome = session.submit("/data/new_cases/patient_folder")
...     report = session.poll_until_done(timeout=600)
...     print(session.status(outcome.case_id)["status"])

A session holds the config, the database and at most one connection to the cluster,
opened on first use and closed with the session. Every method raises an
:class:`mqi.errors.MqiError` whose text is one line a person can act on
(``exit_code`` 1 for the cluster, 2 for bad input).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mqi.config import Config, load_config
from mqi.errors import UsageError, one_line

if TYPE_CHECKING:
    from mqi.actions import QueueRow
    from mqi.doctor import Check
    from mqi.intake import IntakeResult
    from mqi.poll import Follower, Poller, PollReport
    from mqi.render import RenderedBundle
    from mqi.scan import ScanReport
    from mqi.slurm.backend import SlurmBackend
    from mqi.store import MetricsSnapshot, Store
    from mqi.submit import SubmitOutcome, UploadProgress
    from mqi.transport import Transport

Log = Callable[[str], None]


def _quiet(_message: str) -> None:
    pass


def open(config: Config | str | Path | None = None, *, log: Log = _quiet) -> Session:
    """A session over a config: a ``Config``, a path (``str`` or ``Path``), or None for
    ``$MQI_CONFIG`` then ``./mqi.yaml``."""
    if not isinstance(config, Config):
        config = load_config(None if config is None else Path(config))
    return Session(config, log=log)


def _log_limits(config: Config) -> tuple[int, int]:
    return int(config.logs.max_mb * 1024 * 1024), config.logs.backups


class Session:
    """One config, one database, at most one cluster connection. Use it as a context manager."""

    def __init__(self, config: Config, *, log: Log = _quiet) -> None:
        self.config = config
        self.log = self._also_to_file(log)
        self._rotate_cron_log()
        self._store: Store | None = None
        self._transport: Transport | None = None
        self._backend: SlurmBackend | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def _also_to_file(self, log: Log) -> Log:
        """What the session says (submitted, delivered, retrying...) also goes to the rotating
        state_dir/logs/mqi.log, so cron's and `mqi run`'s messages are kept and bounded."""

        def both(message: str) -> None:
            log(message)
            try:
                from mqi.logs import logger_for

                logger_for(self.config.state_dir, *_log_limits(self.config)).info(message)
            except OSError:
                pass  # a read-only state_dir never stops the work itself

        return both

    def _rotate_cron_log(self) -> None:
        """cron appends to state_dir/cron.log (`mqi cron install`): rotated here, between runs."""
        from mqi.logs import rotate_file

        with contextlib.suppress(OSError):
            rotate_file(self.config.state_dir / "cron.log", *_log_limits(self.config))

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._backend = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._store is not None:
            self._store.close()
            self._store = None

    @property
    def store(self) -> Store:
        if self._store is None:
            from mqi.store import Store

            self._store = Store(self.config.db_path)
        return self._store

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            from mqi.transport import open_transport

            self._transport = open_transport(self.config.cluster)
        return self._transport

    @property
    def backend(self) -> SlurmBackend:
        if self._backend is None:
            from mqi.slurm.backend import open_backend

            self._backend = open_backend(self.config.slurm.backend, self.transport)
        return self._backend

    # -- cases in ---------------------------------------------------------------------
    def check(self, case_dir: str | Path, *, plan: str | None = None) -> IntakeResult:
        """Read and check a case folder; nothing is stored or submitted."""
        from mqi.intake import IntakeOptions, read_case

        return read_case(Path(case_dir), IntakeOptions.from_config(self.config, plan_uid=plan))

    def dry_run(
        self,
        case_dir: str | Path,
        out: str | Path | None = None,
        *,
        priority: str | None = None,
        plan: str | None = None,
    ) -> tuple[IntakeResult, RenderedBundle]:
        """Render the case's bundle locally (``out``, default under state_dir); nothing submitted."""
        from mqi.submit import dry_run

        target = None if out is None else Path(out)
        return dry_run(self.config, Path(case_dir), target, priority=priority, plan_uid=plan)

    def submit(
        self,
        case_dir: str | Path,
        *,
        priority: str | None = None,
        force: bool = False,
        plan: str | None = None,
        progress: UploadProgress | None = None,
    ) -> SubmitOutcome:
        """Check, render, upload and queue one case exactly once (``force``: again)."""
        from mqi.submit import Submitter

        submitter = Submitter(self.config, self.store, self.transport, log=self.log, progress=progress)
        try:
            outcome = submitter.submit(Path(case_dir), priority=priority, force=force, plan_uid=plan)
        except Exception as error:
            self._after_submit(None, error)
            raise
        self._after_submit(outcome, None)
        return outcome

    def scan(self) -> ScanReport:
        """Submit every ready, not yet known folder under watch_dir, each on its own: a bad
        case is rejected (or left ``submitting`` with its error) and the next one is tried."""
        from mqi.intake import is_ready
        from mqi.locks import Busy, file_lock
        from mqi.scan import ScanReport, candidate_folders, needs_submission
        from mqi.submit import CaseRejected, Submitter

        report = ScanReport()
        folders = candidate_folders(self.config.watch_dir)
        try:
            with file_lock(self.config.state_dir / "locks" / "scan.lock", wait=False, what="mqi scan"):
                submitter = Submitter(self.config, self.store, self.transport, log=self.log)
                for folder in folders:
                    if not needs_submission(self.store, folder):
                        report.known += 1
                        continue
                    ready, why = is_ready(folder, self.config.readiness)
                    if not ready:
                        report.waiting.append(f"{folder.name}: {why}")
                        continue
                    try:
                        outcome = submitter.submit(folder)
                    except CaseRejected as rejected:
                        report.rejected.append(rejected.case_id)
                        self.log(str(rejected))
                    except Exception as error:  # one case never stops the others
                        self._after_submit(None, error)
                        what = one_line(error)
                        report.errors.append(f"{folder.name}: {what}")
                        self.log(f"{folder.name}: {what}")
                    else:
                        self._after_submit(outcome, None)
                        if not outcome.already:
                            report.submitted.append(outcome.case_id)
        except Busy:
            report.skipped_busy = True
        return report

    # -- following Slurm ----------------------------------------------------------------
    def poll(self) -> PollReport:
        """One cycle: mirror Slurm into the database, bring finished results home, and send
        delivered doses to the configured DICOM destinations."""
        from mqi.poll import Poller

        return self._mirror(Poller(self.config, self.store, self.transport, log=self.log))

    def _mirror(self, poller: Poller) -> PollReport:
        report = self._recorded_cycle(poller.poll_once)
        self._after_delivery(report.delivered)
        return report

    def _deliver_completed(self, poller: Poller, case_ids: list[str]) -> PollReport:
        """Cases the completion watch saw finish: results home without a Slurm query."""
        report = poller.deliver_completed(case_ids)
        if report.delivered:
            downloaded = self._bytes_of(report.delivered)
            self._record(lambda: self.store.add_counters({"bytes_downloaded": downloaded}))
        self._log_state_changes()
        self._after_delivery(report.delivered)
        return report

    def _follower(self, poller: Poller, *, interval: float, longest: float) -> Follower:
        from mqi.poll import Follower

        return Follower(
            poller,
            interval=interval,
            longest=longest,
            mirror=lambda: self._mirror(poller),
            deliver=lambda case_ids: self._deliver_completed(poller, case_ids),
            log=self.log,
        )

    def _after_delivery(self, delivered: list[str]) -> None:
        """Delivered cases: their local bundle goes (retention.local_bundle), their doses are
        sent to the DICOM destinations."""
        import shutil

        from mqi import sends

        if self.config.retention.local_bundle == "delete-after-delivery":
            for case_id in delivered:
                case = self.store.get_case(case_id)
                if case is not None:
                    shutil.rmtree(self.config.bundles_dir / case.case_uid, ignore_errors=True)
        if not sends.destinations(self.config):
            return
        for case_id in delivered:
            case = self.store.get_case(case_id)
            if case is not None and case.results_dir:
                sends.queue(self.store, self.config, case_id)
        sends.send_due(self.store, self.config, log=self.log)

    def poll_until_done(
        self, *, timeout: float | None = None, on_cycle: Callable[[PollReport], None] | None = None
    ) -> PollReport:
        """Follow until no case is active, or ``timeout`` s: each case's results come home as
        its post job ends (the completion watch, ``poll.watch_seconds``), and Slurm is mirrored
        every ``poll.interval_seconds`` (see :class:`mqi.poll.Follower`)."""
        from mqi.poll import Poller, follow_until_done

        interval = self.config.poll.interval_seconds
        poller = Poller(self.config, self.store, self.transport, log=self.log)
        follower = self._follower(poller, interval=interval, longest=interval * 4)
        return follow_until_done(follower, timeout=timeout, on_cycle=on_cycle or (lambda _r: None))

    def listen(self, *, should_stop: Callable[[], bool]) -> None:
        """The DICOM Storage SCP (``dicom:``): each complete case received goes through the
        same intake -> submit path as `mqi scan`, until ``should_stop()``."""
        import threading

        from mqi.dicomnet import StorageSCP

        if self.config.dicom is None:
            raise UsageError("no dicom: section in the config; see docs/dicom-networking.md")
        scp = StorageSCP(self.config.dicom, self._hand_over)
        scp.start()
        self.log(
            f"mqi listen: {self.config.dicom.ae_title} on {self.config.dicom.bind}:{self.config.dicom.port}"
        )
        try:
            while not should_stop():
                scp.check()
                threading.Event().wait(0.5)
        finally:
            scp.stop()

    def _hand_over(self, case_dir: Path) -> None:
        """A case folder the listener completed: submitted like a scanned one. Runs on the
        listener's thread, so it opens its own database connection and cluster connection."""
        from mqi.submit import CaseRejected

        with Session(self.config, log=self.log) as own:
            try:
                outcome = own.submit(case_dir)
            except CaseRejected as rejected:
                self.log(str(rejected))  # recorded as rejected, with its problems: handed over
                return
            self.log(f"received and submitted {outcome.case_id}")

    def run_service(self, *, interval: float | None = None, should_stop: Callable[[], bool]) -> None:
        """Scan, follow and deliver until ``should_stop()``; survives every per-case and
        per-cycle error. Slurm is mirrored every ``interval`` s (poll.interval_seconds) while
        cases are active; results come home as each post job ends (the completion watch); the
        watch folder is scanned as it changes and every ``interval`` s."""
        import threading

        from mqi.poll import Poller

        every = interval or self.config.poll.interval_seconds
        longest = max(every, self.config.poll.max_interval_seconds)
        self.log(f"mqi run: scanning {self.config.watch_dir} and mirroring Slurm every {every:.0f}s")
        if self.config.dicom is not None and self.config.dicom.allowed:
            listener = threading.Thread(
                target=self.listen, kwargs={"should_stop": should_stop}, name="mqi-listen", daemon=True
            )
            listener.start()
        poller = Poller(self.config, self.store, self.transport, log=self.log)
        follower = self._follower(poller, interval=every, longest=longest)
        next_scan, seen, cleaned = float("-inf"), self._watch_dir_stamp(), float("-inf")
        try:
            while not should_stop():
                stamp = self._watch_dir_stamp()
                if time.monotonic() >= next_scan or stamp != seen:
                    seen, next_scan = stamp, time.monotonic() + every
                    self._service_scan(follower)
                if time.monotonic() - cleaned >= 24 * 3600:
                    cleaned = time.monotonic()
                    try:
                        self.clean()
                    except Exception as error:
                        self.log(f"clean failed, retrying tomorrow: {one_line(error)}")
                try:  # back here at least twice a second: a stop, a new folder in watch_dir
                    reports = follower.step(min(next_scan, time.monotonic() + 0.5))
                except Exception as error:  # the service keeps running; the next cycle retries
                    self.log(f"poll failed, retrying next cycle: {one_line(error)}")
                    time.sleep(0.5)
                    continue
                for report in reports:
                    for case_id in report.delivered:
                        self.log(f"delivered {case_id}")
        finally:
            follower.close()
        self.log("mqi run: stopped")

    def _service_scan(self, follower: Follower) -> None:
        try:
            report = self.scan()
        except Exception as error:  # the service keeps running; the next cycle retries
            self.log(f"scan failed, retrying next cycle: {one_line(error)}")
            return
        for case_id in report.submitted:
            self.log(f"submitted {case_id}")
        if report.submitted:
            follower.cases_changed()

    def _watch_dir_stamp(self) -> int | None:
        """Changes when a folder is added to, renamed into or removed from watch_dir."""
        try:
            return self.config.watch_dir.stat().st_mtime_ns
        except OSError:
            return None

    # -- looking and acting -------------------------------------------------------------
    def status(self, case_id: str | None = None) -> Any:
        """One case's status document, or every case's (a list), as ``mqi status --json``."""
        from mqi import sends
        from mqi.actions import all_case_statuses, case_status

        documents = (
            [case_status(self.store, self.store.require_case(case_id))]
            if case_id is not None
            else all_case_statuses(self.store)
        )
        if sends.destinations(self.config):
            found: dict[str, list[dict[str, object]]] = {}
            for state in sends.states(self.store, [d["case_id"] for d in documents]):
                found.setdefault(state.case_id, []).append(state.to_json())
            for document in documents:
                document["sends"] = found.get(document["case_id"], [])
        return documents[0] if case_id is not None else documents

    # -- the QA answer --------------------------------------------------------------------
    def compare(
        self, reference: str | Path, evaluated: str | Path, *, criteria: list[str] | None = None
    ) -> Any:
        """`mqi compare`: gamma, dose difference and verdict of any two RT Dose files (the first
        is the reference); ``criteria`` as ``3%/3mm/10%`` or ``2%/2mm/10%>=90`` (default: qa:)."""
        from mqi.qa.compare import compare_files

        return compare_files(Path(reference), Path(evaluated), _criteria(criteria), qa=self.config.qa)

    def report(self, case_id: str, *, criteria: list[str] | None = None) -> dict[str, Any]:
        """`mqi report`: the comparison recomputed here from the delivered doses and the case
        folder's TPS dose, written beside the post job's (qa.<time>.json, report.<time>.pdf);
        on the workstation the signing page carries the plan label and PatientID."""
        from mqi.bundle import qa_line
        from mqi.intake import IntakeOptions, read_case
        from mqi.qa.case import recompute_case_qa

        case = self.store.require_case(case_id)
        results = Path(case.results_dir) if case.results_dir else None
        if results is None or not results.is_dir():
            raise UsageError(
                f"case {case_id} has no delivered results to compare (see `mqi status {case_id}`)"
            )
        intake = read_case(
            Path(case.source_dir), IntakeOptions.from_config(self.config, plan_uid=case.plan_uid)
        )
        if intake.case is None:
            raise UsageError(
                f"case {case_id}: its folder {case.source_dir} no longer reads as the case it was"
            )
        settings = self.config.qa
        if criteria:
            settings = settings.model_copy(update={"criteria": _criteria(criteria)})
        structures = intake.case.structure_set
        result, json_path, pdf_path = recompute_case_qa(
            results,
            [dose.path for dose in intake.case.tps_doses],
            settings,
            plan_file=intake.case.plan.path,
            structure_file=structures.path if structures else None,
        )
        line = qa_line(result.first_criterion, result.first_pass_rate, result.reasons)
        self.store.add_event(case_id, "case", case_id, "qa", None, result.verdict, line)
        return {
            "schema": "mqi.report/1",
            "case_id": case_id,
            "verdict": result.verdict,
            "first_criterion": result.first_criterion,
            "first_pass_rate": result.first_pass_rate,
            "reasons": result.reasons,
            "qa_json": str(json_path),
            "report_pdf": None if pdf_path is None else str(pdf_path),
        }

    def cancel(self, case_id: str) -> list[str]:
        """scancel the case's unfinished jobs; the case becomes cancelled. Returns the job ids."""
        from mqi.actions import cancel_case

        try:
            return cancel_case(self.store, self.backend, case_id)
        finally:
            self._log_state_changes()

    def retry(self, case_id: str, beams: list[int] | None = None) -> dict[str, str | None]:
        """Resubmit the failed (or the named) beams and a new post job. Returns the job ids."""
        from mqi.actions import retry_case
        from mqi.transport import RemoteFiles

        try:
            return retry_case(
                self.config, self.store, self.backend, RemoteFiles(self.transport), case_id, beams
            )
        finally:
            self._log_state_changes()

    def clean(self, *, dry_run: bool = False) -> Any:
        """Retention: remove or archive what finished cases leave behind (see ``retention:``)."""
        from mqi.retention import clean
        from mqi.transport import RemoteFiles

        return clean(self.config, self.store, RemoteFiles(self.transport), dry_run=dry_run, log=self.log)

    def top(self, case_id: str) -> list[str]:
        from mqi.actions import top_case

        return top_case(self.store, self.backend, case_id)

    def logs(self, case_id: str, *, beam: int | None = None, step: str | None = None) -> str:
        from mqi.actions import read_log
        from mqi.transport import RemoteFiles

        return read_log(self.store, RemoteFiles(self.transport), case_id, beam=beam, step=step)

    def queue(self) -> list[QueueRow]:
        from mqi.actions import live_queue

        return live_queue(self.store, self.backend)

    def doctor(self, *, job: bool = False) -> list[Check]:
        """`mqi doctor`: every check of the config and the cluster (``job``: and a test GPU job)."""
        from mqi.doctor import run_checks

        return run_checks(self.config, self.transport, job=job)

    # -- the dashboard, the audit trail, metrics and the log file --------------------------
    def history(self, case_id: str) -> dict[str, Any]:
        """The case's audit trail, oldest first, as ``mqi history --json``."""
        events = self.store.history(case_id)
        return {"schema": "mqi.history/1", "case_id": case_id, "events": events}

    def cases_page(
        self,
        *,
        status: str | None = None,
        created_from: str | None = None,
        created_to: str | None = None,
        search: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> dict[str, Any]:
        """One page of the case list, newest first, with beams done/total and waited/ran seconds."""
        from mqi.store import CaseFilter

        filters = CaseFilter(status, created_from, created_to, search)
        rows, total = self.store.case_list(filters, limit=limit, offset=offset)
        now = time.time()
        for row in rows:
            row.update(_waited_ran(row, now))
        return {"schema": "mqi.cases/1", "total": total, "limit": limit, "offset": offset, "cases": rows}

    def queue_snapshot(self) -> dict[str, Any]:
        """This tool's live jobs as the last poll stored them, and the GPUs per partition the
        poller recorded (no Slurm call)."""
        return {
            "schema": "mqi.queue/1",
            "jobs": self.store.live_jobs(),
            "partitions": self.store.partitions(),
            "gpus_per_beam": self.config.slurm.gpus_per_beam,
            "poll": self.poll_health(),
        }

    def poll_health(self) -> dict[str, Any]:
        """The last poll cycle, the last good one, and whether that is stale: older than
        ``web.stale_poll_factor`` poll intervals (or no good cycle at all)."""
        from mqi.clock import parse_utc

        last = self.store.last_poll()
        limit = self.config.web.stale_poll_factor * self.config.poll.interval_seconds
        last_ok_at = last["last_ok_at"] if last else None
        age = None if last_ok_at is None else max(0.0, time.time() - parse_utc(last_ok_at).timestamp())
        return {
            "last": last,
            "last_ok_at": last_ok_at,
            "age_seconds": age,
            "interval_seconds": self.config.poll.interval_seconds,
            "stale_after_seconds": limit,
            "stale": age is None or age > limit,
        }

    def metrics_snapshot(self) -> MetricsSnapshot:
        """What ``/metrics`` shows, read from SQLite only."""
        return self.store.metrics_snapshot()

    def result_files(self, case_id: str) -> tuple[Path, list[str]]:
        """The case's results folder and the files in it (relative, sorted); NotFoundError when
        the case has none yet."""
        root = self._results_root(case_id)
        names = sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())
        return root, names

    def result_file(self, case_id: str, relative: str) -> Path:
        """One result file, never a path outside the case's folder under results_dir."""
        from mqi.store import NotFoundError

        root = self._results_root(case_id)
        target = (root / relative).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            raise NotFoundError(f"case {case_id} has no result file {relative!r}")
        return target

    def _results_root(self, case_id: str) -> Path:
        from mqi.store import NotFoundError

        case = self.store.require_case(case_id)
        results = self.config.results_dir.resolve()
        root = Path(case.results_dir).resolve() if case.results_dir else None
        if root is None or not root.is_relative_to(results) or root == results or not root.is_dir():
            raise NotFoundError(f"case {case_id} has no results yet")
        return root

    def _recorded_cycle(self, cycle: Callable[[], PollReport]) -> PollReport:
        """Run one poll cycle and record its duration, outcome and downloads for /metrics."""
        started = time.monotonic()
        try:
            report = cycle()
        except Exception as error:
            what = one_line(error)
            self._record(lambda: self.store.record_poll_cycle(time.monotonic() - started, False, what))
            self._log_state_changes(problem=f"poll cycle failed: {what}")
            raise
        elapsed = time.monotonic() - started
        error = "; ".join(report.errors) or None
        self._record(lambda: self.store.record_poll_cycle(elapsed, not report.errors, error))
        self._record(self.store.record_durations)
        if report.delivered:
            downloaded = self._bytes_of(report.delivered)
            self._record(lambda: self.store.add_counters({"bytes_downloaded": downloaded}))
        self._log_state_changes(problem=None if error is None else f"poll cycle failed: {error}")
        return report

    def _after_submit(self, outcome: SubmitOutcome | None, error: BaseException | None) -> None:
        from mqi.submit import CaseRejected

        if error is not None and not isinstance(error, CaseRejected):
            self._record(lambda: self.store.add_counters({"submit_failures": 1}))
        if outcome is not None and outcome.upload is not None:
            sent = outcome.upload.bytes_sent
            self._record(lambda: self.store.add_counters({"bytes_uploaded": sent}))
        self._log_state_changes()

    def _bytes_of(self, case_ids: list[str]) -> int:
        total = 0
        for case in self.store.cases_by_id(case_ids).values():
            if case.results_dir and Path(case.results_dir).is_dir():
                total += sum(p.stat().st_size for p in Path(case.results_dir).rglob("*") if p.is_file())
        return total

    def _record(self, write: Callable[[], object]) -> None:
        """Bookkeeping for the dashboard never fails the work it describes."""
        try:
            write()
        except Exception as error:
            self.log(f"could not record metrics: {one_line(error)}")

    def _log_state_changes(self, problem: str | None = None) -> None:
        """Write the events not yet in state_dir/logs/mqi.log there, one line each (and a
        failed poll cycle as a warning: Slurm's or the cluster's words, no case folder)."""
        from mqi.logs import log_state_changes, logger_for

        def write() -> None:
            logger = logger_for(self.config.state_dir, *_log_limits(self.config))
            while log_state_changes(logger, self.store.claim_events_to_log()):
                pass
            if problem:
                logger.warning(problem)

        self._record(write)


def _criteria(texts: list[str] | None) -> Any:
    from mqi.qa.gamma import criterion_config

    if not texts:
        return None
    try:
        return [criterion_config(text) for text in texts]
    except ValueError as error:
        raise UsageError(f"--criteria: {error} (write e.g. 3%/3mm/10% or 2%/2mm/10%>=90)") from None


def _waited_ran(row: dict[str, Any], now: float) -> dict[str, float | None]:
    """Seconds from the (latest) submission to the first beam's start since then (so far,
    while it waits), and from there to the last beam's end (so far, while it runs)."""
    from mqi.clock import parse_utc

    def seconds(value: str | None) -> float | None:
        return None if not value else parse_utc(value).timestamp()

    submitted, started = seconds(row.get("submitted_at")), seconds(row.get("first_started_at"))
    still_going = row.get("status") in ("submitted", "running", "postprocessing")
    waited: float | None = None
    if submitted is not None:
        if started is not None:
            waited = started - submitted
        elif still_going:
            waited = now - submitted
    ran: float | None = None
    if started is not None:
        ended = seconds(row.get("last_ended_at"))
        if ended is None or ended < started:  # a retried beam's end is its new one, or the case's
            ended = seconds(row.get("finished_at"))
        ran = (now if still_going or ended is None else ended) - started
    return {
        "waited_seconds": None if waited is None else max(0.0, waited),
        "ran_seconds": None if ran is None else max(0.0, ran),
    }
