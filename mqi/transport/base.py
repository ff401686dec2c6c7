"""What orchestration needs from a place where Slurm commands run: results, stats, the protocol."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

Progress = Callable[[int], None]
"""Called with the number of bytes just transferred."""


@dataclass(frozen=True)
class CommandResult:
    command: str
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def first_error_line(self) -> str:
        for text in (self.stderr, self.stdout):
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            if lines:
                return lines[-1]
        return f"exit code {self.returncode}"


@dataclass
class TransferStats:
    files_sent: int = 0
    files_skipped: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0
    names: list[str] = field(default_factory=list)


class LineStream(Protocol):
    """A long-running command there: lines to its stdin, lines from its stdout."""

    def send(self, line: str) -> None:
        """One line to the command's stdin; TransportError once it ended."""
        ...

    def read_line(self, timeout: float) -> str | None:
        """Its next stdout line (without the newline), or None when none came within
        ``timeout`` s; TransportError once the command ended or its connection dropped."""
        ...

    def close(self) -> None:
        """End the command (closing its stdin) and stop reading."""
        ...


class Transport(Protocol):
    """What orchestration needs from a place where Slurm commands run."""

    description: str

    def run(self, command: str, *, timeout: float | None = None, stdin: str | None = None) -> CommandResult:
        """Run a shell command there; never raises for a non-zero exit."""
        ...

    def put_files(
        self, local_root: Path, remote_root: str, names: Iterable[str], progress: Progress | None = None
    ) -> TransferStats:
        """Copy ``local_root/<name>`` to ``remote_root/<name>`` (folders created, modes kept)."""
        ...

    def get_files(
        self, remote_root: str, local_root: Path, names: Iterable[str], progress: Progress | None = None
    ) -> TransferStats:
        """Copy ``remote_root/<name>`` to ``local_root/<name>``."""
        ...

    def stream(self, command: str) -> LineStream:
        """Start a long-running shell command there (over the SSH connection already open,
        on its own channel) and talk to it line by line."""
        ...

    def close(self) -> None: ...
