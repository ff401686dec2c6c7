"""Results home as the post job ends, with Slurm asked once a minute: `mqi poll --wait` and
`mqi run` watch the case folders on the cluster through the one SSH connection, and a
dropped connection falls back to polling, reconnects and still delivers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

import mqi
from mqi.slurm.backend import CliBackend, QueryAnswer
from mqi.slurm.parse import JobRecord
from mqi.slurm.states import TERMINAL_STATES
from mqi.testing.synthetic import build_case
from tests.helpers import cancel_case_jobs

pytestmark = pytest.mark.cluster

MIRROR_SECONDS = 60.0  # the shipped poll.interval_seconds


class Query(NamedTuple):
    at: float  # time.time() when it was asked
    states: dict[str, str] | None  # each job asked about: Slurm's state ("" when not listed)

    @property
    def unfinished(self) -> bool:
        """Slurm did not answer, or did not show every job asked about ended."""
        return self.states is None or any(state not in TERMINAL_STATES for state in self.states.values())


def _states(job_ids: list[str], records: dict[str, JobRecord] | None) -> dict[str, str] | None:
    """Each job's state in Slurm's answer; an array's, its tasks' joined (all must end)."""
    if records is None:
        return None
    states = {}
    for job_id in job_ids:
        found = [r.state for key, r in records.items() if key == job_id or key.startswith(f"{job_id}_")]
        states[job_id] = ",".join(sorted(set(found))) if found else ""
    return states


@pytest.fixture
def slurm_queries(monkeypatch: pytest.MonkeyPatch) -> list[Query]:
    """Each poll query (sacct + squeue): the real one, noted with what it answered."""
    queries: list[Query] = []
    query = CliBackend.query

    def counted(self: CliBackend, job_ids: Iterable[str], *args: object, **kwargs: object) -> QueryAnswer:
        at, asked = time.time(), list(job_ids)
        answer = query(self, asked, *args, **kwargs)  # type: ignore[arg-type]
        queries.append(Query(at, _states(asked, answer.records)))
        return answer

    monkeypatch.setattr(CliBackend, "query", counted)
    return queries


@pytest.fixture
def uids() -> Iterator[list[str]]:
    found: list[str] = []
    yield found
    for uid in found:
        cancel_case_jobs(uid)


class Arrival(threading.Thread):
    """Notes when a folder appears (checked every 10 ms)."""

    def __init__(self, folder: Path) -> None:
        super().__init__(daemon=True)
        self.folder = folder
        self.at: float | None = None
        self.stop = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.stop.is_set() and self.at is None:
            if self.folder.is_dir():
                self.at = time.time()
            time.sleep(0.01)


def _marker(session: mqi.Session, case_id: str) -> Path:
    case = session.store.require_case(case_id)
    assert case.remote_dir, "the case has a folder on the cluster"
    return Path(case.remote_dir) / "results" / "post.done"  # the dev cluster's disk is this one


def _assert_queries_only_on_interval(queries: list[Query], start: float, ended: float) -> None:
    """While only waiting for the post job to end, at most one Slurm query per mirror
    interval (the first at start). The mirror that follows a completion is not waiting: it
    may start before a thread polling for the results folder notices it, so the cut is the
    post job's last write, not the folder's arrival."""
    waiting = [q for q in queries if q.at < ended]
    allowed = 1 + int((ended - start) / MIRROR_SECONDS)
    assert len(waiting) <= allowed, f"{len(waiting)} Slurm queries in {ended - start:.0f}s of waiting"


def _assert_settling_only_while_jobs_end(queries: list[Query], ended: float) -> None:
    """After the completion: one mirror, and another only while Slurm's last answer still
    had a job ending (the post job's epilogue can outlast its last write)."""
    after = [q for q in queries if q.at >= ended]
    assert after, "one mirror on completion"
    answered_done = [q for q in after[:-1] if not q.unfinished]
    assert not answered_done, f"Slurm asked again after its answer showed every job ended: {after}"


def test_poll_wait_brings_results_home_as_the_post_job_ends(
    make_config: Callable[..., Path], tmp_path: Path, slurm_queries: list[Query], uids: list[str]
) -> None:
    config = make_config(poll={"interval_seconds": MIRROR_SECONDS, "watch_seconds": 0.25})
    case_dir = tmp_path / "Watched"
    build_case(case_dir, ct_shape=(32, 32, 20), layers=2, spots_per_layer=9)
    messages: list[str] = []
    with mqi.open(config, log=messages.append) as session:
        outcome = session.submit(case_dir)
        uids.append(outcome.case_uid)
        arrival = Arrival(session.config.results_dir / outcome.case_id)
        start = time.time()
        report = session.poll_until_done(timeout=300)
        arrival.stop.set()
        marker = _marker(session, outcome.case_id)
        status = session.status(outcome.case_id)
        connections = session.transport.connections_opened  # type: ignore[attr-defined]
    assert report.active_cases == 0
    assert status["status"] == "completed", status
    assert arrival.at is not None, "the results folder appeared"
    late = arrival.at - marker.stat().st_mtime
    assert late <= 1.0, f"results on disk {late:.2f}s after the post job's last write"
    assert any("completion watch on" in m for m in messages), messages
    _assert_queries_only_on_interval(slurm_queries, start, marker.stat().st_mtime)
    _assert_settling_only_while_jobs_end(slurm_queries, marker.stat().st_mtime)
    assert connections == 1, "the watch rides on the one SSH connection"
    assert sorted(p.name for p in Path(status["results_dir"]).glob("*.dcm")) == [
        "RD.beam1.dcm",
        "RD.beam2.dcm",
        "RD.plan.dcm",
    ]


def test_a_failed_beam_keeps_the_post_jobs_answer_through_later_mirrors(
    make_config: Callable[..., Path], tmp_path: Path, uids: list[str]
) -> None:
    """The watch delivers before any mirror sees the failed task; the mirrors after it add
    Slurm's state but keep the post job's answer: the engine's own exit code (sacct before
    Slurm 25.11 shows 134 as 6) and its message."""
    standin = os.environ["MQI_TEST_STANDIN"]
    config = make_config(
        poll={"interval_seconds": MIRROR_SECONDS, "watch_seconds": 0.25},
        moqui={"command": f"{standin} --fail-beams 2 --fail-mode 134"},
    )
    case_dir = tmp_path / "Failing"
    build_case(case_dir, ct_shape=(32, 32, 20), layers=2, spots_per_layer=9)
    with mqi.open(config) as session:
        outcome = session.submit(case_dir)
        uids.append(outcome.case_uid)
        session.poll_until_done(timeout=300)
        session.poll()
        status = session.status(outcome.case_id)
    beams = {beam["number"]: beam for beam in status["beams"]}
    assert status["status"] == "failed", status
    answer = {n: (b["status"], b["slurm_state"], b["exit_code"]) for n, b in beams.items()}
    assert answer == {1: ("completed", "COMPLETED", 0), 2: ("failed", "FAILED", 134)}
    assert beams[2]["reason"] == "engine exit 134: Injected failure for beam 2 (stand-in --fail-mode 134)."


def _kill_sshd_session_of(session: mqi.Session) -> None:
    """Kill the sshd processes serving this session's connection (and no one else's)."""
    connection = session.transport._connection  # type: ignore[attr-defined]
    assert connection is not None, "the session is connected"
    client_port = connection.client.get_transport().sock.getsockname()[1]
    port = os.environ["MQI_TEST_SSH_PORT"]
    text = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"( sport = :{port} and dport = :{client_port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pids = {int(part.split("=")[1]) for part in text.replace(",", " ").split() if part.startswith("pid=")}
    assert pids, f"no sshd serves port {client_port}: {text!r}"
    for pid in pids:
        subprocess.run(["pkill", "-KILL", "-P", str(pid)], capture_output=True)
        with contextlib.suppress(ProcessLookupError):  # gone with its child
            os.kill(pid, signal.SIGKILL)


def test_mqi_run_survives_a_dropped_connection_and_still_delivers(
    make_config: Callable[..., Path], tmp_path: Path, slurm_queries: list[Query], uids: list[str]
) -> None:
    config = make_config(poll={"interval_seconds": MIRROR_SECONDS, "watch_seconds": 0.25})
    messages: list[str] = []
    stop = threading.Event()
    sessions: list[mqi.Session] = []

    def serve() -> None:  # the session lives on the service's thread, as in `mqi run`
        with mqi.open(config, log=messages.append) as session:
            sessions.append(session)
            session.run_service(should_stop=stop.is_set)

    def said(text: str) -> bool:
        return any(text in m for m in messages)

    service = threading.Thread(target=serve, daemon=True)
    service.start()
    try:
        deadline = time.monotonic() + 60
        while not said("completion watch on") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert said("completion watch on"), messages
        # A complete case folder arrives in watch_dir in one rename.
        staging = tmp_path / "staging" / "Dropped"
        build_case(staging, ct_shape=(32, 32, 20), layers=2, spots_per_layer=9)
        results_dir = Path(yaml.safe_load(config.read_text())["results_dir"])
        staging.rename(Path(yaml.safe_load(config.read_text())["watch_dir"]) / "Dropped")
        deadline = time.monotonic() + 60
        while not said("submitted ") and time.monotonic() < deadline:
            time.sleep(0.05)
        submitted = [m.split()[1] for m in messages if m.startswith("submitted ")]
        assert submitted, messages
        case_id = submitted[0]
        arrival = Arrival(results_dir / case_id)
        _kill_sshd_session_of(sessions[0])
        deadline = time.monotonic() + 300
        while arrival.at is None and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        service.join(timeout=60)
    with mqi.open(config) as reader:
        status = reader.status(case_id)
        uids.append(status["case_uid"])
        marker = _marker(reader, case_id)
    assert not service.is_alive(), "mqi run stopped when asked"
    assert any("completion watch down" in m for m in messages), messages
    assert any("completion watch back" in m for m in messages), messages
    assert status["status"] == "completed", status
    assert arrival.at is not None, "delivered after the drop"
    assert arrival.at - marker.stat().st_mtime <= 1.0 + 1.0, "back within the first reconnect (1 s)"
    assert len(list(Path(status["results_dir"]).glob("RD.*.dcm"))) == 3
