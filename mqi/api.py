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
    from mqi.poll import PollReport
    from mqi.render import RenderedBundle
    from mqi.scan import ScanReport
    from mqi.slurm.backend import SlurmBackend
    from mqi.store import Store
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


class Session:
    """One config, one database, at most one cluster connection. Use it as a context manager."""

    def __init__(self, config: Config, *, log: Log = _quiet) -> None:
        self.config = config
        self.log = log
        self._store: Store | None = None
        self._transport: Transport | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
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
        from mqi.slurm.backend import CliBackend

        return CliBackend(self.transport)

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
        return submitter.submit(Path(case_dir), priority=priority, force=force, plan_uid=plan)

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
                        what = one_line(error)
                        report.errors.append(f"{folder.name}: {what}")
                        self.log(f"{folder.name}: {what}")
                    else:
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

        report = Poller(self.config, self.store, self.transport, log=self.log).poll_once()
        self._after_delivery(report.delivered)
        return report

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
        """Poll until no case is active (backing off while nothing changes), or ``timeout`` s."""
        from mqi.poll import Poller, poll_until_done

        poller = Poller(self.config, self.store, self.transport, log=self.log)

        def cycle(report: PollReport) -> None:
            self._after_delivery(report.delivered)
            if on_cycle is not None:
                on_cycle(report)

        return poll_until_done(
            poller, timeout=timeout, interval=self.config.poll.interval_seconds, on_cycle=cycle
        )

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
        """Scan and poll until ``should_stop()``; survives every per-case and per-cycle error."""
        import threading

        every = interval or self.config.poll.interval_seconds
        longest = max(every, self.config.poll.max_interval_seconds)
        self.log(f"mqi run: scanning {self.config.watch_dir} and polling every {every:.0f}s")
        if self.config.dicom is not None and self.config.dicom.allowed:
            listener = threading.Thread(
                target=self.listen, kwargs={"should_stop": should_stop}, name="mqi-listen", daemon=True
            )
            listener.start()
        delay, cleaned = every, float("-inf")
        while not should_stop():
            busy = False
            for name, step in (("scan", self.scan), ("poll", self.poll)):
                try:
                    report = step()
                except Exception as error:  # the service keeps running; the next cycle retries
                    self.log(f"{name} failed, retrying next cycle: {one_line(error)}")
                    busy = True
                    continue
                for case_id in getattr(report, "submitted", []):
                    self.log(f"submitted {case_id}")
                for case_id in getattr(report, "delivered", []):
                    self.log(f"delivered {case_id}")
                busy = busy or bool(getattr(report, "submitted", None) or getattr(report, "changes", 0))
            if time.monotonic() - cleaned >= 24 * 3600:
                cleaned = time.monotonic()
                try:
                    self.clean()
                except Exception as error:
                    self.log(f"clean failed, retrying tomorrow: {one_line(error)}")
            # While nothing happens, Slurm is asked less and less often (poll.max_interval_seconds).
            delay = every if busy else min(delay * 1.5, longest)
            deadline = time.monotonic() + delay
            while not should_stop() and time.monotonic() < deadline:
                time.sleep(min(0.5, delay))
        self.log("mqi run: stopped")

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

    def cancel(self, case_id: str) -> list[str]:
        """scancel the case's unfinished jobs; the case becomes cancelled. Returns the job ids."""
        from mqi.actions import cancel_case

        return cancel_case(self.store, self.backend, case_id)

    def retry(self, case_id: str, beams: list[int] | None = None) -> dict[str, str | None]:
        """Resubmit the failed (or the named) beams and a new post job. Returns the job ids."""
        from mqi.actions import retry_case
        from mqi.transport import RemoteFiles

        return retry_case(self.config, self.store, self.backend, RemoteFiles(self.transport), case_id, beams)

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
