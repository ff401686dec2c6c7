"""mqi.store against real SQLite files."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from mqi.errors import OperationalError, UsageError
from mqi.intake.model import Problem
from mqi.store import (
    CASE_STATUSES,
    SCHEMA_VERSION,
    NotFoundError,
    SchemaTooNewError,
    Store,
    StoreBusyError,
    StoreError,
    now_iso,
    parse_utc,
    to_utc_iso,
)

TS = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "mqi.db"


@pytest.fixture
def store(db_path: Path):
    with Store(db_path) as s:
        yield s


def _new_case(store: Store, case_id: str = "c1", **kw) -> None:
    store.upsert_case(case_id, case_uid=f"uid-{case_id}", source_dir=f"/data/{case_id}", **kw)


def _columns(path: Path, table: str) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


# ----------------------------------------------------------------- schema and migrations


def test_creates_schema_with_wal_and_parent_dirs(store: Store, db_path: Path) -> None:
    assert db_path.exists()
    assert store.schema_version == SCHEMA_VERSION
    conn = sqlite3.connect(db_path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"cases", "beams", "jobs", "events"} <= tables
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
    assert {"case_uid", "errors_json", "delivered_at", "attempts"} <= _columns(db_path, "cases")
    assert {"array_index", "slurm_state", "dose_file"} <= _columns(db_path, "beams")
    assert {"array_indices", "finished", "generation"} <= _columns(db_path, "jobs")
    pragmas = store._conn  # connection settings of the store itself
    assert pragmas.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert pragmas.execute("PRAGMA busy_timeout").fetchone()[0] == 30000


def test_reopen_keeps_data(db_path: Path) -> None:
    with Store(db_path) as s:
        _new_case(s)
        assert db_path.stat().st_mode & 0o777 == 0o600
    s.close()  # closing twice is harmless
    with Store(db_path) as s:
        case = s.get_case("c1")
        assert case is not None and case.case_uid == "uid-c1"


V1_SQL = """
CREATE TABLE cases (case_id TEXT PRIMARY KEY, case_uid TEXT NOT NULL UNIQUE,
  source_dir TEXT NOT NULL, folder_fingerprint TEXT, status TEXT NOT NULL, error TEXT,
  errors_json TEXT, priority TEXT, plan_uid TEXT, beams_total INTEGER, remote_dir TEXT,
  results_dir TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, submitted_at TEXT,
  finished_at TEXT);
CREATE TABLE beams (case_id TEXT NOT NULL REFERENCES cases(case_id) ON DELETE CASCADE,
  number INTEGER NOT NULL, name TEXT NOT NULL, array_index INTEGER NOT NULL,
  status TEXT NOT NULL, slurm_state TEXT, job_id TEXT, exit_code INTEGER, reason TEXT,
  node TEXT, started_at TEXT, ended_at TEXT, PRIMARY KEY (case_id, number));
CREATE TABLE jobs (job_id TEXT PRIMARY KEY,
  case_id TEXT NOT NULL REFERENCES cases(case_id) ON DELETE CASCADE, step TEXT NOT NULL,
  array_indices TEXT, state TEXT, reason TEXT, exit_code TEXT, submitted_at TEXT,
  updated_at TEXT, finished INTEGER NOT NULL DEFAULT 0);
CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL,
  case_id TEXT NOT NULL, entity TEXT NOT NULL, entity_key TEXT NOT NULL, field TEXT NOT NULL,
  old TEXT, new TEXT, reason TEXT);
INSERT INTO cases VALUES ('old', 'uid-old', '/data/old', 'fp', 'running', NULL, NULL,
  'normal', '1.2.3', 1, '/scratch/mqi/uid-old', NULL, '2026-01-01T00:00:00Z',
  '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', NULL);
INSERT INTO beams VALUES ('old', 1, 'G0', 0, 'running', 'RUNNING', '11_0', NULL, NULL, 'n1',
  '2026-01-01T00:01:00Z', NULL);
INSERT INTO jobs VALUES ('11', 'old', 'simulate', '0', 'RUNNING', NULL, NULL,
  '2026-01-01T00:00:00Z', '2026-01-01T00:01:00Z', 0);
