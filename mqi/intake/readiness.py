"""When `mqi scan` may take a case folder: complete, and not being copied any more."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from mqi.config import Readiness
from mqi.intake.discover import is_partial_name, walk_files


def is_ready(case_dir: Path, readiness: Readiness, now: float | None = None) -> tuple[bool, str]:
    """(ready, why). Ready when the marker file exists (with a marker configured), or when
    nothing under the folder changed for ``quiet_seconds``; never while a partial file is there.
    """
    if not case_dir.is_dir():
        return False, "not a folder"
    marker = readiness.marker
    newest = _changed(case_dir)
    files = 0
    for entry in walk_files(case_dir, folders=True):
        rel = Path(os.path.relpath(entry.path, case_dir))
        if rel.as_posix() == marker:
            continue
        if any(is_partial_name(part) for part in rel.parts):
            return False, f"unfinished copy: {rel.as_posix()}"
        files += not entry.is_dir(follow_symlinks=False)
        newest = max(newest, _changed(Path(entry.path)))
    if marker is not None:
        if (case_dir / marker).is_file():
            return True, f"marker {marker} present"
        return False, f"waiting for the marker {marker}"
    if files == 0:
        return False, "empty folder"
    quiet = max(0.0, (time.time() if now is None else now) - newest)
    if quiet < readiness.quiet_seconds:
        return False, f"changed {quiet:.0f} s ago; waiting for {readiness.quiet_seconds:g} s of quiet"
    return True, f"unchanged for {quiet:.0f} s"


def _changed(path: Path) -> float:
    """Last change: ctime too, since copies that keep the source's mtime still set it."""
    try:
        stat = path.stat()
    except OSError:
        return 0.0
    return max(stat.st_mtime, stat.st_ctime)


def folder_fingerprint(case_dir: Path) -> str:
    """A cheap hash of relative paths, sizes and modification times: it changes when
    the folder's content does, so a rejected case is re-checked only then."""
    digest = hashlib.sha256()
    for entry in walk_files(case_dir):
        try:
            stat = entry.stat()
        except OSError:
            continue
        rel = os.path.relpath(entry.path, case_dir)
        # os.fsencode: a file name that is not UTF-8 hashes by its bytes
        digest.update(os.fsencode(rel) + f"\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
