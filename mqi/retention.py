"""Retention (`mqi clean`, and `mqi run` once a day): what a finished case leaves behind is
removed or archived by the ``retention:`` policy. Nothing of a case that is still active is
ever touched, and every removal is an event of its case.

- a terminal case's folder on the cluster, ``remote_days`` after delivery (or the end);
- the ``<uid>.old-*`` folders that ``submit --force`` set aside, after ``old_days``;
- a terminal case's rendered bundle under state_dir (``local_bundle: delete-after-delivery``);
- delivered results older than ``archive_after_days``, into ``<archive_dir>/<case_id>.tar.gz``.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from mqi.clock import now_utc, parse_utc
from mqi.config import Config
from mqi.store import Case, Store
from mqi.transport import RemoteFiles

FIELD = "retention"
FINISHED = ("completed", "failed", "cancelled", "rejected")


@dataclass
class Item:
    kind: str  # remote-folder, old-folder, local-bundle, archive
    path: str
    bytes: int
    case_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class CleanReport:
    items: list[Item] = field(default_factory=list)
    dry_run: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def bytes_freed(self) -> int:
        return sum(item.bytes for item in self.items)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "mqi.clean/1",
            "dry_run": self.dry_run,
            "bytes_freed": self.bytes_freed,
            "items": [item.to_json() for item in self.items],
            "errors": self.errors,
        }


def clean(
    config: Config,
    store: Store,
    files: RemoteFiles,
    *,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
) -> CleanReport:
    report = CleanReport(dry_run=dry_run)
    policy = config.retention
    now = now_utc()
    finished = [case for case in store.list_cases(FINISHED)]
    done = {(e.case_id, e.new) for e in store.events_of_field(FIELD)}
    remote = [
        case
        for case in finished
        if case.remote_dir
        and (case.case_id, "remote-removed") not in done
        and _older(case.delivered_at or case.finished_at, policy.remote_days, now)
    ]
    old = files.folders_older_than(config.cluster.remote_dir, "*.old-*", policy.old_days)
    sizes = files.sizes([case.remote_dir for case in remote if case.remote_dir] + old)
    for case in remote:
        assert case.remote_dir
        if case.remote_dir in sizes:
            report.items.append(Item("remote-folder", case.remote_dir, sizes[case.remote_dir], case.case_id))
        elif not dry_run:  # already gone (a scratch purge): record it so that it is not asked again
            store.add_event(
                case.case_id, "case", case.case_id, FIELD, None, "remote-removed", "not on the cluster"
            )
    report.items += [Item("old-folder", path, sizes.get(path, 0)) for path in old]
    for case in finished:
        bundle = config.bundles_dir / case.case_uid
        if policy.local_bundle == "delete-after-delivery" and bundle.is_dir():
            report.items.append(Item("local-bundle", str(bundle), _local_size(bundle), case.case_id))
    if policy.archive_after_days is not None:
        for case in finished:
            results = Path(case.results_dir) if case.results_dir else None
            if results and results.is_dir() and _older(case.delivered_at, policy.archive_after_days, now):
                report.items.append(Item("archive", str(results), _local_size(results), case.case_id))
    if not dry_run:
        _apply(config, store, files, report, log)
    return report


def _apply(
    config: Config, store: Store, files: RemoteFiles, report: CleanReport, log: Callable[[str], None]
) -> None:
    remote = [item for item in report.items if item.kind in ("remote-folder", "old-folder")]
    try:
        files.remove_trees([item.path for item in remote])
    except Exception as error:  # the local part still runs; the next clean tries again
        report.errors.append(str(error))
        remote = []
    for item in remote:
        if item.case_id:
            store.add_event(item.case_id, "case", item.case_id, FIELD, None, "remote-removed", item.path)
    for item in report.items:
        try:
            if item.kind == "local-bundle":
                shutil.rmtree(item.path)
            elif item.kind == "archive" and item.case_id:
                target = archive(Path(item.path), _archive_dir(config), item.case_id)
                store.update_case(item.case_id, results_dir=str(target))
                store.add_event(item.case_id, "case", item.case_id, FIELD, None, "archived", str(target))
        except OSError as error:
            report.errors.append(f"{item.path}: {error.strerror or error}")
    log(f"mqi clean: {len(report.items)} item(s), {report.bytes_freed} bytes freed")


def archive(results: Path, archive_dir: Path, case_id: str) -> Path:
    """``results`` into ``<archive_dir>/<case_id>.tar.gz`` (through a temporary file), then removed."""
    archive_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = archive_dir / f"{case_id}.tar.gz"
    partial = archive_dir / f".{case_id}.tar.gz.partial-{os.getpid()}"
    with tarfile.open(partial, "w:gz") as packed:
        packed.add(results, arcname=case_id)
    os.chmod(partial, 0o600)
    os.replace(partial, target)
    shutil.rmtree(results)
    return target


def _archive_dir(config: Config) -> Path:
    return config.retention.archive_dir or config.results_dir / "archive"


def _older(stamp: str | None, days: float, now: datetime) -> bool:
    return bool(stamp) and parse_utc(stamp) <= now - timedelta(days=days)  # type: ignore[arg-type]


def _local_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def retired(case: Case, store: Store) -> bool:
    """Whether retention removed the case's folder on the cluster."""
    return any(e.new == "remote-removed" for e in store.events_of_field(FIELD, [case.case_id]))
