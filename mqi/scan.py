"""`mqi scan`: submit every ready, not yet known case folder under watch_dir (for cron).

A global lock makes overlapping runs harmless (the second exits quietly), and the
per-case lock in submission keeps a scan and a manual `mqi submit` apart. A
rejected folder is recorded once and checked again only when its content changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mqi.config import Config
from mqi.errors import MqiError
from mqi.intake import folder_fingerprint, is_ready
from mqi.locks import Busy, file_lock
from mqi.store import Store
from mqi.submit import CaseRejected, Submitter, rejected_case_id
from mqi.transport import Transport


@dataclass
class ScanReport:
    submitted: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    known: int = 0
    errors: list[str] = field(default_factory=list)
    skipped_busy: bool = False

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def candidate_folders(watch_dir: Path) -> list[Path]:
    """Immediate sub-folders of watch_dir, oldest first; hidden ones are in-progress copies."""
    if not watch_dir.is_dir():
        return []
    folders = [p for p in watch_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(folders, key=lambda p: (p.stat().st_mtime, p.name))


def needs_submission(store: Store, folder: Path) -> bool:
    """Unknown folders, and rejected ones whose content changed since."""
    case = store.find_case_by_source(folder.absolute())
    if case is None:
        case = store.get_case(rejected_case_id(folder.absolute()))
    if case is None:
        return True
    if case.status == "rejected":
        return case.folder_fingerprint != folder_fingerprint(folder)
    return case.status in ("new", "submitting")


def scan(
    config: Config,
    store: Store,
    transport: Transport,
    *,
    log: Callable[[str], None] = lambda _msg: None,
) -> ScanReport:
    report = ScanReport()
    lock = config.state_dir / "locks" / "scan.lock"
    try:
        with file_lock(lock, wait=False, what="mqi scan"):
            submitter = Submitter(config, store, transport, log=log)
            for folder in candidate_folders(config.watch_dir):
                if not needs_submission(store, folder):
                    report.known += 1
                    continue
                ready, why = is_ready(folder, config.readiness)
                if not ready:
                    report.waiting.append(f"{folder.name}: {why}")
                    continue
                try:
                    outcome = submitter.submit(folder)
                except CaseRejected as rejected:
                    report.rejected.append(rejected.case_id)
                    log(str(rejected))
                except MqiError as error:
                    report.errors.append(f"{folder.name}: {error}")
                    log(f"{folder.name}: {error}")
                else:
                    if not outcome.already:
                        report.submitted.append(outcome.case_id)
    except Busy:
        report.skipped_busy = True
    return report
