"""Lines from a long-running command, read on a daemon thread: the same queue for a
subprocess here and for a channel of the SSH connection."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable

from mqi.errors import TransportError

_ENDED = object()


class QueuedLines:
    """A :class:`mqi.transport.base.LineStream` over a command's stdout and stdin.

    ``readline`` returns the next line as bytes (``b""`` at the end); ``write`` sends bytes
    to its stdin; ``ended`` says, once stdout ended, why (exit code, last stderr line);
    ``stop`` ends the command.
    """

    def __init__(
        self,
        *,
        readline: Callable[[], bytes],
        write: Callable[[bytes], None],
        ended: Callable[[], str],
        stop: Callable[[], None],
        what: str,
    ) -> None:
        self._readline = readline
        self._write = write
        self._ended = ended
        self._stop = stop
        self._what = what
        self._lines: queue.Queue[object] = queue.Queue()
        self._why: str | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._read, name="mqi-stream", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        why = "its output ended"
        try:
            while line := self._readline():
                self._lines.put(line.decode("utf-8", errors="replace").rstrip("\r\n"))
            why = self._ended()
        except Exception as error:  # a dropped connection: said by read_line
            why = f"{type(error).__name__}: {error}"
        self._why = why
        self._lines.put(_ENDED)

    def send(self, line: str) -> None:
        if self._why is not None or self._closed:
            raise TransportError(f"{self._what} ended: {self._why or 'closed'}", transient=True)
        try:
            self._write(line.encode("utf-8") + b"\n")
        except Exception as error:
            raise TransportError(f"{self._what} dropped: {error}", transient=True) from None

    def read_line(self, timeout: float) -> str | None:
        try:
            item = self._lines.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        if item is _ENDED:
            self._lines.put(_ENDED)  # every later read says so too
            raise TransportError(f"{self._what} ended: {self._why}", transient=True)
        assert isinstance(item, str)
        return item

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._stop()
