"""The store's records and the statuses they may take."""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar


def as_dict(record: Any) -> dict[str, Any]:
    """A record's fields as a dict, values shared (``dataclasses.asdict`` copies every value
    deeply: a third of ``mqi status`` over 1,000 cases went there)."""
    return {item.name: getattr(record, item.name) for item in fields(record)}


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
        return as_dict(self)


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
        return as_dict(self)


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
        return as_dict(self)


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
        return as_dict(self)


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
