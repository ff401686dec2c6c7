"""The database schema and its forward migrations."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

_V1 = [
    """CREATE TABLE cases (
        case_id TEXT PRIMARY KEY,
        case_uid TEXT NOT NULL UNIQUE,
        source_dir TEXT NOT NULL,
        folder_fingerprint TEXT,
        status TEXT NOT NULL,
        error TEXT,
        errors_json TEXT,
        priority TEXT,
        plan_uid TEXT,
        beams_total INTEGER,
        remote_dir TEXT,
        results_dir TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        submitted_at TEXT,
        finished_at TEXT
    )""",
    """CREATE TABLE beams (
        case_id TEXT NOT NULL REFERENCES cases(case_id) ON DELETE CASCADE,
        number INTEGER NOT NULL,
        name TEXT NOT NULL,
        array_index INTEGER NOT NULL,
        status TEXT NOT NULL,
        slurm_state TEXT,
        job_id TEXT,
        exit_code INTEGER,
        reason TEXT,
        node TEXT,
        started_at TEXT,
        ended_at TEXT,
        PRIMARY KEY (case_id, number)
    )""",
    """CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        case_id TEXT NOT NULL REFERENCES cases(case_id) ON DELETE CASCADE,
        step TEXT NOT NULL,
        array_indices TEXT,
        state TEXT,
        reason TEXT,
        exit_code TEXT,
        submitted_at TEXT,
        updated_at TEXT,
        finished INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        case_id TEXT NOT NULL,
        entity TEXT NOT NULL,
        entity_key TEXT NOT NULL,
        field TEXT NOT NULL,
        old TEXT,
        new TEXT,
        reason TEXT
    )""",
]

_V2 = [
    "ALTER TABLE cases ADD COLUMN delivered_at TEXT",
    "ALTER TABLE cases ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE beams ADD COLUMN dose_file TEXT",
    "ALTER TABLE beams ADD COLUMN updated_at TEXT",
    "ALTER TABLE jobs ADD COLUMN generation INTEGER NOT NULL DEFAULT 1",
    "CREATE INDEX IF NOT EXISTS cases_status ON cases(status)",
    "CREATE INDEX IF NOT EXISTS cases_source_dir ON cases(source_dir)",
    "CREATE INDEX IF NOT EXISTS jobs_case_id ON jobs(case_id)",
    "CREATE INDEX IF NOT EXISTS jobs_unfinished ON jobs(finished, submitted_at)",
    "CREATE INDEX IF NOT EXISTS events_case_id ON events(case_id, id)",
    """CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
       BEGIN SELECT RAISE(ABORT, 'events are append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
       BEGIN SELECT RAISE(ABORT, 'events are append-only'); END""",
]


_V3 = [
    # What the dashboard and /metrics read, so that neither ever asks Slurm.
    """CREATE TABLE poll_cycles (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        seconds REAL NOT NULL,
        ok INTEGER NOT NULL,
        error TEXT
    )""",
    """CREATE TABLE counters (
        name TEXT PRIMARY KEY,
        value REAL NOT NULL DEFAULT 0,
        at TEXT
    )""",
    """CREATE TABLE histograms (
        name TEXT PRIMARY KEY,
        bounds_json TEXT NOT NULL,
        cumulative_json TEXT NOT NULL,
        total REAL NOT NULL,
        at TEXT NOT NULL
    )""",
    """CREATE TABLE partitions (
        partition TEXT PRIMARY KEY,
        gpus_total INTEGER,
        gpus_used INTEGER,
        at TEXT NOT NULL
    )""",
    # Events already in the database are history, not news for the log file.
    """INSERT INTO counters (name, value, at)
       SELECT 'events_logged_through', COALESCE(MAX(id), 0), NULL FROM events""",
    "CREATE INDEX IF NOT EXISTS cases_created ON cases(created_at)",
    "CREATE INDEX IF NOT EXISTS beams_status ON beams(status)",
    "CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state)",
]


def _run(statements: Sequence[str]) -> Callable[[sqlite3.Connection], None]:
    def migrate(db: sqlite3.Connection) -> None:
        for sql in statements:
            db.execute(sql)

    return migrate


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _run(_V1),  # v1: cases, beams, jobs, events
    _run(_V2),  # v2: attempts, delivered_at, generation, dose_file, indexes, append-only events
    _run(_V3),  # v3: poll cycles, counters, histograms, partitions for the dashboard and /metrics
]
"""Forward migrations; ``MIGRATIONS[n]`` takes a database from version n to n + 1."""
SCHEMA_VERSION = len(MIGRATIONS)
