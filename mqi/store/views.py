"""Read-mostly queries for the dashboard and ``/metrics``, and the little bookkeeping they need
(poll cycles, counters, the cluster's partitions as the poller last saw them)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mqi.clock import now_iso
from mqi.store.db import _ANY_OF, Database, _check, _json_list
from mqi.store.records import CASE_STATUSES

POLL_CYCLES_KEPT = 1000
"""The poll_cycles table keeps this many recent cycles; the totals live in counters."""

COUNTERS = ("submit_failures", "bytes_uploaded", "bytes_downloaded", "poll_cycles_ok", "poll_cycles_failed")
_EVENT_CURSOR = "events_logged_through"

WAIT_BUCKETS: tuple[float, ...] = (10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
"""Seconds from a beam's job submission to its start (queue wait)."""
RUN_BUCKETS: tuple[float, ...] = (30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800)
"""Seconds from a beam's start to its end."""


@dataclass
class CaseFilter:
    """What the case list shows: one status, a created-at date range (``YYYY-MM-DD``, UTC), a
    case id (or uid) fragment."""

    status: str | None = None
    created_from: str | None = None
    created_to: str | None = None
    search: str | None = None

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if self.status:
            clauses.append("status = ?")
            args.append(_check(self.status, CASE_STATUSES, "case status"))
        if self.created_from:
            clauses.append("created_at >= ?")
            args.append(self.created_from)
        if self.created_to:
            clauses.append("created_at < ?")
            args.append(self.created_to + "\uffff")  # the whole day
        if self.search:
            pattern = "%" + self.search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            clauses.append("(case_id LIKE ? ESCAPE '\\' OR case_uid LIKE ? ESCAPE '\\')")
            args += [pattern, pattern]
        return ("WHERE " + " AND ".join(clauses) if clauses else ""), args


@dataclass
class Histogram:
    bounds: tuple[float, ...]
    cumulative: list[int]
    """Observations <= each bound, then the total count (the +Inf bucket)."""
    total: float

    @property
    def count(self) -> int:
        return self.cumulative[-1]


@dataclass
class MetricsSnapshot:
    cases_by_status: dict[str, int]
    beams_by_status: dict[str, int]
    jobs_by_state: dict[str, int]
    queue_wait: Histogram
    run_time: Histogram
    counters: dict[str, float]
    poll_seconds_sum: float
    last_poll: dict[str, Any] | None
    last_ok_poll_at: str | None
    extra: dict[str, Any] = field(default_factory=dict)


# Each case's newest QA verdict, counted (the events index on (case_id, id) finds each newest).
_VERDICT_COUNTS = (
    "SELECT e.new, COUNT(*) FROM events e WHERE e.field = 'qa' AND e.id = "
    "(SELECT MAX(id) FROM events WHERE case_id = e.case_id AND field = 'qa') GROUP BY e.new"
)


