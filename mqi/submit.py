"""Submission: intake -> render -> upload -> submit -> record, exactly once per case.

Exactly once rests on three things. A per-case file lock keeps two local
processes apart. Before anything is submitted, Slurm is asked (by job name,
which carries only the opaque case uid) whether a chain of this case already
exists, and a found chain is adopted instead of submitted again: that covers a
submitter killed between ``sbatch`` and its database write. And the upload goes
to ``<uid>.partial`` and becomes ``<uid>`` by one rename just before submit.sh
runs, so a half-uploaded case is never submittable.

Round trips to the cluster for a case this store never saw: the connection opens while
the bundle renders; the upload, one tar stream over one channel, to ``<uid>.partial``; one
command that asks Slurm for jobs of the case and, finding none (and no ``<uid>``), renames
and runs submit.sh. For a case it has seen (a resume, ``--force``): one query (Slurm +
remote files) while the bundle renders, the upload of what differs, the submit command.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, cast

from mqi.bundle import LOCAL_DIR, sha256_file
from mqi.chain import Chain, find_chains, record_chain, remote_bundle_dir, submit_chain, submit_new_chain
from mqi.clock import now_utc, parse_utc
from mqi.config import Config
from mqi.errors import MqiError, UsageError
from mqi.intake import IntakeOptions, IntakeResult, folder_fingerprint, read_case
from mqi.intake.identity import opaque, rejected_case_id
from mqi.intake.model import Problem
from mqi.locks import case_lock_path, file_lock
from mqi.render import RenderedBundle, RenderError, render_bundle
from mqi.retrying import with_retries
from mqi.slurm import JobRecord
from mqi.slurm.backend import SlurmBackend, open_backend
from mqi.store import Case as StoredCase
from mqi.store import Store
from mqi.transport import RemoteFiles, TransferStats, Transport
from mqi.transport.files import bundle_listing_command, parse_bundle_listing, publish_command

T = TypeVar("T")

SUBMITTED_STATES = frozenset({"submitted", "running", "postprocessing", "completed", "failed", "cancelled"})


class CaseRejected(UsageError):
    """The case folder failed intake; it is stored as ``rejected`` and nothing was submitted."""

    def __init__(self, message: str, result: IntakeResult, case_id: str) -> None:
        super().__init__(message)
        self.result = result
        self.case_id = case_id


class UploadProgress(Protocol):
    def start(self, total_bytes: int, files: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def finish(self) -> None: ...


@dataclass
class SubmitOutcome:
    case_id: str
    case_uid: str
    status: str
    jobs: dict[str, str | None] = field(default_factory=dict)
    adopted: bool = False
    already: bool = False
    bundle_dir: Path | None = None
    remote_dir: str | None = None
    upload: TransferStats | None = None
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id,
            "case_uid": self.case_uid,
            "status": self.status,
            "jobs": self.jobs,
            "adopted": self.adopted,
            "already_submitted": self.already,
            "upload": None
            if self.upload is None
            else {
                "files_sent": self.upload.files_sent,
                "files_skipped": self.upload.files_skipped,
                "bytes_sent": self.upload.bytes_sent,
                "seconds": round(self.upload.seconds, 3),
            },
        }


@dataclass(frozen=True)
class Survey:
    """What the cluster holds of a case before its upload: Slurm's records of its jobs (by
    name) and where its bundle is (``final``, ``partial`` or ``none``) with the sha256 of
    each file there."""

    records: list[JobRecord]
    remote_kind: str
    remote_sums: dict[str, str]


class Prefetch(Generic[T]):
    """Runs ``action`` once in a background thread; :meth:`take` gives its result the
    first time (raising what it raised) and runs ``action`` again in the caller's thread
    after that (a retry must see the cluster as it is then)."""

    def __init__(self, action: Callable[[], T]) -> None:
        self._action = action
        self._result: T | None = None
        self._error: BaseException | None = None
        self._taken = False
        self._thread = threading.Thread(target=self._run, name="mqi-survey", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result = self._action()
        except BaseException as error:  # handed to the caller's thread by take()
            self._error = error

    def take(self) -> T:
        if self._taken:
            return self._action()
        self._taken = True
        self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return cast(T, self._result)

    def wait(self) -> None:
        """Let the background call finish: the transport is not shared while it runs."""
        self._thread.join()


# -- the submitter ----------------------------------------------------------------------


class Submitter:
    """Submits case folders through one transport and one store (one CLI command)."""

    def __init__(
        self,
        config: Config,
        store: Store,
        transport: Transport,
        *,
        log: Callable[[str], None] = lambda _msg: None,
        progress: UploadProgress | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.transport = transport
        self.backend: SlurmBackend = open_backend(config.slurm.backend, transport)
        self.files = RemoteFiles(transport)
        self.log = log
        self.progress = progress

    # public -------------------------------------------------------------------------
    def check(self, case_dir: Path, plan_uid: str | None = None) -> IntakeResult:
        return read_case(case_dir, IntakeOptions.from_config(self.config, plan_uid=plan_uid))

    def submit(
        self,
        case_dir: Path,
        *,
        priority: str | None = None,
        force: bool = False,
        plan_uid: str | None = None,
    ) -> SubmitOutcome:
        """Check, render, upload and queue one case folder, exactly once.

        Bad input (intake problems, a bundle render refuses, a folder that cannot be read
        at all) records the case as ``rejected`` and raises CaseRejected; a cluster failure
        leaves it ``submitting`` with the error shown, to be resumed.
        """
        case_dir = case_dir.absolute()
        if priority is not None and priority not in self.config.slurm.priorities:
            names = ", ".join(sorted(self.config.slurm.priorities))
            raise UsageError(f"unknown priority {priority!r}: use one of {names} (slurm.priorities)")
        try:
            result = self.check(case_dir, plan_uid)
        except MqiError:
            raise
        except Exception as error:  # a reader bug must reject this case, never stop a scan
            result = _unreadable(case_dir, f"the case could not be read ({type(error).__name__}: {error})")
        if not result.valid or result.case is None:
            self._reject(case_dir, result)
        case = result.case
        assert case is not None
        with file_lock(case_lock_path(self.config.state_dir, case.case_uid), what=f"case {case.case_id}"):
            return self._submit_locked(case_dir, result, priority=priority, force=force)

    # steps --------------------------------------------------------------------------
    def _reject(self, case_dir: Path, result: IntakeResult) -> None:
        case_id = (
            result.case_id or (result.case.case_id if result.case else None) or rejected_case_id(case_dir)
        )
        existing = self.store.get_case(case_id)
        uid = existing.case_uid if existing else opaque(f"mqi-rejected:{case_dir}")
        errors = [{"code": p.code, "message": p.message} for p in result.errors]
        self.store.upsert_case(
            case_id,
            case_uid=uid,
            source_dir=str(case_dir),
            status="rejected",
            reason=f"{len(errors)} problem(s) in the case folder",
            errors=errors,
            error=errors[0]["message"] if errors else "invalid case",
            folder_fingerprint=folder_fingerprint(case_dir),
        )
        raise CaseRejected(f"{case_id}: {result.rejection(case_dir)}", result, case_id)

    def _submit_locked(
        self, case_dir: Path, result: IntakeResult, *, priority: str | None, force: bool
    ) -> SubmitOutcome:
        case = result.case
        assert case is not None
        stored = self.store.get_case(case.case_id)
        if stored and stored.status in SUBMITTED_STATES and not force:
            jobs = {job.step: job.job_id for job in self.store.list_jobs(case.case_id)}
            return SubmitOutcome(case.case_id, case.case_uid, stored.status, jobs, already=True)
        remote = remote_bundle_dir(self.config, case.case_uid)
        since = _since(stored)
        known = stored is not None

        def survey() -> Survey:
            return self._survey(case.case_uid, remote, since, known=known)

        # While the bundle renders, the connection opens and (for a case this store has
        # seen) the cluster is asked about the case. A case it never saw is asked in the
        # submit command itself, as its guard; a retry of it asks first, as a resume does.
        first = not known and not force
        ahead: Prefetch[Any] = Prefetch(self._connect if first else survey)
        ask = survey if first else ahead.take
        try:
            return self._render_and_submit(
                case_dir, result, stored, ahead, ask, remote, since, priority, force, first=first
            )
        except Exception:
            # e.g. a rejected render: the caller may go on with this transport (mqi scan), so
            # the survey must be over. (A submit that got as far as the upload took it already;
            # an interrupt or a signal does not wait: the process is stopping.)
            ahead.wait()
            raise

    def _connect(self) -> None:
        self.transport.run("true", timeout=self.config.cluster.connect_timeout + 30)

    def _render_and_submit(
        self,
        case_dir: Path,
        result: IntakeResult,
        stored: StoredCase | None,
        ahead: Prefetch[Any],
        ask: Callable[[], Survey],
        remote: str,
        since: datetime,
        priority: str | None,
        force: bool,
        *,
        first: bool,
    ) -> SubmitOutcome:
        case = result.case
        assert case is not None
        warnings = [w.message for w in result.warnings]
        chosen_priority = (
            priority or (stored.priority if stored else None) or self.config.slurm.default_priority
        )
        bundle_dir = self.config.bundles_dir / case.case_uid
        try:
            rendered = render_bundle(case, self.config, bundle_dir, priority=chosen_priority)
        except RenderError as error:
            result.errors.append(Problem(code="RENDER_REFUSED", message=str(error)))
            result.case_id = case.case_id
            self._reject(case_dir, result)
            raise  # unreachable: _reject raises
        except OSError as error:
            raise MqiError(f"cannot write the bundle of {case.case_id} under {bundle_dir}: {error}") from None
        except Exception as error:  # input render cannot turn into a bundle: this case's fault
            message = f"the bundle could not be rendered ({type(error).__name__}: {error})"
            result.errors.append(Problem(code="RENDER_FAILED", message=message))
            result.case_id = case.case_id
            self._reject(case_dir, result)
            raise
        self.store.upsert_case(
            case.case_id,
            case_uid=case.case_uid,
            source_dir=str(case_dir),
            status="submitting",
            reason="forced resubmission" if force and stored else "submission started",
            priority=chosen_priority,
            plan_uid=case.plan.sop_instance_uid,
            folder_fingerprint=folder_fingerprint(case_dir),
            error=None,
            errors=[],
            # attempts counts automatic resubmissions of lost chains; --force starts afresh.
            attempts=0 if force or not stored else stored.attempts,
        )
        warnings += rendered.warnings
        _keep_log_names(self.config, case.case_uid, rendered)
        self.store.add_event(case.case_id, "case", case.case_id, "step", None, "rendered", str(bundle_dir))
        local_files = bundle_checksums(rendered.path, known=rendered.manifest.files)
        beams = [{"number": b.number, "name": b.name, "array_index": i} for i, b in enumerate(case.beams)]
        attempts = 0

        def attempt() -> SubmitOutcome:
            nonlocal attempts
            attempts += 1
            if first and attempts == 1:
                ahead.take()  # connected (or why not)
                return self._first_submit(
                    case.case_id, case.case_uid, rendered, local_files, beams, remote, since
                )
            return self._upload_and_submit(
                case.case_id,
                case.case_uid,
                rendered,
                local_files,
                beams,
                remote,
                ask(),
                force=force,
                known=stored is not None,
            )

        try:
            outcome = with_retries(
                attempt,
                seconds=self.config.cluster.retry_seconds,
                what=f"submitting {case.case_id}",
                log=self.log,
            )
        except MqiError as error:
            self.store.update_case(case.case_id, error=str(error))
            raise
        outcome.warnings = warnings
        outcome.bundle_dir = bundle_dir
        return outcome

    def _survey(self, case_uid: str, remote: str, since: datetime, *, known: bool) -> Survey:
        """One round trip: the case's jobs in Slurm and a listing of its remote folder.
        Only a case this store already recorded can have a finished chain of its own, so
        for a case it never saw only a live chain counts (and sacct runs only if squeue
        shows one)."""
        records, listing = self.backend.case_jobs(
            case_uid, since, also=bundle_listing_command(remote), live_only=not known
        )
        remote_kind, remote_sums = parse_bundle_listing(listing)
        return Survey(records, remote_kind, remote_sums)

    def _first_submit(
        self,
        case_id: str,
        case_uid: str,
        rendered: RenderedBundle,
        local_files: dict[str, str],
        beams: list[dict[str, Any]],
        remote: str,
        since: datetime,
    ) -> SubmitOutcome:
        """A case this store never saw: upload the whole bundle to ``<remote>.partial``,
        then one command publishes and submits it unless Slurm lists a job of the case or
        ``<remote>`` exists (a chain to adopt, a bundle from elsewhere); then the survey
        that command printed decides, as for a resumed case."""
        stats = self._upload(rendered.path, remote, "none", {}, local_files)
        answer = submit_new_chain(
            self.backend,
            remote,
            case_uid,
            since,
            before=publish_command(remote, from_partial=True),
            also=bundle_listing_command(remote),
        )
        if answer.ids is None:
            kind, sums = parse_bundle_listing(answer.also)
            return self._upload_and_submit(
                case_id,
                case_uid,
                rendered,
                local_files,
                beams,
                remote,
                Survey(answer.records, kind, sums),
                force=False,
                known=False,
                uploaded=stats,
            )
        self.store.add_event(case_id, "case", case_id, "step", None, "uploaded", f"{stats.files_sent} files")
        return self._record_submitted(case_id, case_uid, answer.ids, beams, remote, stats)

    def _upload_and_submit(
        self,
        case_id: str,
        case_uid: str,
        rendered: RenderedBundle,
        local_files: dict[str, str],
        beams: list[dict[str, Any]],
        remote: str,
        found: Survey,
        *,
        force: bool,
        known: bool,
        uploaded: TransferStats | None = None,
    ) -> SubmitOutcome:
        """``uploaded``: the whole bundle is in ``<remote>.partial`` already."""
        records, remote_kind, remote_sums = found.records, found.remote_kind, found.remote_sums
        chain, strays = find_chains(records, case_uid, live_only=not known)
        if uploaded is not None and chain is None and remote_kind == "final":
            # A bundle uploaded earlier and never submitted: refreshed as on a resume.
            self.files.discard_partial(remote)
            uploaded = None
        if force and (chain or strays):
            live = strays + ([job for job in chain.ids().values() if job] if chain else [])
            self._cancel(live, case_id, "forced resubmission")
            chain, strays = None, []
        if force:
            self.files.set_aside(remote, time.strftime("%Y%m%dT%H%M%S"))
            remote_kind, remote_sums = "none", {}
        if chain is not None:
            self.log(f"{case_id}: found its jobs in Slurm ({chain.simulate}); adopting them")
            record_chain(
                self.store,
                case_id,
                chain.ids(),
                reason="adopted the chain found in Slurm",
                beams=beams,
                remote_dir=remote,
                adopted=True,
            )
            if uploaded is not None:
                self._discard_upload(case_id, remote)
            return SubmitOutcome(case_id, case_uid, "submitted", chain.ids(), adopted=True, remote_dir=remote)
        if strays:
            self._cancel(strays, case_id, "incomplete chain from an interrupted submission")
        if uploaded is not None:
            stats, remote_kind = uploaded, "partial"
        else:
            stats = self._upload(rendered.path, remote, remote_kind, remote_sums, local_files)
        self.store.add_event(case_id, "case", case_id, "step", None, "uploaded", f"{stats.files_sent} files")
        before = publish_command(remote, from_partial=remote_kind != "final" or bool(stats.files_sent))
        ids = submit_chain(self.backend, remote, before=before)
        return self._record_submitted(case_id, case_uid, ids, beams, remote, stats)

    def _record_submitted(
        self,
        case_id: str,
        case_uid: str,
        ids: dict[str, str | None],
        beams: list[dict[str, Any]],
        remote: str,
        stats: TransferStats,
    ) -> SubmitOutcome:
        chain = Chain(ids["prepare"], ids["simulate"] or "", ids["post"] or "")
        record_chain(
            self.store,
            case_id,
            chain.ids(),
            reason=f"chain {chain.simulate} submitted",
            beams=beams,
            remote_dir=remote,
        )
        return SubmitOutcome(case_id, case_uid, "submitted", chain.ids(), remote_dir=remote, upload=stats)

    def _upload(
        self, local: Path, remote: str, kind: str, remote_sums: dict[str, str], local_sums: dict[str, str]
    ) -> TransferStats:
        if kind == "final" and all(remote_sums.get(name) == digest for name, digest in local_sums.items()):
            return TransferStats(files_skipped=len(local_sums))
        if kind == "final":
            # Uploaded earlier but never submitted (no chain exists): refresh it as a partial upload.
            self.files.reopen_upload(remote)
        todo = sorted(name for name, digest in local_sums.items() if remote_sums.get(name) != digest)
        total = sum((local / name).stat().st_size for name in todo)
        if self.progress:
            self.progress.start(total, len(todo))
        try:
            stats = self.transport.put_files(
                local, remote + ".partial", todo, self.progress.advance if self.progress else None
            )
        finally:
            if self.progress:
                self.progress.finish()
        stats.files_skipped = len(local_sums) - len(todo)
        return stats

    def _discard_upload(self, case_id: str, remote: str) -> None:
        """The upload a found chain made unnecessary goes; the adoption stands either way."""
        try:
            self.files.discard_partial(remote)
        except MqiError as error:
            self.log(f"{case_id}: could not remove the unneeded upload {remote}.partial ({error}); remove it")

    def _cancel(self, job_ids: list[str], case_id: str, reason: str) -> None:
        if not job_ids:
            return
        self.log(f"{case_id}: cancelling jobs {', '.join(job_ids)} ({reason})")
        self.backend.cancel(job_ids)
        self.store.add_event(case_id, "case", case_id, "step", None, "cancelled-jobs", f"{job_ids}: {reason}")


def bundle_checksums(bundle: Path, known: Mapping[str, str] | None = None) -> dict[str, str]:
    """sha256 of every file of a rendered bundle that goes to the cluster (all but the
    workstation's own ``.local/``), by relative path; ``known`` gives sums already computed
    (the manifest's, written by the same render) for the files it names."""
    known = known or {}
    sums = {}
    for path in sorted(bundle.rglob("*")):
        name = path.relative_to(bundle).as_posix()
        if path.is_file() and name.partition("/")[0] != LOCAL_DIR:
            sums[name] = known.get(name) or sha256_file(path)
    return sums


def _since(stored: StoredCase | None) -> datetime:
    if stored and stored.created_at:
        return parse_utc(stored.created_at) - timedelta(hours=1)
    return now_utc() - timedelta(days=2)


def _unreadable(case_dir: Path, message: str) -> IntakeResult:
    return IntakeResult(source_dir=case_dir, errors=[Problem(code="INTAKE_FAILED", message=message)])


def dry_run(
    config: Config,
    case_dir: Path,
    out_dir: Path | None,
    *,
    priority: str | None = None,
    plan_uid: str | None = None,
) -> tuple[IntakeResult, RenderedBundle]:
    """Read and render a case into ``out_dir`` (default: under state_dir); nothing is stored or
    submitted. Raises CaseRejected (not recorded) when the case is invalid."""
    try:
        result = read_case(case_dir, IntakeOptions.from_config(config, plan_uid=plan_uid))
    except MqiError:
        raise
    except Exception as error:
        result = _unreadable(case_dir, f"the case could not be read ({type(error).__name__}: {error})")
    case = result.case
    if result.valid and case is not None:
        target = out_dir or (config.bundles_dir / "dry-run" / case.case_uid)
        try:
            return result, render_bundle(case, config, target, priority=priority)
        except RenderError as error:
            result.errors.append(Problem(code="RENDER_REFUSED", message=str(error)))
        except OSError as error:
            raise MqiError(f"cannot write the bundle under {target}: {error}") from None
        except Exception as error:
            message = f"the bundle could not be rendered ({type(error).__name__}: {error})"
            result.errors.append(Problem(code="RENDER_FAILED", message=message))
    case_id = result.case_id or rejected_case_id(case_dir.absolute())
    raise CaseRejected(result.rejection(case_dir), result, case_id)


def _keep_log_names(config: Config, case_uid: str, rendered: RenderedBundle) -> None:
    """The delivery logs travel under opaque names; which is which stays on this machine,
    beside (not in) the bundle: ``<bundles>/<uid>.delivery-logs.json``, private."""
    if not rendered.delivery_logs:
        return
    path = config.bundles_dir / f"{case_uid}.delivery-logs.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(rendered.delivery_logs, handle, indent=2, sort_keys=True)


def clear_local_bundle(config: Config, case_uid: str) -> None:
    shutil.rmtree(config.bundles_dir / case_uid, ignore_errors=True)
