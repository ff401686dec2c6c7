"""The log file: ``state_dir/logs/mqi.log``, rotating, one line per state change.

Every status change (case, beam) and Slurm state change (job) is already an append-only
row in the store's ``events``; after each call that may change state, :mod:`mqi.api`
claims the rows not yet logged and writes one line each here. Claiming moves a cursor in
the database, so an event reaches the log once even when cron's poll, a user's submit and
the dashboard write events at the same time.

Lines carry the case id, case uid, beam, job id, old and new state and the reason; never
a patient name (case ids are sanitised folder names plus a hash). The format is ``text``
(default) or ``json`` (one object per line): ``$MQI_LOG_FORMAT`` or :func:`set_format`.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

LOG_FORMAT_ENV = "MQI_LOG_FORMAT"
LOG_FORMATS = ("text", "json")
MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 5
_FIELDS = ("case_id", "case_uid", "beam", "job_id", "entity", "field", "old", "new", "reason", "event_id")

_chosen_format: dict[str, str | None] = {"format": None}


def set_format(fmt: str | None) -> None:
    """``text`` or ``json`` for this process (``--log-format``); None: ``$MQI_LOG_FORMAT``."""
    if fmt is not None and fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    _chosen_format["format"] = fmt
    for handler in logging.getLogger("mqi").handlers:
        handler.setFormatter(_formatter())


def log_format() -> str:
    fmt = _chosen_format["format"] or os.environ.get(LOG_FORMAT_ENV, "text")
    return fmt if fmt in LOG_FORMATS else "text"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "at": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + "Z",
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                data[name] = value
        return json.dumps(data, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{self.formatTime(record, '%Y-%m-%dT%H:%M:%S')}Z {record.levelname} {record.getMessage()}"


def _formatter() -> logging.Formatter:
    formatter: logging.Formatter = JsonFormatter() if log_format() == "json" else TextFormatter()
    formatter.converter = time.gmtime
    return formatter


def rotate_file(path: Path, max_bytes: int, backups: int) -> bool:
    """``path`` becomes ``path.1`` (``.1`` becomes ``.2`` ...) once it is larger than
    ``max_bytes``; for files that a shell appends to (cron's ``>>``), between two runs."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    for n in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{n + 1}"))
    path.replace(path.with_name(f"{path.name}.1"))
    return True


def logger_for(state_dir: Path, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> logging.Logger:
    """The ``mqi`` logger writing to ``state_dir/logs/mqi.log`` (one file handler per process,
    moved when a session with another state_dir asks)."""
    logger = logging.getLogger("mqi")
    path = (Path(state_dir) / "logs" / "mqi.log").resolve()
    current = [h for h in logger.handlers if isinstance(h, logging.handlers.RotatingFileHandler)]
    if current and Path(current[0].baseFilename) == path:
        return logger
    for handler in current:
        logger.removeHandler(handler)
        handler.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups, delay=True)
    handler.setFormatter(_formatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def state_change_fields(event: Mapping[str, Any]) -> dict[str, Any]:
    """The structured fields of one claimed event row (see ``Store.claim_events_to_log``)."""
    entity = event["entity"]
    return {
        "event_id": event["id"],
        "case_id": event["case_id"],
        "case_uid": event.get("case_uid"),
        "entity": entity,
        "field": event["field"],
        "beam": int(event["entity_key"]) if entity == "beam" and str(event["entity_key"]).isdigit() else None,
        "job_id": event["entity_key"] if entity == "job" else event.get("beam_job_id"),
        "old": event["old"],
        "new": event["new"],
        "reason": event["reason"],
    }


def state_change_message(fields: Mapping[str, Any]) -> str:
    """``case X (uid U) beam 2 job 123_1: status running -> failed (reason)``."""
    what = f"case {fields['case_id']} (uid {fields['case_uid'] or '?'})"
    if fields["beam"] is not None:
        what += f" beam {fields['beam']}"
    if fields["job_id"]:
        what += f" job {fields['job_id']}"
    change = f"{fields['entity']} {fields['field']} {fields['old'] or '-'} -> {fields['new'] or '-'}"
    reason = f" ({fields['reason']})" if fields["reason"] else ""
    return f"{what}: {change}{reason}"


def log_state_changes(logger: logging.Logger, events: Iterable[Mapping[str, Any]]) -> int:
    """One line per event; returns how many."""
    written = 0
    for event in events:
        fields = state_change_fields(event)
        logger.info(state_change_message(fields), extra=fields)
        written += 1
    return written
