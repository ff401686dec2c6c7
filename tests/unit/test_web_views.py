"""What the dashboard, /metrics and the log file read from the store, on known answers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mqi import api, logs
from mqi.api import _waited_ran
from mqi.config import parse_config
from mqi.store import CaseFilter, Store
from mqi.store import views as store_views
from mqi.web import metrics


@pytest.fixture
def store(tmp_path: Path) -> Store:
    with Store(tmp_path / "mqi.db") as opened:
        yield opened


def add_case(store: Store, case_id: str, status: str = "submitted", beams: int = 2) -> None:
    store.upsert_case(case_id, case_uid=f"uid-{case_id}", source_dir=f"/in/{case_id}", status=status)
    if beams:
        store.set_beams(case_id, [{"number": n + 1, "name": f"B{n + 1}"} for n in range(beams)])


def test_the_case_list_filters_searches_and_pages(store: Store) -> None:
    for n in range(7):
        add_case(store, f"Phantom_{n}_abc", status="failed" if n % 3 == 0 else "submitted")
    add_case(store, "Odd%_name_x")
    store.update_beam("Phantom_3_abc", 1, status="completed")
    store.update_beam("Phantom_3_abc", 2, status="failed")
    rows, total = store.case_list(CaseFilter(), limit=3)
    assert total == 8 and [r["case_id"] for r in rows] == ["Odd%_name_x", "Phantom_6_abc", "Phantom_5_abc"]
    rows, total = store.case_list(CaseFilter(status="failed"))
    assert total == 3 and {r["case_id"] for r in rows} == {"Phantom_0_abc", "Phantom_3_abc", "Phantom_6_abc"}
    third = next(r for r in rows if r["case_id"] == "Phantom_3_abc")
    assert (third["beams_done"], third["beams_failed"], third["beams_total"]) == (1, 1, 2)
    rows, total = store.case_list(CaseFilter(), limit=3, offset=6)
    assert total == 8 and [r["case_id"] for r in rows] == ["Phantom_1_abc", "Phantom_0_abc"]
    # LIKE's wildcards in a search are plain characters.
    assert [r["case_id"] for r in store.case_list(CaseFilter(search="%_"))[0]] == ["Odd%_name_x"]
    assert store.case_list(CaseFilter(search="phantom_4"))[1] == 1
    assert store.case_list(CaseFilter(search="uid-Phantom_5"))[1] == 1
    today = rows[0]["created_at"][:10]
    assert store.case_list(CaseFilter(created_from=today, created_to=today))[1] == 8
    assert store.case_list(CaseFilter(created_to="2000-01-01"))[1] == 0
    with pytest.raises(ValueError, match="case status"):
        store.case_list(CaseFilter(status="bogus"))


def test_each_event_reaches_the_log_once_whichever_process_claims_it(store: Store, tmp_path: Path) -> None:
    add_case(store, "A_1")
    first = store.claim_events_to_log()
    expected = [("case", "submitted"), ("beam", "pending"), ("beam", "pending")]
    assert [(e["entity"], e["new"]) for e in first] == expected
    with Store(tmp_path / "mqi.db") as other:  # another process on the same file
        assert other.claim_events_to_log() == []
        other.update_beam("A_1", 2, status="failed", reason="engine exit 134", job_id="77_1")
    again = store.claim_events_to_log()
    assert len(again) == 1 and again[0]["beam_job_id"] == "77_1" and again[0]["case_uid"] == "uid-A_1"
    assert store.claim_events_to_log() == []


def test_a_database_from_before_the_log_starts_its_log_at_the_present(tmp_path: Path) -> None:
    import sqlite3

    with Store(tmp_path / "old.db") as old:
        add_case(old, "Old_1")
    conn = sqlite3.connect(tmp_path / "old.db")
    for table in ("poll_cycles", "counters", "histograms", "partitions"):
        conn.execute(f"DROP TABLE {table}")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    with Store(tmp_path / "old.db") as migrated:
        assert migrated.claim_events_to_log() == []
        migrated.update_case("Old_1", status="cancelled")
        assert [e["new"] for e in migrated.claim_events_to_log()] == ["cancelled"]


def test_state_change_lines_in_json_and_text(store: Store, tmp_path: Path) -> None:
    add_case(store, "Case_7_ab12", beams=1)
    store.update_beam("Case_7_ab12", 1, status="failed", reason="engine exit 134", job_id="88_0")
    events = store.claim_events_to_log()
    logger = logs.logger_for(tmp_path / "state")
    try:
        logs.set_format("json")
        logs.log_state_changes(logger, events)
        logs.set_format("text")
        logs.log_state_changes(logger, events[-1:])
    finally:
        logs.set_format(None)
        for handler in logger.handlers:
            handler.flush()
    lines = (tmp_path / "state" / "logs" / "mqi.log").read_text().splitlines()
    assert len(lines) == 4
    failed = json.loads(lines[2])
    assert failed["case_id"] == "Case_7_ab12" and failed["case_uid"] == "uid-Case_7_ab12"
    assert (failed["beam"], failed["job_id"], failed["old"], failed["new"]) == (
        1,
        "88_0",
        "pending",
        "failed",
    )
    assert failed["reason"] == "engine exit 134" and failed["level"] == "info"
    assert lines[3].endswith(
        "case Case_7_ab12 (uid uid-Case_7_ab12) beam 1 job 88_0: "
        "beam status pending -> failed (engine exit 134)"
    )
    with pytest.raises(ValueError, match="text, json"):
        logs.set_format("yaml")
    logging.getLogger("mqi").handlers.clear()


def test_poll_cycles_are_counted_and_only_recent_ones_kept(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_views, "POLL_CYCLES_KEPT", 3)
    assert store.last_poll() is None
    for n in range(5):
        store.record_poll_cycle(0.5 + n, ok=n != 4, error="sacct timed out" if n == 4 else None)
    last = store.last_poll()
    assert last is not None and last["ok"] is False and last["error"] == "sacct timed out"
    assert last["last_ok_at"] is not None
    snapshot = store.metrics_snapshot()
    assert snapshot.counters["poll_cycles_ok"] == 4 and snapshot.counters["poll_cycles_failed"] == 1
    assert snapshot.poll_seconds_sum == pytest.approx(0.5 + 1.5 + 2.5 + 3.5 + 4.5)
    assert store._conn.execute("SELECT COUNT(*) FROM poll_cycles").fetchone()[0] == 3


def test_duration_histograms_on_known_times(store: Store) -> None:
    add_case(store, "H_1", beams=3)
    store.add_jobs("H_1", [{"job_id": "100", "step": "simulate", "submitted_at": "2026-01-01T00:00:00Z"}])
    times = {1: ("00:00:05", "00:01:05"), 2: ("00:02:00", "00:12:00"), 3: ("00:50:00", None)}
    for number, (start, end) in times.items():
        store.update_beam(
            "H_1",
            number,
            job_id=f"100_{number - 1}",
            started_at=f"2026-01-01T{start}Z",
            ended_at=None if end is None else f"2026-01-01T{end}Z",
        )
    store.record_durations()
    snapshot = store.metrics_snapshot()
    wait = dict(zip(snapshot.queue_wait.bounds, snapshot.queue_wait.cumulative, strict=False))
    assert snapshot.queue_wait.count == 3 and snapshot.queue_wait.total == pytest.approx(5 + 120 + 3000)
    assert (wait[10], wait[60], wait[120], wait[1800], wait[3600]) == (1, 1, 2, 2, 3)
    run = dict(zip(snapshot.run_time.bounds, snapshot.run_time.cumulative, strict=False))
    assert snapshot.run_time.count == 2 and snapshot.run_time.total == pytest.approx(60 + 600)
    assert (run[30], run[60], run[300], run[600]) == (0, 1, 1, 2)


def test_metrics_text_is_prometheus_format(store: Store) -> None:
    add_case(store, "M_1", status="running")
    store.add_counters({"bytes_uploaded": 1234, "submit_failures": 2})
    store.record_poll_cycle(1.25, ok=True)
    families = {
        f.name: f for f in text_string_to_metric_families(metrics.render(store.metrics_snapshot()).decode())
    }
    cases = {s.labels["status"]: s.value for s in families["mqi_cases"].samples}
    assert cases["running"] == 1 and cases["completed"] == 0
    beams = {s.labels["status"]: s.value for s in families["mqi_beams"].samples}
    assert beams["pending"] == 2
    assert families["mqi_uploaded_bytes"].samples[0].value == 1234
    assert families["mqi_submit_failures"].samples[0].value == 2
    assert families["mqi_poll_last_success_timestamp_seconds"].samples[0].value > 1.7e9
    assert {"mqi_beam_queue_wait_seconds", "mqi_beam_run_seconds", "mqi_poll_cycle_duration_seconds"} <= set(
        families
    )


def test_waited_and_ran_count_from_the_latest_submission() -> None:
    t0 = 1_800_000_000.0

    def at(seconds: float) -> str:
        from datetime import UTC, datetime

        return datetime.fromtimestamp(t0 + seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    done = {"status": "completed", "submitted_at": at(0), "first_started_at": at(30), "last_ended_at": at(90)}
    assert _waited_ran(done, t0 + 1000) == {"waited_seconds": 30, "ran_seconds": 60}
    queued = {"status": "submitted", "submitted_at": at(0), "first_started_at": None, "last_ended_at": None}
    assert _waited_ran(queued, t0 + 45) == {"waited_seconds": 45, "ran_seconds": None}
    running = {"status": "running", "submitted_at": at(0), "first_started_at": at(10), "last_ended_at": None}
    assert _waited_ran(running, t0 + 70) == {"waited_seconds": 10, "ran_seconds": 60}
    # A retried beam still carrying its first attempt's end: the case's finish counts.
    retried = {**done, "last_ended_at": at(20), "finished_at": at(150)}
    assert _waited_ran(retried, t0 + 1000) == {"waited_seconds": 30, "ran_seconds": 120}
    rejected = {"status": "rejected", "submitted_at": None, "first_started_at": None, "last_ended_at": None}
    assert _waited_ran(rejected, t0) == {"waited_seconds": None, "ran_seconds": None}


def test_the_banner_shows_after_three_poll_intervals(tmp_path: Path) -> None:
    config = parse_config({"state_dir": str(tmp_path), "poll": {"interval_seconds": 20}})
    with api.open(config) as session:
        assert session.poll_health()["stale"] is True  # never polled
        session.store.record_poll_cycle(0.3, ok=True)
        health = session.poll_health()
        assert health["stale"] is False and health["stale_after_seconds"] == 60
        session.store.record_poll_cycle(0.3, ok=False, error="Slurm did not answer")
        assert session.poll_health()["stale"] is False  # one failed cycle: not yet
        session.store._conn.execute(
            "UPDATE counters SET at = '2026-01-01T00:00:00Z' WHERE name = 'poll_cycles_ok'"
        )
        health = session.poll_health()
        assert health["stale"] is True and health["last"]["error"] == "Slurm did not answer"
