"""Results out by DICOM: after delivery, the RT Dose files of a case are sent by C-STORE to
each destination in ``dicom.send_results_to``, retried with back-off.

The state of each send lives in the case's events (field ``send:<AE@host:port>``): ``pending``
when the case was delivered, ``retrying`` after a failed attempt (its reason), ``sent`` or
``failed`` (given up) at the end. Nothing else is stored, so `mqi status` and the audit trail
show every attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from mqi.clock import now_utc, parse_utc
from mqi.config import Config, DicomPeer
from mqi.store import Event, Store

FIELD = "send:"
OPEN = ("pending", "retrying")


@dataclass(frozen=True)
class SendState:
    case_id: str
    destination: str
    state: str  # pending, retrying, sent, failed
    attempts: int
    reason: str | None
    since: str

    def to_json(self) -> dict[str, object]:
        return {
            "destination": self.destination,
            "state": self.state,
            "attempts": self.attempts,
            "reason": self.reason,
        }


def states(store: Store, case_ids: list[str] | None = None) -> list[SendState]:
    """The send state of every (case, destination), from the events."""
    found: dict[tuple[str, str], list[Event]] = {}
    for event in store.events_of_field(FIELD, case_ids):
        found.setdefault((event.case_id, event.field.removeprefix(FIELD)), []).append(event)
    result = []
    for (case_id, destination), events in found.items():
        last = events[-1]
        attempts = sum(1 for e in events if e.new in ("retrying", "sent", "failed") and e.old is not None)
        result.append(SendState(case_id, destination, last.new or "pending", attempts, last.reason, last.at))
    return result


def queue(store: Store, config: Config, case_id: str) -> None:
    """A delivered case: one pending send per destination (once)."""
    if config.dicom is None or not config.dicom.send_results_to:
        return
    known = {s.destination for s in states(store, [case_id])}
    for peer in config.dicom.send_results_to:
        if peer.label() not in known:
            store.add_event(
                case_id, "case", case_id, FIELD + peer.label(), None, "pending", "results delivered"
            )


def send_due(
    store: Store, config: Config, *, log: Callable[[str], None] = lambda _m: None
) -> list[SendState]:
    """Attempt every send whose time has come; the states after the attempts made."""
    from mqi.dicomnet import next_attempt_delay, send_files

    if config.dicom is None:
        return []
    peers = {peer.label(): peer for peer in config.dicom.send_results_to}
    done = []
    for state in states(store):
        peer = peers.get(state.destination)
        if state.state not in OPEN or peer is None or not _due(state, config):
            continue
        case = store.get_case(state.case_id)
        files = _result_files(Path(case.results_dir)) if case and case.results_dir else []
        field = FIELD + state.destination
        if not files:
            store.add_event(
                state.case_id, "case", state.case_id, field, state.state, "failed", "no result files"
            )
            continue
        outcome = send_files(
            peer, files, calling_ae=config.dicom.ae_title, timeout=config.dicom.timeout_seconds
        )
        if outcome.ok:
            new, reason = "sent", outcome.reason
        elif next_attempt_delay(state.attempts + 1, config.dicom.send_retry) is None:
            new, reason = "failed", f"gave up after {state.attempts + 1} attempts: {outcome.reason}"
        else:
            new, reason = "retrying", outcome.reason
        store.add_event(state.case_id, "case", state.case_id, field, state.state, new, reason)
        log(f"{state.case_id}: send to {state.destination}: {new} ({reason})")
        done.append(SendState(state.case_id, state.destination, new, state.attempts + 1, reason, state.since))
    return done


def _due(state: SendState, config: Config) -> bool:
    from mqi.dicomnet import next_attempt_delay

    if state.state == "pending":
        return True
    assert config.dicom is not None
    delay = next_attempt_delay(state.attempts, config.dicom.send_retry)
    return delay is not None and now_utc() >= parse_utc(state.since) + timedelta(seconds=delay)


def _result_files(results: Path) -> list[Path]:
    """What a destination gets: the RT Dose files, plan sum first."""
    return sorted(results.glob("RD.*.dcm"), key=lambda p: (p.name != "RD.plan.dcm", p.name))


def destinations(config: Config) -> list[DicomPeer]:
    return list(config.dicom.send_results_to) if config.dicom else []
