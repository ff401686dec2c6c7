"""SQLite state: schema, migrations and queries. The only module with SQL.

One database file is shared by every ``mqi`` process on the workstation (cron
``scan`` and ``poll``, a user's ``submit``). It runs in WAL mode with a busy
timeout, and every read-modify-write runs in a short ``BEGIN IMMEDIATE``
transaction: a writer takes the write lock before it reads, so two writers wait
for each other instead of failing with "database is locked".

Every status change (case, beam) and Slurm state change (job) appends one row to
``events``; rows there are never updated or deleted. Timestamps are UTC
ISO-8601 strings such as ``2026-11-22T01:02:03Z``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import operator
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from mqi import slurm
from mqi.errors import OperationalError, UsageError

CASE_STATUSES: tuple[str, ...] = (
    "new",
    "submitting",
    "rejected",
    "submitted",
    "running",
    "postprocessing",
    "completed",
    "failed",
    "cancelled",
)
"""``new``/``submitting``: a submit in progress (resumable after a crash)."""
TERMINAL_CASE_STATUSES = frozenset({"rejected", "completed", "failed", "cancelled"})
ACTIVE_CASE_STATUSES = frozenset({"submitted", "running", "postprocessing"})
IN_PROGRESS_CASE_STATUSES = frozenset({"new", "submitting"})
BEAM_STATUSES: tuple[str, ...] = ("pending", "running", "completed", "failed", "cancelled")
TERMINAL_BEAM_STATUSES = frozenset({"completed", "failed", "cancelled"})
JOB_STEPS: tuple[str, ...] = ("prepare", "simulate", "post")
EVENT_ENTITIES: tuple[str, ...] = ("case", "beam", "job")

DEFAULT_TIMEOUT = 30.0
_UTC_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_UTC_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


class StoreError(UsageError):
    """The database cannot be used as it is (newer schema, not a database)."""


class SchemaTooNewError(StoreError):
    """The database was written by a newer mqi than this one."""


class NotFoundError(UsageError):
    """No case, beam or job with that key."""


class StoreBusyError(OperationalError):
    """Another process held the write lock for longer than the busy timeout."""


# --------------------------------------------------------------------------- time


def utc_now() -> str:
    """Now, as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return datetime.now(UTC).strftime(_UTC_FORMAT)


def to_utc_iso(value: datetime | str) -> str:
    """An aware datetime or an ISO-8601 string with an offset, as UTC ``...Z``.

    Naive values are refused: a local time without a zone is ambiguous.
    """
    if isinstance(value, str):
        if _UTC_RE.match(value):
            return value
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO-8601 timestamp") from None
    elif isinstance(value, datetime):
        parsed = value
    else:
        raise ValueError(f"{value!r} is not a timestamp")
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError(f"timestamp {value!r} has no time zone; give UTC (...Z) or an offset")
    return parsed.astimezone(UTC).strftime(_UTC_FORMAT)


def parse_utc(value: str) -> datetime:
    """A stored ``...Z`` timestamp as an aware datetime."""
    return datetime.strptime(value, _UTC_FORMAT).replace(tzinfo=UTC)


# --------------------------------------------------------------------------- records


@dataclass
class Case:
    case_id: str
    case_uid: str
    source_dir: str
    status: str
    folder_fingerprint: str | None = None
    error: str | None = None
    errors: list[dict[str, str]] = field(default_factory=list)
    priority: str | None = None
    plan_uid: str | None = None
    beams_total: int | None = None
    remote_dir: str | None = None
    results_dir: str | None = None
    created_at: str = ""
    updated_at: str = ""
    submitted_at: str | None = None
    finished_at: str | None = None
    delivered_at: str | None = None
    attempts: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Beam:
    case_id: str
    number: int
    name: str
    array_index: int
    status: str
    slurm_state: str | None = None
    job_id: str | None = None
    exit_code: int | None = None
    reason: str | None = None
    node: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    dose_file: str | None = None
    updated_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Job:
    job_id: str
    case_id: str
    step: str
    array_indices: str | None
    state: str | None
    reason: str | None = None
    exit_code: str | None = None
    submitted_at: str | None = None
    updated_at: str | None = None
    finished: bool = False
    generation: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Event:
    id: int
    at: str
    case_id: str
    entity: str
    entity_key: str
    field: str
    old: str | None
    new: str | None
    reason: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_T = TypeVar("_T")
