"""File locks that die with their process: a SIGKILLed submitter never leaves a stale lock."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mqi.errors import OperationalError


class Busy(OperationalError):
    """Another mqi process holds the lock."""


@contextmanager
def file_lock(path: Path, *, wait: bool = True, what: str = "") -> Iterator[None]:
    """Hold an exclusive lock on ``path``; with ``wait=False`` raise Busy when it is taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        flags = fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            raise Busy(f"{what or path.name} is busy: another mqi process is working on it") from None
        yield
    finally:
        os.close(fd)


def case_lock_path(state_dir: Path, case_uid: str) -> Path:
    return state_dir / "locks" / f"case-{case_uid}.lock"
