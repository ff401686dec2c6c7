"""Retrying passing failures (an SSH drop, a restarting slurmctld) with back-off."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from mqi.errors import OperationalError, TransportError

_T = TypeVar("_T")


def with_retries(action: Callable[[], _T], *, seconds: float, what: str, log: Callable[[str], None]) -> _T:
    """Run ``action``; retry transient failures with back-off for ``seconds``, then give up clearly."""
    started = time.monotonic()
    deadline = started + seconds
    delay = 1.0
    while True:
        try:
            return action()
        except TransportError as error:
            if not error.transient:
                raise
            if time.monotonic() + delay > deadline:
                spent = time.monotonic() - started
                raise OperationalError(
                    f"{what}: {error} — gave up after {spent:.0f}s; nothing was lost, rerun the command"
                ) from None
            log(f"{what}: {error}; retrying in {delay:.0f}s")
            time.sleep(delay)
            delay = min(delay * 2, 15.0)
