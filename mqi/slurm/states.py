"""What Slurm's job states mean for mqi, and which of its errors are passing ones."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mqi.slurm.parse import JobRecord


class Phase(StrEnum):
    """What a Slurm state means for a beam or a step."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


_PHASES: dict[str, tuple[Phase, str | None]] = {
    "PENDING": (Phase.PENDING, None),
    "CONFIGURING": (Phase.PENDING, None),
    "REQUEUED": (Phase.PENDING, "requeued by Slurm"),
    "REQUEUE_FED": (Phase.PENDING, "requeued by Slurm"),
    "REQUEUE_HOLD": (Phase.PENDING, "requeued and held by Slurm"),
    "RESV_DEL_HOLD": (Phase.PENDING, "held: reservation deleted"),
    "SUSPENDED": (Phase.RUNNING, "suspended by Slurm"),
    "RUNNING": (Phase.RUNNING, None),
    "COMPLETING": (Phase.RUNNING, None),
    "STAGE_OUT": (Phase.RUNNING, None),
    "SIGNALING": (Phase.RUNNING, None),
    "RESIZING": (Phase.RUNNING, None),
    "STOPPED": (Phase.RUNNING, "stopped by a signal"),
    "COMPLETED": (Phase.COMPLETED, None),
    "FAILED": (Phase.FAILED, "the job exited non-zero"),
    "TIMEOUT": (Phase.FAILED, "hit its time limit (raise slurm.time_limit)"),
    "OUT_OF_MEMORY": (Phase.FAILED, "ran out of memory (raise slurm.mem_per_beam)"),
    "NODE_FAIL": (Phase.FAILED, "its node failed"),
    "BOOT_FAIL": (Phase.FAILED, "its node failed to boot"),
    "DEADLINE": (Phase.FAILED, "missed its deadline"),
    "PREEMPTED": (Phase.FAILED, "preempted by a higher-priority job"),
    "REVOKED": (Phase.CANCELLED, "revoked by a federated cluster"),
    "CANCELLED": (Phase.CANCELLED, "cancelled"),
    "SPECIAL_EXIT": (Phase.FAILED, "special exit"),
}

TERMINAL = frozenset({Phase.COMPLETED, Phase.FAILED, Phase.CANCELLED})
# The base states whose phase is terminal (an unknown state never is).
TERMINAL_STATES = frozenset(state for state, (phase, _) in _PHASES.items() if phase in TERMINAL)


def phase_of(record: JobRecord) -> tuple[Phase, str | None]:
    """Map a Slurm record to a phase and a human reason (None when nothing to say).

    Unknown states are taken as still running, with the state named in the reason,
    so a new Slurm state never marks work finished by mistake.
    """
    return _phase(record.state, record.state_detail, record.exit_code, record.signal, record.reason)


@functools.lru_cache(maxsize=4096)
def _phase(
    state: str, state_detail: str, exit_code: int | None, signal: int | None, slurm_reason: str | None
) -> tuple[Phase, str | None]:
    # Cached: a poll cycle asks this for thousands of records that share a handful of states.
    phase, reason = _PHASES.get(state, (Phase.RUNNING, f"unknown Slurm state {state}"))
    if state == "CANCELLED" and state_detail != "CANCELLED":
        reason = state_detail.lower()  # "cancelled by 1000": who did it
    if phase is Phase.FAILED:
        details = []
        if exit_code:
            details.append(f"exit code {exit_code}")
        if signal:
            details.append(f"signal {signal}")
        if details:
            reason = f"{reason}, {', '.join(details)}" if state != "FAILED" else ", ".join(details)
    if phase is Phase.PENDING and slurm_reason == "DependencyNeverSatisfied":
        reason = "DependencyNeverSatisfied"
    return phase, reason


def never_satisfied(record: JobRecord) -> bool:
    """A pending job whose dependency failed: it would wait for ever."""
    return record.state == "PENDING" and record.reason == "DependencyNeverSatisfied"


def array_state(task_states: Iterable[str]) -> str:
    """An array job's state as mqi records it: how many tasks are in each state,
    ``COMPLETED:3,RUNNING:1``."""
    states = list(task_states)
    if states and states.count(states[0]) == len(states):  # all alike: the common case
        return f"{states[0]}:{len(states)}"
    counts: dict[str, int] = {}
    for state in states:
        counts[state] = counts.get(state, 0) + 1
    return ",".join(f"{state}:{n}" for state, n in sorted(counts.items()))


def first_array_state(tasks: int) -> str:
    """An array as the poller will first see it: ``PENDING:<tasks>``."""
    return array_state(["PENDING"] * tasks)


TRANSIENT_ERRORS = (
    "Unable to contact slurm controller",
    "Socket timed out",
    "Slurm temporarily unable",
    "Transport endpoint is not connected",
    "Connection refused",
    "slurm_load_jobs error",
    "Resource temporarily unavailable",
    "RPC rate limit",
    "Too many pending RPCs",
)
"""Texts of Slurm errors that pass: the controller is restarting, busy or rate-limiting."""


_TRANSIENT_LOWER = tuple(marker.lower() for marker in TRANSIENT_ERRORS)


def is_transient(text: str) -> bool:
    """Whether an error text is one of TRANSIENT_ERRORS, whatever its case (the commands
    print "Unable to contact slurm controller", pyslurm's errors may not capitalise it)."""
    lowered = text.lower()
    return any(marker in lowered for marker in _TRANSIENT_LOWER)
