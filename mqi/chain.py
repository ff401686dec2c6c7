"""One case's chain of Slurm jobs: find it by name, adopt it, record a generation, settle a
cancel. Shared by submit, poll and the day-to-day actions, so that each records a chain
the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mqi import slurm
from mqi.bundle import POST_DONE_NAME, RESULTS_DIR, SUMMARY_NAME
from mqi.config import Config
from mqi.slurm.backend import FirstSubmit, SlurmBackend
from mqi.store import TERMINAL_BEAM_STATUSES, Store
from mqi.transport.files import remove_command


def remote_bundle_dir(config: Config, case_uid: str) -> str:
    return f"{config.cluster.remote_dir}/{case_uid}"


def submit_chain(
    backend: SlurmBackend, remote_dir: str, *, only_indices: list[int] | None = None, before: str = ""
) -> dict[str, str | None]:
    """Run the bundle's submit.sh and return its job ids.

    A summary and completion marker left by an earlier chain are removed first, so that a
    new post job that dies early can never make the poller deliver the old results again.
    """
    return backend.submit_chain(remote_dir, only_indices=only_indices, before=before + _stale(remote_dir))


def submit_new_chain(
    backend: SlurmBackend, remote_dir: str, case_uid: str, since: datetime, *, before: str, also: str
) -> FirstSubmit:
    """A first submission guarded in the same round trip (``SlurmBackend.submit_unless_found``):
    the chain's ids, or what the cluster already holds of the case and nothing submitted."""
    return backend.submit_unless_found(
        case_uid, since, remote_dir, before=before + _stale(remote_dir), also=also
    )


def _stale(remote_dir: str) -> str:
    """Removes a summary and completion marker an earlier chain left (ends with ``&&``)."""
    return remove_command(f"{remote_dir}/{RESULTS_DIR}/{SUMMARY_NAME}") + remove_command(
        f"{remote_dir}/{RESULTS_DIR}/{POST_DONE_NAME}"
    )


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

    for post_id in sorted(steps["post"], key=key, reverse=True):
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
        strays = _live_ids(steps, exclude={prepare_id, simulate_id, post_id}, newer_than=key(post_id))
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


def record_chain(
    store: Store,
    case_id: str,
    ids: Mapping[str, str | None],
    *,
    reason: str,
    indices: list[int] | None = None,
    beams: list[dict[str, Any]] | None = None,
    remote_dir: str | None = None,
    adopted: bool = False,
) -> None:
    """Store a chain as the case's newest generation and point its beams at it.

    ``indices`` None: a whole chain (a submit, an adoption) that replaces every unfinished
    job of the case and resets every beam; else only those array tasks were resubmitted
    (a retry, a lost chain) and only their beams start again. ``beams`` makes the case's
    beams exactly these first (``{number, name, array_index}`` each).
    """
    simulate = ids.get("simulate") or ""
    with store.transaction():
        jobs = store.list_jobs(case_id)
        known = {job.job_id: job for job in jobs}
        generation = 1 + max((job.generation for job in jobs), default=0)
        post = ids.get("post")
        if adopted and post in known:
            generation = known[post].generation
        if beams is not None:
            store.set_beams(case_id, beams)
        every = store.list_beams(case_id)
        chosen = indices if indices is not None else [beam.array_index for beam in every]
        spec = ",".join(str(i) for i in chosen) if indices is not None else f"0-{len(every) - 1}"
        if indices is None:
            for job in jobs:
                if not job.finished and job.job_id not in ids.values():
                    store.update_job(job.job_id, finished=True, state="REPLACED", reason="replaced")
        store.add_jobs(
            case_id,
            [
                {"job_id": job_id, "step": step, "generation": generation}
                | (
                    {"array_indices": spec, "state": slurm.first_array_state(len(chosen))}
                    if step == "simulate"
                    else {}
                )
                for step, job_id in ids.items()
                if job_id and job_id not in known
            ],
        )
        for beam in every:
            if beam.array_index not in chosen:
                continue
            fresh: dict[str, Any] = {"dose_file": None} if indices is None else {}
            store.update_beam(
                case_id,
                beam.number,
                status="pending",
                reason=None if indices is None else reason,
                job_id=f"{simulate}_{beam.array_index}",
                slurm_state="PENDING",
                exit_code=None,
                node=None,
                **fresh,
            )
        extra = {"remote_dir": remote_dir} if remote_dir else {}
        store.update_case(case_id, status="submitted", reason=reason, error=None, **extra)


def mark_cancelled(
    store: Store, case_id: str, *, reason: str, beam_reason: str, job_ids: Iterable[str] = ()
) -> None:
    """The case, its open beams and these jobs become cancelled, in one transaction."""
    with store.transaction():
        for job_id in job_ids:
            store.update_job(job_id, state="CANCELLED", finished=True, reason=reason)
        for beam in store.list_beams(case_id):
            if beam.status not in TERMINAL_BEAM_STATUSES:
                # Its job is finished for the mirror, so show Slurm's word for it here.
                store.update_beam(
                    case_id, beam.number, status="cancelled", reason=beam_reason, slurm_state="CANCELLED"
                )
        store.update_case(case_id, status="cancelled", reason=reason)