_R = TypeVar("_R", Beam, Job)  # records that belong to a case


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


# Columns stored differently from the record field, and how to read them back.
_COLUMN_OF = {(Case, "errors"): "errors_json"}
_CONVERT: dict[tuple[type, str], Callable[[Any], Any]] = {
    (Case, "errors"): lambda text: json.loads(text) if text else [],
    (Job, "finished"): bool,
}


@functools.cache
def _builder(cls: type[_T], columns: tuple[str, ...]) -> Callable[[Sequence[Any]], _T]:
    """Row tuple -> record, for rows with these columns (built once per query shape:
    a poll cycle reads thousands of rows)."""
    names = _field_names(cls)
    pick = operator.itemgetter(*(columns.index(_COLUMN_OF.get((cls, name), name)) for name in names))
    converts = [(i, _CONVERT[(cls, name)]) for i, name in enumerate(names) if (cls, name) in _CONVERT]
    if not converts:
        return lambda row: cls(*pick(row))

    def build(row: Sequence[Any]) -> _T:
        values = list(pick(row))
        for i, convert in converts:
            values[i] = convert(values[i])
        return cls(*values)

    return build


# --------------------------------------------------------------------------- schema

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


def _run(statements: Sequence[str]) -> Callable[[sqlite_utils.Database], None]:
    def migrate(db: sqlite_utils.Database) -> None:
        for sql in statements:
            db.execute(sql)

    return migrate


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _run(_V1),  # v1: cases, beams, jobs, events
    _run(_V2),  # v2: attempts, delivered_at, generation, dose_file, indexes, append-only events
]
"""Forward migrations; ``MIGRATIONS[n]`` takes a database from version n to n + 1."""
SCHEMA_VERSION = len(MIGRATIONS)

# Columns a caller may set (status goes through its own argument).
_CASE_FIELDS = frozenset(
    {
        "source_dir",
        "folder_fingerprint",
        "error",
        "errors",
        "priority",
        "plan_uid",
        "beams_total",
        "remote_dir",
        "results_dir",
        "submitted_at",
        "finished_at",
        "delivered_at",
        "attempts",
    }
)
_BEAM_FIELDS = frozenset(
    {
        "name",
        "array_index",
        "status",
        "slurm_state",
        "job_id",
        "exit_code",
        "reason",
        "node",
        "started_at",
        "ended_at",
        "dose_file",
    }
)
_JOB_FIELDS = frozenset(
    {"state", "reason", "exit_code", "finished", "array_indices", "submitted_at", "generation"}
)


# Sets of ids travel as one JSON parameter: no limit on their number, one statement.
_ANY_OF = "(SELECT value FROM json_each(?))"
_EVENT_FROM_ROW = "INSERT INTO events (at, case_id, entity, entity_key, field, old, new, reason) SELECT"


def _json_list(values: Iterable[str]) -> str:
    return json.dumps(sorted(set(values)))


def _check(value: str, allowed: Iterable[str], what: str) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")
    return value


def _check_fields(given: Iterable[str], allowed: frozenset[str], what: str) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ValueError(
            f"cannot set {', '.join(unknown)} on a {what}; settable: {', '.join(sorted(allowed))}"
        )


