"""Dashboard speed with 10,000 cases and 40,000 beams in the store, against a bare SELECT.

Run: .venv/bin/python bench/bench_web.py   (no cluster needed)

A fresh store is filled through the Store API as submit and poll fill it (upsert_case,
set_beams, add_jobs, update_beam, update_case), in one transaction: 10,000 cases of 4
beams each (7 in 10 completed, 1 in 10 failed with a failed beam, the rest running,
queued, cancelled or rejected), 3 jobs per case, start and end times on the beams that
ran, one recorded poll cycle. Then ``mqi serve``'s app runs under a real uvicorn on
127.0.0.1 (a free port) and each request goes over HTTP from this process:

- ``GET /cases``: the case list's first page (50 rows, the full HTML page with the
  stale-poll banner check) -- target: median <= 100 ms;
- ``GET /metrics``: every metric, read from SQLite -- target: median <= 50 ms;

each printed next to the floor measured in the same run on the same file: one bare
``SELECT ... ORDER BY created_at DESC LIMIT 50`` of the same case rows (sqlite3, no
beams, no HTML). Medians of 25 after 3 warm-ups. Exit 1 when a target is missed.
"""

from __future__ import annotations

import socket
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import uvicorn

from mqi.config import parse_config
from mqi.store import Store
from mqi.web.app import create_app

CASES = 10_000
BEAMS = 4
REPS = 25
WARMUP = 3
LIST_TARGET_MS = 100.0
METRICS_TARGET_MS = 50.0


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def fill(store: Store, cases: int = CASES) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with store.transaction():
        for n in range(cases):
            case_id = f"Bench_{n:05d}_{n * 2654435761 % 2**32:08x}"
            roll = n % 20
            status = (
                "completed"
                if roll < 14
                else "failed"
                if roll < 16
                else ["running", "submitted", "cancelled", "completed"][roll - 16]
            )
            source = f"/data/in/case{n}"
            store.upsert_case(case_id, case_uid=f"{n:012x}", source_dir=source, status="submitted")
            if status == "rejected":
                store.update_case(case_id, status="rejected", error="no RT Ion Plan in the folder")
                continue
            store.set_beams(case_id, [{"number": b + 1, "name": f"G{b * 90}"} for b in range(BEAMS)])
            base = 1000 + n * 3
            submitted = start + timedelta(minutes=n)
            store.add_jobs(
                case_id,
                [
                    {"job_id": str(base), "step": "prepare", "submitted_at": iso(submitted)},
                    {"job_id": str(base + 1), "step": "simulate", "submitted_at": iso(submitted)},
                    {"job_id": str(base + 2), "step": "post", "submitted_at": iso(submitted)},
                ],
            )
            for b in range(BEAMS):
                if status == "submitted":
                    break
                began = submitted + timedelta(seconds=30 + 7 * b + n % 300)
                fields = {"job_id": f"{base + 1}_{b}", "node": f"gpu{n % 8:02d}", "started_at": iso(began)}
                if status == "running":
                    store.update_beam(case_id, b + 1, status="running", slurm_state="RUNNING", **fields)
                    continue
                ended = began + timedelta(seconds=120 + 11 * b + n % 900)
                if status == "failed" and b == 1:
                    store.update_beam(
                        case_id, b + 1, status="failed", slurm_state="FAILED", exit_code=134,
                        reason="engine exit 134 (SIGABRT)", ended_at=iso(ended), **fields,
                    )  # fmt: skip
                elif status == "cancelled":
                    store.update_beam(case_id, b + 1, status="cancelled", reason="mqi cancel", **fields)
                else:
                    store.update_beam(
                        case_id, b + 1, status="completed", slurm_state="COMPLETED", exit_code=0,
                        ended_at=iso(ended), **fields,
                    )  # fmt: skip
            if status != "submitted":
                error = "beam 2 failed" if status == "failed" else None
                store.update_case(case_id, status=status, error=error)
        store.record_poll_cycle(0.8, True)
    store.record_durations()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def median_ms(action, reps: int = REPS) -> float:  # type: ignore[no-untyped-def]
    for _ in range(WARMUP):
        action()
    times = []
    for _ in range(reps):
        began = time.perf_counter()
        action()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="mqi-bench-web-") as tmp:
        root = Path(tmp)
        config = parse_config(
            {"state_dir": str(root / "state"), "results_dir": str(root / "results"), "watch_dir": str(root)}
        )
        began = time.perf_counter()
        with Store(config.db_path) as store:
            fill(store)
            beams = sum(store.metrics_snapshot().beams_by_status.values())
            cases = sum(store.metrics_snapshot().cases_by_status.values())
        print(f"store: {cases:,} cases, {beams:,} beams, filled in {time.perf_counter() - began:.1f} s")

        port = free_port()
        app = create_app(config)
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"

        def get(path: str) -> bytes:
            with urllib.request.urlopen(base + path) as response:
                body = response.read()
                assert response.status == 200
                return body

        page = get("/cases")
        rows = page.count(b"data-case-id=")
        assert rows == 50, f"the first page shows {rows} rows, not 50"

        db = sqlite3.connect(config.db_path)
        bare_sql = (
            "SELECT case_id, case_uid, status, error, priority, beams_total, created_at, submitted_at,"
            " finished_at FROM cases ORDER BY created_at DESC, rowid DESC LIMIT 50"
        )

        def bare() -> None:
            assert len(db.execute(bare_sql).fetchall()) == 50

        floor = median_ms(bare)
        with Store(config.db_path) as store:  # what each poll cycle adds for /metrics
            durations = median_ms(store.record_durations, reps=9)
        case_list = median_ms(lambda: get("/cases"))
        metrics = median_ms(lambda: get("/metrics"))
        server.should_exit = True
        thread.join(timeout=10)
        db.close()

    print(f"bare SELECT ... LIMIT 50 (floor): {floor:7.2f} ms median of {REPS}")
    print(f"GET /cases (first page, 50 rows): {case_list:7.2f} ms   target <= {LIST_TARGET_MS:.0f} ms")
    print(f"GET /metrics:                     {metrics:7.2f} ms   target <= {METRICS_TARGET_MS:.0f} ms")
    print(f"Store.record_durations() (per poll cycle, not per scrape): {durations:7.2f} ms median of 9")
    missed = []
    if case_list > LIST_TARGET_MS:
        missed.append("case list")
    if metrics > METRICS_TARGET_MS:
        missed.append("/metrics")
    if missed:
        print(f"MISSED: {', '.join(missed)}")
        return 1
    print("both targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
