"""The completion watcher through the local transport: a real watcher process, real files."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from mqi.errors import TransportError
from mqi.shell import quote
from mqi.transport import LocalTransport
from mqi.transport.watch import FileWatch, watch_command


def _watch(tick: float = 0.1, beat: float = 10.0, python: str | None = None) -> FileWatch:
    return FileWatch(LocalTransport(), python or quote(sys.executable), tick=tick, beat=beat)


def _write_by_rename(path: Path, text: str = "{}") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.rename(path)


def _wait_for(watch: FileWatch, seconds: float) -> list[str]:
    found: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not found:
        found = watch.wait(deadline - time.monotonic())
    return found


def test_a_file_is_reported_once_as_it_appears(tmp_path: Path) -> None:
    marker = tmp_path / "case" / "results" / "summary.json"
    other = tmp_path / "other" / "results" / "summary.json"
    watch = _watch()
    watch.want({str(marker), str(other)})
    assert watch.start() in ("inotify", "stat")
    try:
        assert watch.wait(0.3) == []
        _write_by_rename(marker)
        written = time.monotonic()
        assert _wait_for(watch, 5) == [str(marker)]
        assert time.monotonic() - written < 1.0
        assert watch.wait(0.3) == [], "reported once"
    finally:
        watch.stop()


def test_a_path_already_there_is_reported_at_start_and_a_forgotten_one_never(tmp_path: Path) -> None:
    there = tmp_path / "a" / "results" / "summary.json"
    forgotten = tmp_path / "b" / "results" / "summary.json"
    _write_by_rename(there)
    watch = _watch()
    watch.want({str(there), str(forgotten)})
    watch.start()
    try:
        assert _wait_for(watch, 5) == [str(there)]
        watch.want({str(there)})
        _write_by_rename(forgotten)
        assert watch.wait(0.5) == []
    finally:
        watch.stop()


def test_a_watcher_that_cannot_start_says_why(tmp_path: Path) -> None:
    watch = _watch(python=str(tmp_path / "no-python"))
    with pytest.raises(TransportError, match="no-python"):
        watch.start(timeout=10)
    assert not watch.up


def test_a_watcher_that_ends_is_noticed(tmp_path: Path) -> None:
    watch = _watch()
    watch.start()
    stream = watch._stream
    assert stream is not None
    stream.close()  # its stdin closes: the watcher ends, as when the workstation goes away
    watch._stream = stream
    with pytest.raises(TransportError):
        _wait_for(watch, 5)
    assert not watch.up


def test_the_command_quotes_a_hostile_interpreter(tmp_path: Path) -> None:
    proof = tmp_path / "pwned"
    command = watch_command(f"'{sys.executable}' '$(touch {proof})'", tick=0.1, beat=1)
    subprocess.run(["bash", "-c", command], input="", capture_output=True, text=True, timeout=20)
    assert not proof.exists()
