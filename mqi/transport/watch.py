"""Waiting for files to appear on the cluster without asking Slurm: one small watcher run
with the cluster's Python on a channel of the open connection.

The watcher reads paths to wait for on its stdin (``+path``; ``-path`` forgets one) and
prints ``done <path>`` once each exists, then forgets it. It wakes on inotify events where
the kernel offers them (a local file system; writes from compute nodes to a shared file
system raise no event on the login node) and stats every path each ``tick`` seconds in any
case. It prints ``beat`` every ``beat`` seconds so that a connection that died without a
word is noticed, and it ends when its stdin closes (the workstation went away). It only
stats files: no Slurm command, no write.
"""

from __future__ import annotations

import time

from mqi.errors import TransportError
from mqi.shell import join_words, quote, split_words
from mqi.transport.base import LineStream, Transport

# Python 3.6+ and its standard library only: the cluster's interpreter, whatever else it has.
WATCHER = r"""
import ctypes, ctypes.util, os, select, sys, time
tick, beat = float(sys.argv[1]), float(sys.argv[2])
paths, wds, fd = set(), {}, -1
try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fd = libc.inotify_init1(0o4000 | 0o2000000)
except Exception:
    fd = -1
def say(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
def arm():
    want = set()
    for path in paths:
        folder = os.path.dirname(path)
        want.add(folder if os.path.isdir(folder) else os.path.dirname(folder))
    for folder in set(wds) - want:
        libc.inotify_rm_watch(fd, wds.pop(folder))
    for folder in want - set(wds):
        wd = libc.inotify_add_watch(fd, os.fsencode(folder), 0x100 | 0x80 | 0x8)
        if wd >= 0:
            wds[folder] = wd
def sweep():
    for path in sorted(paths):
        if os.path.exists(path):
            paths.discard(path)
            say("done " + path)
    if fd >= 0:
        arm()
say("watching " + ("inotify" if fd >= 0 else "stat"))
pending, said = b"", time.monotonic()
while True:
    ready = select.select([0] + ([fd] if fd >= 0 else []), [], [], tick)[0]
    if 0 in ready:
        data = os.read(0, 65536)
        if not data:
            break
        *lines, pending = (pending + data).split(b"\n")
        for line in map(os.fsdecode, lines):
            if line[:1] == "+":
                paths.add(line[1:])
            elif line[:1] == "-":
                paths.discard(line[1:])
    if fd >= 0 and fd in ready:
        try:
            os.read(fd, 65536)
        except OSError:
            pass
    sweep()
    if time.monotonic() - said >= beat:
        say("beat")
        said = time.monotonic()
"""


def watch_command(python: str, *, tick: float, beat: float) -> str:
    """The watcher under the cluster's Python (``cluster.python``, a word list), every word
    quoted; the paths it waits for go to its stdin, never into the command line."""
    return f"exec {join_words(split_words(python))} -u -c {quote(WATCHER)} {quote(tick)} {quote(beat)}"


class FileWatch:
    """Files awaited on the cluster through one watcher (:data:`WATCHER`) on a transport.

    ``want`` names the paths to wait for; ``wait`` returns those that appeared, each once
    (a path that appeared is not asked about again until it has left ``want``). A watcher
    that ended, or said nothing for three beats, makes ``wait`` raise TransportError; then
    ``start`` again (the caller decides when) picks up every path still wanted.
    """

    def __init__(self, transport: Transport, python: str, *, tick: float, beat: float = 10.0) -> None:
        self.transport = transport
        self.command = watch_command(python, tick=tick, beat=beat)
        self.beat = beat
        self.mode: str | None = None  # inotify | stat, once started
        self._stream: LineStream | None = None
        self._wanted: set[str] = set()
        self._sent: set[str] = set()
        self._seen: set[str] = set()
        self._heard = 0.0

    @property
    def up(self) -> bool:
        return self._stream is not None

    def start(self, *, timeout: float = 15.0) -> str:
        """Start the watcher and hand it every wanted path; its mode (inotify or stat)."""
        self.stop()
        stream = self.transport.stream(self.command)
        try:
            first = stream.read_line(timeout)
            if first is None or not first.startswith("watching "):
                said = first or "no word"
                raise TransportError(f"the remote watcher did not start: {said}", transient=True)
        except BaseException:
            stream.close()
            raise
        self._stream, self.mode = stream, first.removeprefix("watching ")
        self._heard = time.monotonic()
        self._sent, self._seen = set(), set()
        self._send_changes()
        return self.mode

    def want(self, paths: set[str]) -> None:
        """Wait for exactly these paths from now on (a path with a newline cannot be watched)."""
        self._wanted = {path for path in paths if "\n" not in path}
        self._seen &= self._wanted
        if self._stream is not None:
            self._send_changes()

    def wait(self, timeout: float) -> list[str]:
        """Paths that appeared, waiting up to ``timeout`` s for the first one."""
        stream = self._stream
        if stream is None:
            raise TransportError("the remote watcher is not running", transient=True)
        appeared: list[str] = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                line = stream.read_line(max(0.0, deadline - time.monotonic()) if not appeared else 0.0)
                if line is None:
                    if appeared or time.monotonic() >= deadline:
                        break
                    continue
                self._heard = time.monotonic()
                path = line.removeprefix("done ")
                if line.startswith("done ") and path in self._wanted and path not in self._seen:
                    self._seen.add(path)
                    self._sent.discard(path)
                    appeared.append(path)
            if time.monotonic() - self._heard > 3 * self.beat:
                raise TransportError(
                    f"the remote watcher said nothing for {3 * self.beat:.0f}s: the connection is gone",
                    transient=True,
                )
        except TransportError:
            self.stop()
            raise
        return appeared

    def _send_changes(self) -> None:
        assert self._stream is not None
        try:
            for path in sorted(self._sent - self._wanted):
                self._stream.send("-" + path)
                self._sent.discard(path)
            for path in sorted(self._wanted - self._sent - self._seen):
                self._stream.send("+" + path)
                self._sent.add(path)
        except TransportError:
            self.stop()
            raise

    def stop(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
