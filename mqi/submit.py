"""Submission: intake -> render -> upload -> submit -> record, exactly once per case.

Exactly once rests on three things. A per-case file lock keeps two local
processes apart. Before anything is submitted, Slurm is asked (by job name,
which carries only the opaque case uid) whether a chain of this case already
exists, and a found chain is adopted instead of submitted again: that covers a
submitter killed between ``sbatch`` and its database write. And the upload goes
to ``<uid>.partial`` and becomes ``<uid>`` by one rename just before submit.sh
runs, so a half-uploaded case is never submittable.

Round trips to the cluster for a new case: one query (Slurm + remote files),
one ``mkdir`` and the SFTP upload, one command (rename + submit.sh).
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from mqi import slurm
from mqi.bundle import sha256_file
from mqi.config import Config
from mqi.errors import MqiError, OperationalError, TransportError, UsageError
from mqi.intake import IntakeOptions, IntakeResult, folder_fingerprint, read_case
from mqi.intake.identity import sanitise_name
from mqi.locks import case_lock_path, file_lock
from mqi.render import RenderedBundle, render_bundle
from mqi.store import Case as StoredCase
from mqi.store import Store, parse_utc
from mqi.transport import TransferStats, Transport

SUBMITTED_STATES = frozenset({"submitted", "running", "postprocessing", "completed", "failed", "cancelled"})
TRANSIENT_SLURM_ERRORS = (
    "Unable to contact slurm controller",
    "Socket timed out",
    "Slurm temporarily unable",
    "Transport endpoint is not connected",
    "Connection refused",
    "slurm_load_jobs error",
)
_SECTION = "@@mqi-section@@"


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


# -- helpers shared with poll/retry ---------------------------------------------------


def remote_bundle_dir(config: Config, case_uid: str) -> str:
    return f"{config.cluster.remote_dir}/{case_uid}"


def is_transient_slurm_error(text: str) -> bool:
    return any(marker in text for marker in TRANSIENT_SLURM_ERRORS)


def with_retries(action: Callable[[], Any], *, seconds: float, what: str, log: Callable[[str], None]) -> Any:
    """Run ``action``; retry transient failures with back-off for ``seconds``, then give up clearly."""
    deadline = time.monotonic() + seconds
    delay = 1.0
    while True:
        try:
            return action()
        except TransportError as error:
            if not error.transient:
                raise
            if time.monotonic() + delay > deadline:
                raise OperationalError(
                    f"{what}: {error} — gave up after {seconds:.0f}s; nothing was lost, rerun the command"
                ) from None
            log(f"{what}: {error}; retrying in {delay:.0f}s")
            time.sleep(delay)
            delay = min(delay * 2, 15.0)


def run_submit_script(
    transport: Transport, remote_dir: str, *, only_indices: Iterable[int] | None = None, prefix: str = ""
) -> dict[str, str | None]:
    """Run the bundle's submit.sh (one round trip) and return its job ids.

    A summary left by an earlier chain is removed first, so that a new post job that dies
    early can never make the poller deliver the old results again.
    """
    stale = shlex.quote(f"{remote_dir}/results/summary.json")
    command = f"{prefix}rm -f {stale} && {slurm.submit_command(remote_dir, only_indices)}"
    result = transport.run(command, timeout=300)
    if not result.ok:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        said = "; ".join(lines[-4:]) or result.first_error_line()
        if is_transient_slurm_error(result.stderr + result.stdout):
            raise TransportError(f"Slurm is not answering ({said})", transient=True)
        raise OperationalError(f"Slurm refused the case: {said}")
    try:
        return slurm.parse_submit_output(result.stdout)
    except slurm.SlurmOutputError as error:
        raise OperationalError(str(error)) from None


@dataclass(frozen=True)
class Chain:
    prepare: str | None
    simulate: str
    post: str

    def ids(self) -> dict[str, str | None]:
        return {"prepare": self.prepare, "simulate": self.simulate, "post": self.post}


def find_chains(
    records: Iterable[slurm.JobRecord], case_uid: str, *, live_only: bool = False
) -> tuple[Chain | None, list[str]]:
    """The newest complete, live-or-finished chain of a case, and ids of stray incomplete jobs.

    A chain is a post job with the newest simulate job submitted before it (and the
    newest prepare before that). A cancelled post job means the chain was given up.
    ``live_only`` ignores finished chains: a case this store never saw may match an old
    chain of the same folder and plan submitted from elsewhere.
    """
    steps: dict[str, dict[str, slurm.JobRecord]] = {step: {} for step in slurm.STEPS}
    for record in records:
        parsed = slurm.parse_job_name(record.name)
        if parsed and parsed[0] == case_uid:
            steps[parsed[1]].setdefault(record.parent_id, record)

    def key(job_id: str) -> int:
        return int(job_id) if job_id.isdigit() else 0

    posts = sorted(steps["post"], key=key, reverse=True)
    for post_id in posts:
        post_phase = slurm.phase_of(steps["post"][post_id])[0]
        if post_phase is slurm.Phase.CANCELLED or (live_only and post_phase in slurm.TERMINAL):
            continue
        simulates = [j for j in steps["simulate"] if key(j) < key(post_id)]
        if not simulates:
            continue
        simulate_id = max(simulates, key=key)
        prepares = [j for j in steps["prepare"] if key(j) < key(simulate_id)]
        prepare_id = max(prepares, key=key) if prepares else None
        chain = Chain(prepare_id, simulate_id, post_id)
        used = {prepare_id, simulate_id, post_id}
        strays = _live_ids(steps, exclude=used, newer_than=key(post_id))
        return chain, strays
    return None, _live_ids(steps, exclude=set(), newer_than=-1)


def _live_ids(
    steps: dict[str, dict[str, slurm.JobRecord]], exclude: set[str | None], newer_than: int
) -> list[str]:
    strays = []
    for jobs in steps.values():
        for job_id, record in jobs.items():
            if job_id in exclude or (job_id.isdigit() and int(job_id) <= newer_than):
                continue
            if slurm.phase_of(record)[0] not in slurm.TERMINAL:
                strays.append(job_id)
    return sorted(strays)


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
        case_dir = case_dir.absolute()
        if priority is not None and priority not in self.config.slurm.priorities:
            names = ", ".join(sorted(self.config.slurm.priorities))
            raise UsageError(f"unknown priority {priority!r}: use one of {names} (slurm.priorities)")
        result = self.check(case_dir, plan_uid)
        if not result.valid or result.case is None:
            self._reject(case_dir, result)
        case = result.case
        assert case is not None
        with file_lock(case_lock_path(self.config.state_dir, case.case_uid), what=f"case {case.case_id}"):
            return self._submit_locked(case_dir, result, priority=priority, force=force)

    # steps --------------------------------------------------------------------------
    def _reject(self, case_dir: Path, result: IntakeResult) -> None:
        case_id = result.to_json().get("case_id") or rejected_case_id(case_dir)
        existing = self.store.get_case(case_id)
        uid = existing.case_uid if existing else _opaque(f"mqi-rejected:{case_dir}")
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
        first = errors[0]["message"] if errors else "invalid case"
        more = (
            f" (and {len(errors) - 1} more: `mqi check {shlex.quote(str(case_dir))}`)"
            if len(errors) > 1
            else ""
        )
        raise CaseRejected(f"case {case_id} rejected: {first}{more}", result, case_id)

    def _submit_locked(
        self, case_dir: Path, result: IntakeResult, *, priority: str | None, force: bool
    ) -> SubmitOutcome:
        case = result.case
        assert case is not None
        warnings = [w.message for w in result.warnings]
        stored = self.store.get_case(case.case_id)
        if stored and stored.status in SUBMITTED_STATES and not force:
            jobs = {job.step: job.job_id for job in self.store.list_jobs(case.case_id)}
            return SubmitOutcome(case.case_id, case.case_uid, stored.status, jobs, already=True)
        chosen_priority = (
            priority or (stored.priority if stored else None) or self.config.slurm.default_priority
        )
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
        bundle_dir = self.config.bundles_dir / case.case_uid
        rendered = render_bundle(case, self.config, bundle_dir, priority=chosen_priority)
        warnings += rendered.warnings
        self.store.add_event(case.case_id, "case", case.case_id, "step", None, "rendered", str(bundle_dir))
        remote = remote_bundle_dir(self.config, case.case_uid)
        since = _since(stored)
        try:
            outcome = with_retries(
                lambda: self._upload_and_submit(
                    case.case_id,
                    case.case_uid,
                    rendered,
                    remote,
                    since,
                    force=force,
                    known=stored is not None,
                ),
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

    def _upload_and_submit(
        self,
        case_id: str,
        case_uid: str,
        rendered: RenderedBundle,
        remote: str,
        since: datetime,
        *,
        force: bool,
        known: bool,
    ) -> SubmitOutcome:
        local_files = bundle_checksums(rendered.path)
        records, remote_kind, remote_sums = self._survey(case_uid, remote, since)
        # Only a case this store already recorded can have a finished chain of its own.
        chain, strays = find_chains(records, case_uid, live_only=not known)
        if force and (chain or strays):
            live = strays + ([job for job in chain.ids().values() if job] if chain else [])
            self._cancel(live, case_id, "forced resubmission")
            chain, strays = None, []
            remote_kind, remote_sums = self._discard_remote(remote), {}
        if chain is not None:
            self.log(f"{case_id}: found its jobs in Slurm ({chain.simulate}); adopting them")
            self._record(case_id, rendered, remote, chain, adopted=True)
            return SubmitOutcome(case_id, case_uid, "submitted", chain.ids(), adopted=True, remote_dir=remote)
        if strays:
            self._cancel(strays, case_id, "incomplete chain from an interrupted submission")
        stats = self._upload(rendered.path, remote, remote_kind, remote_sums, local_files)
        self.store.add_event(case_id, "case", case_id, "step", None, "uploaded", f"{stats.files_sent} files")
        # Slurm does not create the folder of --output files: make logs/ before submitting.
        rename = f"mkdir -p {shlex.quote(remote)}/logs && "
        if remote_kind != "final" or stats.files_sent:
            partial = shlex.quote(remote + ".partial")
            # Patient data: only the cluster user may read the bundle.
            rename = (
                f"mkdir -p {partial}/logs && chmod 700 {partial} && mv -T {partial} {shlex.quote(remote)} && "
            )
        ids = run_submit_script(self.transport, remote, prefix=rename)
        chain = Chain(ids["prepare"], ids["simulate"] or "", ids["post"] or "")
        self._record(case_id, rendered, remote, chain, adopted=False)
        return SubmitOutcome(case_id, case_uid, "submitted", chain.ids(), remote_dir=remote, upload=stats)

    def _survey(
        self, case_uid: str, remote: str, since: datetime
    ) -> tuple[list[slurm.JobRecord], str, dict[str, str]]:
        """One round trip: this case's jobs in squeue and sacct, and what is already uploaded."""
        final, partial = shlex.quote(remote), shlex.quote(remote + ".partial")
        command = (
            f"{slurm.squeue_command()}; echo {_SECTION}; "
            f"{slurm.sacct_by_names_command(case_uid, since)} 2>/dev/null; echo {_SECTION}; "
            f"if [ -d {final} ]; then echo final; cd {final}; "
            f"elif [ -d {partial} ]; then echo partial; cd {partial}; else echo none; exit 0; fi; "
            # What the jobs write (logs, results, engine output) is not part of the upload.
            "find . \\( -path ./logs -o -path ./results -o -path './beams/*/output' \\) -prune "
            "-o -type f ! -path './beams/*/exit_code' ! -path './beams/*/engine.*' -print0 "
            "| xargs -0 -r sha256sum"
        )
        result = self.transport.run(command, timeout=120)
        parts = result.stdout.split(_SECTION + "\n")
        if len(parts) != 3:
            if is_transient_slurm_error(result.stderr):
                raise TransportError(f"Slurm is not answering ({result.first_error_line()})", transient=True)
            raise OperationalError(f"cannot query the cluster: {result.first_error_line()}")
        squeue_text, sacct_text, files_text = parts
        if "squeue:" in result.stderr and is_transient_slurm_error(result.stderr):
            raise TransportError(f"Slurm is not answering ({result.first_error_line()})", transient=True)
        records = slurm.parse_squeue(squeue_text) + slurm.parse_sacct(sacct_text)
        lines = files_text.splitlines()
        kind = lines[0].strip() if lines else "none"
        sums = {}
        for line in lines[1:]:
            digest, _, name = line.partition("  ")
            if name:
                sums[name.removeprefix("./")] = digest
        return records, kind, sums

    def _discard_remote(self, remote: str) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        old = shlex.quote(f"{remote}.old-{stamp}")
        self.transport.run(
            f"if [ -d {shlex.quote(remote)} ]; then mv -T {shlex.quote(remote)} {old}; fi; "
            f"rm -rf {shlex.quote(remote + '.partial')}",
            timeout=120,
        )
        return "none"

    def _upload(
        self, local: Path, remote: str, kind: str, remote_sums: dict[str, str], local_sums: dict[str, str]
    ) -> TransferStats:
        if kind == "final" and all(remote_sums.get(name) == digest for name, digest in local_sums.items()):
            return TransferStats(files_skipped=len(local_sums))
        if kind == "final":
            # Uploaded earlier but never submitted (no chain exists): refresh it as a partial upload.
            self.transport.run(f"mv -T {shlex.quote(remote)} {shlex.quote(remote + '.partial')}", timeout=60)
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

    def _cancel(self, job_ids: list[str], case_id: str, reason: str) -> None:
        if not job_ids:
            return
        self.log(f"{case_id}: cancelling jobs {', '.join(job_ids)} ({reason})")
        self.transport.run(slurm.scancel_command(job_ids), timeout=60)
        self.store.add_event(case_id, "case", case_id, "step", None, "cancelled-jobs", f"{job_ids}: {reason}")

    def _record(
        self, case_id: str, rendered: RenderedBundle, remote: str, chain: Chain, adopted: bool
    ) -> None:
        manifest = rendered.manifest
        with self.store.transaction():
            known = {job.job_id for job in self.store.list_jobs(case_id)}
            generation = 1 + max((job.generation for job in self.store.list_jobs(case_id)), default=0)
            if adopted and chain.post in known:
                generation = next(
                    j.generation for j in self.store.list_jobs(case_id) if j.job_id == chain.post
                )
            for job in self.store.list_jobs(case_id):
                if not job.finished and job.job_id not in chain.ids().values():
                    self.store.update_job(job.job_id, finished=True, state="REPLACED", reason="replaced")
            new_jobs = [
                {"job_id": job_id, "step": step, "generation": generation}
                | ({"array_indices": f"0-{len(manifest.beams) - 1}"} if step == "simulate" else {})
                for step, job_id in chain.ids().items()
                if job_id and job_id not in known
            ]
            self.store.add_jobs(case_id, new_jobs)
            self.store.set_beams(
                case_id,
                [{"number": b.number, "name": b.name, "array_index": b.array_index} for b in manifest.beams],
            )
            for beam in manifest.beams:
                self.store.update_beam(
                    case_id,
                    beam.number,
                    status="pending",
                    job_id=f"{chain.simulate}_{beam.array_index}",
                    slurm_state="PENDING",
                    exit_code=None,
                    reason=None,
                    node=None,
                    dose_file=None,
                )
            self.store.update_case(
                case_id,
                status="submitted",
                reason="adopted the chain found in Slurm" if adopted else f"chain {chain.simulate} submitted",
                remote_dir=remote,
                error=None,
            )


def bundle_checksums(bundle: Path) -> dict[str, str]:
    """sha256 of every file of a rendered bundle, by relative path."""
    return {
        str(path.relative_to(bundle)): sha256_file(path)
        for path in sorted(bundle.rglob("*"))
        if path.is_file()
    }


def rejected_case_id(case_dir: Path) -> str:
    """A case id for a folder whose plan could not be read."""
    return f"{sanitise_name(case_dir.name)}-{_opaque(str(case_dir))[:8]}"


def _opaque(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _since(stored: StoredCase | None) -> datetime:
    if stored and stored.created_at:
        return parse_utc(stored.created_at) - timedelta(hours=1)
    return slurm.utc_now() - timedelta(days=2)


def clear_local_bundle(config: Config, case_uid: str) -> None:
    shutil.rmtree(config.bundles_dir / case_uid, ignore_errors=True)
