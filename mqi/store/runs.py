"""Queries on beams and jobs, one by one and in bulk (the poller's mirror)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from mqi.clock import now_iso
from mqi.store.db import (
    _BEAM_FIELDS,
    _EVENT_FROM_ROW,
    _JOB_FIELDS,
    Database,
    NotFoundError,
    _check,
    _check_fields,
    _normalise,
)
from mqi.store.records import BEAM_STATUSES, JOB_STEPS, Beam, Job


class RunQueries(Database):
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
            now = now_iso()
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
            self._conn.execute(
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
            now = now_iso()
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

        ``state`` defaults to PENDING (the caller gives an array's first state), ``generation`` to 1,
        ``submitted_at`` to now; each job appends an event.
        """
        specs = list(jobs)
        for spec in specs:
            _check_fields(set(spec) - {"job_id", "step"}, _JOB_FIELDS, "job")
            _check(spec["step"], JOB_STEPS, "job step")
        with self.transaction():
            self.require_case(case_id)
            now = now_iso()
            added = []
            for spec in specs:
                job_id = str(spec["job_id"])
                existing = self.get_job(job_id)
                if existing is not None:
                    self._retire_recycled_id(existing, now)
                row = {
                    "job_id": job_id,
                    "case_id": case_id,
                    "step": spec["step"],
                    "array_indices": None,
                    "state": "PENDING",
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
            now = now_iso()
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
            now = now_iso()
            conn = self._conn
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
        rows = self._conn.execute("SELECT job_id, submitted_at FROM jobs WHERE finished = 0").fetchall()
        return dict(rows)

    def active_arrays(self) -> dict[str, str]:
        """Unfinished array jobs and their ``--array`` specs (cheap: no records built)."""
        sql = "SELECT job_id, array_indices FROM jobs WHERE finished = 0 AND array_indices IS NOT NULL"
        return dict(self._conn.execute(sql).fetchall())

    def oldest_active_submit_time(self) -> str | None:
        """The earliest ``submitted_at`` of unfinished jobs (a bound for ``sacct -S``)."""
        row = self._row("SELECT min(submitted_at) AS t FROM jobs WHERE finished = 0")
        return row["t"] if row else None