def _normalise(values: dict[str, Any]) -> dict[str, Any]:
    """Timestamps to UTC ``...Z``, errors to JSON, paths and bools to SQLite values."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key == "errors":
            out["errors_json"] = json.dumps(_problems(value)) if value else None
        elif key == "source_dir" and value is not None:
            out[key] = _source_key(value)
        elif key.endswith("_at") and value is not None:
            out[key] = to_utc_iso(value)
        elif isinstance(value, Path):
            out[key] = str(value)
        elif isinstance(value, bool):
            out[key] = int(value)
        else:
            out[key] = value
    return out


def _problems(items: Iterable[Any]) -> list[dict[str, str]]:
    """``[{code, message}]`` from mappings or objects with ``code``/``message``."""
    result = []
    for item in items:
        if isinstance(item, Mapping):
            code, message = item["code"], item["message"]
        else:
            code, message = item.code, item.message
        result.append({"code": str(code), "message": str(message)})
    return result


def _source_key(source_dir: str | os.PathLike[str]) -> str:
    return os.path.abspath(os.path.expanduser(os.fspath(source_dir)))


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


# --------------------------------------------------------------------------- store


class Store:
    """The mqi database. Open one per process; close it (or use ``with``)."""

    def __init__(self, path: Path | str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._savepoints = 0
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            # Folder names can carry patient names: keep the file (and, as SQLite
            # copies its mode, the -wal and -shm files) private to this user.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            self._set_wal(conn)
            self._db = sqlite_utils.Database(conn, execute_plugins=False)
            self._migrate()
        except sqlite3.DatabaseError as err:
            conn.close()
            if "locked" in str(err) or "busy" in str(err):
                raise StoreBusyError(f"{self.path}: database stayed busy for {timeout:g} s") from None
            raise StoreError(f"{self.path}: not a usable mqi database: {err}") from None
        except BaseException:
            conn.close()
            raise

    # -- lifecycle

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Roll back anything uncommitted and close the connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        conn = self._db.conn
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()

    @property
    def schema_version(self) -> int:
        return int(self._db.conn.execute("PRAGMA user_version").fetchone()[0])

    def _set_wal(self, conn: sqlite3.Connection) -> None:
        # Switching a fresh file to WAL needs a moment of exclusive access; other
        # processes opening the same new file at once can make it fail briefly.
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
                continue
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: cannot use WAL journal mode (got {mode})")
            return

    def _migrate(self) -> None:
        if self.schema_version == SCHEMA_VERSION:
            return
        with self.transaction():
            version = self.schema_version  # again, under the write lock
            if version > SCHEMA_VERSION:
                raise SchemaTooNewError(
                    f"{self.path} has schema version {version}, but this mqi knows only "
                    f"up to {SCHEMA_VERSION}: it was written by a newer mqi; upgrade mqi"
                )
            if version == SCHEMA_VERSION:
                return  # another process migrated it meanwhile
            for step in range(version, SCHEMA_VERSION):
                MIGRATIONS[step](self._db)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- transactions

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Store]:
        """A write transaction (``BEGIN IMMEDIATE``); nested blocks use savepoints."""
        conn = self._db.conn
        if conn.in_transaction:
            self._savepoints += 1
            name = f"mqi_{self._savepoints}"
            conn.execute(f"SAVEPOINT {name}")
            try:
                yield self
            except BaseException:
                if conn.in_transaction:
                    conn.execute(f"ROLLBACK TO {name}")
                    conn.execute(f"RELEASE {name}")
                raise
            conn.execute(f"RELEASE {name}")
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as err:
            if "locked" in str(err) or "busy" in str(err):
                raise StoreBusyError(
                    f"{self.path}: another mqi process held the database for more than "
                    f"{self.timeout:g} s; try again"
                ) from None
            raise
        try:
            yield self
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # -- plain queries (names of tables and columns come from this module only)

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cursor = self._db.execute(sql, list(args))
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def _records(self, cls: type[_T], sql: str, args: Sequence[Any] = ()) -> list[_T]:
        cursor = self._db.conn.execute(sql, list(args))
        build = _builder(cls, tuple(d[0] for d in cursor.description))
        return [build(row) for row in cursor.fetchall()]

    def _by_case(self, cls: type[_R], table: str, order: str, case_ids: Iterable[str]) -> dict[str, list[_R]]:
        found: dict[str, list[_R]] = {}
        sql = f"SELECT * FROM {table} WHERE case_id IN {_ANY_OF} {order}"
        for record in self._records(cls, sql, [_json_list(case_ids)]):
            found.setdefault(record.case_id, []).append(record)
        return found

    def _record(self, cls: type[_T], sql: str, args: Sequence[Any] = ()) -> _T | None:
        found = self._records(cls, sql, args)
        return found[0] if found else None

    def _row(self, sql: str, args: Sequence[Any] = ()) -> dict[str, Any] | None:
        rows = self._rows(sql, args)
        return rows[0] if rows else None

    def _insert(self, table: str, row: Mapping[str, Any]) -> None:
        columns = ", ".join(row)
        marks = ", ".join("?" * len(row))
        self._db.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", list(row.values()))

    def _update(self, table: str, key: Mapping[str, Any], changes: Mapping[str, Any]) -> None:
        sets = ", ".join(f"{column} = ?" for column in changes)
        where = " AND ".join(f"{column} = ?" for column in key)
        args = [*changes.values(), *key.values()]
        self._db.execute(f"UPDATE {table} SET {sets} WHERE {where}", args)

    def _event(
        self,
        case_id: str,
        entity: str,
        entity_key: str | int,
        field: str,
        old: Any,
        new: Any,
        reason: str | None,
        at: str,
    ) -> None:
        row = {
            "at": at,
            "case_id": case_id,
            "entity": entity,
            "entity_key": str(entity_key),
            "field": field,
            "old": _text(old),
            "new": _text(new),
            "reason": reason,
        }
        self._insert("events", row)

    # -- events

    def add_event(
        self,
        case_id: str,
        entity: str,
        entity_key: str | int,
        field: str,
        old: Any = None,
        new: Any = None,
        reason: str | None = None,
    ) -> None:
        """Append one event of your own (status changes record theirs already)."""
        _check(entity, EVENT_ENTITIES, "event entity")
        with self.transaction():
            self.require_case(case_id)
            self._event(case_id, entity, entity_key, field, old, new, reason, utc_now())

    def events(self, case_id: str | None = None, limit: int | None = None) -> list[Event]:
        """Events oldest first; with ``limit``, only the most recent ones."""
        where, args = ("WHERE case_id = ?", [case_id]) if case_id is not None else ("", [])
        events = self._records(
            Event,
            f"SELECT * FROM events {where} ORDER BY id DESC LIMIT ?",
            [*args, -1 if limit is None else limit],
        )
        return events[::-1]

    # -- cases

    def get_case(self, case_id: str) -> Case | None:
        return self._record(Case, "SELECT * FROM cases WHERE case_id = ?", [case_id])

    def get_case_by_uid(self, case_uid: str) -> Case | None:
        return self._record(Case, "SELECT * FROM cases WHERE case_uid = ?", [case_uid])

    def find_case_by_source(self, source_dir: str | os.PathLike[str]) -> Case | None:
        """The most recently created case from this folder (a re-plan makes a new case)."""
        return self._record(
            Case,
            "SELECT * FROM cases WHERE source_dir = ? ORDER BY created_at DESC, rowid DESC LIMIT 1",
            [_source_key(source_dir)],
        )

    def case_ids(self, statuses: Iterable[str]) -> list[str]:
        """Ids of the cases in ``statuses``, oldest first (cheap: no records built)."""
        args = [_check(s, CASE_STATUSES, "case status") for s in statuses]
        if not args:
            return []
        marks = ", ".join("?" * len(args))
        sql = f"SELECT case_id FROM cases WHERE status IN ({marks}) ORDER BY created_at, rowid"
        return [case_id for (case_id,) in self._db.conn.execute(sql, args)]

    def case_uids(self, case_ids: Iterable[str]) -> dict[str, str]:
        """case_id -> case_uid for these cases."""
        sql = f"SELECT case_id, case_uid FROM cases WHERE case_id IN {_ANY_OF}"
        return dict(self._db.conn.execute(sql, [_json_list(case_ids)]).fetchall())

    def cases_by_id(self, case_ids: Iterable[str]) -> dict[str, Case]:
        """These cases in one query (ids not recorded are left out)."""
        cases = self._records(Case, f"SELECT * FROM cases WHERE case_id IN {_ANY_OF}", [_json_list(case_ids)])
        return {case.case_id: case for case in cases}

    def list_cases(self, statuses: Iterable[str] | None = None) -> list[Case]:
        """Cases oldest first, optionally only those in ``statuses``."""
        where, args = "", []
        if statuses is not None:
            args = [_check(s, CASE_STATUSES, "case status") for s in statuses]
            if not args:
                return []
            where = f"WHERE status IN ({', '.join('?' * len(args))})"
        return self._records(Case, f"SELECT * FROM cases {where} ORDER BY created_at, rowid", args)

    def require_case(self, case_id: str) -> Case:
        """The case, or NotFoundError."""
        case = self.get_case(case_id)
        if case is None:
            raise NotFoundError(f"no case {case_id!r} in {self.path}; `mqi status` lists cases")
        return case

    def upsert_case(
        self,
        case_id: str,
        *,
        case_uid: str,
        source_dir: str | os.PathLike[str],
        status: str | None = None,
        reason: str | None = None,
        **fields: Any,
    ) -> Case:
        """Create a case (status ``new`` unless given) or update the one with this id.

        An existing case keeps its status unless ``status`` is given; its uid never changes.
        """
        if status is not None:
            _check(status, CASE_STATUSES, "case status")
        _check_fields(fields, _CASE_FIELDS, "case")
        with self.transaction():
            existing = self.get_case(case_id)
            if existing is not None:
                if existing.case_uid != case_uid:
                    raise ValueError(f"case {case_id!r} has uid {existing.case_uid!r}, not {case_uid!r}")
                return self.update_case(
                    case_id, status=status, reason=reason, source_dir=source_dir, **fields
                )
            other = self.get_case_by_uid(case_uid)
            if other is not None:
                raise ValueError(f"case uid {case_uid!r} already belongs to case {other.case_id!r}")
            now = utc_now()
            new_status = status or "new"
            row = {
                "case_id": case_id,
                "case_uid": case_uid,
                "status": new_status,
                "created_at": now,
                "updated_at": now,
                **_normalise({**fields, "source_dir": source_dir}),
            }
            _stamp_case(row, None, new_status, now)
            self._insert("cases", row)
            self._event(case_id, "case", case_id, "status", None, new_status, reason, now)
            return self.require_case(case_id)

    def update_case(
        self,
        case_id: str,
        *,
        status: str | None = None,
        reason: str | None = None,
        **fields: Any,
    ) -> Case:
        """Set fields of a case; a changed status appends an event.

        Entering ``submitted`` stamps ``submitted_at``; entering a terminal status
        stamps ``finished_at``; leaving one clears it (unless given).
        """
        if status is not None:
            _check(status, CASE_STATUSES, "case status")
        _check_fields(fields, _CASE_FIELDS, "case")
        changes = _normalise(fields)
        with self.transaction():
            case = self.require_case(case_id)
            now = utc_now()
            if status is not None and status != case.status:
                changes["status"] = status
                _stamp_case(changes, case.status, status, now)
                self._event(case_id, "case", case_id, "status", case.status, status, reason, now)
            changes["updated_at"] = now
            self._update("cases", {"case_id": case_id}, changes)
            return self.require_case(case_id)

    def set_case_status(self, case_id: str, status: str, reason: str | None = None, **fields: Any) -> Case:
        """Set a case's status (an event only when it changes) and any other fields."""
        return self.update_case(case_id, status=status, reason=reason, **fields)

    # -- beams

    def list_beams(self, case_id: str) -> list[Beam]:
        return self._records(Beam, "SELECT * FROM beams WHERE case_id = ? ORDER BY number", [case_id])

    def beams_by_case(self, case_ids: Iterable[str]) -> dict[str, list[Beam]]:
        """The beams of these cases in one query, each case's by number."""
        return self._by_case(Beam, "beams", "ORDER BY case_id, number", case_ids)

    def get_beam(self, case_id: str, number: int) -> Beam | None:
        return self._record(Beam, "SELECT * FROM beams WHERE case_id = ? AND number = ?", [case_id, number])

    def set_beams(self, case_id: str, beams: Iterable[Mapping[str, Any]]) -> list[Beam]:
        """Make the case's beams exactly these: ``{number, name, array_index?}`` each.

        New beams start ``pending`` (an event each); existing ones keep their status;
        beams not listed are removed. ``beams_total`` follows.
        """
        specs = list(beams)
        numbers = [int(spec["number"]) for spec in specs]
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"duplicate beam numbers for case {case_id!r}: {numbers}")
        with self.transaction():
            self.require_case(case_id)
            now = utc_now()
            for position, spec in enumerate(specs):
                number = int(spec["number"])
                values = {
                    "name": str(spec["name"]),
                    "array_index": int(spec.get("array_index", position)),
                    "updated_at": now,
                }
                if self.get_beam(case_id, number) is None:
                    status = _check(spec.get("status", "pending"), BEAM_STATUSES, "beam status")
                    row = {"case_id": case_id, "number": number, "status": status, **values}
                    self._insert("beams", row)
                    self._event(case_id, "beam", number, "status", None, status, None, now)
                else:
                    self._update("beams", {"case_id": case_id, "number": number}, values)
            marks = ", ".join("?" * len(numbers))
            self._db.execute(
                f"DELETE FROM beams WHERE case_id = ? AND number NOT IN ({marks})",
                [case_id, *numbers],
            )
            changes = {"beams_total": len(specs), "updated_at": now}
            self._update("cases", {"case_id": case_id}, changes)
            return self.list_beams(case_id)

    def update_beam(self, case_id: str, number: int, **fields: Any) -> Beam:
        """Set fields of one beam; a changed status appends an event (``reason`` is its reason)."""
        _check_fields(fields, _BEAM_FIELDS, "beam")
        if "status" in fields:
            _check(fields["status"], BEAM_STATUSES, "beam status")
        changes = _normalise(fields)
        with self.transaction():
            beam = self.get_beam(case_id, number)
            if beam is None:
                raise NotFoundError(f"case {case_id!r} has no beam {number}")
            now = utc_now()
            status = fields.get("status")
            if status is not None and status != beam.status:
                reason = fields.get("reason")
                self._event(case_id, "beam", number, "status", beam.status, status, reason, now)
            changes["updated_at"] = now
            self._update("beams", {"case_id": case_id, "number": number}, changes)
            updated = self.get_beam(case_id, number)
            assert updated is not None
            return updated

    def update_beams(self, updates: Iterable[tuple[Beam, Mapping[str, Any]]]) -> int:
        """Set fields of many beams at once, ``(beam as read, fields)`` each: the poller's mirror.

        As ``update_beam`` (a changed status appends an event, ``reason`` its reason), but
        compare-and-set: a beam whose status or job changed since the caller read it (a
        cancel, a retry) is left alone, to be read again next cycle. One statement per
        shape of change, no row read back. Returns the number of beams updated.
        """
        rows = []
        for beam, given in updates:
            _check_fields(given, _BEAM_FIELDS, "beam")
            if "status" in given:
                _check(given["status"], BEAM_STATUSES, "beam status")
            rows.append(((beam.case_id, beam.number, beam.status, beam.job_id), _normalise(dict(given))))
        where = "WHERE case_id = ? AND number = ? AND status = ? AND job_id IS ?"
        return self._bulk_update("beams", "beam", "number", "status", where, rows)

    # -- jobs

    def get_job(self, job_id: str) -> Job | None:
        return self._record(Job, "SELECT * FROM jobs WHERE job_id = ?", [str(job_id)])

    def list_jobs(self, case_id: str | None = None) -> list[Job]:
        """Jobs (of one case) in submission order."""
        where, args = ("WHERE case_id = ?", [case_id]) if case_id is not None else ("", [])
        return self._records(Job, f"SELECT * FROM jobs {where} ORDER BY submitted_at, rowid", args)

    def jobs_by_case(self, case_ids: Iterable[str]) -> dict[str, list[Job]]:
        """The jobs of these cases in one query, each case's in submission order."""
        return self._by_case(Job, "jobs", "ORDER BY submitted_at, rowid", case_ids)

    def add_jobs(self, case_id: str, jobs: Iterable[Mapping[str, Any]]) -> list[Job]:
        """Record submitted jobs, each ``{job_id, step, array_indices?, state?, generation?}``.

        ``state`` defaults to PENDING (``PENDING:<tasks>`` for an array), ``generation`` to 1,
        ``submitted_at`` to now; each job appends an event.
        """
        specs = list(jobs)
        for spec in specs:
            _check_fields(set(spec) - {"job_id", "step"}, _JOB_FIELDS, "job")
            _check(spec["step"], JOB_STEPS, "job step")
        with self.transaction():
            self.require_case(case_id)
            now = utc_now()
            added = []
            for spec in specs:
                job_id = str(spec["job_id"])
                existing = self.get_job(job_id)
                if existing is not None:
                    self._retire_recycled_id(existing, now)
                indices = spec.get("array_indices")
                row = {
                    "job_id": job_id,
                    "case_id": case_id,
                    "step": spec["step"],
                    "array_indices": None,
                    # an array starts the way the poller will see it: "PENDING:<tasks>"
                    "state": slurm.array_state(["PENDING"] * len(slurm.parse_array_spec(indices)))
                    if indices
                    else "PENDING",
                    "submitted_at": now,
                    "updated_at": now,
                    "finished": False,
                    "generation": 1,
                } | {k: v for k, v in spec.items() if k in _JOB_FIELDS}
                self._insert("jobs", _normalise(row))
                reason = spec.get("reason")
                self._event(case_id, "job", job_id, "state", None, row["state"], reason, now)
                added.append(job_id)
            return [job for job in map(self.get_job, added) if job is not None]

    def _retire_recycled_id(self, old: Job, now: str) -> None:
        """Slurm handed out an id we already track (ids restart after a controller loses its
        state): the old job is gone for certain. Keep its row under ``<id>~<n>``."""
        if not old.finished:
            self._event(
                old.case_id, "job", old.job_id, "state", old.state, "LOST", "job id reused by Slurm", now
            )
        n = 1 + len(self._rows("SELECT job_id FROM jobs WHERE job_id LIKE ?", [f"{old.job_id}~%"]))
        self._update(
            "jobs",
            {"job_id": old.job_id},
            {
                "job_id": f"{old.job_id}~{n}",
                "finished": True,
                "state": "LOST" if not old.finished else old.state,
            },
        )

    def update_job(self, job_id: str, **fields: Any) -> Job:
        """Set fields of a job; a changed Slurm state appends an event."""
        _check_fields(fields, _JOB_FIELDS, "job")
        changes = _normalise(fields)
        with self.transaction():
            job = self.get_job(job_id)
            if job is None:
                raise NotFoundError(f"no Slurm job {job_id} is recorded")
            now = utc_now()
            if "state" in fields and fields["state"] != job.state:
                reason = fields.get("reason")
                self._event(job.case_id, "job", job.job_id, "state", job.state, fields["state"], reason, now)
            changes["updated_at"] = now
            self._update("jobs", {"job_id": job.job_id}, changes)
            updated = self.get_job(job.job_id)
            assert updated is not None
            return updated

    def update_jobs(self, updates: Iterable[tuple[Job, Mapping[str, Any]]]) -> int:
        """Set fields of many jobs at once, ``(job as read, fields)`` each: the poller's mirror.

        Compare-and-set: a job whose state, finished flag or case changed since the caller
        read it (a cancel, a resubmission, an id Slurm reused) is left alone, to be read
        again next cycle. One statement per shape of change, an event for each changed
        state, no row read back. Returns the number of jobs updated.
        """
        rows = []
        for job, given in updates:
            _check_fields(given, _JOB_FIELDS, "job")
            rows.append(((job.job_id, job.case_id, job.state, int(job.finished)), _normalise(dict(given))))
        where = "WHERE job_id = ? AND case_id = ? AND state IS ? AND finished = ?"
        return self._bulk_update("jobs", "job", "job_id", "state", where, rows)

    def _bulk_update(
        self,
        table: str,
        entity: str,
        key: str,
        tracked: str,
        where: str,
        rows: list[tuple[tuple[Any, ...], dict[str, Any]]],
    ) -> int:
        """Each ``(guard values for where, changes)``: one UPDATE per shape of change, and
        an event, taken from the row itself, for each change of the ``tracked`` column."""
        groups: dict[tuple[str, ...], list[tuple[tuple[Any, ...], dict[str, Any]]]] = {}
        for guard, changes in rows:
            groups.setdefault(tuple(changes), []).append((guard, changes))
        updated = 0
        with self.transaction():
            now = utc_now()
            conn = self._db.conn
            for columns, group in groups.items():
                if tracked in columns:
                    conn.executemany(
                        f"{_EVENT_FROM_ROW} ?, case_id, '{entity}', {key}, '{tracked}', {tracked}, ?, ? "
                        f"FROM {table} {where} AND {tracked} IS NOT ?",
                        [(now, c[tracked], c.get("reason"), *guard, c[tracked]) for guard, c in group],
                    )
                sets = ", ".join(f"{column} = ?" for column in (*columns, "updated_at"))
                cursor = conn.executemany(
                    f"UPDATE {table} SET {sets} {where}", [(*c.values(), now, *guard) for guard, c in group]
                )
                updated += cursor.rowcount
        return updated

    def active_jobs(self) -> list[Job]:
        """Jobs not yet finished, oldest first: what a poll asks Slurm about."""
        return self._records(Job, "SELECT * FROM jobs WHERE finished = 0 ORDER BY submitted_at, rowid")

    def active_job_ids(self) -> dict[str, str | None]:
        """Unfinished job ids and their submit times (cheap: no records built)."""
        rows = self._db.conn.execute("SELECT job_id, submitted_at FROM jobs WHERE finished = 0").fetchall()
        return dict(rows)

    def oldest_active_submit_time(self) -> str | None:
        """The earliest ``submitted_at`` of unfinished jobs (a bound for ``sacct -S``)."""
        row = self._row("SELECT min(submitted_at) AS t FROM jobs WHERE finished = 0")
        return row["t"] if row else None


def _stamp_case(row: dict[str, Any], old: str | None, new: str, now: str) -> None:
    """Status-driven timestamps, unless the caller gave them."""
    if new == "submitted":
        row.setdefault("submitted_at", now)
    if new in TERMINAL_CASE_STATUSES:
        row.setdefault("finished_at", now)
    elif old in TERMINAL_CASE_STATUSES:
        row.setdefault("finished_at", None)