class ViewQueries(Database):
    # -- the case list

    def case_list(self, filters: CaseFilter, *, limit: int = 50, offset: int = 0) -> tuple[list[dict], int]:
        """One page of cases, newest first, each with its beams counted and its first start and
        last end; and how many cases match in all."""
        where, args = filters.where()
        total = int(self._conn.execute(f"SELECT COUNT(*) FROM cases {where}", args).fetchone()[0])
        rows = self._rows(
            "SELECT case_id, case_uid, status, error, priority, beams_total, attempts, created_at,"
            f" submitted_at, finished_at, delivered_at, results_dir FROM cases {where}"
            " ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
            [*args, limit, offset],
        )
        sums = self._beam_sums(row["case_id"] for row in rows)
        verdicts = self._latest_qa(row["case_id"] for row in rows)
        for row in rows:
            row.update(sums.get(row["case_id"], _NO_BEAMS))
            verdict, reason = verdicts.get(row["case_id"], (None, None))
            row["qa_verdict"] = verdict
            row["qa_first"] = (
                reason.split(";")[0].rsplit(" ", 1)[-1] if reason and "%" in reason.split(";")[0] else None
            )
        return rows, total

    def _latest_qa(self, case_ids: Iterable[str]) -> dict[str, tuple[str, str | None]]:
        """Each case's newest QA verdict and its reason (``3%/3mm/10% 98.7%; ...``)."""
        cursor = self._conn.execute(
            "SELECT case_id, new, reason FROM events"
            f" WHERE field = 'qa' AND case_id IN {_ANY_OF} ORDER BY id",
            [_json_list(case_ids)],
        )
        return {case_id: (verdict, reason) for case_id, verdict, reason in cursor}

    def _beam_sums(self, case_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        # The first start since the (latest) submission: a retry's beams, not the first attempt's.
        cursor = self._conn.execute(
            "SELECT b.case_id, SUM(b.status = 'completed'), SUM(b.status = 'failed'),"
            " SUM(b.status = 'running'), MIN(CASE WHEN b.started_at >= c.submitted_at THEN b.started_at END),"
            " MAX(b.ended_at) FROM beams b JOIN cases c ON c.case_id = b.case_id"
            f" WHERE b.case_id IN {_ANY_OF} GROUP BY b.case_id",
            [_json_list(case_ids)],
        )
        return {
            case_id: {
                "beams_done": done or 0,
                "beams_failed": failed or 0,
                "beams_running": running or 0,
                "first_started_at": started,
                "last_ended_at": ended,
            }
            for case_id, done, failed, running, started, ended in cursor
        }

    # -- one case's audit trail

    def history(self, case_id: str) -> list[dict[str, Any]]:
        """The case's events oldest first (``mqi history``)."""
        self.require_case(case_id)
        return self._rows(
            "SELECT id, at, entity, entity_key, field, old, new, reason FROM events"
            " WHERE case_id = ? ORDER BY id",
            [case_id],
        )

    def claim_events_to_log(self, limit: int = 10_000) -> list[dict[str, Any]]:
        """Events not yet written to the log file, with their case uid and beam job id; they count
        as written from now on, so each event reaches the log once whichever process claims it."""
        with self.transaction():
            row = self._conn.execute("SELECT value FROM counters WHERE name = ?", [_EVENT_CURSOR]).fetchone()
            after = int(row[0]) if row else 0
            rows = self._rows(
                "SELECT e.id, e.at, e.case_id, c.case_uid, e.entity, e.entity_key, e.field, e.old, e.new,"
                " e.reason, b.job_id AS beam_job_id FROM events e"
                " LEFT JOIN cases c ON c.case_id = e.case_id"
                " LEFT JOIN beams b ON e.entity = 'beam' AND b.case_id = e.case_id"
                " AND b.number = CAST(e.entity_key AS INTEGER)"
                " WHERE e.id > ? ORDER BY e.id LIMIT ?",
                [after, limit],
            )
            if rows:
                self._set_counter(_EVENT_CURSOR, rows[-1]["id"])
            return rows

    # -- the queue, from what the last poll stored

    def live_jobs(self) -> list[dict[str, Any]]:
        """This tool's unfinished jobs with the state and reason the last poll saw, and the nodes
        their running beams are on."""
        jobs = self._rows(
            "SELECT j.job_id, j.case_id, j.step, j.state, j.reason, j.array_indices, j.submitted_at,"
            " j.updated_at, j.generation FROM jobs j WHERE j.finished = 0"
            " ORDER BY j.submitted_at, j.job_id"
        )
        nodes: dict[str, set[str]] = {}
        running: dict[str, int] = {}
        cursor = self._conn.execute(
            "SELECT case_id, job_id, node, status FROM beams"
            f" WHERE case_id IN {_ANY_OF} AND job_id IS NOT NULL",
            [_json_list(job["case_id"] for job in jobs)],
        )
        for _case_id, beam_job, node, status in cursor:
            parent = beam_job.split("_", 1)[0]
            if node:
                nodes.setdefault(parent, set()).add(node)
            if status == "running":
                running[parent] = running.get(parent, 0) + 1
        for job in jobs:
            job["nodes"] = sorted(nodes.get(job["job_id"], ()))
            job["beams_running"] = running.get(job["job_id"], 0)
        return jobs

    def record_partitions(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """The cluster's GPUs per partition as one poll cycle saw them:
        ``{partition, gpus_total, gpus_used}`` each (for the poller to call)."""
        now = now_iso()
        with self.transaction():
            for row in rows:
                self._conn.execute(
                    "INSERT INTO partitions (partition, gpus_total, gpus_used, at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT(partition) DO UPDATE SET gpus_total = excluded.gpus_total,"
                    " gpus_used = excluded.gpus_used, at = excluded.at",
                    [row["partition"], row.get("gpus_total"), row.get("gpus_used"), now],
                )

    def partitions(self) -> list[dict[str, Any]]:
        return self._rows("SELECT partition, gpus_total, gpus_used, at FROM partitions ORDER BY partition")

    # -- poll cycles and counters

    def record_poll_cycle(self, seconds: float, ok: bool, error: str | None = None) -> None:
        now = now_iso()
        with self.transaction():
            self._conn.execute(
                "INSERT INTO poll_cycles (at, seconds, ok, error) VALUES (?, ?, ?, ?)",
                [now, float(seconds), int(ok), error],
            )
            self._add_counters({"poll_cycles_ok" if ok else "poll_cycles_failed": 1, "poll_seconds": seconds})
            self._conn.execute(
                "DELETE FROM poll_cycles WHERE id <= (SELECT MAX(id) FROM poll_cycles) - ?",
                [POLL_CYCLES_KEPT],
            )

    def last_poll(self) -> dict[str, Any] | None:
        """The most recent poll cycle ``{at, seconds, ok, error}`` and ``last_ok_at``."""
        row = self._row("SELECT at, seconds, ok, error FROM poll_cycles ORDER BY id DESC LIMIT 1")
        if row is None:
            return None
        row["ok"] = bool(row["ok"])
        row["last_ok_at"] = self._counter_at("poll_cycles_ok")
        return row

    def add_counters(self, deltas: Mapping[str, float]) -> None:
        """Add to named totals (``bytes_uploaded``, ``submit_failures``, ...)."""
        with self.transaction():
            self._add_counters(deltas)

    def counters(self) -> dict[str, float]:
        found = dict(self._conn.execute("SELECT name, value FROM counters").fetchall())
        found.pop(_EVENT_CURSOR, None)
        return found

    def _add_counters(self, deltas: Mapping[str, float]) -> None:
        now = now_iso()
        for name, delta in deltas.items():
            self._conn.execute(
                "INSERT INTO counters (name, value, at) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value, at = excluded.at",
                [name, float(delta), now],
            )

    def _set_counter(self, name: str, value: float) -> None:
        self._conn.execute(
            "INSERT INTO counters (name, value, at) VALUES (?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET value = excluded.value, at = excluded.at",
            [name, value, now_iso()],
        )

    def _counter_at(self, name: str) -> str | None:
        row = self._conn.execute("SELECT at FROM counters WHERE name = ?", [name]).fetchone()
        return row[0] if row else None

    # -- /metrics

    def metrics_snapshot(self) -> MetricsSnapshot:
        """Everything ``/metrics`` shows, read from SQLite: counts, counters, and the duration
        histograms as the last poll cycle stored them (:meth:`record_durations`)."""
        counters = self.counters()
        wait, run = self._durations()
        return MetricsSnapshot(
            cases_by_status=self._counts("SELECT status, COUNT(*) FROM cases GROUP BY status"),
            beams_by_status=self._counts("SELECT status, COUNT(*) FROM beams GROUP BY status"),
            jobs_by_state=self._counts(
                "SELECT COALESCE(state, 'UNKNOWN'), COUNT(*) FROM jobs GROUP BY COALESCE(state, 'UNKNOWN')"
            ),
            queue_wait=wait,
            run_time=run,
            counters={name: counters.get(name, 0.0) for name in COUNTERS},
            poll_seconds_sum=counters.get("poll_seconds", 0.0),
            last_poll=self.last_poll(),
            last_ok_poll_at=self._counter_at("poll_cycles_ok"),
            extra={"cases_by_verdict": self._counts(_VERDICT_COUNTS)},
        )

    def record_durations(self) -> None:
        """Compute the beams' queue-wait and run-time histograms and store them for ``/metrics``
        (the poller calls this after each cycle: a scrape then reads two rows, not every beam)."""
        wait = self._histogram(
            "(julianday(b.started_at) - julianday(j.submitted_at)) * 86400",
            "FROM beams b JOIN jobs j ON j.job_id = substr(b.job_id, 1, instr(b.job_id || '_', '_') - 1)"
            " WHERE b.started_at IS NOT NULL AND j.submitted_at IS NOT NULL",
            WAIT_BUCKETS,
        )
        run = self._histogram(
            "(julianday(b.ended_at) - julianday(b.started_at)) * 86400",
            "FROM beams b WHERE b.started_at IS NOT NULL AND b.ended_at IS NOT NULL",
            RUN_BUCKETS,
        )
        now = now_iso()
        with self.transaction():
            for name, histogram in (("queue_wait", wait), ("run_time", run)):
                total = histogram.total
                self._conn.execute(
                    "INSERT INTO histograms (name, bounds_json, cumulative_json, total, at)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET"
                    " bounds_json = excluded.bounds_json, cumulative_json = excluded.cumulative_json,"
                    " total = excluded.total, at = excluded.at",
                    [name, json.dumps(histogram.bounds), json.dumps(histogram.cumulative), total, now],
                )

    def _durations(self) -> tuple[Histogram, Histogram]:
        stored = {
            name: Histogram(tuple(json.loads(bounds)), json.loads(cumulative), float(total))
            for name, bounds, cumulative, total in self._conn.execute(
                "SELECT name, bounds_json, cumulative_json, total FROM histograms"
            )
        }
        empty_wait = Histogram(WAIT_BUCKETS, [0] * (len(WAIT_BUCKETS) + 1), 0.0)
        empty_run = Histogram(RUN_BUCKETS, [0] * (len(RUN_BUCKETS) + 1), 0.0)
        return stored.get("queue_wait", empty_wait), stored.get("run_time", empty_run)

    def _histogram(self, value: str, source: str, bounds: Sequence[float]) -> Histogram:
        # Rounded to ms: julianday differences carry float noise (600 s would be 600.00001).
        # The value once per row (MATERIALIZED: a flattened subquery would compute it again for
        # every bucket), each row counted in its own bucket, then summed up cumulatively.
        bucket = " ".join(f"WHEN v <= {float(bound)!r} THEN {i}" for i, bound in enumerate(bounds))
        rows = self._conn.execute(
            f"WITH d(v) AS MATERIALIZED (SELECT MAX(ROUND({value}, 3), 0) {source})"
            f" SELECT CASE {bucket} ELSE {len(bounds)} END AS bucket, COUNT(*), TOTAL(v)"
            " FROM d GROUP BY bucket"
        ).fetchall()
        per_bucket = [0] * (len(bounds) + 1)
        total = 0.0
        for index, count, seconds in rows:
            per_bucket[index] = int(count)
            total += float(seconds)
        return Histogram(tuple(bounds), list(itertools.accumulate(per_bucket)), total)

    def _counts(self, sql: str) -> dict[str, int]:
        return {str(key): int(count) for key, count in self._conn.execute(sql)}


_NO_BEAMS: dict[str, Any] = {
    "beams_done": 0,
    "beams_failed": 0,
    "beams_running": 0,
    "first_started_at": None,
    "last_ended_at": None,
}