INSERT INTO events (at, case_id, entity, entity_key, field, old, new)
  VALUES ('2026-01-01T00:00:00Z', 'old', 'case', 'old', 'status', NULL, 'submitted');
PRAGMA user_version = 1;
"""


def test_migrates_v1_database(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    conn = sqlite3.connect(db_path)
    conn.executescript(V1_SQL)
    conn.close()

    with Store(db_path) as s:
        assert s.schema_version == SCHEMA_VERSION
        case = s.get_case("old")
        assert case is not None
        assert (case.status, case.attempts, case.delivered_at) == ("running", 0, None)
        job = s.get_job("11")
        assert job is not None and job.generation == 1 and not job.finished
        beam = s.get_beam("old", 1)
        assert beam is not None and beam.dose_file is None and beam.node == "n1"
        assert [e.new for e in s.events("old")] == ["submitted"]
        assert s.oldest_active_submit_time() == "2026-01-01T00:00:00Z"
        s.set_case_status("old", "completed", delivered_at="2026-01-01T01:00:00Z")
        assert [e.new for e in s.events("old")] == ["submitted", "completed"]

    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn = sqlite3.connect(db_path)
        with conn:
            conn.execute("DELETE FROM events")
    conn.close()


def test_newer_schema_is_refused(db_path: Path) -> None:
    with Store(db_path):
        pass
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaTooNewError, match="upgrade mqi") as info:
        Store(db_path)
    assert isinstance(info.value, UsageError)
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    conn.close()


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "mqi.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable mqi database"):
        Store(path)


def test_busy_writer_gives_clear_error(db_path: Path) -> None:
    with Store(db_path, timeout=0.2) as s:
        other = sqlite3.connect(db_path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreBusyError, match="try again") as info:
                _new_case(s)
            assert isinstance(info.value, OperationalError)
        finally:
            other.execute("ROLLBACK")
            other.close()
        _new_case(s)  # works once the lock is gone


# ----------------------------------------------------------------- cases and events


def test_case_status_changes_write_events(store: Store) -> None:
    case = store.upsert_case("c1", case_uid="u1", source_dir="/data/c1", priority="normal")
    assert case.status == "new" and case.created_at == case.updated_at
    store.set_case_status("c1", "submitting")
    store.set_case_status("c1", "submitting")  # no-op
    store.set_case_status("c1", "submitted", remote_dir="/scratch/mqi/u1")
    store.update_case("c1", attempts=1)  # no status change
    case = store.set_case_status("c1", "failed", reason="simulate exit 3", error="beam 2 failed")
    assert case.finished_at is not None and case.error == "beam 2 failed"
    assert case.submitted_at is not None and case.remote_dir == "/scratch/mqi/u1"

    events = store.events("c1")
    assert [(e.old, e.new) for e in events] == [
        (None, "new"),
        ("new", "submitting"),
        ("submitting", "submitted"),
        ("submitted", "failed"),
    ]
    assert all(e.entity == "case" and e.field == "status" for e in events)
    assert events[-1].reason == "simulate exit 3"
    assert [e.id for e in events] == sorted(e.id for e in events)

    case = store.set_case_status("c1", "submitted", attempts=2)
    assert case.finished_at is None and case.attempts == 2
    assert store.events("c1", limit=2)[-1].new == "submitted"
    assert len(store.events("c1", limit=2)) == 2
    assert len(store.events()) == 5


def test_upsert_updates_existing_case(store: Store, tmp_path: Path) -> None:
    store.upsert_case("c1", case_uid="u1", source_dir=tmp_path / "a", status="submitted")
    case = store.upsert_case("c1", case_uid="u1", source_dir=tmp_path / "a", plan_uid="1.2")
    assert case.status == "submitted" and case.plan_uid == "1.2"
    assert len(store.events("c1")) == 1
    with pytest.raises(ValueError, match="has uid"):
        store.upsert_case("c1", case_uid="other", source_dir=tmp_path / "a")
    with pytest.raises(ValueError, match="already belongs"):
        store.upsert_case("c2", case_uid="u1", source_dir=tmp_path / "b")


def test_rejected_case_keeps_errors(store: Store) -> None:
    problems = [
        Problem(code="CT_GAP", message="CT slice gap at z=12"),
        {"code": "NO_PLAN", "message": "no RT Ion Plan"},
    ]
    _new_case(store, status="rejected", errors=problems, folder_fingerprint="abc")
    case = store.get_case("c1")
    assert case is not None and case.status == "rejected"
    assert case.errors == [
        {"code": "CT_GAP", "message": "CT slice gap at z=12"},
        {"code": "NO_PLAN", "message": "no RT Ion Plan"},
    ]
    assert case.finished_at is not None
    assert case.to_dict()["errors"][0]["code"] == "CT_GAP"


def test_lookups(store: Store, tmp_path: Path) -> None:
    store.upsert_case("a", case_uid="ua", source_dir=tmp_path / "x" / ".." / "folder")
    store.upsert_case("b", case_uid="ub", source_dir=tmp_path / "folder", status="submitted")
    store.upsert_case("c", case_uid="uc", source_dir=tmp_path / "other", status="completed")
    found = store.find_case_by_source(tmp_path / "folder")
    assert found is not None and found.case_id == "b"  # the most recent from that folder
    assert store.find_case_by_source(tmp_path / "none") is None
    assert store.get_case_by_uid("uc").case_id == "c"  # type: ignore[union-attr]
    assert store.get_case_by_uid("nope") is None
    assert store.get_case("nope") is None
    assert [c.case_id for c in store.list_cases()] == ["a", "b", "c"]
    assert [c.case_id for c in store.list_cases(["submitted", "completed"])] == ["b", "c"]
    assert store.list_cases([]) == []


def test_status_and_field_validation(store: Store) -> None:
    _new_case(store)
    with pytest.raises(ValueError, match="unknown case status 'complete'"):
        store.set_case_status("c1", "complete")
    with pytest.raises(ValueError, match="unknown case status"):
        _new_case(store, "c2", status="done")
    with pytest.raises(ValueError, match="unknown case status"):
        store.list_cases(["runing"])
    with pytest.raises(ValueError, match="cannot set stauts"):
        store.update_case("c1", stauts="failed")
    store.set_beams("c1", [{"number": 1, "name": "G0"}])
    with pytest.raises(ValueError, match="unknown beam status"):
        store.update_beam("c1", 1, status="done")
    with pytest.raises(ValueError, match="unknown job step"):
        store.add_jobs("c1", [{"job_id": "5", "step": "simulation"}])
    with pytest.raises(ValueError, match="cannot set"):
        store.update_job("5", exitcode="0:0")
    with pytest.raises(NotFoundError, match="no case 'ghost'"):
        store.set_case_status("ghost", "failed")
    with pytest.raises(NotFoundError):
        store.add_jobs("ghost", [{"job_id": "6", "step": "post"}])
    with pytest.raises(NotFoundError):
        store.update_beam("c1", 9, status="failed")
    with pytest.raises(NotFoundError):
        store.update_job("404", state="FAILED")
    assert [c.status for c in store.list_cases()] == ["new"]
    assert set(CASE_STATUSES) >= {"new", "submitting", "rejected", "cancelled"}


# ----------------------------------------------------------------- beams and jobs


def test_beams(store: Store) -> None:
    _new_case(store)
    beams = store.set_beams(
        "c1",
        [{"number": 2, "name": "G90"}, {"number": 1, "name": "G0"}, {"number": 5, "name": "X"}],
    )
    assert [(b.number, b.array_index, b.status) for b in beams] == [
        (1, 1, "pending"),
        (2, 0, "pending"),
        (5, 2, "pending"),
    ]
    assert store.get_case("c1").beams_total == 3  # type: ignore[union-attr]

    store.update_beam("c1", 2, status="running", slurm_state="RUNNING", job_id="7_0", node="n1")
    store.update_beam("c1", 2, slurm_state="RUNNING")  # no status change
    beam = store.update_beam(
        "c1",
        2,
        status="failed",
        exit_code=3,
        reason="engine exit 3",
        ended_at="2026-01-01T02:00:00+02:00",
    )
    assert beam.ended_at == "2026-01-01T00:00:00Z" and beam.exit_code == 3

    beam_events = [e for e in store.events("c1") if e.entity == "beam"]
    assert [(e.entity_key, e.old, e.new) for e in beam_events] == [
        ("2", None, "pending"),
        ("1", None, "pending"),
        ("5", None, "pending"),
        ("2", "pending", "running"),
        ("2", "running", "failed"),
    ]
    assert beam_events[-1].reason == "engine exit 3"

    beams = store.set_beams(
        "c1",
        [
            {"number": 1, "name": "G0", "array_index": 0},
            {"number": 2, "name": "G90", "array_index": 1},
        ],
    )
    assert [(b.number, b.array_index, b.status) for b in beams] == [
        (1, 0, "pending"),
        (2, 1, "failed"),
    ]
    assert store.get_case("c1").beams_total == 2  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="duplicate"):
        store.set_beams("c1", [{"number": 1, "name": "a"}, {"number": 1, "name": "b"}])


def test_jobs(store: Store) -> None:
    _new_case(store)
    _new_case(store, "c2")
    jobs = store.add_jobs(
        "c1",
        [
            {"job_id": "10", "step": "prepare", "submitted_at": "2026-01-01T00:00:05Z"},
            {"job_id": "11", "step": "simulate", "array_indices": "0-1", "state": "PENDING:2"},
            {"job_id": "12", "step": "post"},
        ],
    )
    assert [(j.job_id, j.state, j.generation, j.finished) for j in jobs] == [
        ("10", "PENDING", 1, False),
        ("11", "PENDING:2", 1, False),  # an array: as the poller will see it, so no change is recorded
        ("12", "PENDING", 1, False),
    ]
    store.add_jobs("c2", [{"job_id": 20, "step": "simulate", "array_indices": "1,3", "generation": 2}])
    assert store.oldest_active_submit_time() == "2026-01-01T00:00:05Z"

    store.update_job("10", state="RUNNING")
    store.update_job("10", state="RUNNING", reason="None")  # no change of state
    job = store.update_job("10", state="COMPLETED", exit_code="0:0", finished=True)
    assert job.finished and job.exit_code == "0:0"
    store.update_job("12", state="CANCELLED", reason="DependencyNeverSatisfied", finished=True)

    assert [j.job_id for j in store.active_jobs()] == ["11", "20"]
    assert store.oldest_active_submit_time() != "2026-01-01T00:00:05Z"
    assert [j.job_id for j in store.list_jobs("c1")] == ["10", "11", "12"]
    assert store.get_job("20").array_indices == "1,3"  # type: ignore[union-attr]

    job_events = [(e.entity_key, e.old, e.new) for e in store.events("c1") if e.entity == "job"]
    assert job_events == [
        ("10", None, "PENDING"),
        ("11", None, "PENDING:2"),
        ("12", None, "PENDING"),
        ("10", "PENDING", "RUNNING"),
        ("10", "RUNNING", "COMPLETED"),
        ("12", "PENDING", "CANCELLED"),
    ]
    assert store.events("c1")[-1].reason == "DependencyNeverSatisfied"

    store.add_event("c1", "case", "c1", "delivered_at", None, "2026-01-01T03:00:00Z", "fetched")
    assert store.events("c1", limit=1)[0].field == "delivered_at"
    with pytest.raises(ValueError, match="unknown event entity"):
        store.add_event("c1", "plan", "x", "status")
    with pytest.raises(NotFoundError):
        store.add_event("ghost", "case", "ghost", "status")

    for j in ("11", "20"):
        store.update_job(j, finished=True)
    assert store.active_jobs() == [] and store.oldest_active_submit_time() is None


# ----------------------------------------------------------------- transactions and time


def test_transaction_rolls_back_everything(store: Store, db_path: Path) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        _new_case(store)
        store.set_case_status("c1", "submitted")
        raise RuntimeError("crash between sbatch and the database write")
    assert store.get_case("c1") is None and store.events() == []

    with store.transaction():
        _new_case(store)
        with pytest.raises(ValueError), store.transaction():
            store.set_case_status("c1", "submitted")
            raise ValueError("inner")
        store.update_case("c1", plan_uid="1.2")
    case = store.get_case("c1")
    assert case is not None and case.status == "new" and case.plan_uid == "1.2"
    assert len(store.events("c1")) == 1
    with Store(db_path) as other:  # committed, visible to another connection
        assert other.get_case("c1") is not None


def test_timestamps(store: Store) -> None:
    now = now_iso()
    assert len(now) == 20 and now.endswith("Z")
    assert abs(parse_utc(now) - datetime.now(UTC)) < timedelta(seconds=5)
    cet = timezone(timedelta(hours=1))
    assert to_utc_iso(datetime(2026, 11, 22, 2, 2, 3, tzinfo=cet)) == "2026-11-22T01:02:03Z"
    assert to_utc_iso("2026-11-22T01:02:03+00:00") == "2026-11-22T01:02:03Z"
    with pytest.raises(ValueError, match="no time zone"):
        to_utc_iso("2026-11-22T01:02:03")
    with pytest.raises(ValueError, match="not an ISO-8601"):
        to_utc_iso("yesterday")
    _new_case(store)
    with pytest.raises(ValueError, match="no time zone"):
        store.set_case_status("c1", "submitted", submitted_at=datetime(2026, 1, 1))
    case = store.get_case("c1")
    assert case is not None and case.status == "new"
    for value in (case.created_at, case.updated_at, store.events()[0].at):
        assert value.endswith("Z") and parse_utc(value)


def test_a_job_id_reused_by_slurm_retires_the_old_job(tmp_path: Path) -> None:
    store = Store(tmp_path / "mqi.db")
    _new_case(store, "c1")
    _new_case(store, "c2")
    store.add_jobs("c1", [{"job_id": "358", "step": "post"}])
    store.add_jobs("c2", [{"job_id": "358", "step": "post"}])
    assert store.get_job("358").case_id == "c2"
    old = store.get_job("358~1")
    assert old is not None and old.case_id == "c1" and old.finished and old.state == "LOST"
    assert [j.job_id for j in store.active_jobs()] == ["358"]
    reasons = [e.reason for e in store.events("c1") if e.entity == "job" and e.new == "LOST"]
    assert reasons == ["job id reused by Slurm"]


def test_cheap_lookups_for_the_poller(tmp_path: Path) -> None:
    store = Store(tmp_path / "mqi.db")
    _new_case(store, "c1", status="submitted")
    _new_case(store, "c2", status="completed")
    _new_case(store, "c3", status="running")
    assert store.case_ids(["submitted", "running"]) == ["c1", "c3"]
    assert store.case_ids([]) == []
    assert store.case_uids(["c1", "c2", "nope"]) == {"c1": "uid-c1", "c2": "uid-c2"}


def test_delivered_cases_are_those_whose_latest_submission_came_home(store: Store) -> None:
    for case_id in ("done", "retried", "running", "never"):
        _new_case(store, case_id)
        store.update_case(case_id, status="submitted", submitted_at="2026-11-30T10:00:00Z")
    store.update_case("done", status="failed", delivered_at="2026-11-30T10:05:00Z")
    # Delivered, then retried in the delivery's second and failed again before its own delivery.
    store.update_case("retried", status="failed", delivered_at="2026-11-30T10:05:00Z")
    store.update_case("retried", status="submitted", submitted_at="2026-11-30T10:05:00Z")
    store.update_case("retried", status="failed")
    store.update_case("running", status="running", delivered_at="2026-11-30T10:05:00Z")
    store.update_case("never", status="failed")
    ids = ["done", "retried", "running", "never", "unknown"]
    assert store.delivered_case_ids(ids) == {"done"}
    assert store.delivered_case_ids([]) == set()


def test_bulk_mirror_writes_record_what_changed_and_nothing_else(store: Store) -> None:
    """The poller's writes: many jobs and beams in one go, events only for real changes."""
    for case_id in ("c1", "c2"):
        _new_case(store, case_id)
        store.set_beams(case_id, [{"number": 1, "name": "G0"}, {"number": 2, "name": "G90"}])
    store.add_jobs("c1", [{"job_id": "10", "step": "prepare"}, {"job_id": "11", "step": "simulate"}])
    store.add_jobs("c2", [{"job_id": "20", "step": "prepare"}])
    jobs = {job.job_id: job for job in store.active_jobs()}
    before = len(store.events())

    updated = store.update_jobs(
        [
            (jobs["10"], {"state": "COMPLETED", "finished": True, "exit_code": "0:0", "reason": None}),
            (jobs["11"], {"state": "PENDING", "finished": False, "reason": None}),  # state unchanged
            (jobs["20"], {"state": "FAILED", "finished": True, "reason": "the job exited non-zero"}),
        ]
    )
    assert updated == 3
    assert store.get_job("10").finished and store.get_job("10").exit_code == "0:0"  # type: ignore[union-attr]
    assert store.get_job("20").state == "FAILED"  # type: ignore[union-attr]
    assert [j.job_id for j in store.active_jobs()] == ["11"]
    # a job changed since it was read (here: by the write above) is left alone
    assert store.update_jobs([(jobs["20"], {"state": "LOST", "finished": True})]) == 0
    assert store.get_job("20").state == "FAILED"  # type: ignore[union-attr]

    beams = store.beams_by_case(["c1", "c2", "ghost"])
    assert sorted(beams) == ["c1", "c2"]
    updated = store.update_beams(
        [
            (beams["c1"][0], {"status": "running", "slurm_state": "RUNNING", "node": "n1", "reason": None}),
            (beams["c1"][1], {"status": "pending", "slurm_state": "PENDING", "reason": "waiting: Priority"}),
            (beams["c2"][0], {"status": "failed", "exit_code": 3, "ended_at": "2026-01-01T02:00:00+02:00"}),
        ]
    )
    assert updated == 3
    now = store.beams_by_case(["c1", "c2"])
    assert [(b.number, b.status, b.node, b.reason) for b in now["c1"]] == [
        (1, "running", "n1", None),
        (2, "pending", None, "waiting: Priority"),
    ]
    assert now["c2"][0].ended_at == "2026-01-01T00:00:00Z" and now["c2"][0].exit_code == 3

    new = [(e.entity, e.entity_key, e.old, e.new, e.reason) for e in store.events()[before:]]
    assert new == [
        ("job", "10", "PENDING", "COMPLETED", None),
        ("job", "20", "PENDING", "FAILED", "the job exited non-zero"),
        ("beam", "1", "pending", "running", None),
        ("beam", "1", "pending", "failed", None),
    ]
    with pytest.raises(ValueError, match="cannot set"):
        store.update_jobs([(jobs["10"], {"colour": "red"})])
    with pytest.raises(ValueError, match="unknown beam status"):
        store.update_beams([(now["c1"][0], {"status": "done"})])
    assert len(store.events()) == before + 4  # a refused batch writes nothing


