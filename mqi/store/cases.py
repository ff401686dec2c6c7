"""Queries on cases."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from mqi.clock import now_iso
from mqi.store.db import (
    _ANY_OF,
    _CASE_FIELDS,
    Database,
    _check,
    _check_fields,
    _json_list,
    _normalise,
    _source_key,
)
from mqi.store.records import CASE_STATUSES, TERMINAL_CASE_STATUSES, Case


class CaseQueries(Database):
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
        return [case_id for (case_id,) in self._conn.execute(sql, args)]

    def case_uids(self, case_ids: Iterable[str]) -> dict[str, str]:
        """case_id -> case_uid for these cases."""
        sql = f"SELECT case_id, case_uid FROM cases WHERE case_id IN {_ANY_OF}"
        return dict(self._conn.execute(sql, [_json_list(case_ids)]).fetchall())

    def delivered_case_ids(self, case_ids: Iterable[str]) -> set[str]:
        """Those of these cases whose latest submission's results came home and settled them
        (a retry resubmits, and so leaves this set until its own delivery; times are to the
        second, and a retry in its delivery's second counts as the newer)."""
        terminal = sorted(TERMINAL_CASE_STATUSES)
        sql = (
            f"SELECT case_id FROM cases WHERE case_id IN {_ANY_OF}"
            f" AND status IN ({', '.join('?' * len(terminal))})"
            " AND delivered_at > COALESCE(submitted_at, '')"
        )
        return {case_id for (case_id,) in self._conn.execute(sql, [_json_list(case_ids), *terminal])}

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
            now = now_iso()
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
            now = now_iso()
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


def _stamp_case(row: dict[str, Any], old: str | None, new: str, now: str) -> None:
    """Status-driven timestamps, unless the caller gave them."""
    if new == "submitted":
        row.setdefault("submitted_at", now)
    if new in TERMINAL_CASE_STATUSES:
        row.setdefault("finished_at", now)
    elif old in TERMINAL_CASE_STATUSES:
        row.setdefault("finished_at", None)
