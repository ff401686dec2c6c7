"""Which folders under watch_dir `mqi scan` should submit (for cron).

A global lock makes overlapping scans harmless (the second exits quietly), and the
per-case lock in submission keeps a scan and a manual `mqi submit` apart. A
rejected folder is recorded once and checked again only when its content changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mqi.errors import UsageError
from mqi.intake import folder_fingerprint
from mqi.intake.identity import rejected_case_id
from mqi.store import Store


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
    try:
        entries = list(watch_dir.iterdir())
    except FileNotFoundError:
        raise UsageError(
            f"watch_dir {watch_dir} does not exist: create it or fix watch_dir in the config"
        ) from None
    except NotADirectoryError:
        raise UsageError(f"watch_dir {watch_dir} is not a folder: fix watch_dir in the config") from None
    except PermissionError:
        raise UsageError(f"watch_dir {watch_dir} cannot be read by this user: fix its permissions") from None
    folders = []
    for path in entries:
        try:
            if path.is_dir() and not path.name.startswith("."):
                folders.append((path.stat().st_mtime, path.name, path))
        except OSError:
            continue  # vanished or unreadable meanwhile: the next scan sees it again
    return [path for _, _, path in sorted(folders)]


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
