"""SQLite state: schema, migrations and queries. The only package with SQL; it knows no scheduler.

One database file is shared by every ``mqi`` process on the workstation (cron
``scan`` and ``poll``, a user's ``submit``). It runs in WAL mode with a busy
timeout, and every read-modify-write runs in a short ``BEGIN IMMEDIATE``
transaction: a writer takes the write lock before it reads, so two writers wait
for each other instead of failing with "database is locked".

Every status change (case, beam) and Slurm state change (job) appends one row to
``events``; rows there are never updated or deleted. Timestamps are UTC
ISO-8601 strings such as ``2026-11-22T01:02:03Z``.

The SQL is written by hand with parameters throughout: the poller's compare-and-set
bulk updates and the events derived from rows in the same statement do not fit a
table API, so plain ``sqlite3`` serves every query.
"""

from __future__ import annotations

from mqi.clock import now_iso, parse_utc, to_utc_iso
from mqi.store.cases import CaseQueries
from mqi.store.db import DEFAULT_TIMEOUT, NotFoundError, SchemaTooNewError, StoreBusyError, StoreError
from mqi.store.records import (
    ACTIVE_CASE_STATUSES,
    BEAM_STATUSES,
    CASE_STATUSES,
    EVENT_ENTITIES,
    IN_PROGRESS_CASE_STATUSES,
    JOB_STEPS,
    TERMINAL_BEAM_STATUSES,
    TERMINAL_CASE_STATUSES,
    Beam,
    Case,
    Event,
    Job,
)
from mqi.store.runs import RunQueries
from mqi.store.schema import MIGRATIONS, SCHEMA_VERSION
from mqi.store.views import CaseFilter, MetricsSnapshot, ViewQueries


class Store(CaseQueries, RunQueries, ViewQueries):
    """The mqi database. Open one per process; close it (or use ``with``)."""


__all__ = [
    "ACTIVE_CASE_STATUSES",
    "BEAM_STATUSES",
    "CASE_STATUSES",
    "DEFAULT_TIMEOUT",
    "EVENT_ENTITIES",
    "IN_PROGRESS_CASE_STATUSES",
    "JOB_STEPS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "TERMINAL_BEAM_STATUSES",
    "TERMINAL_CASE_STATUSES",
    "Beam",
    "Case",
    "CaseFilter",
    "Event",
    "Job",
    "MetricsSnapshot",
    "NotFoundError",
    "SchemaTooNewError",
    "Store",
    "StoreBusyError",
    "StoreError",
    "now_iso",
    "parse_utc",
    "to_utc_iso",
]