def test_bulk_beam_writes_never_undo_a_cancel_made_meanwhile(store: Store) -> None:
    """A poll reads a beam, then `mqi cancel` changes it before the poll writes."""
    _new_case(store)
    store.set_beams("c1", [{"number": 1, "name": "G0"}])
    store.update_beam("c1", 1, status="running", job_id="7_0", slurm_state="RUNNING")
    (seen,) = store.beams_by_case(["c1"])["c1"]
    store.update_beam("c1", 1, status="cancelled", reason="cancelled by the user")
    assert store.update_beams([(seen, {"status": "running", "slurm_state": "COMPLETED"})]) == 0
    beam = store.get_beam("c1", 1)
    assert beam is not None and beam.status == "cancelled" and beam.slurm_state == "RUNNING"
    # and a beam moved to a new chain (a retry) is not written with the old chain's state
    store.update_beam("c1", 1, status="pending", job_id="9_0", slurm_state="PENDING")
    (seen,) = store.beams_by_case(["c1"])["c1"]
    moved = type(seen)(**{**seen.to_dict(), "job_id": "7_0"})
    assert store.update_beams([(moved, {"status": "failed", "slurm_state": "FAILED"})]) == 0
    assert store.get_beam("c1", 1).status == "pending"  # type: ignore[union-attr]


def test_bulk_readers_take_any_number_of_ids(store: Store) -> None:
    ids = [f"case-{n:04d}" for n in range(1200)]  # more than SQLite's old limit of 999 parameters
    with store.transaction():
        for case_id in ids:
            _new_case(store, case_id)
        store.add_jobs(ids[-1], [{"job_id": "7", "step": "post"}])
    assert len(store.cases_by_id(ids)) == 1200
    assert len(store.case_uids([*ids, "ghost"])) == 1200
    assert [j.job_id for j in store.jobs_by_case(ids)[ids[-1]]] == ["7"]
    assert store.beams_by_case([]) == {} and store.cases_by_id([]) == {}
