"""The database file: connection, WAL, migrations, transactions, plain queries, events."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar

from mqi.clock import now_iso, to_utc_iso
from mqi.errors import OperationalError, UsageError
from mqi.store.records import EVENT_ENTITIES, Beam, Case, Event, Job, _builder
from mqi.store.schema import MIGRATIONS, SCHEMA_VERSION

DEFAULT_TIMEOUT = 30.0
_T = TypeVar("_T")
_R = TypeVar("_R", Beam, Job)  # records that belong to a case


class StoreError(UsageError):
    """The database cannot be used as it is (newer schema, not a database)."""


class SchemaTooNewError(StoreError):
    """The database was written by a newer mqi than this one."""


class NotFoundError(UsageError):
    """No case, beam or job with that key."""


class StoreBusyError(OperationalError):
    """Another process held the write lock for longer than the busy timeout."""


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


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


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


class Database:
    """The connection, transactions and plain queries that the record queries build on."""

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
            self._conn = conn
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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Roll back anything uncommitted and close the connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        conn = self._conn
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

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
                MIGRATIONS[step](self._conn)
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- transactions

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Self]:
        """A write transaction (``BEGIN IMMEDIATE``); nested blocks use savepoints."""
        conn = self._conn
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
        cursor = self._conn.execute(sql, list(args))
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def _records(self, cls: type[_T], sql: str, args: Sequence[Any] = ()) -> list[_T]:
        cursor = self._conn.execute(sql, list(args))
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
        self._conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", list(row.values()))

    def _update(self, table: str, key: Mapping[str, Any], changes: Mapping[str, Any]) -> None:
        sets = ", ".join(f"{column} = ?" for column in changes)
        where = " AND ".join(f"{column} = ?" for column in key)
        args = [*changes.values(), *key.values()]
        self._conn.execute(f"UPDATE {table} SET {sets} WHERE {where}", args)

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
            self._event(case_id, entity, entity_key, field, old, new, reason, now_iso())

    def events(self, case_id: str | None = None, limit: int | None = None) -> list[Event]:
        """Events oldest first; with ``limit``, only the most recent ones."""
        where, args = ("WHERE case_id = ?", [case_id]) if case_id is not None else ("", [])
        events = self._records(
            Event,
            f"SELECT * FROM events {where} ORDER BY id DESC LIMIT ?",
            [*args, -1 if limit is None else limit],
        )
        return events[::-1]

    def events_of_field(self, prefix: str, case_ids: Iterable[str] | None = None) -> list[Event]:
        """Events whose field starts with ``prefix`` (e.g. ``send:``), oldest first."""
        where, args = "field LIKE ? ESCAPE '\\'", [_like_prefix(prefix)]
        if case_ids is not None:
            where += f" AND case_id IN {_ANY_OF}"
            args.append(_json_list(case_ids))
        return self._records(Event, f"SELECT * FROM events WHERE {where} ORDER BY id", args)

    # -- cases

    def get_case(self, case_id: str) -> Case | None:
        return self._record(Case, "SELECT * FROM cases WHERE case_id = ?", [case_id])

    def require_case(self, case_id: str) -> Case:
        """The case, or NotFoundError."""
        case = self.get_case(case_id)
        if case is None:
            raise NotFoundError(f"no case {case_id!r} in {self.path}; `mqi status` lists cases")
        return case
